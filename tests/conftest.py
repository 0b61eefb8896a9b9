"""Shared fixtures: offline Ultralytics, generated footage, a real RTSP server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from detector_worker.synthetic.offline import prepare_ultralytics

prepare_ultralytics()  # before anything imports ultralytics
# Without these, OpenCV probes an RTSP stream for ~3 s and silently uses UDP.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|analyzeduration;0|probesize;32")

from detector_worker.synthetic.video import make_clip  # noqa: E402
from tests.rtsp import RtspServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
# Two demo-like cameras whose vehicles can never be confused: disjoint brands.
CAMERA_BRANDS = {
    "cam-a": ("Aurex", "Borvik", "Castell", "Delmar"),
    "cam-b": ("Elvora", "Fenwick", "Gantry", "Hollis"),
}

ClipFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def clip_factory(tmp_path_factory: pytest.TempPathFactory) -> ClipFactory:
    """make(name, seed, seconds=..., **scene options) -> .mp4 path, rendered once per session."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("clips")

    def make(name: str, seed: int, seconds: float = 20.0, **options: object) -> Path:
        if name not in cache:
            path = root / f"{name}.mp4"
            make_clip(path, seed, seconds, **options)  # type: ignore[arg-type]
            cache[name] = path
        return cache[name]

    return make


@pytest.fixture(scope="session")
def camera_clips(clip_factory: ClipFactory) -> dict[str, Path]:
    """Two 30 s held-out clips (seeds never trained on), stop/pass visits, disjoint brands."""
    return {
        name: clip_factory(name, seed, 30.0, kinds=["stop", "pass", "stop"], brands=list(brands))
        for (name, brands), seed in zip(CAMERA_BRANDS.items(), (7101, 7202), strict=True)
    }


@pytest.fixture
def rtsp_server(camera_clips: dict[str, Path]) -> Iterator[RtspServer]:
    """A real GStreamer RTSP server looping both camera clips; kill/restart/freeze/thaw it freely."""
    with RtspServer(camera_clips) as server:
        yield server


@pytest.fixture
def redis_url() -> str:
    """The test Redis (REDIS_URL; `make test` starts a throwaway one when none answers)."""
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def database_url() -> Iterator[str]:
    """A DSN whose search_path is a fresh schema of the test PostgreSQL, dropped afterwards."""
    with private_schema_url() as url:
        yield url


@contextlib.contextmanager
def private_schema_url() -> Iterator[str]:
    """A fresh schema of the test PostgreSQL (DATABASE_URL), as a DSN whose search_path is it."""
    import uuid

    import psycopg2

    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(base)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()
