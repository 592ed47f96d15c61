"""zoo/lc-vgg16-camvid/convert_hed.py: the HED h5 layout -> torchvision VGG-16 names, and the
Caffe preprocessing folded into the first convolution, checked on a synthetic h5 file."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

h5py = pytest.importorskip("h5py")

SCRIPT = Path(__file__).resolve().parents[1] / "zoo" / "lc-vgg16-camvid" / "convert_hed.py"
spec = importlib.util.spec_from_file_location("convert_hed", SCRIPT)
convert_hed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(convert_hed)

VGG16_CHANNELS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                  (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def write_synthetic_hed(path, seed=0, scale_channels=1):
    """An h5 file with the hed_bsds500 layout (Keras kernels (kh, kw, c_in, c_out)); returns the
    kernels and biases written, in network order."""
    rng = np.random.default_rng(seed)
    written = []
    with h5py.File(path, "w") as f:
        for (block, name), (cin, cout) in zip(convert_hed.HED_CONVS, VGG16_CHANNELS):
            k = rng.normal(size=(3, 3, cin, cout)).astype(np.float32) * 0.05
            b = rng.normal(size=(cout,)).astype(np.float32)
            g = f.create_group(f"block{block}/layers/{name}/vars")
            g["0"], g["1"] = k, b
            written.append((k, b))
        f.create_dataset("dsn1/vars/0", data=np.zeros((1, 1, 64, 1), np.float32))  # side outputs: ignored
    return written


def test_layout_maps_onto_torchvision_names(tmp_path):
    written = write_synthetic_hed(tmp_path / "hed.h5")
    state = convert_hed.convert(tmp_path / "hed.h5", tmp_path / "vgg.safetensors")
    assert sorted(state) == sorted(f"features.{i}.{p}" for i in convert_hed.TORCHVISION_INDICES
                                   for p in ("weight", "bias"))
    # every conv after the first: the Keras kernel transposed to (c_out, c_in, kh, kw), untouched
    for idx, (k, b) in list(zip(convert_hed.TORCHVISION_INDICES, written))[1:]:
        w = state[f"features.{idx}.weight"].numpy()
        assert w.shape == (k.shape[3], k.shape[2], 3, 3)
        # an element checked by hand: kernel[kh=2, kw=0, c_in=1, c_out=3] is weight[3, 1, 2, 0]
        assert w[3, 1, 2, 0] == k[2, 0, 1, 3]
        np.testing.assert_array_equal(w, k.transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(state[f"features.{idx}.bias"].numpy(), b)


def test_folded_first_conv_equals_the_original_on_caffe_input(tmp_path):
    written = write_synthetic_hed(tmp_path / "hed.h5", seed=1)
    state = convert_hed.convert(tmp_path / "hed.h5", tmp_path / "vgg.safetensors")
    k, b = written[0]
    w_orig = torch.from_numpy(k.transpose(3, 2, 0, 1)).double()
    rgb = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # the original's preprocessing: BGR, 0-255, minus the Caffe BGR means
    caffe = rgb.flip(1) * 255.0 - torch.tensor(convert_hed.CAFFE_MEAN_BGR, dtype=torch.float64).view(1, 3, 1, 1)
    original = F.conv2d(caffe, w_orig, torch.from_numpy(b).double())  # no padding: the interior
    # the library's preprocessing: RGB in [0, 1], ImageNet mean/std
    mean = torch.tensor(convert_hed.IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(convert_hed.IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    folded = F.conv2d((rgb - mean) / std, state["features.0.weight"].double(), state["features.0.bias"].double())
    scale = original.abs().max()
    assert (folded - original).abs().max() <= 1e-5 * scale


def test_converted_file_loads_into_lc_vgg16(tmp_path):
    import sparsecascade as sc

    write_synthetic_hed(tmp_path / "hed.h5", seed=2)
    convert_hed.convert(tmp_path / "hed.h5", tmp_path / "vgg.safetensors")
    model = sc.create_model("lc_vgg16", num_classes=11)
    result = sc.load_backbone_weights(model, tmp_path / "vgg.safetensors")
    assert result.missing_keys == []  # fc6/fc7 are new layers, not expected in the file
    conv = getattr(model.stages[1].features, "19")  # torchvision features.19 = conv4_2
    state = convert_hed.read_hed_convs(tmp_path / "hed.h5")
    np.testing.assert_array_equal(conv.weight.detach().numpy(), state[8][0])


def test_wrong_layout_is_refused(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("block1/layers/conv2d/vars/0", data=np.zeros((3, 3, 3, 64), np.float32))
    with pytest.raises(ValueError, match="block1/layers/conv2d/vars"):
        convert_hed.read_hed_convs(tmp_path / "bad.h5")
    assert convert_hed.main([str(tmp_path / "missing.h5"), str(tmp_path / "o.safetensors")]) == 2
