"""Atomic file writes: a reader, or a run resumed after a kill, sees the old file or the new one,
never a half-written one.

The temporary file lives beside its target as ``.<name>.<random>.tmp`` (``temp_pattern``); a process
killed while writing leaves it behind, and ``remove_stale_temp_files`` clears it.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def _temp_affixes(path: Path) -> tuple[str, str]:
    """The (prefix, suffix) of the temporary files of ``path``: the one place that names them."""
    return f".{path.name}.", ".tmp"


def temp_pattern(path) -> str:
    """The glob pattern of the temporary files ``atomic_write(path, ...)`` creates beside ``path``."""
    prefix, suffix = _temp_affixes(Path(path))
    return f"{prefix}*{suffix}"


def remove_stale_temp_files(path) -> list[Path]:
    """Delete the temporary files a killed ``atomic_write(path, ...)`` left; returns what was deleted.

    Only for a file that no other process is writing at the same time."""
    path = Path(path)
    removed = []
    for stale in path.parent.glob(temp_pattern(path)):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    return removed


def atomic_write(path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The temporary file is removed if ``write`` fails; the file at ``path`` is then untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temp_affixes(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide shipped weights and results from other users
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
