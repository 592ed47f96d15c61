"""The dense path (rho = 1) exported as a static graph (issue 16, item 5): torch.export and ONNX,
checked against the eager LayerCascade at rho = 1; skipped cleanly where an exporter is absent."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import sparsecascade as sc
from sparsecascade import export as export_module
from sparsecascade.export import DenseLogits, export_dense

needs_torch_export = pytest.mark.skipif(not (hasattr(torch, "export") and hasattr(torch.export, "save")),
                                        reason="this torch has no torch.export")


def small(num_classes=3, seed=0):
    torch.manual_seed(seed)
    model = sc.create_model("lc_resnet18", num_classes, rho=0.9, head_channels=8, layers=(1, 1, 1, 1))
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return model.eval()


def eager_dense(model, x):
    """The reference: the cascade itself, run at rho = 1 (every pixel decided by the last stage)."""
    saved = model.rho
    model.rho = 1.0
    try:
        with torch.no_grad():
            return model.eval()(x).logits
    finally:
        model.rho = saved


def test_dense_logits_equal_the_cascade_at_rho_1():
    """Also for stages at different resolutions (the logits come back through stage 1's resolution)."""
    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())]
    model = sc.LayerCascade(stages, num_classes=5, stage_channels=[4, 6], head_channels=8).eval()
    x = torch.randn(2, 3, 36, 52)
    with torch.no_grad():
        torch.testing.assert_close(DenseLogits(model)(x), eager_dense(model, x))
    model = small()
    with torch.no_grad():
        torch.testing.assert_close(DenseLogits(model)(x), eager_dense(model, x))


@needs_torch_export
def test_torch_export_matches_eager(tmp_path):
    model = small().train()
    rho = model.rho
    example = torch.randn(2, 3, 48, 64)
    program = export_dense(model, example, tmp_path / "lc.pt2")
    assert model.training and model.rho == rho  # the model is left as it was
    assert isinstance(program, torch.export.ExportedProgram)
    loaded = torch.export.load(tmp_path / "lc.pt2").module()
    for shape in [(2, 3, 48, 64), (3, 3, 40, 72)]:  # batch, height and width are dynamic
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), eager_dense(model, x), rtol=1e-4, atol=1e-5)
    static = export_dense(model, example, tmp_path / "static.pt2", dynamic=False).module()
    with torch.no_grad():
        torch.testing.assert_close(static(example), eager_dense(model, example), rtol=1e-4, atol=1e-5)
        with pytest.raises(Exception):
            static(torch.randn(1, 3, 40, 72))  # a static program refuses another shape


def test_onnx_matches_eager(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = small()
    export_dense(model, torch.randn(2, 3, 48, 64), tmp_path / "lc.onnx", format="onnx")
    session = ort.InferenceSession(str(tmp_path / "lc.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 40, 72)
    (got,) = session.run(None, {"image": x.numpy()})
    np.testing.assert_allclose(got, eager_dense(model, x).numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_absent_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "ONNX_PACKAGES", ("no_such_onnx_package",))
    with pytest.raises(RuntimeError, match=r"^format: 'onnx' needs the packages \['no_such_onnx_package'\]"):
        export_dense(small(), torch.randn(1, 3, 32, 32), tmp_path / "lc.onnx", format="onnx")
    assert not (tmp_path / "lc.onnx").exists()


@pytest.mark.parametrize("kwargs, argument", [
    (dict(format="tflite"), "format"), (dict(example_input=torch.randn(3, 32, 32)), "example_input"),
    (dict(example_input=torch.zeros(1, 3, 8, 8, dtype=torch.uint8)), "example_input"),
    (dict(dynamic="yes"), "dynamic")])
def test_bad_arguments(tmp_path, kwargs, argument):
    args = {**dict(model=small(), example_input=torch.randn(1, 3, 32, 32), path=tmp_path / "x.pt2"), **kwargs}
    with pytest.raises(ValueError, match=f"^{argument}: "):
        export_dense(**args)
    with pytest.raises(TypeError, match="^model: expected a LayerCascade"):
        DenseLogits(nn.Conv2d(3, 3, 1))


@needs_torch_export
def test_cli_export(tmp_path, capsys, monkeypatch):
    from sparsecascade import cli

    model = small()
    model.pretrained_cfg["shortest_edge"] = 40
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(export_module, "ONNX_PACKAGES", ("no_such_onnx_package",))  # as on a base install
    code = cli.main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "out"), "--size", "32", "48"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "skipped ONNX" in out and not (tmp_path / "out" / "m.onnx").exists()
    program = torch.export.load(tmp_path / "out" / "m.pt2").module()
    x = torch.randn(2, 3, 56, 40)
    with torch.no_grad():
        torch.testing.assert_close(program(x), eager_dense(model, x), rtol=1e-4, atol=1e-5)
    info = json.loads((tmp_path / "out" / "m.json").read_text())
    assert info["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406] and info["pretrained_cfg"]["shortest_edge"] == 40
    assert info["example_size"] == [32, 48]
    # asking for ONNX where it cannot be written: one line, exit status 2
    code = cli.main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o2"), "--format", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "format: 'onnx' needs" in err


def test_the_docstring_says_why_the_cascade_is_not_exported():
    doc = export_module.__doc__
    assert "depends on the pixel values" in doc and "What a deployment does instead" in doc
