"""Mutation check: every mutation below, applied to a fresh copy of the package, must fail a test.

    python tests/mutations.py                       # all mutations; prints  mutation | tests that failed
    python tests/mutations.py --only dilation       # those whose name contains "dilation"
    python tests/mutations.py --out tests/mutations_table.md

Each mutation replaces one exact piece of text (it must occur exactly once in its file, or the
script stops: a mutation that no longer applies is a bug here, never a silent pass) in a copy of
the package, kernels, tests and examples made under a temporary folder, then runs the tests named
for it there. The unmutated copy runs every named test first: they must all pass. Slow (minutes):
not part of the normal suite.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("sparsecascade", "kernels", "tests", "examples", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root


CONVERTERS = "tests/test_converters.py"
SKIP = "tests/test_region_skip.py"
CONFIDENCE = "tests/test_confidence.py"
ENGINE = "tests/test_engine.py"
INPUT_INDEX = "tests/test_region_conv.py::test_triton_backward_builds_the_input_index_once_per_geometry"

MUTATIONS = [
    Mutation("Bottleneck converter: residual add removed", "sparsecascade/models/resnet.py",
             "return self.conv3(self.conv2(self.conv1(x)), residual=identity)",
             "return self.conv3(self.conv2(self.conv1(x)))", (CONVERTERS,)),
    Mutation("Inception-ResNet converters: residual scale ignored", "sparsecascade/models/irnet.py",
             "res_scale=float(m.scale)", "res_scale=1.0", (CONVERTERS,)),
    Mutation("every region conv runs dense (_use_dense always true)", "sparsecascade/ops/region_conv.py",
             "return dense_fallback and active > dense_fallback_fraction(x.device, x.dtype) * total",
             "return True", (SKIP,)),
    Mutation("folded BatchNorm: shift dropped", "sparsecascade/nn/frozen_bn.py",
             "shift = self.bias.to(cdt) - self.running_mean.to(cdt) * scale", "shift = torch.zeros_like(scale)",
             (CONVERTERS,)),
    Mutation("region path ignores dilation (torch kernel taps)", "kernels/region_conv/geometry.py",
             "iy = oy[:, None] - self.pad_h + ky[None, :] * self.dil_h",
             "iy = oy[:, None] - self.pad_h + ky[None, :]", (CONVERTERS,)),
    Mutation("region path ignores dilation (Triton kernel taps)", "kernels/region_conv/triton_common.py",
             "iy = oy - pad_h + ky * dil_h", "iy = oy - pad_h + ky",
             (f"{CONVERTERS}::test_converted_module_equals_masked_original_triton",
              "tests/test_triton_kernels.py::test_forward_matches_twin_and_dense")),
    Mutation("mask resampling between resolutions off by one pixel", "sparsecascade/ops/region_index.py",
             "m = F.adaptive_max_pool2d(m, size)", "m = F.adaptive_max_pool2d(F.pad(m, (1, 0, 1, 0))[..., :-1, :-1], size)",
             (CONVERTERS,)),
    Mutation("cascade_loss: stage k not restricted to its region", "sparsecascade/losses.py",
             "_stage_loss(l, target, r, ignore_index", "_stage_loss(l, target, None, ignore_index",
             ("tests/test_train.py::test_losses_hand_computed",)),
    Mutation("threshold: > instead of >= (torch twin)", "kernels/confidence/torch_twin.py",
             "stop = confidence >= rho", "stop = confidence > rho", (CONFIDENCE,)),
    Mutation("threshold: > instead of >= (Triton kernel)", "kernels/confidence/triton_kernel.py",
             "stop = act & (conf >= rho)", "stop = act & (conf > rho)", (CONFIDENCE,)),
    Mutation("confidence without the softmax (torch twin)", "kernels/confidence/torch_twin.py",
             "conf = 1.0 / torch.exp(sel - top[:, None]).sum(dim=1)", "conf = top", (CONFIDENCE,)),
    Mutation("confidence without the softmax (Triton kernel)", "kernels/confidence/triton_kernel.py",
             "conf = 1.0 / tl.where(act, total, 1.0)", "conf = tl.where(act, run_max, 0.0)", (CONFIDENCE,)),
    Mutation("MACs of the dense fallback counted from the mask", "sparsecascade/ops/region_conv.py",
             "record_macs(mask.numel(), weight.shape)", "record_macs(int(mask.sum()), weight.shape)", (SKIP,)),
    Mutation("fused residual + ReLU: outside the region the residual is not activated",
             "sparsecascade/ops/region_conv.py", "    elif relu:  # outside the mask", "    elif False:  # outside the mask",
             (CONVERTERS,)),
    Mutation("stage input handed to an in-place layer", "sparsecascade/cascade.py",
             "features = features.clone()", "features = features", ("tests/test_cascade.py",)),
    Mutation("prepared inference weights never rebuilt after the parameters change", "sparsecascade/nn/region_conv.py",
             "key = (dtype,) + tuple((t.data_ptr(), t._version) for t in tensors if t is not None)", "key = (dtype,)",
             (ENGINE,)),
    Mutation("every region layer compacts its own mask (no shared RegionIndex)", "sparsecascade/nn/region_conv.py",
             "index = region.index_at((h_out, w_out))",
             "from ..ops import RegionIndex; index = RegionIndex(region.index_at((h_out, w_out)).mask)", (ENGINE,)),
    Mutation("tap tables rebuilt for every layer", "sparsecascade/ops/region_index.py",
             "table = self._taps.get(geometry)", "table = None", (ENGINE,)),
    Mutation("torch.compile traces the data-dependent cascade (guards on rho and the active sets)",
             "sparsecascade/cascade.py", "    @torch.compiler.disable\n    def _cascade(", "    def _cascade(",
             ("tests/test_compile.py::test_whole_cascade_compiles_once_across_rho_values",)),
    Mutation("GroupNorm accepted without dense_modules", "sparsecascade/nn/convert.py",
             "SPATIAL_NORMS = (nn.GroupNorm, ", "SPATIAL_NORMS = (", ("tests/test_cascade.py",)),
    Mutation("the cascade imports the hub layer again (a lazy upward import, as before issue 16)",
             "sparsecascade/cascade.py", "    def forward(self, x: torch.Tensor):\n",
             "    def save_pretrained(self, folder):\n        from .save import save_pretrained\n\n"
             "        return save_pretrained(self, folder)\n\n    def forward(self, x: torch.Tensor):\n",
             ("tests/test_layering.py",)),
    Mutation("TF32 operands truncated, not rounded to nearest (Triton kernels)", "kernels/region_conv/triton_common.py",
             "rounded = ((bits + 0x1000) & -8192)", "rounded = (bits & -8192)",
             ("tests/test_triton_kernels.py::test_tf32_rounds_operands_to_nearest",)),
    Mutation("grad-weight split stride as (KH * KW * C_in).to(): fails to compile when C_in = 1",
             "kernels/region_conv/triton_backward.py",
             "split_stride = tl.full([], KH * KW, tl.int64) * C_in * C_out",
             "split_stride = (KH * KW * C_in).to(tl.int64) * C_out",
             ("tests/test_triton_compile.py::test_region_kernels_use_tensor_cores_and_never_spill",)),
    Mutation("Triton launches never reuse the autotuner's choice (its wrappers on every call)",
             "kernels/region_conv/triton_common.py", "    chosen = _CHOSEN.get(key)\n", "    chosen = None\n",
             ("tests/test_triton_kernels.py::test_repeat_launch_skips_the_autotuner",)),
    Mutation("\"auto\" on a GPU never falls back to the dense convolution", "sparsecascade/ops/region_conv.py",
             '    return resolved, backend == "auto"\n', '    return resolved, backend == "auto" and resolved == "torch"\n',
             ("tests/test_dense_fallback.py",)),
    Mutation("a timing picks the GPU's path in deterministic mode", "sparsecascade/ops/dense_fallback.py",
             "elif torch.are_deterministic_algorithms_enabled():", "elif False:",
             ("tests/test_dense_fallback.py",)),
    Mutation("Triton backward rebuilds the input-side index in every layer (no cache)",
             "sparsecascade/ops/region_conv.py", "            input_rows, input_pos = index.input_index(geometry)\n",
             "            pass\n", (f"{INPUT_INDEX}",)),
    Mutation("input-side index cached by kernel size alone (a dilated layer reads another's)",
             "sparsecascade/ops/region_index.py",
             "table = self._inputs.get(geometry)\n        if table is None:\n            table = self._inputs[geometry] =",
             "table = self._inputs.get(geometry.taps)\n        if table is None:\n            table = self._inputs[geometry.taps] =",
             (f"{INPUT_INDEX}",)),
    Mutation("a Hardtanh accepted whatever its range (maps zero to a non-zero)", "sparsecascade/nn/convert.py",
             "if isinstance(m, nn.Hardtanh) and not m.min_val <= 0.0 <= m.max_val:", "if False:",
             ("tests/test_cascade.py::test_refuses_what_it_cannot_run_exactly",)),
    Mutation("labels from the upsampled logits, not the upsampled probabilities (DESIGN.md section 1)",
             "sparsecascade/cascade.py", "return CascadeOutput(up, probs.argmax(1), stage_map",
             "return CascadeOutput(up, up.argmax(1), stage_map",
             ("tests/test_cascade.py::test_backends_equal_reference",
              "tests/test_cascade.py::test_per_stage_rho_equals_reference")),
    Mutation("config.json's rho not checked (null becomes the default rho)", "sparsecascade/hub.py",
             '    check_rho(config["rho"], name=f"{path}: rho")', "    pass",
             ("tests/test_hub.py::test_a_config_with_a_bad_rho_is_refused",)),
]


def make_copy(root: Path) -> Path:
    """The package, kernels, tests and examples under ``root``; ``sparsecascade.kernels`` resolves to
    the copied ``kernels/`` (the editable install maps it to the original one)."""
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        else:
            shutil.copy2(src, root / name)
    (root / "sparsecascade" / "kernels").symlink_to(Path("..") / "kernels")
    return root


def occurs(text: str, mutation: Mutation) -> None:
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"mutation {mutation.name!r}: its text occurs {count} times in {mutation.path}, expected once: "
                         f"{mutation.old!r}")


def apply(mutation: Mutation, root: Path) -> None:
    path = root / mutation.path
    text = path.read_text()
    occurs(text, mutation)
    path.write_text(text.replace(mutation.old, mutation.new))


def run_tests(root: Path, tests, maxfail: int) -> tuple[list[str], str]:
    """(ids of the failed tests, pytest's last lines) for ``tests`` run in the copy at ``root``."""
    report = root / "junit.xml"
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    check = subprocess.run([sys.executable, "-c", "import sparsecascade, sparsecascade.kernels as k; "
                            "print(sparsecascade.__file__); print(k.__file__)"],
                           cwd=root, env=env, capture_output=True, text=True)
    if check.returncode or any(not line.startswith(str(root)) for line in check.stdout.split()):
        raise SystemExit(f"the copy at {root} does not import itself: {check.stdout} {check.stderr}")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--maxfail={maxfail}",
                           f"--junitxml={report}", *tests], cwd=root, env=env, capture_output=True, text=True)
    failed = []
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                module = case.get("classname", "").rsplit(".", 1)[-1]
                failed.append(f"{module}::{case.get('name')}")
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    if not failed and proc.returncode not in (0, 1):  # collection error, crash: nothing ran
        failed.append(f"(pytest exit {proc.returncode})")
    return failed, tail


def summarise(failed: list[str], shown: int = 3) -> str:
    if not failed:
        return "**none: not caught**"
    more = f" (+{len(failed) - shown} more)" if len(failed) > shown else ""
    return ", ".join(f"`{t}`" for t in failed[:shown]) + more


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="run the mutations whose name contains one of these")
    parser.add_argument("--maxfail", type=int, default=5, help="stop a mutation's tests after this many failures")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(o.lower() in m.name.lower() for o in args.only)]
    if not chosen:
        raise SystemExit(f"--only: no mutation matches {args.only}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparsecascade-mutations-") as tmp:
        tests = sorted({t for m in chosen for t in m.tests})
        for m in chosen:  # every mutation must apply to the current code before anything runs
            occurs((REPO / m.path).read_text(), m)
        baseline = make_copy(Path(tmp) / "baseline")
        failed, tail = run_tests(baseline, tests, maxfail=1000)
        print(f"unmutated: {'ok' if not failed else failed}  [{tail.splitlines()[-1] if tail else ''}]", flush=True)
        if failed:
            raise SystemExit(f"the unmutated copy fails {failed}: fix that first\n{tail}")
        for i, m in enumerate(chosen):
            root = make_copy(Path(tmp) / f"m{i}")
            apply(m, root)
            failed, tail = run_tests(root, m.tests, args.maxfail)
            rows.append((m, failed))
            print(f"{m.name}: {len(failed)} failed  [{tail.splitlines()[-1] if tail else ''}]", flush=True)
            shutil.rmtree(root)
    table = ["| mutation | file | tests that failed |", "|---|---|---|"]
    table += [f"| {m.name} | `{m.path}` | {summarise(failed)} |" for m, failed in rows]
    text = "\n".join(table)
    print("\n" + text)
    if args.out:
        args.out.write_text(f"# Mutation check\n\n`python tests/mutations.py` (every mutation, maxfail "
                            f"{args.maxfail}); the unmutated copy passes the same tests.\n\n{text}\n")
    caught = all(failed for _, failed in rows)
    print(f"\n{sum(bool(f) for _, f in rows)}/{len(rows)} mutations caught")
    return 0 if caught else 1


if __name__ == "__main__":
    sys.exit(main())
