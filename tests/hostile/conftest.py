"""Fixtures for the hostile-input suite: one real fleet per module, cheap workers, a prepared model cache.

Workers point at a dead RTSP URL (a closed local port), so each one loads the stand-in pipeline
once and then only retries its stream: cheap on the 2 shared cores.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector_worker.synthetic.standin import ARCHIVE_NAME
from tests.conftest import MODELS, private_schema_url
from tests.rtsp import free_port

MODEL_URL = (MODELS / ARCHIVE_NAME).as_uri()
MODEL_ID = "standin-test"
PROJECT_CACHE = Path(__file__).resolve().parents[2] / "build" / "model-cache"


def _reuse_project_onnx(model_dir: Path) -> None:
    """Copy .onnx files exported earlier for byte-identical .pt files (skips a torch export)."""
    for pt in model_dir.glob("*.pt"):
        for cached_pt in PROJECT_CACHE.glob(f"*/{pt.name}"):
            onnx = cached_pt.with_suffix(".onnx")
            if onnx.is_file() and filecmp.cmp(pt, cached_pt, shallow=False):
                shutil.copyfile(onnx, pt.with_suffix(".onnx"))  # a fresh mtime: newer than the .pt
                break


@pytest.fixture(scope="session")
def hostile_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache holding the stand-in archive (MODEL_ID) unpacked with its ONNX models."""
    from detector_worker.pipeline.archive import open_archive
    from detector_worker.pipeline.export import prepare_archive_dir

    cache = tmp_path_factory.mktemp("hostile-model-cache")
    model_dir, _ = open_archive(MODEL_URL, cache, MODEL_ID)
    _reuse_project_onnx(model_dir)
    prepare_archive_dir(model_dir)  # a no-op when the copies are fresh
    return cache


@pytest.fixture(scope="module")
def module_redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def module_database_url() -> Iterator[str]:
    """A fresh schema of the test PostgreSQL for the module's fleet, dropped afterwards."""
    with private_schema_url() as url:
        yield url


@pytest.fixture(scope="module")
def dead_rtsp_url() -> str:
    """An RTSP URL on a port nothing listens on: workers stay up, retrying with backoff."""
    return f"rtsp://127.0.0.1:{free_port()}/dead"
