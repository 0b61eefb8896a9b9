"""A tiny append-only JSON-lines recorder for the taps: records go to a deque (thread-safe, no
lock on the hot path) and a daemon thread writes them out every 0.2 s; what is left at exit is
written by an atexit hook (a kill -9 loses at most the last 0.2 s)."""

from __future__ import annotations

import atexit
import collections
import json
import threading
import time
from pathlib import Path
from typing import Any


class TapLog:
    def __init__(self, path: Path, interval: float = 0.2) -> None:
        self.path = path
        self.records: collections.deque[list[Any]] = collections.deque()
        self._interval = interval
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="bench-tap", daemon=True).start()
        atexit.register(self.flush)

    def add(self, *record: Any) -> None:
        self.records.append(list(record))

    def flush(self) -> None:
        with self._lock:
            lines = []
            while self.records:
                lines.append(json.dumps(self.records.popleft()))
            if lines:
                with self.path.open("a") as f:
                    f.write("\n".join(lines) + "\n")

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            self.flush()
