"""torch.compile traces through the registered ops without graph breaks (CPU path)."""
import torch

import sparsecascade as sc


def test_region_conv2d_compiles_without_graph_breaks():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 9, generator=gen, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, generator=gen, requires_grad=True)
    mask = torch.rand(2, 9, 9, generator=gen) < 0.4

    def f(x, w, mask):
        y = sc.region_conv2d(x, w, None, mask, padding=1, relu=True)
        return (y * 2).sum()

    explanation = torch._dynamo.explain(f)(x, w, mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(x, w, mask)
    gx, gw = torch.autograd.grad(got, (x, w))
    want = f(x, w, mask)
    wx, ww = torch.autograd.grad(want, (x, w))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gx, wx)
    torch.testing.assert_close(gw, ww)


def test_confidence_threshold_compiles_without_graph_breaks():
    logits = torch.randn(1, 5, 6, 7) * 4

    def f(logits):
        r = sc.confidence_threshold(logits, 0.9)
        return r.labels, r.stop, r.next_active

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(logits), f(logits)):
        assert torch.equal(got, want)


def test_whole_cascade_compiles_once_across_rho_values():
    """torch.compile(LayerCascade): equal to eager at every rho, and changing rho compiles nothing new."""
    from test_cascade import make_model

    model = make_model(rho=0.9)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counting_backend)
    x = torch.randn(2, 3, 37, 45, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for rho in (0.9, 0.7, 0.5, 1.0, 0.0, 0.95):
            model.rho = rho
            got, want = compiled(x), model(x)
            assert torch.equal(got.stage_map, want.stage_map), rho
            torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
            assert got.macs == want.macs and got.stop_fractions == want.stop_fractions
            if rho == 0.9:
                first = len(graphs)
                assert first >= 1, "nothing was compiled"
    assert len(graphs) == first, f"changing rho compiled {len(graphs) - first} more graphs"


def test_compiled_model_still_refuses_non_finite_input():
    """The finiteness check runs eagerly under torch.compile (a data-dependent check); it must not be lost."""
    import pytest

    model = sc.create_model("lc_resnet18", num_classes=3).eval()
    compiled = torch.compile(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(compiled(x).labels, model(x).labels)
        x[0, 1, 5, 5] = float("inf")
        with pytest.raises(ValueError, match="x: the image batch holds NaN or infinite values"):
            compiled(x)
