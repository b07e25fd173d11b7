import numpy as np
import pytest
import torch

from kmim.config import TokenizerConfig
from kmim.data import build_dataset
from kmim.errors import KmimError
from kmim.tokenizers import fit_tokenizer, load_tokenizer
from kmim.tokenizers.kmeans import assign, fit_kmeans, subsample
from kmim.tokenizers.pixel import KMeansPixelTokenizer


def test_assign_hand_codebook():
    c = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # (4.9, 5.2): squared distances 51.05, 53.05, 47.05 -> 2; (5, 5) is 50 from all three: the tie goes to 0
    x = torch.tensor([[1.0, 1.0], [9.0, -1.0], [-1.0, 8.0], [4.9, 5.2], [5.0, 5.0]])
    assert assign(x, c).tolist() == [0, 1, 2, 2, 0]
    assert assign(x, c, chunk=2).tolist() == [0, 1, 2, 2, 0]


def test_fit_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [8, 8], [0, 8]], dtype=np.float32)
    x = np.concatenate([rng.normal(c, 0.1, (200, 2)) for c in centers]).astype(np.float32)
    res = fit_kmeans(x, 3, niter=10, seed=0, progress=False)
    found = res.centroids[np.argsort(res.centroids[:, 0] * 100 + res.centroids[:, 1])]
    expect = centers[np.argsort(centers[:, 0] * 100 + centers[:, 1])]
    assert np.allclose(found, expect, atol=0.05)
    assert sorted(res.counts.tolist()) == [200, 200, 200]
    assert res.inertia < 0.05  # about 2 * 0.1^2


def test_fit_kmeans_subsamples_by_points_per_centroid():
    assert subsample(100, 4, 256, 0) is None
    idx = subsample(10_000, 4, 100, 0)
    assert len(idx) == 400 and len(set(idx.tolist())) == 400
    assert np.array_equal(idx, subsample(10_000, 4, 100, 0))  # seeded


def test_fit_kmeans_needs_k_points():
    with pytest.raises(KmimError, match="at least K=5"):
        fit_kmeans(np.zeros((3, 2), np.float32), 5, progress=False)


def _meta(k=2, p=2, c=1, patch_norm=False):
    return {"k": k, "patch_size": p, "in_chans": c, "patch_norm": patch_norm,
            "normalization": {"mean": [0.5], "std": [0.25]}}  # fmt: skip


def test_pixel_tokenizer_encodes_patches():
    tok = KMeansPixelTokenizer(_meta(), torch.stack([torch.zeros(4), torch.ones(4)]))
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, :2, 2:] = 1.0  # top-right patch bright
    img[0, 0, 2:, 2:] = 0.6  # bottom-right nearer 1 than 0
    assert tok.encode(img).tolist() == [[0, 1, 0, 1]]


def test_tokenizer_save_load_roundtrip_and_refusals(tmp_path, tiny_cfg):
    ds, info = build_dataset(tiny_cfg.data, "train")
    tok = fit_tokenizer(tiny_cfg.tokenizer, ds, info, 4, "synthetic", progress=False)
    assert tok.meta["fit"]["n_fit"] == 3 * 8 * 16  # every patch: 24 images x 16 patches < K * 256
    assert tok.meta["git_sha"] is None or isinstance(tok.meta["git_sha"], str)
    path = tmp_path / "tok.pt"
    tok.save(path)
    back = load_tokenizer(path)
    imgs = torch.stack([ds[i][0] for i in range(4)])
    assert torch.equal(back.encode(imgs), tok.encode(imgs))
    assert back.describe()["k"] == 8 and back.describe()["kind"] == "kmeans-pixels"
    with pytest.raises(KmimError, match="patch size 4 does not match the model's patch size 8"):
        back.check_compatible(8, 1, info.mean, info.std)
    with pytest.raises(KmimError, match="1-channel images, the data has 3 channels"):
        back.check_compatible(4, 3, info.mean, info.std)
    with pytest.raises(KmimError, match="refit it"):
        back.check_compatible(4, 1, (0.1,), (0.2,))


def test_load_tokenizer_bad_files(tmp_path):
    with pytest.raises(KmimError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(KmimError, match="cannot be read"):
        load_tokenizer(junk)
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(KmimError, match="not a kmim tokenizer"):
        load_tokenizer(tmp_path / "other.pt")


def test_unknown_tokenizer_name_lists_valid(tiny_cfg):
    ds, info = build_dataset(tiny_cfg.data, "train")
    with pytest.raises(KmimError, match="valid names are .*kmeans-pixels"):
        fit_tokenizer(TokenizerConfig(name="bogus"), ds, info, 4, "synthetic", progress=False)
