"""confidence_threshold against a dense softmax reference, every backend."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsecascade as sc
from sparsecascade.kernels import triton_interpreting

from _cases import MASK_KINDS, layout, make_mask

BACKENDS = ["torch", "auto"] + (["triton"] if triton_interpreting() or torch.cuda.is_available() else [])


def reference(logits, rho, active):
    """Softmax over all pixels densely, then the rules of DESIGN.md section 1."""
    p = torch.softmax(logits.double(), dim=1)
    confidence, labels = p.max(dim=1)
    active = torch.ones_like(labels, dtype=torch.bool) if active is None else active
    stop = active & (confidence >= rho)
    return (torch.where(active, labels, -1), torch.where(active, confidence, 0.0), stop, active & ~stop)


@st.composite
def threshold_cases(draw, max_size=9, max_classes=40):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, max_classes))
    h, w = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    # a spread of logit scales so that some pixels are confident and some are not
    logits = torch.randn(n, c, h, w, generator=gen) * draw(st.sampled_from([0.5, 3.0, 10.0]))
    logits = layout(logits.to(dtype), draw(st.sampled_from(["contiguous", "channels_last", "strided"])))
    active = None if draw(st.booleans()) else make_mask(draw(st.sampled_from(MASK_KINDS)), n, h, w, gen)
    rho = draw(st.sampled_from([0.0, 0.5, 0.9, 0.985, 1.0]) | st.floats(0.0, 1.0))
    return logits, rho, active


def check(result, logits, rho, active):
    labels, confidence, stop, next_active = reference(logits, rho, active)
    assert result.labels.dtype == torch.int64 and result.confidence.dtype == torch.float32
    assert result.stop.dtype == torch.bool and result.next_active.dtype == torch.bool
    torch.testing.assert_close(result.confidence.double(), confidence, rtol=1e-5, atol=1e-6)
    # decisions within float rounding of rho may legitimately differ from the fp64 reference
    clear = (confidence - rho).abs() > 1e-5
    assert torch.equal(result.stop[clear], stop[clear])
    assert torch.equal(result.next_active[clear], next_active[clear])
    assert not (result.stop & result.next_active).any()
    act = torch.ones_like(stop) if active is None else active
    assert torch.equal(result.stop | result.next_active, act)
    # labels: the argmax unless two classes tie within rounding (then either is a max)
    probs = torch.softmax(logits.double(), dim=1)
    chosen = probs.gather(1, result.labels.clamp(min=0)[:, None])[:, 0]
    assert torch.all(torch.where(act, (chosen - probs.max(dim=1).values).abs() <= 1e-5, result.labels == -1))
    assert torch.equal(result.next_index, result.next_active.reshape(-1).nonzero().squeeze(1))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20)
@given(case=threshold_cases())
def test_matches_dense_softmax(case, backend):
    logits, rho, active = case
    check(sc.confidence_threshold(logits, rho, active, backend=backend), logits, rho, active)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed(backend):
    # pixel 0: logits (0, ln 3) -> p = (1/4, 3/4); pixel 1: (ln 9, 0) -> (0.9, 0.1); pixel 2 inactive
    logits = torch.tensor([[0.0, torch.log(torch.tensor(9.0)), 5.0], [torch.log(torch.tensor(3.0)), 0.0, 0.0]])
    logits = logits.view(1, 2, 1, 3)
    active = torch.tensor([[[True, True, False]]])
    r = sc.confidence_threshold(logits, 0.8, active, backend=backend)
    assert r.labels.tolist() == [[[1, 0, -1]]]
    torch.testing.assert_close(r.confidence, torch.tensor([[[0.75, 0.9, 0.0]]]))
    assert r.stop.tolist() == [[[False, True, False]]]
    assert r.next_active.tolist() == [[[True, False, False]]]
    assert r.next_index.tolist() == [0]
    labels, confidence, stop, next_active = r  # unpacks as the four (N, H, W) maps
    assert labels.shape == (1, 1, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_pick_the_first_class(backend):
    logits = torch.zeros(1, 4, 2, 2)
    r = sc.confidence_threshold(logits, 0.25, backend=backend)  # 1/4 is exact in fp32: confidence >= rho holds
    assert (r.labels == 0).all()
    torch.testing.assert_close(r.confidence, torch.full((1, 2, 2), 0.25))
    assert r.stop.all()
