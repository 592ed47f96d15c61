"""Data-dependent init of frozen BatchNorm statistics: checked against the statistics by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparsecascade as sc
from sparsecascade.bn_init import init_batchnorm_from_data
from sparsecascade.nn import FoldedBatchNorm, FrozenBatchNorm2d, RegionConv2d
from sparsecascade.train import TrainConfig, load_trained_model, train
from test_train import camvid_tiny, tiny_cascade, tiny_config  # noqa: F401 (fixture)


def test_first_layer_statistics_by_hand():
    torch.manual_seed(0)
    model = tiny_cascade(5)
    images = torch.randn(3, 3, 24, 20) * 2 + 1
    conv = model.stages[0][0]
    y = F.conv2d(images, conv.weight, conv.bias, stride=4, padding=1)  # stage 1's conv, before its BN
    assert init_batchnorm_from_data(model, images) == 1
    bn = conv.folded_bn[0] if conv.folded_bn else model.stages[0][1]
    torch.testing.assert_close(bn.running_mean, y.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, y.var(dim=(0, 2, 3), unbiased=False))
    assert model.training and model.rho == 0.985  # mode and rho restored


def test_every_batchnorm_normalises_its_input_in_a_resnet():
    torch.manual_seed(0)
    model = sc.create_model("lc_resnet18", 4, rho=0.9).train()
    images = torch.randn(2, 3, 40, 48)
    count = init_batchnorm_from_data(model, images)
    convs = [m for m in model.modules() if isinstance(m, RegionConv2d) and m.folded_bn]
    bns = [m for m in model.modules()  # unfolded frozen BNs (a FoldedBatchNorm is one its conv applies)
           if isinstance(m, FrozenBatchNorm2d) and not isinstance(m, FoldedBatchNorm)]
    assert count == len(convs) + len(bns) == 20  # ResNet-18: 1 stem + 16 block convs + 3 downsamples
    inputs = {}
    handles = [m.register_forward_pre_hook(lambda m, a: inputs.setdefault(m, a[0].detach())) for m in convs + bns]
    model.eval()
    model.rho = 1.0
    with torch.no_grad():
        model(images)  # the same pass again: every layer sees what it saw while its BN was set
    for h in handles:
        h.remove()
    for module in convs + bns:
        if module in bns:
            bn, y = module, inputs[module]
        else:
            bn, y = module.folded_bn[0], module._conv_forward(inputs[module], module.weight, module.bias)
        scale, shift = bn.scale_shift()
        z = y * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(z.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(z.var(dim=(0, 2, 3), unbiased=False), torch.ones(z.shape[1]), atol=2e-3, rtol=0)


def test_bad_images():
    model = tiny_cascade(3)
    with pytest.raises(ValueError, match=r"images: expected a batch \(N, 3, H, W\)"):
        init_batchnorm_from_data(model, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="images: expected at least 2 images"):
        init_batchnorm_from_data(model, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="bn_init_images: expected 0 \\(off\\) or an int >= 2"):
        TrainConfig(bn_init_images=1).validate()


def test_training_sets_them_once_and_resumes_past_it(camvid_tiny, tmp_path):  # noqa: F811
    identity = tiny_cascade(11).stages[0][1].running_var.clone()
    full = train(tiny_config(camvid_tiny, tmp_path / "full", bn_init_images=4, mode="dsn", steps=3)).model
    var = full.stages[0][1].running_var
    assert not torch.allclose(var, identity)  # set from the data...
    train(tiny_config(camvid_tiny, tmp_path / "cut", bn_init_images=4, mode="dsn", steps=3), stop_after=1)
    resumed = train(tiny_config(camvid_tiny, tmp_path / "cut", bn_init_images=4, mode="dsn", steps=3),
                    resume=True).model  # ...and a resumed run keeps the checkpoint's, not new ones
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(load_trained_model(tmp_path / "full" / "last.pt")[0].stages[0][1].running_var, var)
