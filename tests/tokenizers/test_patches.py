import torch

from kmim.tokenizers.patches import normalize_patches, patchify, unpatchify


def test_patchify_layout_by_hand():
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)  # C=2, H=W=4
    p = patchify(img, 2)  # (1, 4, 8)
    assert p.shape == (1, 4, 8)
    # first patch = rows 0-1, cols 0-1; vector order (row, col, channel)
    assert p[0, 0].tolist() == [0, 16, 1, 17, 4, 20, 5, 21]
    # second patch (row-major) = rows 0-1, cols 2-3
    assert p[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]


def test_patchify_roundtrip():
    img = torch.randn(3, 3, 8, 12)
    assert torch.equal(unpatchify(patchify(img, 4), 4, 3, grid=(2, 3)), img)


def test_normalize_patches_zero_mean_unit_var():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    y = normalize_patches(x)
    assert torch.allclose(y.mean(-1), torch.zeros(1, 1), atol=1e-6)
    # unbiased variance of 1..4 is 5/3, so (1 - 2.5) / sqrt(5/3) = -1.1619
    assert abs(y[0, 0, 0].item() + 1.5 / (5 / 3) ** 0.5) < 1e-4
