"""The ``sparsecascade`` command: one subcommand per job.

    sparsecascade train --recipe recipes/camvid_lc_resnet18.json [--steps 200 ...] [--resume]
    sparsecascade eval --checkpoint runs/x/last.pt [--rhos 0.8,0.9,0.985,1 | --budget 0.6]
    sparsecascade segment street.png photos/ "shots/*.jpg" [--model NAME] [--rho R] [--out DIR] [--batch-size N]
    sparsecascade list
    sparsecascade bench kernels|cascade|train_step [options]
    sparsecascade export [--model NAME] [--format torch onnx] [--out DIR]
    sparsecascade eval --pretrained my-model-folder --dataset camvid --data-root DIR

Data parallel, one machine or several (``--out`` on storage every machine sees, for ``--resume``):

    torchrun --nproc-per-node 4 -m sparsecascade.cli train --recipe ...
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        --rdzv-id lc -m sparsecascade.cli train --recipe ...        # the same line on each machine

A subcommand is an entry of ``COMMANDS``: name -> ``Command(help, add_arguments, run)``, where
``add_arguments(parser)`` declares its options and ``run(args)`` does the work and returns an exit
status. ``register_command`` adds one. The built-in commands are modules of this package, each with
its ``HELP``, ``add_arguments`` and ``run``, named after what they drive: ``train``, ``evaluate``
(``eval``), ``segment``, ``list_models`` (``list``), ``bench``, ``export``; ``options`` holds the
option types and helpers they share. This module builds the parser and runs a command (``main``).

Errors a user can cause (a bad option, a missing file, a damaged checkpoint, a configuration the
library refuses) print one line to stderr, ``sparsecascade <command>: error: ...``, and exit with
status 2; a diverged training run exits with 1; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import bench, evaluate, export, list_models, segment, train
from .options import default_model  # noqa: F401  (names a user or test takes from sparsecascade.cli)
from .segment import batches_of_one_size, expand_images, output_stems  # noqa: F401
from .train import train_config_from_args  # noqa: F401

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # sparsecascade/: where an error counts as raised here


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register_command(name: str, help: str, add_arguments, run) -> None:
    COMMANDS[name] = Command(help, add_arguments, run)


for _name, _module in (("train", train), ("eval", evaluate), ("segment", segment), ("list", list_models),
                       ("bench", bench), ("export", export)):
    register_command(_name, _module.HELP, _module.add_arguments, _module.run)
del _name, _module


# -- the parser and main ------------------------------------------------------------------------
class _Formatter(argparse.HelpFormatter):
    """One line per option where it fits, so that a command's help fits one screen."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=110)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``prog: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help: the options)\n")


# what a user's input can cause: one line, not a traceback (anything else is a bug: a traceback)
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sparsecascade", description="Deep Layer Cascade semantic segmentation.",
        epilog="'sparsecascade <command> --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    for name, cmd in COMMANDS.items():
        command = sub.add_parser(name, help=cmd.help, description=cmd.help, formatter_class=_Formatter,
                                 usage=f"sparsecascade {name} [options]")
        cmd.add_arguments(command)
        command.add_argument("--debug", action="store_true", help="on an error, show its traceback")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    prog = f"sparsecascade {args.command}"
    try:
        with _one_line_warnings(prog):
            return int(COMMANDS[args.command].run(args) or 0)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return _exit_status(e)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _exit_status(error: BaseException) -> int:
    """1 for a run that failed (a diverged training), 2 for what the user can fix."""
    from ..train.divergence import TrainingDiverged

    return 1 if isinstance(error, TrainingDiverged) else 2


# A DataLoader worker's error reaches the main process as a new exception of the same type whose
# message is "Caught X in DataLoader worker process N." and the worker's traceback, as text.
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def _one_line(error: BaseException) -> str:
    """The error's message on one line; one that sparsecascade did not raise (torch's, Pillow's ...)
    also says its type and where the traceback is. An error raised in a data-loading worker is
    reported as the worker raised it (its message, the frame it came from), not as torch wraps it."""
    text, here = str(error), _raised_here(error)
    if _WORKER_TRACEBACK in text:
        worker_traceback = text.split(_WORKER_TRACEBACK, 1)[1]
        frames = re.findall(r'File "([^"]+)"', worker_traceback)
        here = bool(frames) and Path(frames[-1]).resolve().is_relative_to(PACKAGE_DIR)
        # the message: what follows the last frame's source lines, after "ValueError: "
        text = re.split(r'\n(?=\S)', worker_traceback.strip())[-1].removeprefix(f"{type(error).__name__}: ")
    text = " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__
    if not here:
        text = f"{type(error).__name__}: {text} (--debug: the traceback)"
    return text


def _raised_here(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is in the sparsecascade package."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


@contextlib.contextmanager
def _one_line_warnings(prog: str):
    """Warnings as ``prog: warning: message``, one line each (Python's format adds the source line)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield

