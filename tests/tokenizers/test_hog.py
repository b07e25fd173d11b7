import math

import pytest
import torch

from kmim.errors import KmimError
from kmim.tokenizers.hog import check_hog_params, hog_descriptors, orientation_histogram


def _hist(angle_deg: float, bins: int, mag: float = 1.0) -> list[float]:
    a = math.radians(angle_deg)
    gx = torch.tensor([[[[mag * math.cos(a)]]]])
    gy = torch.tensor([[[[mag * math.sin(a)]]]])
    return orientation_histogram(gx, gy, bins)[0, 0, :, 0, 0].tolist()


def test_orientation_votes_by_hand():
    assert _hist(0, 4) == pytest.approx([1, 0, 0, 0])
    assert _hist(180, 4) == pytest.approx([1, 0, 0, 0])  # unsigned: opposite gradients vote alike
    assert _hist(90, 4, mag=2) == pytest.approx([0, 0, 2, 0])  # bin i is centred at i * 45 degrees
    assert _hist(30, 4) == pytest.approx([1 / 3, 2 / 3, 0, 0], abs=1e-6)  # 30 / 45 = 2/3 of the way to bin 1
    assert _hist(170, 9) == pytest.approx([0.5, 0, 0, 0, 0, 0, 0, 0, 0.5], abs=1e-6)  # wraps from bin 8 to bin 0
    assert _hist(-45, 4) == pytest.approx([0, 0, 0, 1], abs=1e-6)  # -45 = 135 degrees
    assert sum(_hist(0, 9, mag=0)) == 0


def test_hog_of_a_vertical_edge():
    img = torch.zeros(1, 1, 4, 8)
    img[..., 2:] = 1.0  # edge between columns 1 and 2: inside patch 0; patch 1 (columns 4-7) is flat
    v = hog_descriptors(img, patch_size=4, cells=2, bins=4, eps=1e-6)  # (1, 2, 2*2*1*4)
    assert v.shape == (1, 2, 16)
    # each of the 4 cells of patch 0 has 2 pixels with gx = 1 (columns 1 and 2), all in bin 0: v = [2,0,0,0] x 4
    assert v[0, 0].tolist() == pytest.approx([0.5, 0, 0, 0] * 4, abs=1e-6)
    assert v[0, 1].abs().sum() == 0
    horiz = hog_descriptors(img.transpose(-1, -2).contiguous(), patch_size=4, cells=2, bins=4, eps=1e-6)
    assert horiz[0, 0].tolist() == pytest.approx([0, 0, 0.5, 0] * 4, abs=1e-6)  # a horizontal edge votes 90 degrees


def test_hog_is_invariant_to_contrast_and_offset():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 8, 8)
    a = hog_descriptors(img, 4, 2, bins=9, eps=1e-6)
    b = hog_descriptors(3 * img + 0.2, 4, 2, bins=9, eps=1e-6)
    assert a.shape == (2, 4, 2 * 2 * 3 * 9)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2, 4), atol=1e-5)


def test_hog_params_are_checked():
    with pytest.raises(KmimError, match="hog.cells=3 does not divide the patch size 4"):
        check_hog_params(4, 3, 9)
    with pytest.raises(KmimError, match="hog.bins=1"):
        check_hog_params(4, 2, 1)
