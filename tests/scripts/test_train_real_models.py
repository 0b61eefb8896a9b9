"""`make models-real` without training: its archive's pipeline.json, and bench/quantize.py's AP50."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bench.quantize import ap50
from detector_worker.pipeline.schema import parse_pipeline
from detector_worker.synthetic.datasets import classification_crops, render_sample

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_real_models", ROOT / "scripts" / "train_real_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_real_models", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("detector_file", ["car_frontal_detection_v8n.pt", "car_frontal_detection_v8n.onnx"])
def test_the_real_size_pipeline_is_the_standin_one_with_its_own_ids_and_224_crops(script: ModuleType,
                                                                                   detector_file: str) -> None:
    config = parse_pipeline(script.real_pipeline(224, detector_file))
    root = config.pipeline
    assert (root.model_id, root.model_file) == (script.DET, detector_file)
    branches = {b.model_id: b for b in root.branches}
    assert set(branches) == {script.BRAND_CLS, script.BODY_CLS}
    assert branches[script.BRAND_CLS].result_role == "brand"
    assert branches[script.BODY_CLS].result_role == "body_type"
    assert all(b.resize_target == (224, 224) for b in branches.values())
    text = str(script.real_pipeline(224, detector_file))
    assert "_v1" not in text  # no stand-in id left, templates included


def test_frames_render_at_the_size_asked() -> None:
    assert render_sample(1, 0, 1280, 720).image.shape == (720, 1280, 3)
    crops = classification_crops(1, 0, 224, 224, size=(1280, 720))
    assert crops is not None and crops[0].shape == crops[2].shape == (224, 224, 3)


def test_ap50_as_ultralytics_computes_it() -> None:
    truth = [[((0.0, 0.0, 10.0, 10.0), 0)], [((20.0, 20.0, 40.0, 40.0), 0)]]
    perfect = [[((0.0, 0.0, 10.0, 10.0), 0, 0.9)], [((21.0, 21.0, 40.0, 40.0), 0, 0.8)]]
    assert ap50(perfect, truth, 1) == pytest.approx([0.995])  # Ultralytics' interpolation tops out there
    assert ap50([[], []], truth, 1) == [0.0]  # nothing predicted: 0, not the interpolation's 0.5
    # a confident false positive first: precision 0.5 then 2/3 at full recall
    fp_first = [[((50.0, 50.0, 60.0, 60.0), 0, 0.99), *perfect[0]], perfect[1]]
    assert 0.6 < ap50(fp_first, truth, 1)[0] < 0.7
    # one box can match one truth only: a duplicate is a false positive
    duplicate = [[*perfect[0], ((0.0, 0.0, 10.0, 10.0), 0, 0.85)], perfect[1]]
    assert 0.8 < ap50(duplicate, truth, 1)[0] < 0.9
