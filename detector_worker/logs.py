"""The worker's log: one rotating file per camera, plus stdout for `supervisorctl tail`.

Every line carries the camera and the current sessions of its displays, so a line read alone
(or grepped across cameras) still says whose it is.
"""

from __future__ import annotations

import logging
import logging.handlers
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
    return directory / f"detector_worker_camera_{slug}.log"


def setup_logging(directory: Path, slug: str, camera: str, *, max_mb: float = 100, backups: int = 5,
                  level: str = "INFO") -> CameraContext:
    """Configure the root logger of this (one-camera) process; returns the context to update."""
    directory.mkdir(parents=True, exist_ok=True)
    context = CameraContext(camera)
    formatter = logging.Formatter(FORMAT)
    file_handler = logging.handlers.RotatingFileHandler(log_path(directory, slug), maxBytes=int(max_mb * 2**20),
                                                        backupCount=backups, encoding="utf-8")
    stdout_handler = logging.StreamHandler(sys.stdout)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in (file_handler, stdout_handler):
        handler.setFormatter(formatter)
        handler.addFilter(context)
        root.addHandler(handler)
    root.setLevel(level)
    return context
