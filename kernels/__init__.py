"""Pure tensor kernels of sparsecascade (installed as ``sparsecascade.kernels``).

Two operations, each as a Triton kernel and a torch-native twin with the same contract.
Nothing here knows about autograd or nn.Module: the ops layer (``sparsecascade.ops``)
validates arguments, converts layouts, picks a backend and wires the gradients.

Region convolution (``region_conv``), stride 1, channels-last throughout. Two implementations
with one contract: the Triton launchers (``region_conv.triton_forward`` / ``triton_backward``,
``*_triton``) and the torch twins (``region_conv2d_forward_torch`` / ``_backward_torch``); each
takes a few keyword arguments of its own, listed below.

    region_conv2d_forward(x, weight, idx, out, geometry, *, bias, scale, shift,
                          residual, res_scale, relu)
        x        (N, H, W, C_in)           contiguous NHWC input, fp32 / fp16 / bf16 (twin: also fp64)
        weight   (KH, KW, C_in, C_out)     same dtype as x, any strided view: the permuted view
                                           ``w.permute(2, 3, 1, 0)`` of a (C_out, C_in, KH, KW) weight is
                                           read through its strides, no copy (fastest when C_in or
                                           C_out has stride 1, e.g. a channels_last weight)
        idx      (P,) int64                sorted, unique linear indices into N*H_out*W_out
        out      (N, H_out, W_out, C_out)  contiguous NHWC, dtype of x; only rows idx are written:
            out[idx] = relu?(residual[idx] + res_scale * ((conv + bias) * scale + shift))
        every optional term (bias, scale, shift: contiguous (C_out,); residual: like out, and may
        be ``out`` itself) may be None.
        Twin only:   taps=(rows, padding), the tap table of idx (``geometry.tap_table(idx)``),
                     if the caller cached it; computed per call otherwise.
        Triton only: allow_tf32 (below); wrap_kernel, applied to each kernel before its launch
                     (``torch.library.wrap_triton`` inside a ``torch.library.triton_op``).

    region_conv2d_backward(grad_rows, x, weight, idx, geometry, *, need_input, need_weight)
        grad_rows (P, C_out) fp32: the gradient of the raw convolution at the active rows
        (the ops layer differentiates the epilogue); x, weight, idx as in the forward (weight a
        strided view). Returns (grad_x (N, H, W, C_in) fp32 or None, grad_weight (KH, KW, C_in,
        C_out) fp32 or None; fp64 from the twin for fp64 x); their cost is proportional to P.
        Twin only:   taps=(rows, padding), as in the forward.
        Triton only: allow_tf32; wrap_kernel; input_index=(rows, pos), the input-side index of
                     idx (``triton_backward.build_input_index(idx, geometry, N)``: the sorted input
                     rows some active pixel reads, padded with -1, and each output pixel's position
                     in idx), if the caller cached it (it depends only on idx, geometry and N).
                     Deterministic: grad_x is a gather (no atomics), grad_weight's partials are
                     summed in a fixed order; under ``torch.use_deterministic_algorithms(True)``
                     the tiles come from a fixed rule, not the autotuner.

    Precision. Accumulation is fp32 whatever the input dtype (fp64 in the twin for fp64 input);
    outputs are rounded once, to out's dtype. Triton: fp16/bf16 operands go into the tensor-core
    products as they are (the backward first rounds grad_rows to x's dtype, as cuDNN's backward
    takes grad_output in the input dtype); fp32 operands run as TF32 when ``allow_tf32`` is True
    or, with None (the default), when torch's cuDNN convolution switch allows it at call time
    (``torch.backends.cudnn.conv.fp32_precision``, else ``torch.backends.cudnn.allow_tf32``; on by
    default, as for ``F.conv2d`` on a GPU), else as exact fp32 products. The twin upcasts fp16/bf16
    operands to fp32 and multiplies in fp32 with the device's GEMM (exact on a CPU). Triton also
    needs N*H*W and N*H_out*W_out below 2^31 (int32 pixel arithmetic; element offsets are int64).

    The ops layer registers both directions as ``torch.library`` ops (``sparsecascade.ops.library.
    triton_ops()``: Triton kernels through ``triton_op`` + ``wrap_triton``, the twins as their CPU
    kernels), so that torch.compile sees the launches on a GPU.

    fold_affine(weight, bias, scale, shift) -> (weight * scale, bias * scale + shift)
        The per-channel affine map of a frozen BatchNorm folded into a conv weight (C_out first,
        any rank) and bias, in the weight's dtype: the one fold, used by the twin's GEMM, the ops'
        dense fallback and the nn layer's cached inference weights.

Confidence threshold (``confidence``):

    confidence_threshold_forward(logits, rho, active) -> (labels, confidence, stop, next_active, next_idx)
        logits (M, C) contiguous rows (M = N*H*W pixels, NHWC order), any float dtype;
        active (M,) bool or None (all pixels). Per active pixel: softmax over C in fp32,
        confidence = max, label = first argmax, stop = confidence >= rho,
        next_active = active & ~stop; next_idx = sorted int64 indices of next_active.
        Outside active: label -1, confidence 0, stop False. NaN logits: label = the first NaN's
        class, confidence NaN, never stops. The size of next_idx is data-dependent: both versions
        read it on the host (one sync). Triton only: wrap_kernel, as above.
"""
from .region_conv import ConvGeometry, fold_affine, region_conv2d_forward_torch, region_conv2d_backward_torch
from .confidence import confidence_threshold_forward_torch
from ._triton_support import TRITON_AVAILABLE, triton_interpreting

__all__ = [
    "ConvGeometry",
    "fold_affine",
    "region_conv2d_forward_torch",
    "region_conv2d_backward_torch",
    "confidence_threshold_forward_torch",
    "TRITON_AVAILABLE",
    "triton_interpreting",
]
