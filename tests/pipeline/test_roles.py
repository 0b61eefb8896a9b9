"""Result roles (`resultRole`) and the keys that mean something at one level of the pipeline tree only."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import cv2
import pytest

from detector_worker.pipeline.engine import PipelineInstance
from detector_worker.pipeline.models import DetectedObject
from detector_worker.pipeline.schema import PipelineConfigError, parse_pipeline
from detector_worker.runtime import vehicle_result
from detector_worker.synthetic.standin import BODY, BRAND, standin_pipeline
from tests.pipeline.conftest import crop_sizes
from tests.pipeline.factories import cycle

MAKE, SHAPE = "make_classifier_v2", "shape_classifier_v2"  # names that say nothing about the role


def shipped() -> dict[str, Any]:
    return standin_pipeline(*crop_sizes())


def renamed(*, roles: bool) -> dict[str, Any]:
    """The stand-in pipeline with both classifiers renamed; with or without their resultRole."""
    data = json.loads(json.dumps(shipped()).replace(BRAND, MAKE).replace(BODY, SHAPE))
    for branch, model in zip(data["pipeline"]["branches"], (BRAND, BODY), strict=True):
        branch["modelFile"] = f"{model}.pt"  # the same weights under another modelId
        if not roles:
            branch.pop("resultRole")
    return data


def without_roles() -> dict[str, Any]:
    data = shipped()
    for branch in data["pipeline"]["branches"]:
        branch.pop("resultRole")
    return data


def stopped_vehicle(clip: Path) -> tuple[Any, dict[str, DetectedObject], str, str]:
    """A frame of `clip` with a standing vehicle, its true boxes as detections, its brand and body type."""
    truth = json.loads(clip.with_suffix(".json").read_text())
    vehicle = next(v for v in truth["vehicles"] if v["kind"] == "stop")
    index = (vehicle["stopped_from"] + vehicle["stopped_to"]) // 2
    seen = next(o for o in truth["frames"][index] if o["vehicle_id"] == vehicle["vehicle_id"])
    cap = cv2.VideoCapture(str(clip))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok
    detections = {"Car": DetectedObject(tuple(seen["car_box"]), "Car", 0.95),
                  "Frontal": DetectedObject(tuple(seen["frontal_box"]), "Frontal", 0.9)}
    return frame, detections, vehicle["brand"], vehicle["body_type"]


def test_the_shipped_archive_names_its_roles() -> None:
    config = parse_pipeline(shipped())
    assert config.result_roles() == {BRAND: ("brand", False), BODY: ("body_type", False)}


@pytest.mark.slow  # make check skips it: exports the models to ONNX and renders footage
def test_a_renamed_model_with_result_role_still_fills_brand(exported_models: Path, camera_clips: dict[str, Path],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    config = parse_pipeline(renamed(roles=True), exported_models)
    with caplog.at_level(logging.WARNING):
        instance = PipelineInstance(config, exported_models)
    try:
        assert not [r for r in caplog.records if "resultRole" in r.getMessage()], "nothing guessed: no warning"
        frame, detections, brand, body = stopped_vehicle(camera_clips["cam-a"])
        branches = instance.run_branches(frame, detections)
    finally:
        instance.close()
    assert branches[MAKE].role == "brand" and branches[SHAPE].role == "body_type"
    assert (branches[MAKE].label, branches[SHAPE].label) == (brand, body)
    made = cycle(1, "x", "y", 0)
    made.branches = branches
    result = vehicle_result(made)
    assert (result.brand, result.body_type) == (brand, body)
    assert result.fields[f"{MAKE}.brand"] == brand and result.fields[f"{SHAPE}.body_type"] == body
    assert f"{MAKE}.body_type" not in result.fields


def test_a_node_without_result_role_falls_back_to_its_name_and_warns_once(
        exported_models: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = parse_pipeline(without_roles(), exported_models)
    assert config.result_roles() == {BRAND: ("brand", True), BODY: ("body_type", True)}
    with caplog.at_level(logging.WARNING):
        PipelineInstance(config, exported_models).close()
    warnings = [r.getMessage() for r in caplog.records if "resultRole" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert BRAND in warnings[0] and BODY in warnings[0] and '"resultRole"' in warnings[0]


def test_a_renamed_model_without_result_role_is_refused_where_a_template_needs_its_role() -> None:
    with pytest.raises(PipelineConfigError) as err:
        parse_pipeline(renamed(roles=False))
    message = str(err.value)
    assert message.startswith("pipeline.parallelActions[0].fields.car_brand: ")
    assert f"{{{MAKE}.brand}}" in message and '"resultRole": "brand"' in message


def test_an_explicit_role_wins_over_a_guess() -> None:
    data = shipped()
    data["pipeline"]["branches"][1]["resultRole"] = "brand"  # the body-type model, now declared the brand
    data["pipeline"]["branches"][0].pop("resultRole")
    data["pipeline"]["parallelActions"][0]["fields"] = {"car_brand": f"{{{BODY}.brand}}"}
    assert parse_pipeline(data).result_roles() == {BODY: ("brand", False)}


@pytest.mark.parametrize(("change", "problem"), [
    (lambda d: d["pipeline"]["branches"][0].update(resultRole="make"),
     "pipeline.branches[0].resultRole: must be 'brand' or 'body_type'"),
    (lambda d: d["pipeline"]["branches"][1].update(resultRole="brand"),
     "pipeline: resultRole 'brand' is given to more than one node"),
    (lambda d: d["pipeline"].update(resultRole="brand"),
     "pipeline.resultRole: the root node is the detector"),
    (lambda d: d["pipeline"].update(cropClass="Car"), "pipeline.cropClass: the root node is the detector"),
    (lambda d: d["pipeline"].update(parallel=True), "pipeline.parallel: the root node is the detector"),
    (lambda d: d["pipeline"]["branches"][1].update(stabilityThreshold=3),
     "pipeline.branches[1].stabilityThreshold: only the root node"),
    (lambda d: d["pipeline"]["branches"][1].update(expectedClasses=["Car"]),
     "pipeline.branches[1].expectedClasses: only the root node"),
    (lambda d: d["pipeline"].update(tracking=False),
     "pipeline.tracking: tracking cannot be turned off"),
    (lambda d: d["pipeline"].update(tracking={"enabled": False}),
     "pipeline.tracking.enabled: must be True"),
    (lambda d: d["pipeline"]["branches"][0].update(tracking={"maxAge": 3}),
     "pipeline.branches[0].tracking: only the root node tracks vehicles"),
])
def test_refused_with_the_path_named(change: Any, problem: str) -> None:
    data = copy.deepcopy(shipped())
    change(data)
    with pytest.raises(PipelineConfigError) as err:
        parse_pipeline(data)
    assert str(err.value).startswith(problem), str(err.value)


def test_root_tracking_settings_are_accepted() -> None:
    data = shipped()
    data["pipeline"]["tracking"] = {"enabled": True, "iouThreshold": 0.4, "maxAge": 20}
    tracking = parse_pipeline(data).pipeline.tracking
    assert tracking is not None and (tracking.iou_threshold, tracking.max_age) == (0.4, 20)
    data["pipeline"]["tracking"] = True
    assert parse_pipeline(data).pipeline.tracking is not None
