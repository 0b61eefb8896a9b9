"""The worker's log: one file per camera, `log_path(directory, slug)`, each line written once.

Under supervisord (it sets `SUPERVISOR_ENABLED`) the worker writes to stdout only: the camera's
supervisord program sends stdout to `log_path(...)` and rotates it with the spec's settings, so
`supervisorctl tail` and the file are the same lines. Run by hand, the worker writes that
rotating file itself, and stdout too.

Every line carries the camera and the current sessions of its displays, so a line read alone
(or grepped across cameras) still says whose it is.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Callable
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s [camera=%(camera)s sessions=%(sessions)s] %(name)s: %(message)s"


class CameraContext(logging.Filter):
    def __init__(self, camera: str) -> None:
        super().__init__()
        self.camera = camera
        self.sessions: Callable[[], str] = lambda: "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.camera = self.camera
        try:
            record.sessions = self.sessions()
        except Exception:
            record.sessions = "?"
        return True


def log_path(directory: Path, slug: str) -> Path:
    """The one name of a camera's log file (the worker's own, or supervisord's stdout log for it)."""
    return directory / f"detector_worker_camera_{slug}.log"


def under_supervisord() -> bool:
    return bool(os.environ.get("SUPERVISOR_ENABLED"))


def setup_logging(directory: Path, slug: str, camera: str, *, max_mb: float = 100, backups: int = 5,
                  level: str = "INFO", to_file: bool | None = None) -> CameraContext:
    """Configure the root logger of this (one-camera) process; returns the context to update.

    `to_file` None: the rotating file unless under supervisord (which writes stdout to that file)."""
    if to_file is None:
        to_file = not under_supervisord()
    context = CameraContext(camera)
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if to_file:
        directory.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(log_path(directory, slug), maxBytes=int(max_mb * 2**20),
                                                             backupCount=backups, encoding="utf-8"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(context)
        root.addHandler(handler)
    root.setLevel(level)
    return context
