"""A cascade-training step at rho against a DSN step on the same batch: time ratio next to MAC ratio.

    python -m sparsecascade.bench.train_step --data-root ../shared/data/camvid [--checkpoint runs/x/last.pt]
                                             [--size 240 320] [--batch 2] [--out bench_out/train_step.json]

Both steps are forward + backward + SGD step of the same model on the same batch, timed
alternately (median of ``--reps``), with learning rate 0 so that the weights, and so the stop
masks, stay the same across repetitions. The DSN step runs every stage on every pixel (rho = 1);
the cascade step runs stage k on the pixels forwarded to it. Executed MACs: stage k + head k on
its region, i.e. ``sum_k dense_macs_k * region_fraction_k``, over the dense sum (backward costs
scale the same way, so this is the ratio for the whole step).

Stages must stop pixels for the comparison to mean anything: pass a trained ``--checkpoint``;
without one, the heads' logits are scaled (a temperature, which changes no argmax) so that the
stop fractions at rho reach ``--target-stops`` (default: the paper's 23% and 29% at rho = 0.985).
The batch is CamVid's (crops of the train split) when its folder is found, else random.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from .. import losses
from ..cascade import LayerCascade
from .timing import measure_ms


def stage_dense_macs(model: LayerCascade, x: torch.Tensor) -> list[int]:
    """MACs of stage k + head k on every pixel, per stage."""
    return model.stage_dense_macs(x)


def region_fractions(model: LayerCascade, x: torch.Tensor) -> list[float]:
    """The share of pixels each stage is trained on at the model's rho (0 for a stage not reached)."""
    model.train()
    with torch.no_grad():
        out = model(x)
    fractions = [float(r.float().mean()) for r in out.regions]
    return fractions + [0.0] * (model.num_stages - len(fractions))


def _scale_head(model: LayerCascade, k: int, gain: float) -> None:
    last = [m for m in model.heads[k].modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(gain)
        if last.bias is not None:
            last.bias.mul_(gain)


def calibrate_head_gains(model: LayerCascade, x: torch.Tensor, targets: list[float], iters: int = 12) -> list[float]:
    """Scale head k's logits (bisection on log gain) until the share of all pixels stopping at stage k
    is ``targets[k]``. Confidence grows monotonically with the gain, so the bisection converges."""
    gains = []
    for k, target in enumerate(targets):
        lo, hi, applied = -3.0, 6.0, 0.0  # log gain bounds; ``applied`` is the log gain now in the weights
        for _ in range(iters):
            mid = (lo + hi) / 2
            _scale_head(model, k, float(torch.tensor(mid - applied).exp()))
            applied = mid
            f = region_fractions(model, x)
            stopped = f[k] - (f[k + 1] if k + 1 < len(f) else 0.0)
            lo, hi = (lo, mid) if stopped > target else (mid, hi)
        gains.append(float(torch.tensor(applied).exp()))
    return gains


def _batch(args, model):
    from ..data import CamVid, train_transform

    try:
        ds = CamVid(args.data_root, "train",
                    transform=train_transform(tuple(args.size), model.mean, model.std, scale_range=(1.0, 1.0)))
        xs, ys = zip(*[ds[i] for i in range(args.batch)])
        return torch.stack(xs), torch.stack(ys), "camvid"
    except (ValueError, FileNotFoundError):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, 3, *args.size, generator=gen)
        return x, torch.randint(0, 11, (args.batch, *args.size), generator=gen), "random"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sparsecascade.bench.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lc_resnet18")
    p.add_argument("--checkpoint", help="a trained model (training checkpoint); else heads are scaled")
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rho", type=float, default=0.985)
    p.add_argument("--target-stops", default="0.23,0.29", help="stop shares at stages 1..K-1 without a checkpoint")
    p.add_argument("--data-root", default=None, help="CamVid folder (else $SPARSECASCADE_CAMVID / $SPARSECASCADE_DATA)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench_out/train_step.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ..factory import create_model
    from ..train import load_trained_model

    if args.checkpoint:
        model, _ = load_trained_model(args.checkpoint)
        source = args.checkpoint
    else:
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=11)
        source = f"{args.model}, random init, head logits scaled"
    x, y, data = _batch(args, model)
    model.rho = args.rho
    gains = None
    if not args.checkpoint:
        targets = [float(v) for v in args.target_stops.split(",")][: model.num_stages - 1]
        gains = calibrate_head_gains(model, x, targets)

    macs = stage_dense_macs(model, x)
    fractions = region_fractions(model, x)
    mac_ratio = sum(m * f for m, f in zip(macs, fractions)) / sum(macs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # lr 0: same masks every rep

    def step(rho, loss_fn):
        def run():
            model.rho = rho
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
        return run

    model.train()
    dsn_step, cascade_step = step(1.0, losses.dsn_loss), step(args.rho, losses.cascade_loss)
    dsn_ms, cascade_ms = [], []
    for _ in range(args.reps):  # alternate, so that drifting machine load hits both alike
        dsn_ms.append(measure_ms(dsn_step, reps=1, warmup=1))
        cascade_ms.append(measure_ms(cascade_step, reps=1, warmup=1))
    dsn_t, cascade_t = sorted(dsn_ms)[len(dsn_ms) // 2], sorted(cascade_ms)[len(cascade_ms) // 2]

    model.eval()
    model.rho = args.rho
    with torch.no_grad():
        infer = model(x)
    result = dict(
        model=source, data=data, batch=args.batch, size=list(args.size), rho=args.rho, head_gains=gains,
        stop_fractions_train=[fractions[k] - (fractions[k + 1] if k + 1 < len(fractions) else 0.0)
                              for k in range(len(fractions))],
        region_fractions=fractions, stage_dense_macs=macs,
        dsn_step_ms=dsn_t, cascade_step_ms=cascade_t, time_ratio=cascade_t / dsn_t, mac_ratio=mac_ratio,
        inference_mac_ratio=infer.mac_ratio, inference_stop_fractions=infer.stop_fractions,
        dsn_step_ms_all=dsn_ms, cascade_step_ms_all=cascade_ms,
        machine=dict(platform=platform.platform(), processor=platform.processor(), threads=torch.get_num_threads(),
                     torch=torch.__version__),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{source} on {data} batch {args.batch}x{args.size[0]}x{args.size[1]}, rho {args.rho}: "
          f"trained on {', '.join(f'{100 * f:.0f}%' for f in fractions)} of the pixels per stage")
    print(f"DSN step {dsn_t:.0f} ms, cascade step {cascade_t:.0f} ms: time ratio {cascade_t / dsn_t:.3f}, "
          f"MAC ratio {mac_ratio:.3f}  -> {out}")
    return result


if __name__ == "__main__":
    main()
