"""Triton helpers shared by the region-convolution kernels and their launchers.

Device side: where an output pixel's taps read (forward, grad-weight) and which output pixel an
input pixel's tap feeds (grad-input as a gather). Pixel arithmetic is int32 (the launchers check
N*H*W < 2^31, so divisions stay cheap); every element offset is int64, since N*H*W*C may exceed 2^31.

Host side: the dot precision a dtype gets (TF32 following torch's switch), the autotune key's
log2(P) bucket, config pruning, and the fixed config used under
``torch.use_deterministic_algorithms(True)`` (no benchmarking: the same tiles, hence the same
summation order, in every process).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._triton_support import triton_interpreting

# ----------------------------------------------------------------------------------------------
# device helpers


@triton.jit
def output_pixel_coords(pix, H_out, W_out):
    """(n, oy, ox) of output pixels ``pix`` (int32, linear in N*H_out*W_out).

    The kernels load ``pix = idx[offs]`` themselves rather than in a helper: torch.compile's
    mutation analysis of a ``wrap_triton`` kernel follows a stored address back through the
    arguments of any called function, so an index loaded inside a helper would mark ``idx``
    as written (and make AOTAutograd copy it back); a load in the kernel body stops that trace."""
    hw_out = H_out * W_out
    n = pix // hw_out
    rem = pix - n * hw_out
    oy = rem // W_out
    ox = rem - oy * W_out
    return n, oy, ox


@triton.jit
def tap_input_rows(n, oy, ox, mask_p, tap, H, W, pad_h, pad_w, dil_h, dil_w, KW: tl.constexpr):
    """The NHWC input row (int64) tap ``tap`` of each output pixel reads, and whether it lies inside
    the image (False in the zero padding and for masked-off lanes)."""
    ky = tap // KW
    kx = tap - ky * KW
    iy = oy - pad_h + ky * dil_h
    ix = ox - pad_w + kx * dil_w
    valid = mask_p & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    row = ((n * H + iy) * W + ix).to(tl.int64)
    return row, valid


@triton.jit
def tap_output_rows(n, iy, ix, live, tap, H_out, W_out, pad_h, pad_w, dil_h, dil_w, KW: tl.constexpr):
    """The transposed map: the output pixel (int32, linear in N*H_out*W_out) whose tap ``tap`` reads
    input pixel (n, iy, ix), and whether it lies inside the output map."""
    ky = tap // KW
    kx = tap - ky * KW
    oy = iy + pad_h - ky * dil_h
    ox = ix + pad_w - kx * dil_w
    inside = live & (oy >= 0) & (oy < H_out) & (ox >= 0) & (ox < W_out)
    return (n * H_out + oy) * W_out + ox, inside


@triton.jit
def round_to_tf32(x):
    """fp32 -> the nearest TF32 value (ties away from zero, as ``cvt.rna.tf32.f32``), as fp32; NaN
    kept. TF32 tensor cores read the top 19 bits of an fp32 operand, i.e. truncate, and Triton
    feeds them the raw fp32 bits: a biased error, 2.4-3.2x cuDNN's (which rounds) on an H200."""
    bits = x.to(tl.int32, bitcast=True)
    rounded = ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)  # -8192: 0xFFFFE000
    return tl.where(x == x, rounded, x)


@triton.jit
def dot_operands(a, b, DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """The two operands as a kernel's ``tl.dot`` takes them: fp32 under the interpreter (its dot
    misreads bf16 operands; the products are then exact), rounded to TF32 when the dot runs in TF32."""
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if DOT_PRECISION == "tf32":
        a = round_to_tf32(a)
        b = round_to_tf32(b)
    return a, b


# ----------------------------------------------------------------------------------------------
# host helpers

PRECISIONS = ("16bit", "tf32", "ieee")


def tf32_enabled() -> bool:
    """Whether fp32 convolutions may use TF32 tensor cores, as ``F.conv2d`` decides on a GPU.

    Follows the cuDNN convolution switch (``torch.backends.cudnn.conv.fp32_precision`` in
    torch >= 2.9, else ``torch.backends.cudnn.allow_tf32``; True by default): every region-conv
    kernel, grad-input and grad-weight included, is a convolution, and cuDNN's forward and both
    backward passes follow that one switch. Read at call time, like torch does.
    """
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    for level in (conv, cudnn, torch.backends):  # new API: "none" inherits from the parent
        precision = getattr(level, "fp32_precision", None) if level is not None else None
        if precision == "tf32":
            return True
        if precision == "ieee":
            return False
    try:
        return bool(cudnn.allow_tf32)
    except RuntimeError:  # mixed legacy/new flags: torch refuses to answer; stay exact
        return False


def dot_precision(dtype: torch.dtype, allow_tf32: bool | None, device: torch.device) -> str:
    """The ``input_precision`` a kernel's ``tl.dot`` gets: "tf32" or "ieee" (fp32 operands only;
    fp16/bf16 operands always run on tensor cores with fp32 accumulation). ``allow_tf32=None``
    decides as ``F.conv2d`` would for a tensor on ``device``: TF32 on a GPU when torch's cuDNN switch
    allows it, never on a CPU (the interpreter then computes exact fp32 products, as torch does)."""
    if dtype != torch.float32:
        return "ieee"
    if allow_tf32 is None:
        allow_tf32 = device.type == "cuda" and tf32_enabled()
    return "tf32" if allow_tf32 else "ieee"


def precision_class(dtype: torch.dtype, precision: str) -> str:
    """Which config list a launch uses: "16bit", "tf32" or "ieee" (fp32 on FMAs)."""
    return "16bit" if dtype != torch.float32 else precision


def known(n) -> int | None:
    """``n`` if it is an int, None when it is symbolic: a row count that ``torch.compile`` traces
    (P of an active set compacted inside the graph is data-dependent). Host decisions that depend on
    it (tile pruning, grad-weight split, the autotune bucket) then use the other shapes alone, and
    never guard on it."""
    return n if isinstance(n, int) else None


def p_bucket(p) -> int:
    """The autotune key's row-count bucket: ceil(log2(P)), clamped to [5, 24]. A layer re-tunes once
    per bucket (batch 1 vs batch 8, a sparse stage vs a dense one), not once per P. 0 for a symbolic
    P (traced by torch.compile, which autotunes the launch itself and ignores the key)."""
    if known(p) is None:
        return 0
    return min(max((max(p, 1) - 1).bit_length(), 5), 24)


# ``.maxnreg 255`` (the hardware limit, so no cap): with only Triton's ``.reqntid``, ptxas 12.x/13.x
# sometimes stops at ~96 registers and spills loop invariants of the FMA (exact fp32) kernels;
# with an explicit register limit it allocates freely and the spills go (see _aot_check).
MAXNREG = 255


def make_configs(tiles, names: tuple[str, str, str]) -> list[triton.Config]:
    """Configs from (block0, block1, block2, num_warps, num_stages) tuples."""
    return [triton.Config(dict(zip(names, t[:3])), num_warps=t[3], num_stages=t[4], maxnreg=MAXNREG) for t in tiles]


def interpreter_config(names: tuple[str, str, str], rows_name: str) -> list[triton.Config]:
    """Under the interpreter one small config: no benchmarking. The interpreter pays per program
    and per loop iteration, not per element: 32 rows, 64-wide channel blocks. The aligned test
    channels (64, 256) take the full-tile (EVEN_*) path, the odd ones and 16 the masked one."""
    return [triton.Config({n: 32 if n == rows_name else 64 for n in names}, num_warps=4, num_stages=1)]


def _fits(block: int, extent, floor: int) -> bool:
    """A block no wider than the extent rounded up to a power of two (and at least ``floor``); any
    block fits a symbolic extent (see ``known``)."""
    if known(extent) is None:
        return True
    return block <= max(floor, triton.next_power_of_2(max(extent, 1)))


ALIGNMENT = 16  # Triton specialises integer arguments divisible by 16: vector loads, cp.async


def tile_of(config: triton.Config, names: tuple[str, str, str]) -> tuple[int, int, int, int, int]:
    return (*(config.kwargs[n] for n in names), config.num_warps, config.num_stages)


def prune(configs, *, rows, rows_name: str, dims: dict[str, int], unaligned_ok=None) -> list[triton.Config]:
    """Drop configs whose tiles overhang the problem (a 128-row tile for 40 active pixels, a
    128-channel block for a 21-class head) and, when a channel count is not a multiple of 16,
    every config not in ``unaligned_ok`` (a predicate): unaligned channels load element by
    element, and the big tiles then run out of registers (see _aot_check). Keeps at least one.
    A symbolic ``rows`` (see ``known``) prunes by the channel counts alone."""
    if unaligned_ok is not None and any(v % ALIGNMENT for v in dims.values()):
        configs = [c for c in configs if unaligned_ok(c)] or configs
    kept = [
        c for c in configs
        if _fits(c.kwargs[rows_name], rows, 32) and all(_fits(c.kwargs[k], v, 16) for k, v in dims.items())
    ]
    if kept:
        return kept
    return [min(configs, key=lambda c: c.kwargs[rows_name] * _prod(c.kwargs[k] for k in dims))]


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: small, but > 1 so that tests exercise split reductions


def deterministic() -> bool:
    return torch.are_deterministic_algorithms_enabled()


def fixed_config(configs, ctas, device: torch.device) -> triton.Config:
    """The config used without benchmarking (deterministic mode): the first config in list order
    (largest tiles first) that still gives every SM a program, else the one with most programs;
    the first config when the row count is symbolic (traced by torch.compile).
    A pure function of the shapes and the GPU: every run sums in the same order."""
    target = num_sms(device)
    for c in configs:
        n = ctas(c)
        if known(n) is None:  # programs depend on a symbolic row count: the rule on shapes alone
            return configs[0]
        if n >= target:
            return c
    return max(reversed(configs), key=ctas)  # ties: the smallest tile


# SPARSECASCADE_TRITON_CONFIG: "autotune" (default): benchmark the pruned configs once per key;
# "fixed": the ``fixed_config`` rule, no benchmarking (GPU test runs: one compile per kernel
# variant instead of one per config); an integer k: the k-th pruned config (modulo their count),
# used to compile every config in parallel processes before an autotuning run (validate.py).
CONFIG_ENV = "SPARSECASCADE_TRITON_CONFIG"


def _identity(kernel):
    return kernel


_ONE_CONFIG: dict = {}


def one_config_kernel(plain, cfg: triton.Config):
    """``plain`` (a heuristics-wrapped kernel) as an autotuner with the single config ``cfg``: what
    ``torch.library.wrap_triton`` accepts (a @triton.jit or @triton.autotune kernel, not a
    @triton.heuristics one). One config: Triton runs it without benchmarking. Cached per config."""
    key = (id(plain), tuple(sorted(cfg.all_kwargs().items())))
    kernel = _ONE_CONFIG.get(key)
    if kernel is None:
        kernel = _ONE_CONFIG[key] = triton.autotune(configs=[cfg], key=[])(plain)
    return kernel


# (autotuner, its key) -> the launch kwargs of the config it chose, heuristics included
_CHOSEN: dict[tuple, dict] = {}


def launch_chosen(tuned, plain, grid, args, kwargs) -> None:
    """Launch through ``tuned`` (an autotuner over the heuristics-wrapped ``plain``) once per
    autotuning key, then straight into the jitted kernel with the config it chose and the values of
    the heuristics for it. Triton's autotuner and heuristics wrappers cost about 60 of the 120 us of
    host time of one launch on an H200 machine (validate.py host), more than the GPU time of a small
    layer. The key is the autotuner's own (its ``keys`` arguments and the tensors' dtypes), so the
    choice is the one it would look up."""
    named = dict(zip(tuned.arg_names, args))
    named.update(kwargs)
    key = (id(tuned), *(named[k] for k in tuned.keys), *(str(a.dtype) for a in args if hasattr(a, "dtype")))
    chosen = _CHOSEN.get(key)
    if chosen is None:
        tuned[grid](*args, **kwargs)
        cfg = tuned.best_config
        meta = {**named, **cfg.all_kwargs()}
        _CHOSEN[key] = {**cfg.all_kwargs(), **{name: rule(meta) for name, rule in plain.values.items()}}
        return
    plain.fn[grid](*args, **kwargs, **chosen)


def launch(tuned, plain, grid, args, kwargs, *, configs, ctas, device: torch.device, wrap_kernel=None) -> None:
    """Run an autotuned kernel (``launch_chosen``; inside torch.compile the autotuner itself); in
    deterministic mode (autotuning picks by timing, so the tiles and thus the bits could differ
    between processes) or with SPARSECASCADE_TRITON_CONFIG=fixed, its heuristics-wrapped kernel with
    ``fixed_config``; with SPARSECASCADE_TRITON_CONFIG=k, config k.

    ``configs``: a zero-argument callable giving the pruned config list, called only on those two
    paths (the autotuner prunes once per key itself; pruning on every call cost more host time than
    a small layer's kernel, about 250 us on a 2-core EPYC).

    ``wrap_kernel``: applied to the kernel before the launch (``torch.library.wrap_triton`` inside a
    ``torch.library.triton_op``, so that torch.compile records the launch); None launches directly.
    """
    choice = os.environ.get(CONFIG_ENV, "autotune")
    wrap = wrap_kernel or _identity
    if triton_interpreting() or (choice == "autotune" and not deterministic()):
        if wrap_kernel is None:
            launch_chosen(tuned, plain, grid, args, kwargs)
        else:
            wrap(tuned)[grid](*args, **kwargs)
        return
    pruned = configs()
    if choice.isdigit():
        cfg = pruned[int(choice) % len(pruned)]
    else:
        cfg = fixed_config(pruned, ctas, device)
    if wrap_kernel is None:
        plain[grid](*args, **kwargs, **cfg.all_kwargs())
    else:
        wrap_kernel(one_config_kernel(plain, cfg))[grid](*args, **kwargs)
