"""Values at and past every limit, over a real fleet: each refused or handled on its own, and the next
normal change still applies (one bad value once wedged every later change)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detector_worker import limits
from detector_worker.naming import camera_slug
from tests.fleet import Backend, Fleet
from tests.hostile.conftest import MODEL_ID, MODEL_URL
from tests.rtsp import free_port

pytestmark = [pytest.mark.hostile, pytest.mark.slow]
# Two camera ids whose program names collide (the slug's 40-bit hash; found by a birthday search).
SLUG_TWINS = ("cam ??!!??!!!!!?!?!!!!!", "cam ??!??!!!!????!?!?!!")


def item(display: str, camera: str, model_url: str = MODEL_URL) -> dict[str, Any]:
    return {"subscriptionIdentifier": f"{display};{camera}", "rtspUrl": f"rtsp://127.0.0.1:{DEAD_PORT}/x",
            "modelUrl": model_url, "modelId": MODEL_ID}


DEAD_PORT = free_port()


@pytest.fixture
def fleet(tmp_path: Path, hostile_model_cache: Path, redis_url: str, database_url: str) -> Iterator[Fleet]:
    models = tmp_path / "models"
    models.mkdir()
    os.mkfifo(models / "fifo.mpta")
    f = Fleet(tmp_path / "fleet", model_cache=hostile_model_cache, redis_url=redis_url, database_url=database_url,
              extra={"models": {"model_dirs": [str(models), str(Path(MODEL_URL.removeprefix("file://")).parent)]}})
    f.models_dir = models  # type: ignore[attr-defined]
    try:
        yield f.start()
    finally:
        f.stop()


def test_every_limit_is_refused_per_item_and_the_next_change_applies(fleet: Fleet) -> None:
    assert camera_slug(SLUG_TWINS[0]) == camera_slug(SLUG_TWINS[1])
    fifo = (fleet.models_dir / "fifo.mpta").as_uri()  # type: ignore[attr-defined]
    longest = "c" * limits.MAX_ID
    b = Backend(fleet.connect())
    b.send({"type": "setSubscriptionList", "subscriptions": [
        item("d" * 256, "c" * 256),  # a 513-character identifier
        item("d1", "c" * 200),  # a 200-character camera id
        item("d2", longest),  # exactly at the limit: runs
        item("d3", SLUG_TWINS[0]),
        item("d4", SLUG_TWINS[1]),  # same program name as d3's camera
        item("d5", "fifo-cam", fifo),
    ]})
    errors = b.wait_for(lambda: len(b.of_type("error")) >= 4 and b.of_type("error"), 20, "four refusals")
    refused = {(e["error"]["code"], e["error"].get("subscriptionIdentifier") or e["error"].get("index"))
               for e in errors}
    assert refused == {("invalid_message", 0), ("invalid_message", 1),  # invalid ids are not echoed: the index is
                       ("conflict", f"d4;{SLUG_TWINS[1]}"), ("invalid_message", "d5;fifo-cam")}
    fleet.wait_for(lambda: set(fleet.cameras()) == {longest, SLUG_TWINS[0]}, 30, "the two valid cameras planned")
    # a normal change right after: applies
    b.send({"type": "subscribe", "payload": item("d9", "cam-9")})
    fleet.wait_for(lambda: fleet.programs().get("camera-cam-9", ("", 0))[0] in ("STARTING", "RUNNING"), 30,
                   "cam-9's program")
    b.send({"type": "unsubscribe", "payload": {"subscriptionIdentifier": f"d2;{longest}"}})
    fleet.wait_for(lambda: longest not in fleet.cameras(), 30, "the longest id removed again")
