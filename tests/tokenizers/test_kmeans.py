import pytest
import torch

from kmim.config import TokenizerConfig
from kmim.data import build_dataset
from kmim.errors import KmimError
from kmim.fit import FitData, fit_tokenizer, load_tokenizer
from kmim.tokenizers import KMeansTokenizer, PixelSource, TokenizerMeta
from kmim.tokenizers.codebook import assign


def test_assign_hand_codebook():
    c = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # (4.9, 5.2): squared distances 51.05, 53.05, 47.05 -> 2; (5, 5) is 50 from all three: the tie goes to 0
    x = torch.tensor([[1.0, 1.0], [9.0, -1.0], [-1.0, 8.0], [4.9, 5.2], [5.0, 5.0]])
    assert assign(x, c).tolist() == [0, 1, 2, 2, 0]
    assert assign(x, c, chunk=2).tolist() == [0, 1, 2, 2, 0]


def _meta(k=2, p=2, c=1, patch_norm=False):
    return {
        "k": k,
        "patch_size": p,
        "in_chans": c,
        "patch_norm": patch_norm,
        "normalization": {"mean": [0.5], "std": [0.25]},
    }


def test_pixel_tokenizer_encodes_patches():
    tok = KMeansTokenizer(
        _meta(), PixelSource.from_meta(TokenizerMeta.from_dict(_meta())), torch.stack([torch.zeros(4), torch.ones(4)])
    )
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, :2, 2:] = 1.0  # top-right patch bright
    img[0, 0, 2:, 2:] = 0.6  # bottom-right nearer 1 than 0
    assert tok.encode(img).tolist() == [[0, 1, 0, 1]]


def test_tokenizer_save_load_roundtrip_and_refusals(tmp_path, tiny_cfg):
    ds, info = build_dataset(tiny_cfg.data, "train")
    tok = fit_tokenizer(tiny_cfg.tokenizer, FitData(ds, info, 4, "synthetic"), progress=False)
    assert tok.meta.fit["n_fit"] == 3 * 8 * 16  # every patch: 24 images x 16 patches < K * 256
    assert tok.meta.git_sha is None or isinstance(tok.meta.git_sha, str)
    path = tmp_path / "tok.pt"
    tok.save(path)
    back = load_tokenizer(path)
    imgs = torch.stack([ds[i][0] for i in range(4)])
    assert torch.equal(back.encode(imgs), tok.encode(imgs))
    assert back.describe()["k"] == 8 and back.describe()["kind"] == "kmeans-pixels"
    with pytest.raises(KmimError, match="patch size 4 does not match the model's patch size 8"):
        back.check_compatible(8, 1, info.mean, std=info.std)
    with pytest.raises(KmimError, match="1-channel images, the data has 3 channels"):
        back.check_compatible(4, 3, info.mean, std=info.std)
    with pytest.raises(KmimError, match="refit it"):
        back.check_compatible(4, 1, (0.1,), std=(0.2,))


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
    with pytest.raises(KmimError, match="must be one of .*kmeans-pixels"):
        fit_tokenizer(TokenizerConfig(name="bogus"), FitData(ds, info, 4, "synthetic"), progress=False)
