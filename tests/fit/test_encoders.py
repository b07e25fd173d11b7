import pytest
import timm
import torch

from kmim.config import ModelConfig, load_config
from kmim.data import build_dataset
from kmim.engine.checkpoint import save_checkpoint
from kmim.errors import KmimError
from kmim.fit import FitData, fit_tokenizer, load_tokenizer
from kmim.fit.kmeans import fit_subset
from kmim.fit.supervised import train_supervised
from kmim.models import build_encoder, encoder_kwargs, resolve_spec
from kmim.tokenizers import EncoderSource, KMeansTokenizer
from kmim.tokenizers.codebook import assign

TIMM = "vit_tiny_patch16_224"
TINY_VIT = {"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2}


@pytest.fixture
def vit_file(tmp_path):
    """A randomly initialised 3-channel timm ViT (/8, 64 px) saved as a plain state_dict."""
    torch.manual_seed(0)
    model = timm.create_model(TIMM, pretrained=False, img_size=64, **TINY_VIT)
    path = tmp_path / "tiny_vit.pth"
    torch.save(model.state_dict(), path)
    return path


def _timm_overrides(path, **extra):
    kw = ", ".join(f"{k}: {v}" for k, v in {**TINY_VIT, **extra}.items())
    return [
        "tokenizer.name=kmeans-features",
        f"tokenizer.encoder={TIMM}",
        f"tokenizer.encoder_weights={path}",
        f"tokenizer.encoder_kwargs={{{kw}}}",
    ]


def _kmim_encoder_file(path, patch=4, img=16, chans=1):
    spec = resolve_spec(ModelConfig(patch_size=patch, embed_dim=32, depth=2, num_heads=2))
    torch.manual_seed(0)
    enc = build_encoder(spec, img, chans)
    kwargs = encoder_kwargs(spec, img, chans)
    save_checkpoint(
        path, {"encoder": {"timm_name": spec.timm_name, "timm_kwargs": kwargs}, "state_dict": enc.state_dict()}
    )
    return enc


def _fit(tiny_overrides, extra):
    cfg = load_config(None, [*tiny_overrides, *extra])
    ds, info = build_dataset(cfg.data, "train")
    return fit_tokenizer(cfg.tokenizer, FitData(ds, info, 4, "synthetic"), progress=False), ds


def _imgs(ds, n=4):
    return torch.stack([ds[i][0] for i in range(n)])


def test_timm_encoder_from_a_local_file(tmp_path, tiny_overrides, vit_file):
    tok, ds = _fit(tiny_overrides, _timm_overrides(vit_file))
    m = tok.meta.to_dict()  # the flat dict the file holds
    # 16 px images, MIM patch 4 -> 4x4 grid; the /8 encoder sees them resized to 32 px, gray repeated to RGB
    assert m["grid"] == [4, 4] and m["feature_dim"] == 16 and m["source"] == "timm"
    assert m["encoder_input"] == {
        "size": [32, 32],
        "in_chans": 3,
        "repeat_channels": True,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    assert m["timm_kwargs"]["img_size"] == 32 and m["weights"] == str(vit_file.resolve())
    saved = torch.load(vit_file)
    assert torch.equal(
        tok.source.encoder.blocks[1].mlp.fc1.weight, saved["blocks.1.mlp.fc1.weight"]
    )  # weights were loaded
    assert tok.source.encoder.pos_embed.shape == (1, 1 + 16, 16)  # resampled from 8x8 to the 4x4 grid
    imgs = _imgs(ds)
    pix = (imgs * 0.25 + 0.5).expand(-1, 3, -1, -1)  # synthetic data: mean 0.5, std 0.25
    x = torch.nn.functional.interpolate(pix, size=(32, 32), mode="bicubic", antialias=True)
    feats = tok.source.encoder.forward_features((x - 0.5) / 0.5)[:, 1:]  # (4, 16, 16)
    assert torch.allclose(tok.features(imgs), feats, atol=1e-5)
    assert torch.equal(tok.encode(imgs), assign(feats.reshape(-1, 16), tok.centroids).view(4, 16))
    tok.save(tmp_path / "tok.pt")
    vit_file.unlink()  # the tokenizer file is self-contained
    assert torch.equal(load_tokenizer(tmp_path / "tok.pt").encode(imgs), tok.encode(imgs))


def test_layer_picks_a_block_output(tiny_overrides, vit_file):
    tok, ds = _fit(tiny_overrides, [*_timm_overrides(vit_file), "tokenizer.layer=0"])
    enc, imgs = tok.source.encoder, _imgs(ds)
    x = enc.norm_pre(enc._pos_embed(enc.patch_embed(tok.source.encoder_input(imgs))))
    assert torch.allclose(tok.features(imgs), enc.blocks[0](x)[:, 1:], atol=1e-5)  # block 0, no final norm
    with pytest.raises(KmimError, match=r"layer=2 is not valid for an encoder of 2 blocks"):
        _fit(tiny_overrides, [*_timm_overrides(vit_file), "tokenizer.layer=2"])


def test_kmim_checkpoint_encoder(tmp_path, tiny_overrides):
    enc = _kmim_encoder_file(tmp_path / "encoder.pt").eval()
    tok, ds = _fit(tiny_overrides, ["tokenizer.name=kmeans-features", f"tokenizer.encoder={tmp_path / 'encoder.pt'}"])
    assert tok.meta.extra["source"] == "kmim" and tok.meta.extra["weights"] == str(tmp_path / "encoder.pt")
    assert tok.meta.extra["encoder_input"]["size"] == [16, 16] and tok.meta.feature_dim == 32
    imgs = _imgs(ds)
    with torch.no_grad():
        expect = enc.forward_features(imgs)[:, 1:]  # same size, same normalization: the images as they are
    assert torch.allclose(tok.features(imgs), expect, atol=1e-5)


def test_kmim_encoder_with_another_grid_or_channels_is_refused(tmp_path, tiny_overrides):
    _kmim_encoder_file(tmp_path / "p2.pt", patch=2)
    with pytest.raises(KmimError, match=r"grid is 8x8 \(16px, patch 2\), the MIM model's grid is 4x4"):
        _fit(tiny_overrides, ["tokenizer.name=kmeans-features", f"tokenizer.encoder={tmp_path / 'p2.pt'}"])
    _kmim_encoder_file(tmp_path / "rgb.pt", chans=3)
    with pytest.raises(KmimError, match="takes 3-channel images, the data has 1 channels"):
        _fit(tiny_overrides, ["tokenizer.name=kmeans-features", f"tokenizer.encoder={tmp_path / 'rgb.pt'}"])


def test_timm_encoder_with_other_channels_is_refused(tiny_overrides, vit_file):
    with pytest.raises(KmimError, match="takes 2-channel images, the data has 1 channels"):
        _fit(tiny_overrides, _timm_overrides(vit_file, in_chans=2))


def test_supervised_encoder(tmp_path, tiny_overrides):
    torch.manual_seed(5)
    expect = torch.rand(3)
    torch.manual_seed(5)
    extra = [
        "tokenizer.name=kmeans-features",
        "tokenizer.encoder=supervised",
        "tokenizer.supervised.epochs=1",
        "tokenizer.batch_size=8",
        "tokenizer.supervised.preset=mnist-tiny",
    ]
    tok, ds = _fit(tiny_overrides, extra)
    assert torch.equal(torch.rand(3), expect)  # fitting left the global RNG as it was
    sup = tok.meta.extra["supervised"]
    assert sup["steps"] == 3 and sup["epochs"] == 1 and tok.meta.extra["timm_kwargs"]["patch_size"] == 4
    assert tok.meta.feature_dim == 128 and tok.meta.feature_source == "supervised:mnist-tiny"
    tok.save(tmp_path / "sup.pt")
    imgs = _imgs(ds)
    assert torch.equal(load_tokenizer(tmp_path / "sup.pt").encode(imgs), tok.encode(imgs))


def test_supervised_training_learns_the_labels(tiny_cfg):
    ds, _ = build_dataset(tiny_cfg.data, "train")
    spec = resolve_spec(ModelConfig(patch_size=4, embed_dim=32, depth=1, num_heads=2))
    torch.manual_seed(0)
    enc = build_encoder(spec, 16, 1)
    stats = train_supervised(
        enc, 3, ds, epochs=40, lr=3e-3, batch_size=8, device=torch.device("cpu"), patch_drop=0.0, progress=False
    )
    assert stats["final_loss"] < 0.2 * 1.0986 and stats["train_top1"] > 90  # ln 3 = chance; 0.07 and 100 when written
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())


def test_bad_encoder_settings_are_refused(tmp_path, tiny_overrides, vit_file):
    with pytest.raises(KmimError, match="tokenizer.encoder is not set"):
        _fit(tiny_overrides, ["tokenizer.name=kmeans-features"])
    with pytest.raises(KmimError, match="is neither 'supervised', an existing kmim run dir"):
        _fit(tiny_overrides, ["tokenizer.name=kmeans-features", "tokenizer.encoder=no_such_model"])
    with pytest.raises(KmimError, match="encoder_weights=.*missing.pth does not exist"):
        _fit(tiny_overrides, _timm_overrides(tmp_path / "missing.pth"))
    with pytest.raises(KmimError, match="does not fit timm model vit_tiny_patch16_224"):
        _fit(tiny_overrides, _timm_overrides(vit_file, embed_dim=24))
    with pytest.raises(KmimError, match="encoder_kwargs are not accepted"):
        _fit(tiny_overrides, _timm_overrides(vit_file, bogus_arg=1))


def test_incompatible_tokenizers_are_refused(tmp_path, tiny_overrides, vit_file):
    tok, _ = _fit(tiny_overrides, _timm_overrides(vit_file))
    with pytest.raises(KmimError, match=r"centroids of shape \(8, 17\) do not match K=8 .* dimension 16"):
        KMeansTokenizer.from_state(tok.meta, {**tok.state_dict(), "centroids": torch.zeros(8, 17)}, EncoderSource)
    other = timm.create_model(TIMM, pretrained=False, img_size=32, num_classes=0, **{**TINY_VIT, "embed_dim": 32})
    with pytest.raises(KmimError, match=r"centroids of shape \(8, 16\) do not match K=8 .* dimension 32"):
        KMeansTokenizer(tok.meta, EncoderSource(other, tok.meta), tok.centroids)
    with pytest.raises(KmimError, match="fitted for 16x16 images .* got 32x32"):
        tok.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(KmimError, match="patch size 4 does not match the model's patch size 8"):
        tok.check_compatible(8, 1, (0.5,), std=(0.25,))


def test_fit_images_bounds_the_extraction(tiny_overrides, vit_file):
    tok, _ = _fit(tiny_overrides, [*_timm_overrides(vit_file), "tokenizer.fit_images=10"])
    assert tok.meta.fit["fit_images"] == 10
    ds = list(range(24))
    sub = fit_subset(ds, 10, 0)
    assert len(sub) == 10 and len(set(sub.indices)) == 10 and sub.indices == sorted(sub.indices)
    assert fit_subset(ds, 0, 0) is ds and fit_subset(ds, 99, 0) is ds
