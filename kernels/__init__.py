"""Pure tensor kernels of sparsecascade (installed as ``sparsecascade.kernels``).

Two operations, each as a Triton kernel and a torch-native twin with the same contract.
Nothing here knows about autograd or nn.Module: the ops layer (``sparsecascade.ops``)
validates arguments, converts layouts, picks a backend and wires the gradients.

Region convolution (``region_conv``), stride 1, channels-last throughout:

    region_conv2d_forward(x, weight, idx, out, geometry, *, bias, scale, shift,
                          residual, res_scale, relu)
        x        (N, H, W, C_in)           contiguous NHWC input, fp32 / fp16 / bf16
        weight   (KH, KW, C_in, C_out)     contiguous, same dtype as x
        idx      (P,) int64                sorted, unique linear indices into N*H_out*W_out
        out      (N, H_out, W_out, C_out)  contiguous NHWC, dtype of x; only rows idx are written:
            out[idx] = relu?(residual[idx] + res_scale * ((conv + bias) * scale + shift))
        every optional term (bias, scale, shift: (C_out,); residual: like out) may be None.
        Accumulation is fp32 whatever the input dtype.

    region_conv2d_backward(grad_rows, x, weight, idx, geometry, *, need_input, need_weight)
        grad_rows (P, C_out) fp32: the gradient of the raw convolution at the active rows
        (the ops layer differentiates the epilogue). Returns (grad_x (N, H, W, C_in) fp32 or None,
        grad_weight (KH, KW, C_in, C_out) fp32 or None); their cost is proportional to P.

Confidence threshold (``confidence``):

    confidence_threshold_forward(logits, rho, active) -> (labels, confidence, stop, next_active, next_idx)
        logits (M, C) contiguous rows (M = N*H*W pixels, NHWC order), any float dtype;
        active (M,) bool or None (all pixels). Per active pixel: softmax over C in fp32,
        confidence = max, label = first argmax, stop = confidence >= rho,
        next_active = active & ~stop; next_idx = sorted int64 indices of next_active.
        Outside active: label -1, confidence 0, stop False.
"""
from .region_conv import ConvGeometry, region_conv2d_forward_torch, region_conv2d_backward_torch
from .confidence import confidence_threshold_forward_torch
from ._triton_support import TRITON_AVAILABLE, triton_interpreting

__all__ = [
    "ConvGeometry",
    "region_conv2d_forward_torch",
    "region_conv2d_backward_torch",
    "confidence_threshold_forward_torch",
    "TRITON_AVAILABLE",
    "triton_interpreting",
]
