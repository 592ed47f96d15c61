"""A run's folder: which files mark it as holding a run, refusing to start over one by accident, and
opening it for a run (a fresh run's old files removed, stale temporary files cleared, the log cut
back to the step the run starts from, ``config.json`` written)."""
from __future__ import annotations

import json
from pathlib import Path

from .._atomic import atomic_write_text, remove_stale_temp_files
from .checkpoint import CHECKPOINT_NAME, LOG_NAME, PREVIOUS_NAME, truncate_log_after
from .config import TrainConfig
from .distributed import DistContext, broadcast_from_main

CONFIG_NAME = "config.json"
RUN_FILES = (CHECKPOINT_NAME, PREVIOUS_NAME, LOG_NAME)  # their presence marks a folder as holding a run


def existing_run(out_dir: Path) -> list[str]:
    """The files that mark ``out_dir`` as holding a run (empty: a new run may start there)."""
    return [name for name in RUN_FILES if (out_dir / name).exists()]


def refuse_existing_run(out_dir: Path, ctx: DistContext) -> None:
    found = existing_run(out_dir) if ctx.is_main else None
    found = broadcast_from_main(ctx, found)  # rank 0 decides: the others may see rank 0's new files
    if found:
        raise ValueError(f"out_dir: {out_dir} already holds a run ({', '.join(found)}); continue it with --resume "
                         f"(resume=True) or start it again from step 0 with --overwrite (overwrite=True)")


def remove_run_files(out_dir: Path) -> None:
    """A new run in ``out_dir``: no checkpoint or log line of an earlier run may stay."""
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def open_run_folder(out_dir: Path, cfg: TrainConfig, step: int, fresh: bool) -> None:
    """Rank 0, before the first step: ``fresh`` (no checkpoint resumed) removes an earlier run's files;
    then the temporary files of a run killed while saving go, the log keeps the lines up to ``step``,
    and ``config.json`` holds ``cfg``."""
    if fresh:
        remove_run_files(out_dir)  # a fresh run (overwrite, or resume of a folder without a checkpoint)
    for name in RUN_FILES + (CONFIG_NAME,):
        remove_stale_temp_files(out_dir / name)  # left by a run killed while saving (.<name>.<random>.tmp)
    truncate_log_after(out_dir / LOG_NAME, step)
    atomic_write_text(out_dir / CONFIG_NAME, json.dumps(cfg.to_dict(), indent=2) + "\n")
