"""Backoff: growth, cap, jitter bounds, determinism with a seeded Random, reset."""

from __future__ import annotations

import random

import pytest

from detector_worker.video.backoff import Backoff


def test_no_jitter_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 30.0, jitter="none")
    assert [backoff.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.attempt == 9
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next_delay() == 0.5


def test_full_jitter_stays_under_the_growing_ceiling_and_is_deterministic() -> None:
    backoff = Backoff(0.5, 30.0, jitter="full", rng=random.Random(7))
    delays = []
    for _ in range(200):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling <= 30.0
        delays.append(delay)
    assert max(delays[:3]) <= 2.0 and max(delays[20:]) > 15  # grows, then spreads over [0, cap]
    again = Backoff(0.5, 30.0, jitter="full", rng=random.Random(7))
    assert [again.next_delay() for _ in range(200)] == delays


def test_decorrelated_jitter_stays_between_base_and_cap_and_is_deterministic() -> None:
    def run(seed: int) -> list[float]:
        backoff = Backoff(0.5, 30.0, jitter="decorrelated", rng=random.Random(seed))
        return [backoff.next_delay() for _ in range(200)]

    delays = run(3)
    assert all(0.5 <= d <= 30.0 for d in delays)
    assert delays[0] <= 1.5 and max(delays) > 20  # starts near base, reaches the cap region
    assert run(3) == delays and run(4) != delays


def test_many_failures_do_not_overflow() -> None:
    backoff = Backoff(0.5, 30.0, jitter="none")
    for _ in range(5000):
        backoff.next_delay()
    assert backoff.next_delay() == 30.0


@pytest.mark.parametrize("args", [(0.0, 1.0), (2.0, 1.0), (-1.0, 5.0)])
def test_rejects_bad_bounds(args: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(*args)
