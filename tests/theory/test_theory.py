import argparse
import json

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from kmim.errors import KmimError
from kmim.theory import metrics
from kmim.theory import population as P
from kmim.theory.analysis import BoundConfig, analyze
from kmim.theory.empirical import bag_of_tokens_graph, build_empirical
from kmim.theory.experiments import SyntheticSpec, merge_study, mixing_study, ordering, synthetic_case, toy_case
from kmim.theory.graph import (
    as_mask_matrix,
    augmentation_graph,
    augmentation_spectrum,
    normalized_adjacency,
    symmetric_spectrum,
    tokenized_mask_graph,
)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):  # tiny matrices: a second BLAS thread only spins, badly so on a busy 2-core machine
        yield


# ---------------------------------------------------------------- spectra of graphs known in closed form


def _spectrum(a, dense_max=10_000, top=None):
    return symmetric_spectrum(normalized_adjacency(a), top=top, dense_max=dense_max)


def test_spectrum__disjoint_cliques():
    # K_n without self-loops: normalized adjacency = (J - I)/(n - 1), eigenvalues 1 once and -1/(n-1) n-1 times
    sizes = [3, 4, 6]
    a = sp.block_diag([np.ones((n, n)) - np.eye(n) for n in sizes])
    expect = np.sort(np.concatenate([[1.0] * 3, *[[-1.0 / (n - 1)] * (n - 1) for n in sizes]]))[::-1]
    np.testing.assert_allclose(_spectrum(a).top, expect, atol=1e-12)


def test_spectrum__ring():
    # C_n is 2-regular: normalized adjacency = adjacency / 2, eigenvalues cos(2 pi j / n)
    n = 9
    a = sp.csr_matrix(
        (np.ones(2 * n), (np.r_[np.arange(n), np.arange(n)], np.r_[np.arange(1, n + 1) % n, np.arange(-1, n - 1) % n]))
    )
    expect = np.sort(np.cos(2 * np.pi * np.arange(n) / n))[::-1]
    np.testing.assert_allclose(_spectrum(a).top, expect, atol=1e-12)


def test_spectrum__ring_sparse_path_matches_dense():
    n = 400
    i = np.arange(n)
    a = sp.csr_matrix((np.ones(2 * n), (np.r_[i, i], np.r_[(i + 1) % n, (i - 1) % n])))
    dense, sparse = _spectrum(a), _spectrum(a, dense_max=0, top=7)
    assert not sparse.complete and len(sparse.top) == 7
    np.testing.assert_allclose(sparse.top, dense.top[:7], atol=1e-8)  # the doubled eigenvalues are all found
    assert sparse.frob_sq == pytest.approx(n / 2)  # n nodes, each with 2 entries of 1/2


def test_spectrum__complete_bipartite():
    # K_{m,n}: normalized adjacency has eigenvalues +1, -1 and m + n - 2 zeros
    m, n = 3, 5
    a = sp.bmat([[None, np.ones((m, n))], [np.ones((n, m)), None]])
    np.testing.assert_allclose(_spectrum(a).top, np.r_[1.0, np.zeros(m + n - 2), -1.0], atol=1e-12)


def test_normalized_adjacency__rejects_isolated_and_asymmetric():
    with pytest.raises(KmimError, match="degree 0"):
        normalized_adjacency(np.array([[0.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(KmimError, match="symmetric"):
        normalized_adjacency(np.array([[0.0, 1.0], [0.0, 0.0]]))


# ---------------------------------------------------------------- mask graph -> augmentation graph


def _random_mask(n1=7, n2=11, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.random((n1, n2)) * (rng.random((n1, n2)) < 0.4)
    m[np.arange(n1), rng.integers(0, n2, n1)] += 0.1  # no empty row
    return as_mask_matrix(m)


def test_augmentation_graph__degree_is_mass_and_factor_matches_direct():
    m = _random_mask()
    for tokens in (np.arange(11), np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4])):  # S > N1 and S < N1 Gram paths
        mt = tokenized_mask_graph(m, tokens)
        a = augmentation_graph(mt)
        np.testing.assert_allclose(np.asarray(a.sum(axis=1)).ravel(), np.asarray(m.sum(axis=1)).ravel())
        direct = np.linalg.eigvalsh(normalized_adjacency(a).toarray())[::-1]
        spec = augmentation_spectrum(mt)
        np.testing.assert_allclose(spec.top, direct, atol=1e-12)
        assert spec.frob_sq == pytest.approx(np.sum(direct**2))
        assert direct.max() == pytest.approx(1.0) and direct.min() > -1e-12  # B B^T is PSD


def test_augmentation_spectrum__sparse_path_gives_exact_tail():
    m = _random_mask(n1=200, n2=300, seed=1)
    mt = tokenized_mask_graph(m, np.arange(300))
    dense, sparse = augmentation_spectrum(mt), augmentation_spectrum(mt, top=5, dense_max=0)
    np.testing.assert_allclose(sparse.top, dense.top[:5], atol=1e-8)
    assert metrics.spectral_tail(sparse, 3) == pytest.approx(metrics.spectral_tail(dense, 3), abs=1e-8)


def test_spectral_tail__is_best_rank_k_residual():
    mt = tokenized_mask_graph(_random_mask(seed=2), np.arange(11))
    abar = normalized_adjacency(augmentation_graph(mt)).toarray()
    vals, vecs = np.linalg.eigh(abar)
    f = vecs[:, -2:] * np.sqrt(vals[-2:])  # top-2 spectral embedding, (N1, 2)
    assert metrics.spectral_tail(augmentation_spectrum(mt), 2) == pytest.approx(np.sum((abar - f @ f.T) ** 2))


def test_tokenized_mask_graph__rejects_bad_tokens():
    m = _random_mask()
    with pytest.raises(KmimError, match="one id per masked view"):
        tokenized_mask_graph(m, np.arange(5))
    with pytest.raises(KmimError, match="integers"):
        tokenized_mask_graph(m, np.zeros(11))
    with pytest.raises(KmimError, match="negative"):
        as_mask_matrix(-np.ones((2, 2)))


# ---------------------------------------------------------------- labeling error and connectivity by hand


def test_labeling_error__hand_example():
    # x1: classes 0, 0, 1; token a = {x2_0}: x1_0 0.2, x1_2 0.2; token b = {x2_1}: x1_1 0.4, x1_2 0.2
    m = sp.csr_matrix(np.array([[0.2, 0.0], [0.0, 0.4], [0.2, 0.2]]))
    y = np.array([0, 0, 1])
    mt = tokenized_mask_graph(m, np.array([0, 1]))
    # M(c, S): a = (0.2, 0.2), b = (0.4, 0.2) -> alpha = 1 - (0.2 + 0.4) = 0.4
    assert metrics.labeling_error(mt, y) == pytest.approx(0.4)
    # inter-class mass: a: 2 * 0.2 * 0.2 / 0.4 = 0.2; b: 2 * 0.4 * 0.2 / 0.6 = 4/15
    w = metrics.class_connectivity(mt, y)
    assert w.sum() == pytest.approx(1.0)
    assert w[0, 1] + w[1, 0] == pytest.approx(0.2 + 4 / 15)
    assert metrics.pair_labeling_error(mt, y) == pytest.approx(0.2 + 4 / 15)


def test_intra_class_gap__clique_is_one_split_is_zero():
    y = np.array([0, 0, 0, 1, 1, 1])
    one_token = sp.csr_matrix(np.kron(np.eye(2), np.ones((3, 1))) / 6)  # class c -> token c, uniform
    assert metrics.mean_intra_class_gap(one_token, y) == pytest.approx(1.0)
    split = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]]) / 6.0)
    assert metrics.intra_class_gap(split, y, 0) == pytest.approx(0.0, abs=1e-12)  # {0, 1} and {2} do not touch
    assert metrics.intra_class_gap(split, y, 1) == pytest.approx(1.0)


def test_bounds__formulas():
    assert metrics.bound_zhang(2.0, 0.25, c1=3.0, c2=4.0) == pytest.approx(7.0)
    assert metrics.bound_haochen(0.1, 0.6) == pytest.approx(4 * 0.1 / 0.4 + 8 * 0.1)
    assert metrics.bound_haochen(0.1, 1.0) == float("inf")


# ---------------------------------------------------------------- the paper-notes toy table (section 7.3)


def test_toy_table__paper_notes_7_3():
    case = toy_case()
    ident, cw, cc = case.get("identity"), case.get("class-wise"), case.get("cross-class-4")
    np.testing.assert_allclose(ident.eigenvalues, [1, 1, 0.5, 0.5, 0.5, 0.5, 0, 0], atol=1e-12)
    np.testing.assert_allclose(cw.eigenvalues, [1, 1, 0, 0, 0, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(cc.eigenvalues, [1, 0.5, 0.5, 0, 0, 0, 0, 0], atol=1e-12)
    assert [r.tail for r in (ident, cw, cc)] == pytest.approx([1.0, 0.0, 0.25])
    assert [r.alpha for r in (ident, cw, cc)] == pytest.approx([0.0, 0.0, 0.5])


@pytest.mark.parametrize(
    ("n", "tail_identity", "tail_cross"), [(3, 0.25, 0.0625), (4, 1.0, 0.25), (5, 1.75, 0.447), (8, 4.0, 1.271)]
)
def test_toy_ring__identity_spectrum_is_cos_squared(n, tail_identity, tail_cross):
    # identity on a ring of width 2: per class Abar = (I + (P + P^T)/2) / 2, eigenvalues cos^2(pi j / n)
    pop = P.mask_population(2, n, 2, overlap=0.0)
    ident = analyze("identity", pop.m, pop.y1, tokens=P.identity_tokens(pop), cfg=BoundConfig(k=2))
    expect = np.sort(np.tile(np.cos(np.pi * np.arange(n) / n) ** 2, 2))[::-1]
    np.testing.assert_allclose(ident.eigenvalues, expect, atol=1e-12)
    assert ident.tail == pytest.approx(tail_identity, abs=1e-3)
    cross = analyze("cross", pop.m, pop.y1, tokens=P.cross_class_tokens(pop, n), cfg=BoundConfig(k=2))
    assert cross.tail == pytest.approx(tail_cross, abs=1e-3)
    assert cross.alpha == pytest.approx(0.5)


# ---------------------------------------------------------------- the synthetic population and its tokenizers


def test_population__sets_and_no_overlap_disconnects_classes():
    pop = P.mask_population(3, 6, 2, overlap=0.0)
    assert pop.m.shape == (18, 18) and pop.m.sum() == pytest.approx(1.0)
    assert set(P.masked_view_sets(pop.m, pop.y1).tolist()) == {0, 1, 2}  # no intersection without overlap
    r = analyze("identity", pop.m, pop.y1, tokens=P.identity_tokens(pop), cfg=BoundConfig(k=3))
    assert r.alpha == 0.0 and r.lam_k1 < 1.0
    np.testing.assert_allclose(r.connectivity, np.eye(3) / 3, atol=1e-12)
    np.testing.assert_allclose(r.eigenvalues[:3], 1.0)  # one eigenvalue 1 per class (component)
    shared = P.mask_population(3, 6, 2, overlap=0.2)
    assert np.sum(P.masked_view_sets(shared.m, shared.y1) == P.SHARED) == 6


def test_population__rejects_bad_parameters():
    with pytest.raises(KmimError, match="--window"):
        P.mask_population(2, 4, 5, overlap=0.1)
    with pytest.raises(KmimError, match="--overlap"):
        P.mask_population(2, 4, 2, overlap=1.0)


def test_tokenizers__class_wise_keeps_alpha_cross_class_raises_it():
    pop = P.mask_population(2, 16, 4, overlap=0.1)
    cfg = BoundConfig(k=2)
    ident, cw, cc = (
        analyze(n, pop.m, pop.y1, tokens=t, cfg=cfg)
        for n, t in (
            ("identity", P.identity_tokens(pop)),
            ("class-wise", P.class_wise_tokens(pop)),
            ("cross", P.cross_class_tokens(pop, 4)),
        )
    )
    assert cw.alpha == pytest.approx(ident.alpha) == pytest.approx(0.05)  # half of the background mass is misfit
    assert cw.tail < ident.tail and cw.intra_gap > ident.intra_gap
    assert cc.alpha == pytest.approx(0.5) and cc.alpha_pair > ident.alpha_pair


def test_mixed_tokens__endpoints_are_class_wise_and_cross_class():
    pop = P.mask_population(2, 16, 4, overlap=0.1)

    def same_partition(a, b):
        return len(np.unique(a)) == len(np.unique(b)) == np.unique(np.stack([a, b]), axis=1).shape[1]

    assert same_partition(P.mixed_tokens(pop, 4, 0.0), P.class_wise_tokens(pop, 4))
    assert same_partition(P.mixed_tokens(pop, 4, 1.0), P.cross_class_tokens(pop, 4))


def test_kmeans_tokens__separation_decides_class_alignment():
    pop = P.mask_population(2, 16, 4, overlap=0.0)
    far = P.kmeans_tokens(P.patch_features(pop, 5.0, 0.05, seed=0), 4, seed=0)
    near = P.kmeans_tokens(P.patch_features(pop, 0.0, 0.05, seed=0), 4, seed=0)
    cfg = BoundConfig(k=2)
    assert analyze("far", pop.m, pop.y1, tokens=far, cfg=cfg).alpha == pytest.approx(0.0)
    assert analyze("near", pop.m, pop.y1, tokens=near, cfg=cfg).alpha == pytest.approx(0.5, abs=0.05)


# ---------------------------------------------------------------- the properties the issue asks to show


def test_merge__proportional_columns_leave_graph_unchanged():
    m = _random_mask(n1=6, n2=8, seed=3).toarray()
    m[:, 7] = 0.5 * m[:, 6]  # x2_6 and x2_7 proportional: merging them changes nothing
    m = as_mask_matrix(m)
    before = augmentation_graph(tokenized_mask_graph(m, np.arange(8))).toarray()
    merged = augmentation_graph(tokenized_mask_graph(m, np.r_[np.arange(7), 6])).toarray()
    np.testing.assert_allclose(merged, before, atol=1e-15)
    other = augmentation_graph(tokenized_mask_graph(m, np.r_[np.arange(6), 5, 6])).toarray()
    assert np.abs(other - before).max() > 1e-3  # x2_5 and x2_6 are not proportional


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge__lowers_every_eigenvalue_keeps_degrees_raises_alpha(seed):
    # merging S_i, S_j subtracts u u^T / (m n (m + n)) from A, u = n Mt(., S_i) - m Mt(., S_j): a rank-one PSD term
    m = _random_mask(n1=9, n2=12, seed=seed)
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    fine = np.arange(12)
    coarse = fine.copy()
    coarse[coarse == 7] = 3
    mt_f, mt_c = tokenized_mask_graph(m, fine), tokenized_mask_graph(m, coarse)
    np.testing.assert_allclose(augmentation_graph(mt_c).sum(axis=1), augmentation_graph(mt_f).sum(axis=1))
    lam_f, lam_c = augmentation_spectrum(mt_f).top, augmentation_spectrum(mt_c).top
    assert np.all(lam_c <= lam_f + 1e-12) and np.all(lam_c[:-1] >= lam_f[1:] - 1e-12)  # Weyl interlacing
    assert np.sum(lam_f - lam_c) > 1e-6  # columns 3 and 7 of a random M are not proportional
    assert metrics.labeling_error(mt_c, y) >= metrics.labeling_error(mt_f, y) - 1e-12


def test_merge_study__equal_ratios_invariant_only_when_exchangeable():
    spec = SyntheticSpec(views_per_class=16, window=4, overlap=0.1)
    res = merge_study(2, spec, BoundConfig(k=2))
    ex, loc = res["exchangeable"], res["local"]
    assert np.ptp(ex["bound"]) < 1e-12 and np.ptp(ex["bound_haochen"]) < 1e-12 and ex["max_abs_dA"] < 1e-15
    assert ex["identity_bound"] == pytest.approx(ex["class_wise_bound"])  # merging inside a set is a no-op too
    assert np.ptp(loc["bound"]) > 0.5 and loc["max_abs_dA"] > 1e-6


def test_ordering__class_wise_identity_cross_class():
    spec = SyntheticSpec(views_per_class=32, window=4, overlap=0.1, tokens_per_class=8, kmeans_k=4)
    for classes in (2, 4):
        case = synthetic_case("t", classes, spec, bound=BoundConfig(k=classes))
        ord_ = ordering(case, "cross-class-8")
        assert ord_["haochen_holds"]
        assert case.get("class-wise").bound < case.get("identity").bound  # every c1, c2 > 0: same alpha, less tail
        assert not ord_["zhang_holds"] and ord_["c2_over_c1_min"] > 1  # with c1 = c2 = 1 identity is worst
        ident = case.get("identity")
        assert all(r.tail <= ident.tail and r.lam_k1 <= ident.lam_k1 + 1e-12 for r in case.reports)  # all coarsen it


def test_mixing_study__alpha_up_haochen_up():
    spec = SyntheticSpec(views_per_class=32, window=4, overlap=0.1, tokens_per_class=4)
    mix = mixing_study(2, spec, BoundConfig(k=2))
    assert mix["fraction"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert np.all(np.diff(mix["alpha"]) > 0) and np.all(np.diff(mix["bound_haochen"]) > 0)
    assert mix["alpha"][0] == pytest.approx(0.05) and mix["alpha"][-1] == pytest.approx(0.5)


# ---------------------------------------------------------------- the empirical graph and the command


def test_bag_of_tokens_graph__hand_example():
    tokens = np.array([[0, 0, 1, 2], [2, 2, 2, 1]])
    mt = bag_of_tokens_graph(tokens).toarray()
    np.testing.assert_allclose(mt, [[0.25, 0.125, 0.125], [0.0, 0.125, 0.375]])
    keep = np.array([[True, True, False, False], [True, False, False, True]])
    np.testing.assert_allclose(bag_of_tokens_graph(tokens, keep).toarray(), [[0.5, 0, 0], [0, 0.25, 0.25]])


def test_build_empirical__class_wise_is_pure_and_background_is_shared():
    g = build_empirical(per_class=3, ks=[4], seed=0)
    assert g.patch_tokens["identity"].shape == (30, 64) and set(g.patch_tokens) >= {"kmeans-4", "class-wise"}
    mt = bag_of_tokens_graph(g.patch_tokens["class-wise"])
    assert metrics.labeling_error(mt, g.labels) == 0.0
    ident = g.patch_tokens["identity"]
    bg = np.bincount(ident[~g.ink]).argmax()
    assert np.all(np.any(ident == bg, axis=1))  # the padded border makes one patch common to every image


def test_command__writes_json_and_plots(tmp_path, capsys):
    from kmim.commands import theory as command

    p = argparse.ArgumentParser()
    command.add_arguments(p)
    args = p.parse_args(
        [
            *("--out", str(tmp_path), "--views-per-class", "8", "--tokens-per-class", "2", "--kmeans-k", "3"),
            *("--classes", "3", "--no-empirical", "--quiet"),
        ]
    )
    assert command.run(args) == 0
    doc = json.loads((tmp_path / "theory.json").read_text())
    tok = doc["cases"]["two_class"]["tokenizers"]["identity"]
    assert {"alpha", "bound", "bound_haochen", "eigenvalues"} <= set(tok)
    assert tok["eigenvalues_complete"] and len(tok["eigenvalues"]) == 16
    assert doc["cases"]["toy"]["tokenizers"]["cross-class-4"]["tail"] == pytest.approx(0.25)
    assert (tmp_path / "theory-two_class.png").stat().st_size > 0 and (tmp_path / "theory-mixing.png").exists()
    assert "| class-wise |" in capsys.readouterr().out
    with pytest.raises(KmimError, match="--tokens-per-class"):
        command.run(p.parse_args(["--views-per-class", "4", "--tokens-per-class", "8", "--no-empirical"]))
