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


def _cross(out_dim=5, fraction=1.0, decoder="cross"):
    from kmim.config import ModelConfig
    from kmim.models import build_mim, resolve_spec

    cfg = ModelConfig(
        preset="mnist-tiny",
        patch_size=4,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_dim=32,
        decoder_depth=2,
        decoder_heads=2,
        decoder=decoder,
        predict_fraction=fraction,
    )
    torch.manual_seed(0)
    return build_mim(resolve_spec(cfg), 16, 1, out_dim=out_dim).eval()


def test_cross_predictor_queries_do_not_attend_to_each_other():
    """Two masks that share the visible patches and the first predicted position but differ in the others: that
    query's prediction is the same, whatever the other queries are."""
    from kmim.models.mim import CrossDecoder

    model = _cross()
    assert isinstance(model.decoder, CrossDecoder)
    latent = torch.randn(1, 1 + 4, 32)  # CLS + 4 visible patches
    ids_a = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]])
    ids_b = torch.tensor([[0, 1, 2, 3, 4, 9, 15, 5, 6, 7, 8, 10, 11, 12, 13, 14]])  # queries after 4 reordered
    with torch.no_grad():
        a, b = model.decoder(latent, ids_a, True, 3), model.decoder(latent, ids_b, True, 3)  # (1, 3, 5) each
    assert a.shape == (1, 3, 5) and torch.allclose(a[0, 0], b[0, 0], atol=1e-6)  # position 4 in both
    assert not torch.allclose(a[0, 1], b[0, 1])  # position 5 vs position 9


def test_predict_fraction_subsamples_the_masked_patches():
    model = _cross(fraction=0.25)
    imgs, noise = torch.randn(2, 1, 16, 16), torch.rand(2, 16)
    pred, ids = model(imgs, 0.75, noise, masked_only=True)  # 12 masked, 3 predicted
    masked = torch.argsort(noise, dim=1)[:, 4:]
    assert pred.shape == (2, 3, 5) and torch.equal(ids, masked[:, :3])
    mae = _cross(fraction=0.25, decoder="mae")
    pred_mae, ids_mae = mae(imgs, 0.75, noise, masked_only=True)
    full, _ = mae(imgs, 0.75, noise, masked_only=False)  # (2, 16, 5) in image order
    assert torch.allclose(pred_mae, torch.gather(full, 1, ids_mae[..., None].expand(-1, -1, 5)), atol=1e-6)


def test_cosine_head_logits_are_cosines_with_its_directions():
    from kmim.models.mim import CosineHead

    torch.manual_seed(0)
    head = CosineHead(8, 5)
    x = torch.randn(3, 4, 8)  # (B, P, D)
    v = head.linear.parametrizations.weight.original1.detach()  # (K, D)
    want = torch.nn.functional.cosine_similarity(x[..., None, :], v, dim=-1)  # (B, P, K)
    assert torch.allclose(head(x), want, atol=1e-6)
    assert head(x).abs().max() <= 1.0 + 1e-6 and head.linear.bias is None
    assert torch.allclose(head(5.0 * x), head(x), atol=1e-6)  # the input's scale does not matter
    with torch.no_grad():
        head.linear.parametrizations.weight.original0.fill_(2.0)  # g scales each logit, and is trainable
    assert torch.allclose(head(x), 2 * want, atol=1e-5)
    assert head.linear.parametrizations.weight.original0.requires_grad


def test_cosine_head_in_the_model_keeps_capis_init():
    spec = resolve_spec(
        ModelConfig(patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_heads=2, head="cosine")
    )
    torch.manual_seed(0)
    m = build_mim(spec, 16, 1, out_dim=50)
    w = m.decoder.head.linear.parametrizations.weight
    assert torch.equal(w.original0, torch.ones(50, 1))  # g = 1: cosines
    assert 0.015 < float(w.original1.detach().std()) < 0.025  # v ~ trunc_normal(0.02), not xavier (std ~0.19 here)
    pred, _ = m(torch.randn(2, 1, 16, 16), 0.75, masked_only=True)
    assert pred.shape == (2, 12, 50) and pred.abs().max() <= 1 + 1e-5
