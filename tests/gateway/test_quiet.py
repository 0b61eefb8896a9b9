"""Repeated bad input is logged once per kind and interval, with a count of what was held back."""

from __future__ import annotations

import time

from gateway.quiet import LogLimiter


def test_one_line_per_kind_and_interval_with_the_suppressed_count() -> None:
    quiet = LogLimiter(interval_s=0.2)
    assert quiet.allow("malformed") and quiet.suffix() == ""
    assert not any(quiet.allow("malformed") for _ in range(1000)), "a flood is held back"
    assert quiet.allow("hello:cam-1"), "another kind has its own interval"
    time.sleep(0.25)
    assert quiet.allow("malformed")
    assert quiet.suffix() == " (1000 similar line(s) suppressed)"


def test_many_distinct_keys_stay_bounded() -> None:
    quiet = LogLimiter(interval_s=60, max_keys=10)
    assert all(quiet.allow(f"k{i}") for i in range(100))
    assert len(quiet._last) <= 10
