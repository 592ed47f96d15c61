"""The built-in LC models: registry, sparse == dense reference, rho = 1 == dense, ImageNet weights, example."""
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sparsecascade as sc
from conftest import camvid_root

SMALL = {"lc_resnet18": {}, "lc_resnet50": dict(layers=(1, 1, 1, 1)), "lc_resnet101": dict(layers=(1, 1, 2, 1)),
         "lc_vgg16": {}, "lc_irnet": dict(blocks=(1, 2, 1))}


def test_list_models():
    assert sc.list_models() == ["lc_irnet", "lc_resnet101", "lc_resnet18", "lc_resnet50", "lc_vgg16"]
    assert sc.list_models("lc_resnet*") == ["lc_resnet101", "lc_resnet18", "lc_resnet50"]
    with pytest.raises(ValueError, match="unknown model 'lc_nope'.*lc_irnet"):
        sc.create_model("lc_nope", 3)
    with pytest.raises(ValueError, match="num_classes"):
        sc.create_model("lc_resnet18", 0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_sparse_backends_equal_dense_reference(name):
    torch.manual_seed(0)
    model = sc.create_model(name, 5, rho=0.6, head_channels=16, **SMALL[name]).eval()
    x = torch.randn(2, 3, 57, 70)
    with torch.no_grad():
        # an untrained net is equally unsure everywhere: put rho at the 60% quantile of stage-1 confidence
        confidence = torch.softmax(model.heads[0](model.stages[0](x)), 1).amax(1)
        model.rho = float(confidence.quantile(0.6))
        dense = model.set_backend("dense")(x)
        sparse = model.set_backend("torch")(x)
    assert torch.equal(sparse.stage_map, dense.stage_map)
    torch.testing.assert_close(sparse.logits, dense.logits, rtol=1e-4, atol=1e-4)
    assert sparse.stage_map.shape == (2, 8, 9)  # output stride 8, ceil
    assert sparse.stop_fractions[0] > 0.3 and sparse.stop_fractions[1] + sparse.stop_fractions[2] > 0.3
    assert sparse.macs < dense.macs <= dense.dense_macs == sparse.dense_macs


def test_rho_one_is_the_dense_network():
    torch.manual_seed(0)
    model = sc.create_model("lc_resnet18", 4, rho=1.0, head_channels=16).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        out = model(x)
        features = x
        for stage in model.stages:
            features = stage(features)
        want = F.interpolate(model.heads[-1](features), size=(64, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.logits, want)
    assert out.stop_fractions == [0.0, 0.0, 1.0]
    # heads 1 and 2 could stop nothing, so they are not run: dense MACs less theirs, counted by hand
    heads_1_2 = sum(8 * 6 * (c * 16 * 9 + 16 * 4) for c in model.stage_channels[:2])  # 8x6 maps
    assert out.macs == out.dense_macs - heads_1_2


def test_imagenet_weights_load_into_the_lc_model(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = sc.create_model("lc_resnet18", 3)
    donor = sc.models.create_backbone("resnet18")
    for p in donor.parameters():
        p.data.normal_()
    torchvision_names = sc.models.backbone_state_dict_to_imagenet(donor)
    torchvision_names["fc.weight"] = torch.zeros(1000, 512)  # the classifier is ignored
    save_file({k: v.contiguous() for k, v in torchvision_names.items()}, tmp_path / "resnet18.safetensors")
    sc.load_backbone_weights(model, tmp_path / "resnet18.safetensors")
    assert torch.equal(model.stages[2].state_dict()["layer4.1.conv2.weight"], donor.stages[2].state_dict()["layer4.1.conv2.weight"])
    assert torch.equal(model.stages[0].state_dict()["bn1.running_var"], donor.stages[0].state_dict()["bn1.running_var"])
    del torchvision_names["layer3.0.conv1.weight"]
    with pytest.raises(ValueError, match="layer3.0.conv1.weight"):
        sc.load_backbone_weights(model, torchvision_names)


def test_force_stop_fractions_imposes_coherent_shares():
    from sparsecascade.bench.forced_stops import force_stop_fractions

    model = force_stop_fractions(sc.create_model("lc_resnet18", 3, head_channels=8).eval(), [0.25, 0.5])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.stop_fractions == pytest.approx([0.25, 0.5, 0.25])
    with pytest.raises(ValueError, match="fractions"):
        force_stop_fractions(model, [0.7, 0.5])


def test_custom_backbone_example_runs(capsys):
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "custom_backbone.py"), run_name="__main__")
    assert "decided at each stage" in capsys.readouterr().out


def test_cascade_runs_under_autocast():
    """Mixed precision hands the region ops low-precision activations next to fp32 weights and residuals."""
    torch.manual_seed(0)
    model = sc.create_model("lc_resnet18", 5, head_channels=16).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        confidence = torch.softmax(model.heads[0](model.stages[0](x)), 1).amax(1)
        model.rho = float(confidence.quantile(0.5))
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.logits.dtype == torch.bfloat16
    assert (out.stage_map == reference.stage_map).float().mean() > 0.9
    assert (out.labels == reference.labels).float().mean() > 0.9


CAMVID = camvid_root()


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID}")
def test_rho_tradeoff_example_runs(tmp_path, capsys):
    import sys

    torch.manual_seed(0)
    sc.create_model("lc_resnet18", 11, head_channels=8).save_pretrained(tmp_path / "model")
    script = str(Path(__file__).parents[1] / "examples" / "rho_tradeoff.py")
    old = sys.argv
    sys.argv = [script, "--model", str(tmp_path / "model"), "--data-root", str(CAMVID), "--rhos", "1", "0.5",
                "--max-images", "2", "--out", str(tmp_path / "sweep")]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv = old
    assert (tmp_path / "sweep" / "rho_sweep.png").is_file() and (tmp_path / "sweep" / "rho_sweep.csv").is_file()
    assert "decided at stages" in capsys.readouterr().out


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID}")
def test_train_camvid_example_runs(tmp_path, capsys):
    import sys

    script = str(Path(__file__).parents[1] / "examples" / "train_camvid.py")
    old = sys.argv
    sys.argv = [script, "--data-root", str(CAMVID), "--steps", "2", "--batch-size", "2", "--crop-size", "48", "64",
                "--out", str(tmp_path / "run")]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv = old
    assert "2 steps" in capsys.readouterr().out and (tmp_path / "run" / "last.pt").is_file()
