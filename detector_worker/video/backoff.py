"""Capped exponential backoff with jitter, for reconnecting to cameras.

Jitter spreads the reconnect attempts of many workers whose cameras went down together
(a switch reboot), so they don't hammer the recovering device in lock-step.
"""

from __future__ import annotations

import random
from typing import Literal

Jitter = Literal["full", "decorrelated", "none"]


class Backoff:
    """Delays for successive failed attempts: base, 2*base, 4*base, ... up to cap.

    jitter="full": uniform(0, ceiling) (AWS "full jitter").
    jitter="decorrelated": min(cap, uniform(base, 3 * previous delay)); never below base.
    jitter="none": exactly the ceiling (predictable, for tests and logs).
    Pass a seeded ``random.Random`` for deterministic jitter. Not thread-safe: one owner.
    """

    def __init__(
        self,
        base_s: float = 0.5,
        cap_s: float = 30.0,
        *,
        jitter: Jitter = "full",
        rng: random.Random | None = None,
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={base_s}, cap_s={cap_s}")
        if jitter not in ("full", "decorrelated", "none"):
            raise ValueError(f"unknown jitter {jitter!r}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.jitter: Jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0
        self._previous = base_s

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset()."""
        return self._attempt

    def ceiling(self) -> float:
        """The un-jittered delay for the next attempt."""
        # min() on the exponent first: 2**attempt overflows a float after ~1000 failures.
        return min(self.cap_s, self.base_s * 2.0 ** min(self._attempt, 64))

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; advances the sequence."""
        if self.jitter == "none":
            delay = self.ceiling()
        elif self.jitter == "full":
            delay = self._rng.uniform(0.0, self.ceiling())
        else:
            delay = min(self.cap_s, self._rng.uniform(self.base_s, self._previous * 3.0))
        self._previous = delay
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Call after a success: the next failure starts again from base_s."""
        self._attempt = 0
        self._previous = self.base_s
