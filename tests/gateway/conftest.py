"""A model cache shared by the fleet tests: the stand-in archive unpacked (and converted) once per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector_worker.synthetic.standin import ARCHIVE_NAME
from tests.conftest import MODELS

MODEL_URL = (MODELS / ARCHIVE_NAME).as_uri()
CACHED_MODEL_IDS = ("standin-test", 102, "standin-static")  # the ids the fleet tests name the archive by


@pytest.fixture(scope="session")
def gateway_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detector_worker.pipeline.archive import open_archive
    from detector_worker.pipeline.export import prepare_archive_dir

    cache = tmp_path_factory.mktemp("gw-model-cache")
    for model_id in CACHED_MODEL_IDS:
        model_dir, _ = open_archive(MODEL_URL, cache, model_id)
        prepare_archive_dir(model_dir)
    return cache
