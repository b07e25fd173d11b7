"""The tokenizer file format: version-1 files (kmim 0.1.0) load; NaN codebooks are refused."""

from pathlib import Path

import pytest
import torch

from kmim.config import load_config
from kmim.data import build_dataset
from kmim.errors import KmimError
from kmim.fit import FitData, fit_tokenizer, load_tokenizer
from kmim.tokenizers import KMeansTokenizer, PixelSource

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.mark.parametrize(
    ("name", "kind", "k"), [("v1_kmeans_pixels.pt", "kmeans-pixels", 16), ("v1_kmeans_hog.pt", "kmeans-hog", 32)]
)
def test_version_1_files_written_by_kmim_0_1_load(name, kind, k):
    assert torch.load(FIXTURES / name, weights_only=True)["version"] == 1
    tok = load_tokenizer(FIXTURES / name)
    ds, _ = build_dataset(load_config(None, []).data, "train")
    ids = tok.encode(torch.stack([ds[i][0] for i in range(8)]))  # mnist5k, the data they were fitted on
    assert tok.kind == kind and tok.k == k and ids.shape == (8, 64) and ids.max() < k


def test_version_1_feature_tokenizer_layout_is_upgraded(tmp_path, tiny_overrides):
    """v1 stored a frozen encoder's weights under `encoder.`; v2 under `source.encoder.`."""
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "tokenizer.name=kmeans-features",
            "tokenizer.encoder=supervised",
            "tokenizer.supervised.epochs=1",
            "tokenizer.batch_size=8",
        ],
    )
    ds, info = build_dataset(cfg.data, "train")
    tok = fit_tokenizer(cfg.tokenizer, FitData(ds, info, 4, "synthetic"), progress=False)
    v1 = {
        "format": "kmim-tokenizer",
        "version": 1,
        "kind": tok.kind,
        "meta": tok.meta.to_dict(),
        "state": {k.removeprefix("source."): v for k, v in tok.state_dict().items()},
    }
    assert any(k.startswith("encoder.") for k in v1["state"])
    torch.save(v1, tmp_path / "v1.pt")
    imgs = torch.stack([ds[i][0] for i in range(4)])
    assert torch.equal(load_tokenizer(tmp_path / "v1.pt").encode(imgs), tok.encode(imgs))
    torch.save({**v1, "version": 7}, tmp_path / "v7.pt")
    with pytest.raises(KmimError, match="tokenizer file version 7 is not supported .* reads versions 1, 2"):
        load_tokenizer(tmp_path / "v7.pt")


def test_nan_or_inf_centroids_are_refused(tmp_path):
    meta = {"k": 2, "patch_size": 2, "in_chans": 1}
    tok = KMeansTokenizer(meta, PixelSource(2, 1), torch.zeros(2, 4))
    tok.centroids[1, 3] = float("nan")
    tok.save(tmp_path / "nan.pt")
    with pytest.raises(KmimError, match="centroids has 1 NaN/Inf values: the tokenizer file is damaged"):
        load_tokenizer(tmp_path / "nan.pt")


def test_tokenizer_meta_is_typed_and_the_file_keeps_its_flat_layout():
    from kmim.tokenizers.base import TokenizerMeta

    flat = {  # the meta of a version-2 file as the fitters wrote it before the class existed
        "k": 8,
        "patch_size": 4,
        "in_chans": 1,
        "feature_dim": 144,
        "feature_source": "hog",
        "normalization": {"mean": [0.5], "std": [0.25]},
        "dataset": "synthetic",
        "hog_cells": 2,
        "hog_bins": 9,
        "fit": {"inertia": 1.5},
        "kmim_version": "0.1.0",
        "git_sha": None,
        "config": {"name": "kmeans-hog"},
    }
    meta = TokenizerMeta.from_dict(flat)
    assert (meta.k, meta.patch_size, meta.feature_dim, meta.mean, meta.std) == (8, 4, 144, [0.5], [0.25])
    assert meta.extra == {"hog_cells": 2, "hog_bins": 9} and meta.fit == {"inertia": 1.5}
    assert meta.config == {"name": "kmeans-hog"} and meta.kmim_version == "0.1.0"
    back = meta.to_dict()
    assert back == flat and list(back) == list(flat)  # same keys, same order: the file's bytes do not change
    assert TokenizerMeta.from_dict({"k": 2, "patch_size": 2, "in_chans": 1}).to_dict() == {
        "k": 2,
        "patch_size": 2,
        "in_chans": 1,
        "feature_dim": 0,
        "feature_source": "",
        "dataset": "",
    }
