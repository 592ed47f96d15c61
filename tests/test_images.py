"""Every image a user can hand in is read right or refused in one line (issue 14, item 4): Pillow's
modes, EXIF orientation, extreme aspect ratios, and ``model(x)``'s checks of dtype, layout, channels
and values."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import sparsecascade as sc
from sparsecascade.data import read_image, to_rgb
from sparsecascade.segment import inference_size, segment

GREY = np.array([[0, 64], [128, 255]], dtype=np.uint8)  # the 8-bit grey every depth below encodes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())]
    return sc.LayerCascade(stages, num_classes=3, stage_channels=[4, 4], head_channels=4, rho=0.5).eval()


@pytest.mark.parametrize("mode, values", [
    ("I;16", GREY.astype(np.uint16) * 257),                    # 16-bit PNG grey: full range
    ("I", GREY.astype(np.int32) * 257),                       # 32-bit integer holding 16-bit values
    ("I", GREY.astype(np.int32)),                             # 32-bit integer holding 8-bit values
    ("F", GREY.astype(np.float32) / 255),                     # float in [0, 1]
    ("F", GREY.astype(np.float32)),                           # float in [0, 255]
    ("F", GREY.astype(np.float32) / 255 * 1000 - 500),        # float of any range: stretched
])
def test_high_depth_grey_is_scaled_to_8_bits(mode, values):
    image = Image.fromarray(values)
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[..., 0].astype(int), GREY, atol=1)
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_a_16_bit_png_is_not_read_as_white(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    rgb = read_image(tmp_path / "grey16.png")
    assert rgb.min() == 0 and rgb.max() == 255 and abs(rgb.mean() - 127.5) < 1  # Pillow's own convert: 254.5


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LA", "PA", "La", "RGBa",
                                  "I;16B", "HSV", "LAB"])
def test_every_pillow_mode_reads_as_rgb(mode):
    rgb = to_rgb(Image.new(mode, (5, 3)))
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 5, 3)


def test_colours_survive_palette_alpha_and_cmyk():
    rgb = np.array([[[255, 0, 0], [0, 128, 255]]], dtype=np.uint8)
    image = Image.fromarray(rgb)
    assert (to_rgb(image.convert("RGBA")) == rgb).all()
    assert (to_rgb(image.convert("P", palette=Image.Palette.ADAPTIVE)) == rgb).all()
    assert np.abs(to_rgb(image.convert("CMYK")).astype(int) - rgb).max() <= 1
    with_alpha = image.convert("P", palette=Image.Palette.ADAPTIVE)
    with_alpha.info["transparency"] = bytes([0, 255])  # a palette transparency table
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when such an image goes to RGB directly
        assert (to_rgb(with_alpha) == rgb).all()


def test_non_finite_float_pixels_are_refused(tmp_path):
    values = np.array([[0.0, np.nan], [1.0, 0.5]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="nan.tif: the image holds NaN or infinite pixel values"):
        read_image(tmp_path / "nan.tif")


def test_exif_orientation_is_applied(tmp_path, model):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = 255  # white left half, as stored; tag 6: the viewer turns it 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (40, 20, 3)
    assert upright[:18].mean() > 240 and upright[22:].mean() < 15  # the white half is now on top
    assert segment(model, tmp_path / "phone.jpg").labels.shape == (40, 20)
    with Image.open(tmp_path / "phone.jpg") as im:  # a PIL image handed in is turned upright too
        assert segment(model, im).labels.shape == (40, 20)


def test_extreme_aspect_ratios_stay_bounded(model, monkeypatch):
    assert inference_size(1, 400, 180) == (2, 720)  # not 180 x 72000: the longer side is capped at 4 x 180
    assert inference_size(360, 480, 180) == (180, 240)  # an ordinary image: its shorter side at 180
    assert inference_size(400, 1, 180, longest_edge=300) == (300, 1)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    monkeypatch.setitem(model.__dict__, "config", {"shortest_edge": 180})
    strip = (np.random.default_rng(0).random((1, 400, 3)) * 255).astype(np.uint8)
    result = segment(model, strip)
    assert seen[-1] == (1, 3, 2, 720) and result.labels.shape == (1, 400)


def test_arrays_are_checked():
    grey = np.zeros((4, 5), dtype=np.uint8)
    assert sc.segment.load_image(grey).shape == (4, 5, 3)
    assert sc.segment.load_image(np.zeros((4, 5, 4), dtype=np.uint8)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 array.*channels first"):
        sc.segment.load_image(np.zeros((3, 40, 50), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"float32 .*\(image \* 255\)"):
        sc.segment.load_image(np.zeros((4, 5, 3), dtype=np.float32))
    for empty in ((0, 5, 3), (4, 0), (0, 0, 4)):
        with pytest.raises(ValueError, match=r"image: expected at least one pixel, got an empty array of shape"):
            sc.segment.load_image(np.zeros(empty, dtype=np.uint8))


# -- model(x) -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, match", [
    (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), r"x: expected a floating-point image batch \(N, 3, H, W\).*uint8"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.float64), r"x: expected torch.float32 \(the model's dtype\), got torch.float64"),
    (torch.zeros(1, 16, 16, 3), r"x: expected \(N, 3, H, W\), got \(1, 16, 16, 3\), which looks like \(N, H, W, C\)"),
    (torch.zeros(1, 4, 16, 16), r"x: expected 3 channels"),
    (torch.zeros(3, 16, 16), r"x: expected an image batch \(N, 3, H, W\), got shape \(3, 16, 16\)"),
    (np.zeros((1, 3, 16, 16), np.float32), r"x: expected an image batch tensor"),
    (torch.full((1, 3, 16, 16), float("nan")), r"x: the image batch holds NaN or infinite values"),
])
def test_model_checks_its_input_first(model, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        model(x)


def test_model_channel_count_comes_from_its_first_convolution():
    stages = [nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU())]
    grey_model = sc.LayerCascade(stages, num_classes=2, stage_channels=[4], head_channels=4).eval()
    with torch.no_grad():
        assert grey_model(torch.zeros(1, 1, 8, 8)).labels.shape == (1, 8, 8)
        with pytest.raises(ValueError, match=r"x: expected 1 channels \(N, 1, H, W\)"):
            grey_model(torch.zeros(1, 3, 8, 8))


def test_model_accepts_channels_last_memory_and_autocast(model):
    x = torch.randn(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert model(x).labels.shape == (1, 16, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x.double().float()).labels.shape == (1, 16, 16)
