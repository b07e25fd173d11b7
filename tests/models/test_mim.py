import pytest
import timm
import torch

from kmim.config import ModelConfig
from kmim.errors import KmimError
from kmim.models import build_mim, resolve_spec
from kmim.models.mim import num_visible, random_masking


def _tiny(out_dim=5):
    spec = resolve_spec(ModelConfig(patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_heads=2))
    return build_mim(spec, 16, 1, out_dim=out_dim)


def test_presets_follow_image_and_patch_size():
    spec = resolve_spec(ModelConfig(preset="vit-s16"))
    assert (spec.embed_dim, spec.depth, spec.decoder_dim, spec.decoder_depth) == (384, 12, 256, 8)
    assert resolve_spec(ModelConfig(preset="vit-b16")).decoder_dim == 512
    m = _tiny()
    assert m.num_patches == 16 and m.grid == (4, 4)
    with pytest.raises(KmimError, match="valid presets are mnist-tiny, vit-s16, vit-b16"):
        resolve_spec(ModelConfig(preset="vit-xxl"))


def test_masking_invariants():
    torch.manual_seed(0)
    ids = random_masking(torch.rand(8, 64))
    assert num_visible(64, 0.75) == 16
    for row in ids:  # a permutation of all patches
        assert sorted(row.tolist()) == list(range(64))
    keep = ids[:, :16]
    assert len({tuple(sorted(r.tolist())) for r in keep}) == 8  # different visible sets per sample
    torch.manual_seed(0)
    assert torch.equal(random_masking(torch.rand(8, 64)), ids)  # same noise, same masks
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    assert random_masking(noise).tolist() == [[1, 3, 2, 0]]  # smallest noise first: kept first


def test_forward_shapes_and_mask():
    m = _tiny(out_dim=7)
    pred, mask = m(torch.randn(3, 1, 16, 16), 0.75)
    assert pred.shape == (3, 16, 7)
    assert mask.shape == (3, 16) and mask.sum(1).tolist() == [12, 12, 12]


def test_masked_only_rows_equal_the_full_output_at_the_masked_patches():
    m = _tiny(out_dim=7).eval()
    imgs, noise = torch.randn(3, 1, 16, 16), torch.rand(3, 16)
    full, mask = m(imgs, 0.75, noise)
    part, ids = m(imgs, 0.75, noise, masked_only=True)
    assert part.shape == (3, 12, 7) and ids.shape == (3, 12)
    assert (mask.gather(1, ids) == 1).all()  # every returned row is a masked patch, each once
    assert all(len(set(r.tolist())) == 12 for r in ids)
    expected = full.gather(1, ids[..., None].expand(-1, -1, 7))
    assert torch.allclose(part, expected, atol=1e-6)


def test_encoder_sees_only_visible_patches():
    m = _tiny().eval()
    torch.manual_seed(1)
    imgs = torch.randn(2, 1, 16, 16)
    ids = random_masking(torch.rand(2, 16))
    latent = m.forward_encoder(imgs, ids, 4)
    # change a masked patch (pixels of the first masked position of sample 0): latent must not move
    masked_patch = ids[0, 4].item()
    r, c = divmod(masked_patch, 4)
    imgs2 = imgs.clone()
    imgs2[0, :, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 5.0
    assert torch.allclose(m.forward_encoder(imgs2, ids, 4), latent, atol=1e-6)


def test_all_visible_encoder_matches_timm_forward_features():
    m = _tiny().eval()
    imgs = torch.randn(2, 1, 16, 16)
    ids = torch.arange(16).repeat(2, 1)
    assert torch.allclose(m.forward_encoder(imgs, ids, 16), m.encoder.forward_features(imgs), atol=1e-5)


def test_saved_encoder_loads_into_timm_create_model(tmp_path):
    m = _tiny()
    path = tmp_path / "enc.pth"
    torch.save(m.encoder.state_dict(), path)
    kwargs = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    fresh = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    via_file = timm.create_model(
        "vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
    )
    x = torch.randn(2, 1, 16, 16)
    ref = m.encoder.eval().forward_features(x)
    assert torch.equal(fresh.eval().forward_features(x), ref)
    assert torch.equal(via_file.eval().forward_features(x), ref)
