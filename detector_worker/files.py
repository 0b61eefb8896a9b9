"""Writing files so that a reader never sees half of one: temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, skip_unchanged: bool = True) -> bool:
    """Replace `path` with `data` atomically (created with `mode`); False when it already held `data`.

    The temp file starts with a dot and ends in `.tmp`, so include globs (`*.conf`, `*.json`) never
    pick up a half-written file.
    """
    if skip_unchanged:
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == data:
                return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(directory: Path, pattern: str = ".*.tmp") -> None:
    """Temp files left by a crash in the middle of `atomic_write`."""
    for path in directory.glob(pattern):
        path.unlink(missing_ok=True)
