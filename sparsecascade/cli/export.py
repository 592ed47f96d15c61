"""``sparsecascade export``: the dense path (rho = 1) as torch.export (.pt2) and ONNX, checked
against eager, with a JSON file of the preprocessing a deployment applies."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import default_model, device_name, load_model, positive_int

HELP = "the dense path (rho = 1) as torch.export (.pt2) and ONNX, for static-graph runtimes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=default_model(), metavar="NAME",
                   help="zoo name, Hub repo id or save_pretrained folder (default: %(default)s)")
    p.add_argument("--out", default="export_out", metavar="DIR",
                   help="where NAME.pt2, NAME.onnx and NAME.json (the preprocessing) go (default: %(default)s)")
    p.add_argument("--format", nargs="+", choices=["torch", "onnx"], metavar="FORMAT",
                   help="torch (torch.export .pt2) and/or onnx (default: both; onnx where it is installed)")
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"),
                   help="example input size (default: the model's training scale, else 512 512)")
    p.add_argument("--batch", type=positive_int, default=2, metavar="N",
                   help="example batch size (default: %(default)s; 1 fixes the batch size at 1)")
    p.add_argument("--static", action="store_true", help="fixed input shape (default: batch, H and W symbolic)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """The dense path (rho = 1) as a static graph: see sparsecascade.export for why not the cascade."""
    import torch

    from ..export import SUFFIXES, export_dense, onnx_available

    model = load_model(args.model, "--model", device=args.device)
    formats = args.format or (["torch", "onnx"] if onnx_available() else ["torch"])
    if args.format is None and "onnx" not in formats:
        print("skipped ONNX: it needs the onnx and onnxscript packages (pip install 'sparsecascade[export]')")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    edge = cfg.get("shortest_edge") or 512
    height, width = args.size or (edge, edge)
    device = next(model.parameters()).device
    example = torch.randn(args.batch, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    name = cfg.get("name") or Path(str(args.model).rstrip("/")).name
    out = Path(args.out)
    model.rho = 1.0
    with torch.no_grad():
        eager = model.eval()(example).logits
    for fmt in formats:
        path = out / f"{name}{SUFFIXES[fmt]}"
        program = export_dense(model, example, path, fmt, dynamic=not args.static)
        check = ""
        if fmt == "torch":
            with torch.no_grad():
                got = torch.export.load(path).module()(example)
            check = f", max |exported - eager| = {(got - eager).abs().max().item():.2g}"
        print(f"wrote {path} ({fmt}{'' if args.static else ', dynamic batch/H/W'}{check})")
        del program
    info = dict(pretrained_cfg=cfg, input="image: normalized (N, 3, H, W) float32 (mean/std of pretrained_cfg; "
                "resize to shortest_edge first when set)", output="logits: (N, C, H, W); labels = argmax over C",
                path="dense (rho = 1): every stage and the last head on every pixel", example_size=[height, width])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out / f'{name}.json'} (the preprocessing a deployment applies)")
    return 0
