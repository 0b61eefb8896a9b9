"""Fixtures of the fault suite: stop-and-go footage, a prepared model cache, fleets that are
always torn down (even after their supervisord was killed)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from detector_worker.synthetic.standin import ARCHIVE_NAME
from tests.conftest import MODELS, ClipFactory
from tests.faults.harness import RecordingBackend, reap
from tests.fleet import Fleet

MODEL_URL = (MODELS / ARCHIVE_NAME).as_uri()
# Three stop visits one after another, looped by the RTSP server: a detection every 10.7-11.8 s.
# (Seed picked for the shortest longest gap among 400; see harness.normal_gap_s.)
STOP_CLIP_SEED = 8234


@pytest.fixture(scope="session")
def fault_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detector_worker.pipeline.archive import open_archive
    from detector_worker.pipeline.export import prepare_archive_dir

    cache = tmp_path_factory.mktemp("fault-model-cache")
    model_dir, _ = open_archive(MODEL_URL, cache, "standin-test")
    prepare_archive_dir(model_dir)  # the ONNX export, once, before any worker needs it
    return cache


@pytest.fixture(scope="session")
def stop_clip(clip_factory: ClipFactory) -> Path:
    """Only stopping vehicles, the first within ~4 s: detections come as often as the scene allows."""
    return clip_factory("fault-stops", STOP_CLIP_SEED, 1.0, kinds=["stop", "stop", "stop"])


@pytest.fixture
def tag() -> str:
    """Unique in session ids and Redis keys, so runs sharing a store never see each other's."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def make_fleet(tmp_path: Path, fault_model_cache: Path) -> Iterator[Callable[..., Fleet]]:
    """make_fleet(redis_url=..., database_url=...) -> a started Fleet, stopped (or reaped) afterwards.

    process_cleanup_timeout is 30 s: a backend (or a restarted gateway's backend) that returns
    within that keeps its cameras.
    """
    fleets: list[Fleet] = []

    def make(*, redis_url: str, database_url: str, **options: Any) -> Fleet:
        # the fault tests learn that a result was written from patchSession, which the backend must ask for
        options.setdefault("extra", {"backend": {"patch_session": True}})
        fleet = Fleet(tmp_path / f"fleet-{len(fleets)}", model_cache=fault_model_cache, redis_url=redis_url,
                      database_url=database_url, cleanup_timeout=30.0, **options)
        fleets.append(fleet)
        return fleet.start()

    yield make
    for fleet in fleets:
        with contextlib.suppress(Exception):
            fleet.stop()
        reap(fleet)


@pytest.fixture
def backends() -> Iterator[list[RecordingBackend]]:
    made: list[RecordingBackend] = []
    yield made
    for b in made:
        b.close()


@pytest.fixture
def start_backend(backends: list[RecordingBackend], tag: str) -> Callable[..., RecordingBackend]:
    def start(fleet: Fleet, subs: list[dict[str, Any]], bind: set[str]) -> RecordingBackend:
        backend = RecordingBackend(fleet, subs, bind=bind, tag=tag)
        backends.append(backend)
        return backend.start()

    return start
