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
        "meta": tok.meta,
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
