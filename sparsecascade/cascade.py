"""``LayerCascade``: any staged backbone as a Deep Layer Cascade that skips the work on stopped pixels.

Inference (DESIGN.md section 1): stage 1 and its head run on every pixel; a pixel whose softmax
confidence reaches ``rho`` (the paper's one threshold, or one per stage: :mod:`sparsecascade.rho`)
stops; each later stage and head run as region convolutions on the pixels still active; a stage
with no active pixel in the whole batch is not run. The prediction of a pixel is the logits of the
stage where it stopped. At rho >= 1 no pixel can stop early, so in eval the heads of stages 1..K-1
are not run either: the work of the plain network.

This module is the model and its outputs only (DESIGN.md section 3: it imports ops and the region
modules, nothing above). Saving, publishing, segmenting and ``pretrained_cfg`` are the zoo layer's
(:mod:`sparsecascade.pretrained` gives them to the models ``create_model`` / ``from_pretrained``
return); imposed stop shares for benchmarks are :mod:`sparsecascade.bench.forced_stops`, through the
generic ``stop_rule``. The dense MAC count stays here: ``CascadeOutput`` reports it (``mac_ratio``),
counted on the model's own stages and heads and cached by its forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import Backend, RegionIndex, check_backend, confidence_threshold, resample_mask
from .inputs import check_image_batch
from .rho import Rho, check_rho
from .nn import active_region, check_region_convertible, convert_to_region, freeze_batchnorm, mark_dense_modules


# (logits, active, k) -> stop: see LayerCascade.stop_rule
StopRule = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class CascadeOutput:
    """What ``LayerCascade`` returns in eval mode."""

    logits: torch.Tensor  # (N, C, H, W): the deciding stage's logits, bilinearly upsampled to the input
    labels: torch.Tensor  # (N, H, W) int64: the argmax of ``probs``
    stage_map: torch.Tensor  # (N, h, w) int64: the 1-based stage that decided each pixel
    stop_fractions: list[float]  # per stage, the share of all pixels decided there (sums to 1)
    macs: int  # multiply-accumulates executed
    dense_macs: int  # what the dense network (every stage and head on every pixel) executes
    probs: torch.Tensor  # (N, C, H, W): the deciding stage's softmax probabilities, bilinearly upsampled

    @property
    def mac_ratio(self) -> float:
        return self.macs / self.dense_macs if self.dense_macs else 1.0


@dataclass
class CascadeTrainOutput:
    """What ``LayerCascade`` returns in train mode: the inputs of ``sparsecascade.losses``."""

    stage_logits: list[torch.Tensor]  # per stage (N, C, h_k, w_k); zero outside the stage's region
    regions: list[torch.Tensor]  # per stage bool (N, h_k, w_k): the pixels forwarded to that stage


def default_head(in_channels: int, num_classes: int, hidden: int = 256) -> nn.Sequential:
    """The paper's stage head: 3x3 conv + ReLU, then a 1x1 conv to the class logits."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_classes, 1)
    )


class LayerCascade(nn.Module):
    """Deep Layer Cascade over ``stages`` (features -> features; stage 1 takes the image).

    ``heads[k]`` maps stage k's features to class logits; when ``heads`` is None, the default head
    (3x3 conv + ReLU + 1x1 conv) is built for each stage from ``stage_channels`` and ``num_classes``.
    ``rho`` (settable) is the confidence at which a pixel stops; ``rho >= 1`` stops nothing before the
    last stage (the deeply supervised network). A sequence, one value per stage but the last, sets each
    stage's threshold apart (``(0.9, 0.5)``: confidence 0.9 stops a pixel at stage 1, 0.5 at stage 2);
    ``model.rho`` then returns that tuple and ``stage_rho(k)`` stage k's value; a stage whose rho is 1
    stops nothing, and in eval its head is not run. Stages and heads are converted in place by
    ``convert_to_region``: called directly they still compute densely. A layer that cannot run exactly
    on a region is refused here, naming its path (``stages.1.0.norm``); ``dense_modules`` (module
    types, or such paths) runs those densely with their output masked instead.

    ``stop_rule`` (settable; default None, the confidence threshold): a callable
    ``stop_rule(logits, active, k) -> stop`` that decides instead of ``rho`` which pixels stop at stage
    ``k`` (0-based, every stage but the last): ``logits`` are the stage's (N, C, h, w) logits (detached),
    ``active`` the bool (N, h, w) pixels it ran on, ``stop`` a bool mask of that shape (only active pixels
    count). It imposes where pixels stop: ``sparsecascade.bench.forced_stops`` (fixed stop shares for
    benchmarks), ``evaluate(head=k)`` (one head scored alone). A plain callable, not a module: it is not
    part of the state dict.
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        heads: Optional[Sequence[nn.Module]] = None,
        rho: Rho = 0.985,
        *,
        num_classes: Optional[int] = None,
        stage_channels: Optional[Sequence[int]] = None,
        head_channels: int = 256,
        dense_modules: Sequence[Union[type, str]] = (),
    ):
        super().__init__()
        if len(stages) < 1:
            raise ValueError("stages: expected at least one stage")
        if heads is None:
            if num_classes is None or stage_channels is None or len(stage_channels) != len(stages):
                raise ValueError(
                    "heads: None needs num_classes and stage_channels (one per stage) to build the default heads"
                )
            heads = [default_head(c, num_classes, head_channels) for c in stage_channels]
        if len(heads) != len(stages):
            raise ValueError(f"heads: expected one head per stage ({len(stages)}), got {len(heads)}")
        self.stage_channels = None if stage_channels is None else [int(c) for c in stage_channels]
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)
        # Refuse what cannot run exactly on a region before changing anything (a BatchNorm without
        # running statistics must be seen before freezing). BatchNorm is then frozen (the paper's
        # choice: batches of large maps are small), so that it is a constant affine map that the
        # region convolutions fold into their epilogue.
        mark_dense_modules(self, dense_modules)
        check_region_convertible(self)
        freeze_batchnorm(self, exclude=[m for m in self.modules() if getattr(m, "_sparsecascade_dense", False)])
        convert_to_region(self)
        self.rho = rho
        self.backend = "auto"
        self._dense_macs_cache: dict = {}
        self.stop_rule: Optional[StopRule] = None

    # -- configuration ---------------------------------------------------------------------------
    @property
    def rho(self) -> Rho:
        return self._rho

    @rho.setter
    def rho(self, value: Rho) -> None:
        self._rho = check_rho(value, self.num_stages)

    def stage_rho(self, k: int) -> float:
        """The threshold of stage ``k`` (0-based); the last stage stops every pixel still active."""
        if not 0 <= k < self.num_stages - 1:
            raise ValueError(f"k: expected a stage that can stop pixels, in [0, {self.num_stages - 2}], got {k!r}")
        return self._rho[k] if isinstance(self._rho, tuple) else self._rho

    def set_backend(self, backend: Backend) -> "LayerCascade":
        """"auto" | "torch" | "triton" for the region kernels; "dense" computes every layer densely and
        applies the masks (the reference the sparse paths are tested against)."""
        self.backend = check_backend(backend)
        return self

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    # -- the cascade -----------------------------------------------------------------------------
    def _threshold(self, logits: torch.Tensor, active: torch.Tensor, k: int) -> tuple[torch.Tensor, Optional[RegionIndex]]:
        """(stop, next active set) of stage k; every active pixel stops at the last stage (no next set),
        none before it at rho >= 1. The next set's indices come from the threshold kernel's compaction."""
        if k == self.num_stages - 1:
            return active, None
        if self.stop_rule is not None:
            stop = self.stop_rule(logits, active, k) & active
            return stop, RegionIndex(active & ~stop)
        rho = self.stage_rho(k)
        if rho >= 1.0:
            return torch.zeros_like(active), RegionIndex(active)
        backend = "torch" if self.backend == "dense" else self.backend
        r = confidence_threshold(logits, rho, active, backend=backend)
        return r.stop, RegionIndex(r.next_active, rows=r.next_index)

    def _stage(self, k: int, features: torch.Tensor) -> torch.Tensor:
        """Stage k on ``features``, its output checked against what the cascade expects of it."""
        out = self.stages[k](features)
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"stages: stages[{k}] must return one feature map (N, C, h, w) tensor, got {got}")
        if self.stage_channels is not None and out.shape[1] != self.stage_channels[k]:
            raise ValueError(f"stage_channels: stage_channels[{k}] = {self.stage_channels[k]}, but stages[{k}] "
                             f"returns {out.shape[1]} channels")
        return out

    def _head(self, k: int, features: torch.Tensor) -> torch.Tensor:
        logits = self.heads[k](features)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise TypeError(f"heads: heads[{k}] must return class logits (N, C, h, w), got {got}")
        return logits

    def _run(self, x: torch.Tensor, stage_one: Optional[torch.Tensor] = None):
        """Run the cascade; returns per-stage (logits, region, stop) with None for skipped stages (and,
        in eval, for heads 1..K-1 whose rho >= 1: they could stop nothing), the executed MACs, per stage
        the dense MACs of its stage and its head (None where something was skipped), and stage 1's
        map size. ``stage_one``: stage 1's output if the caller ran it (on every pixel)."""
        features = x
        index = None  # the active set: None is every pixel (stage 1, or nothing stopped yet)
        macs = 0
        results, dense_macs = [], []
        every_head = self.training or self.stop_rule is not None  # training: every head has a loss
        first_size = None
        for k in range(self.num_stages):
            last = k == self.num_stages - 1
            if index is not None and index.count == 0:
                results.append(None)  # no pixel left anywhere in the batch: the stage is not run
                dense_macs.append(None)
                continue
            if k > 0 and torch.is_grad_enabled() and features.requires_grad:
                # head k-1 saved these features for its backward: an in-place layer at the start of
                # stage k (nn.ReLU(inplace=True)) must not modify them
                features = features.clone()
            if k == 0 and stage_one is not None:  # run on every pixel: its dense MACs were executed
                features, stage_macs = stage_one, self._stage_and_head_macs(x)[0][0]
            else:
                with active_region(index, self.backend) as stage_region:
                    features = self._stage(k, features)
                stage_macs = stage_region.dense_macs
                macs += stage_region.macs
            first_size = first_size or tuple(features.shape[-2:])
            if index is not None:
                index = index.at(tuple(features.shape[-2:]))
            if k == 0 and stage_one is not None:
                macs += stage_macs
            if not (last or every_head or self.stage_rho(k) < 1.0):  # the head's logits would decide no pixel
                results.append(None)
                dense_macs.append(None)
                continue
            with active_region(index, self.backend) as head_region:
                logits = self._head(k, features)
            macs += head_region.macs
            dense_macs.append((stage_macs, head_region.dense_macs))
            region_mask = index.mask if index is not None else torch.ones(
                logits.shape[0], *logits.shape[-2:], dtype=torch.bool, device=logits.device)
            with torch.no_grad():
                stop, index = self._threshold(logits.detach(), region_mask, k)
            if not last and index.is_full:
                index = None  # nothing stopped: the next stage runs densely, without masks
            results.append((logits, region_mask, stop))
        return results, macs, dense_macs, first_size

    def forward(self, x: torch.Tensor):
        check_image_batch(x, self.stages[0])
        stage_one = None
        if torch.compiler.is_compiling() and not self.training:
            # Under torch.compile, stage 1 (every pixel, no region: plain converted modules) is the
            # compiled graph; what follows depends on the data (active sets, their sizes, rho) and
            # runs eagerly on the region kernels, so no guard depends on rho or on an active set.
            stage_one = self._stage(0, x)
        return self._cascade(x, stage_one)

    @torch.compiler.disable
    def _cascade(self, x: torch.Tensor, stage_one: Optional[torch.Tensor]):
        results, macs, dense_macs, first_size = self._run(x, stage_one)
        if self.training:
            ran = [r for r in results if r is not None]
            return CascadeTrainOutput([r[0] for r in ran], [r[1] for r in ran])
        key = tuple(x.shape)
        if key not in self._dense_macs_cache and None not in dense_macs:
            self._dense_macs_cache[key] = dense_macs  # every stage ran: its convolutions saw every shape
        return self._assemble(x, results, macs, first_size)

    def _assemble(self, x, results, macs, size) -> CascadeOutput:
        """The deciding stage's logits per pixel, at stage 1's resolution ``size``, then upsampled to the image,
        and so its probabilities (whose argmax are the labels)."""
        h, w = size
        ran = [r for r in results if r is not None]
        logits = ran[0][0].new_zeros(x.shape[0], ran[0][0].shape[1], h, w)
        stage_map = torch.zeros(x.shape[0], h, w, dtype=torch.int64, device=x.device)
        for k, r in enumerate(results):
            if r is None:
                continue
            stage_logits, _, stop = r
            if tuple(stop.shape[-2:]) != (h, w):  # a stage at another resolution
                stop = resample_mask(stop, (h, w))
                stage_logits = F.interpolate(stage_logits, size=(h, w), mode="bilinear", align_corners=False)
            decided = stop & (stage_map == 0)
            stage_map[decided] = k + 1
            logits = torch.where(decided[:, None], stage_logits.to(logits.dtype), logits)
        counts = torch.bincount(stage_map.reshape(-1), minlength=self.num_stages + 1)[1:]
        fractions = (counts.double() / stage_map.numel()).tolist()
        up = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        # DESIGN.md section 1: the probabilities (not the logits) are upsampled before the argmax
        # (channels_last, as the logits are: the argmax over channels of an NCHW map costs 8x more here)
        probs = torch.softmax(logits, 1).contiguous(memory_format=torch.channels_last)
        probs = F.interpolate(probs, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return CascadeOutput(up, probs.argmax(1), stage_map, fractions, int(macs), self.dense_macs(x), probs)

    def dense_macs(self, x: torch.Tensor) -> int:
        """MACs of every stage and head on every pixel for an input shaped like ``x``."""
        return sum(self.stage_dense_macs(x))

    def stage_dense_macs(self, x: torch.Tensor) -> list[int]:
        """Per stage, the MACs of stage k and head k on every pixel for an input shaped like ``x``."""
        return [stage + head for stage, head in self._stage_and_head_macs(x)]

    def _stage_and_head_macs(self, x: torch.Tensor) -> list[tuple[int, int]]:
        """Per stage, (MACs of stage k, MACs of head k) on every pixel for an input shaped like ``x``.

        Taken, once per shape, from the shapes the convolutions see: in a forward where every stage
        ran, or else in a pass over ``x`` with an empty active set (no region convolution computes;
        strided convolutions and poolings do). User code in a stage runs on real tensors.
        """
        key = tuple(x.shape)
        if key not in self._dense_macs_cache:
            per_stage = []
            features = x
            with torch.no_grad():
                for k in range(self.num_stages):
                    with active_region(_empty_region(x, features), "torch") as stage_region:
                        features = self._stage(k, features)
                    with active_region(_empty_region(x, features), "torch") as head_region:
                        self._head(k, features)
                    per_stage.append((stage_region.dense_macs, head_region.dense_macs))
            self._dense_macs_cache[key] = per_stage
        return list(self._dense_macs_cache[key])


def _empty_region(x: torch.Tensor, features: torch.Tensor) -> RegionIndex:
    """No active pixel at the resolution of ``features`` (no compaction needed)."""
    nothing = torch.zeros(x.shape[0], *features.shape[-2:], dtype=torch.bool, device=x.device)
    return RegionIndex(nothing, rows=torch.zeros(0, dtype=torch.int64, device=x.device))
