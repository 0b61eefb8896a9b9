"""Rate-limited logging of repeated bad input: one line per kind and interval, with a count of the rest.

Anyone who can send the gateway garbage could otherwise fill its log (and the disk) at wire speed.
"""

from __future__ import annotations

import time


class LogLimiter:
    def __init__(self, interval_s: float = 10.0, max_keys: int = 1000) -> None:
        self._interval = interval_s
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}  # lines held back per kind since its last line
        self._reported = 0

    def allow(self, key: str) -> bool:
        """True when a line for `key` may be logged now; otherwise it is counted as suppressed."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if last is None and len(self._last) >= self._max_keys:
            self._last.clear()  # bounded: many distinct keys only cost a few extra lines
            self._held.clear()
        self._last[key] = now
        self._reported = self._held.pop(key, 0)
        return True

    def suffix(self) -> str:
        """" (N similar lines suppressed)" for the line just allowed, when there were any."""
        return f" ({self._reported} similar line(s) suppressed)" if self._reported else ""
