"""TCAS and the token metrics: hand-computed values and the properties documented in docs/tcas.md."""

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from kmim.errors import KmimError
from kmim.metrics import (
    class_connectivity,
    codebook_usage,
    cooccurrence,
    dead_codes,
    nmi,
    perplexity,
    purity,
    tcas,
    tcas_from_counts,
    tcas_null,
    token_metrics,
)

# Two classes, three tokens: class 0 uses tokens 0,0,1,1 and class 1 uses 1,1,2,2 (token 1 is shared).
TOKENS = np.array([0, 0, 1, 1, 1, 1, 2, 2])
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def test_two_class_hand_values():
    n = cooccurrence(TOKENS, LABELS)
    assert n.tolist() == [[2, 0], [2, 2], [0, 2]]
    # W[l, l'] = (1/8) sum_k n_kl n_kl' / n_k: W00 = (4/2 + 4/4) / 8 = 3/8, W01 = (4/4) / 8 = 1/8
    assert np.allclose(class_connectivity(n), [[3 / 8, 1 / 8], [1 / 8, 3 / 8]])
    assert tcas_from_counts(n) == pytest.approx(1 / 3)  # (1/8) / sqrt(3/8 * 3/8)
    assert tcas(TOKENS, LABELS) == pytest.approx(1 / 3)
    # H(Y) = ln 2, H(T) = 1.5 ln 2, I = 0.5 ln 2 -> NMI = 0.5 / ((1 + 1.5) / 2) = 0.4
    assert nmi(n) == pytest.approx(0.4)
    assert nmi(n) == pytest.approx(normalized_mutual_info_score(LABELS, TOKENS))
    assert purity(n) == pytest.approx(6 / 8)
    assert perplexity(n) == pytest.approx(2**1.5)
    assert codebook_usage(n, k=4) == pytest.approx(0.75) and dead_codes(n, k=4) == 1


def test_two_class_unequal_proportions():
    # token 0: 3 of class 0, 1 of class 1; token 1: the mirror. W00 = (9/4 + 1/4) / 8 = 5/16, W01 = (3/4 + 3/4) / 8
    n = np.array([[3, 1], [1, 3]])
    assert np.allclose(class_connectivity(n), [[5 / 16, 3 / 16], [3 / 16, 5 / 16]])
    assert tcas_from_counts(n) == pytest.approx(3 / 5)


def test_image_labels_broadcast_to_patches():
    tokens = TOKENS.reshape(2, 4)  # two images of 4 patches, labels 0 and 1
    assert np.array_equal(cooccurrence(tokens, [0, 1]), cooccurrence(TOKENS, LABELS))
    m = token_metrics(tokens, np.array([0, 1]), k=4)
    assert m["tcas"] == pytest.approx(1 / 3) and m["patches"] == 8 and m["dead_codes"] == 1


def _random_counts(rng, k=12, classes=4):
    n = rng.integers(0, 30, size=(k, classes))
    n[0] += 1  # every class present
    return n


def test_renaming_tokens_changes_nothing():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = _random_counts(rng)
        perm = rng.permutation(len(n))
        for f in (tcas_from_counts, nmi, purity, perplexity):
            assert f(n[perm]) == pytest.approx(f(n))


def test_merging_tokens_with_identical_class_proportions_changes_nothing():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = _random_counts(rng).astype(float)
        q = rng.dirichlet(np.ones(n.shape[1]))
        a, b = 7.0 * q, 3.0 * q  # two tokens with the same class proportions q
        split = np.vstack([n, a, b])
        merged = np.vstack([n, a + b])
        assert tcas_from_counts(split) == pytest.approx(tcas_from_counts(merged))
        assert np.allclose(class_connectivity(split), class_connectivity(merged))


def test_nmi_is_not_merge_invariant_which_is_why_tcas_avoids_h_of_t():
    split = np.array([[2, 0], [2, 2], [0, 2], [1, 1]])
    merged = np.array([[2, 0], [3, 3], [0, 2]])  # tokens 1 and 3 both have proportions (1/2, 1/2)
    assert tcas_from_counts(split) == pytest.approx(tcas_from_counts(merged))
    assert nmi(split) != pytest.approx(nmi(merged))


def test_class_wise_is_zero():
    rng = np.random.default_rng(2)
    for _ in range(10):
        owner = np.concatenate([np.arange(5), rng.integers(0, 5, size=25)])  # token k is used by class owner[k] only
        n = np.zeros((30, 5))
        n[np.arange(30), owner] = rng.integers(1, 50, size=30)
        assert tcas_from_counts(n) == 0.0


def test_cross_class_is_the_maximum_one():
    rng = np.random.default_rng(3)
    prior = np.array([0.5, 0.3, 0.2])  # unbalanced classes
    sizes = rng.integers(1, 100, size=17)
    assert tcas_from_counts(np.outer(sizes, prior)) == pytest.approx(1.0)
    for _ in range(30):  # anything else stays below
        assert tcas_from_counts(_random_counts(rng, classes=3)) < 1.0 - 1e-6


def test_between_class_wise_and_cross_class():
    # q_k = (1 - t) * onehot(owner_k) + t * prior: TCAS rises strictly from 0 (t=0) to 1 (t=1)
    owner = np.repeat(np.arange(4), 3)  # 12 tokens, 3 per class
    prior = np.full(4, 0.25)
    vals = []
    for t in np.linspace(0, 1, 11):
        q = (1 - t) * np.eye(4)[owner] + t * prior
        vals.append(tcas_from_counts(10.0 * q))
    assert vals[0] == 0.0 and vals[-1] == pytest.approx(1.0)
    assert all(0 < v < 1 for v in vals[1:-1])
    assert all(b > a for a, b in itertools.pairwise(vals))


def test_background_token_shared_by_every_class():
    # 10 classes x 100 patches: 70 on one background token (q = prior), 30 on the class's own token.
    classes, b = 10, 0.7
    n = np.zeros((1 + classes, classes))
    n[0] = 70
    n[1 + np.arange(classes), np.arange(classes)] = 30
    assert tcas_from_counts(n) == pytest.approx(b / (b + (1 - b) * classes))  # 7/37, not saturated
    # the count-weighted inter-class edge fraction 1 - trace(W), normalized by its class-independent value, reads b
    w = class_connectivity(n)
    assert (1 - np.trace(w)) / (1 - 1 / classes) == pytest.approx(b)
    # splitting the background into several tokens with the same proportions changes nothing
    many = np.vstack([np.full((5, classes), 14.0), n[1:]])
    assert tcas_from_counts(many) == pytest.approx(tcas_from_counts(n))
    # more background pulls TCAS towards 1, without reaching it
    more = n.copy()
    more[0] = 700
    assert tcas_from_counts(n) < tcas_from_counts(more) < 1.0


def test_more_informative_tokens_lower_tcas():
    # refining a shared token into tokens with different class mixes lowers TCAS (K-means with larger K)
    coarse = np.array([[10, 10], [6, 4]])
    fine = np.array([[10, 10], [5, 1], [1, 3]])
    assert tcas_from_counts(fine) < tcas_from_counts(coarse)


def test_nmi_matches_scikit_learn_on_random_labelings():
    rng = np.random.default_rng(4)
    for _ in range(10):
        t, y = rng.integers(0, 9, 500), rng.integers(0, 4, 500)
        assert nmi(cooccurrence(t, y)) == pytest.approx(normalized_mutual_info_score(y, t))


def test_usage_perplexity_dead_codes():
    hist = np.array([5, 5, 5, 5, 0, 0, 0, 0])
    assert perplexity(hist) == pytest.approx(4.0)
    assert codebook_usage(hist) == pytest.approx(0.5) and dead_codes(hist) == 4
    assert perplexity(np.array([1, 3])) == pytest.approx(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))))


def test_bad_inputs():
    with pytest.raises(KmimError, match="at least two classes"):
        tcas([0, 1, 2], [0, 0, 0])
    with pytest.raises(KmimError, match="do not match"):
        cooccurrence([0, 1, 2], [0, 1])
    with pytest.raises(KmimError, match="non-negative"):
        cooccurrence([0, -1], [0, 1])
    with pytest.raises(KmimError, match="out of range"):
        cooccurrence([0, 5], [0, 1], k=4)
    with pytest.raises(KmimError, match="not all zero"):
        tcas_from_counts(np.zeros((3, 2)))


def test_tcas_null_is_the_class_independent_expectation():
    # hand value: n = 8, K' = 3, pi = (1/2, 1/2): (8 - 3) / 4 / (8 / 4 + 3 / 4) = 5 / 11
    assert tcas_null(cooccurrence(TOKENS, LABELS)) == pytest.approx(5 / 11)
    rng = np.random.default_rng(5)
    draws = [cooccurrence(rng.integers(0, 40, 4000), rng.integers(0, 4, 4000)) for _ in range(20)]
    mean = np.mean([tcas_from_counts(n) for n in draws])
    assert mean == pytest.approx(np.mean([tcas_null(n) for n in draws]), abs=3e-3)
    assert mean == pytest.approx(1 - 40 * 4 / 4000, abs=5e-3) and mean < 0.97  # plug-in bias ~ K L / n
