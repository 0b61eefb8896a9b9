"""Fixtures for the model layer: copies of the committed models, exported to ONNX in a temp dir."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from detector_worker.pipeline.export import export_in_subprocess
from detector_worker.synthetic.standin import ARCHIVE_NAME, BODY, BRAND, DETECTOR
from tests.conftest import MODELS

MODEL_IDS = (DETECTOR, BRAND, BODY)


def crop_sizes() -> tuple[int, int]:
    """(brand, body) resizeTarget side of the committed archive: the crops the pipeline feeds."""
    archive = MODELS / ARCHIVE_NAME
    if not archive.is_file():
        return 96, 64  # scripts/train_models.py's Plan
    with zipfile.ZipFile(archive) as zf:
        branches = {b["modelId"]: b for b in json.loads(zf.read("pipeline.json"))["pipeline"]["branches"]}
    return int(branches[BRAND]["resizeTarget"][0]), int(branches[BODY]["resizeTarget"][0])


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp dir holding the committed .pt files and their .onnx exports (never written into models/).

    Exported through the CLI in a child process, as a worker does.
    """
    missing = [m for m in MODEL_IDS if not (MODELS / f"{m}.pt").is_file()]
    if missing:
        pytest.skip(f"committed models missing from {MODELS}: {missing} (run `make models`)")
    directory = tmp_path_factory.mktemp("models")
    for model_id in MODEL_IDS:
        shutil.copyfile(MODELS / f"{model_id}.pt", directory / f"{model_id}.pt")
    made = export_in_subprocess(directory)
    assert sorted(p.name for p in made) == sorted(f"{m}.onnx" for m in MODEL_IDS)
    return directory
