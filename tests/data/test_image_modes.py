"""_CheckedLoader turns every PIL mode into correct 8-bit RGB and corrupt files into one-line KmimErrors."""

import io

import numpy as np
import pytest
from PIL import Image

from kmim.data.datasets import _CheckedLoader, _to_rgb
from kmim.errors import KmimError


def _load(path):
    img = _CheckedLoader(min_side=1)(str(path))
    assert img.mode == "RGB"
    return np.asarray(img)


def _save(tmp_path, img, name, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)  # -> 0, 1, 128 (127.5 rounded up), 255
    path = _save(tmp_path, Image.fromarray(values), "g16.png")
    assert Image.open(path).mode == "I;16"
    out = _load(path)
    assert out.shape == (1, 4, 3)
    assert out[0].tolist() == [[0] * 3, [1] * 3, [128] * 3, [255] * 3]


@pytest.mark.parametrize(("mode", "dtype"), [("I;16B", ">u2"), ("I", "<i4")])
def test_other_16bit_modes(tmp_path, mode, dtype):
    img = Image.frombytes(mode, (2, 1), np.array([514, 65535], dtype=dtype).tobytes())  # 514 = 2 * 257 -> 2
    path = _save(tmp_path, img, "g.tif")
    assert Image.open(path).mode == mode
    assert _load(path)[0].tolist() == [[2] * 3, [255] * 3]


def test_32bit_int_outside_16bit_range_is_refused(tmp_path):
    path = _save(tmp_path, Image.fromarray(np.array([[70000, 0]], dtype=np.int32)), "big.tif")
    with pytest.raises(KmimError, match=r"big.tif: integer image with values outside 0..65535") as e:
        _load(path)
    assert "\n" not in str(e.value)


def test_cmyk(tmp_path):
    path = _save(tmp_path, Image.new("CMYK", (2, 2), (0, 128, 255, 51)), "c.jpg", quality=100)
    assert Image.open(path).mode == "CMYK"
    # R = 255 (1 - C) (1 - K) with K = 51 = 20%: (204, 127 * 0.8 = 101.6, 0); JPEG may move a value by a few
    assert np.abs(_load(path)[0, 0].astype(int) - [204, 102, 0]).max() <= 3
    exact = _save(tmp_path, Image.new("CMYK", (2, 2), (0, 128, 255, 51)), "c.tif")
    assert _load(exact)[0, 0].tolist() == [204, 102, 0]


def _palette(transparent=None):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0, 1])  # red, blue
    if transparent is not None:
        img.info["transparency"] = transparent
    return img


def test_palette(tmp_path):
    assert _load(_save(tmp_path, _palette(), "p.png"))[0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_palette_with_transparency_goes_on_black(tmp_path):
    path = _save(tmp_path, _palette(transparent=0), "pt.png", transparency=0)
    assert "transparency" in Image.open(path).info
    assert _load(path)[0].tolist() == [[0, 0, 0], [0, 0, 255]]  # the red index is transparent


def test_1bit(tmp_path):
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    path = _save(tmp_path, img, "b.png")
    assert Image.open(path).mode == "1"
    assert _load(path)[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_rgba_half_transparent_goes_on_black(tmp_path):
    img = Image.new("RGBA", (2, 1))
    img.putdata([(200, 100, 50, 128), (10, 20, 30, 255)])
    # 200 * 128 / 255 = 100.39 -> 100; 100 * 128 / 255 = 50.2 -> 50; 50 * 128 / 255 = 25.1 -> 25; opaque unchanged
    assert _load(_save(tmp_path, img, "a.png"))[0].tolist() == [[100, 50, 25], [10, 20, 30]]


def test_la(tmp_path):
    img = Image.new("LA", (3, 1))
    img.putdata([(255, 0), (255, 51), (90, 255)])  # 255 * 51 / 255 = 51
    assert _load(_save(tmp_path, img, "la.png"))[0].tolist() == [[0] * 3, [51] * 3, [90] * 3]


@pytest.mark.parametrize(
    ("mode", "pixel", "expect"),
    [
        ("RGBa", (100, 50, 0, 128), [100, 50, 0]),  # premultiplied: already composited on black
        ("La", (70, 128), [70, 70, 70]),
        ("YCbCr", (128, 128, 128), [128, 128, 128]),
        ("HSV", (0, 255, 255), [255, 0, 0]),
        ("HSV", (85, 255, 255), [0, 255, 0]),  # hue 85/255 of the circle = 120 degrees
        ("PA", (0, 51), [51, 0, 0]),  # palette index 0 (red) at alpha 51 -> 255 * 51 / 255
    ],
)
def test_modes_without_a_file_format(mode, pixel, expect):
    img = Image.new(mode, (1, 1), pixel)
    if mode == "PA":
        img.putpalette([255, 0, 0] * 256)
    assert np.asarray(_to_rgb(img, "x.png"))[0, 0].tolist() == expect


@pytest.mark.parametrize(
    ("values", "expect"),
    [
        ([0.0, 0.25, 1.0, -0.5], [0, 64, 255, 0]),  # max <= 1: [0, 1] data, 0.25 * 255 = 63.75 -> 64
        ([0.0, 100.4, 300.0, float("nan")], [0, 100, 255, 0]),  # max > 1: [0, 255] data, clipped; NaN -> 0
    ],
)
def test_float(tmp_path, values, expect):
    path = _save(tmp_path, Image.fromarray(np.array([values], dtype=np.float32)), "f.tif")
    assert Image.open(path).mode == "F"
    assert _load(path)[0, :, 0].tolist() == expect
    assert (_load(path)[0] == np.array(expect)[:, None]).all()  # gray: the three channels agree


@pytest.mark.parametrize(("lightness", "expect"), [(0, 0), (136, 127), (255, 255)])
def test_lab_gray_axis(lightness, expect):
    img = Image.new("LAB", (1, 1), (lightness, 128, 128))  # a* = b* = 0 (stored with offset 128): a neutral gray
    rgb = np.asarray(_to_rgb(img, "x.tif"))[0, 0].astype(int)
    assert np.abs(rgb - expect).max() <= 1  # L* = 100 * 136 / 255 = 53.3 is sRGB mid gray 127


def test_rgb_and_l_are_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    gray = Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8))
    for img, name in ((rgb, "rgb.png"), (gray, "l.png")):
        path = _save(tmp_path, img, name)
        assert np.array_equal(_load(path), np.asarray(img.convert("RGB")))
    jpg = _save(tmp_path, rgb, "rgb.jpg")
    with Image.open(jpg) as ref:
        assert np.array_equal(_load(jpg), np.asarray(ref.convert("RGB")))


def _noise_bytes(fmt):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("empty.png", b""),
        ("garbage.jpg", b"this is not an image at all"),
        ("half.png", _noise_bytes("PNG")[: len(_noise_bytes("PNG")) // 2]),
        ("half.jpg", _noise_bytes("JPEG")[: len(_noise_bytes("JPEG")) // 2]),
    ],
)
def test_corrupt_files_are_one_line_errors(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(KmimError) as e:
        _CheckedLoader(min_side=1)(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: unreadable or corrupt image (") and msg.endswith("): remove or replace it")
    assert "\n" not in msg


def test_too_small_is_still_refused(tmp_path):
    path = _save(tmp_path, Image.new("I;16", (3, 8)), "small.png")
    with pytest.raises(KmimError, match=r"small.png: image is 3x8, smaller than one patch \(4\)"):
        _CheckedLoader(min_side=4)(str(path))
