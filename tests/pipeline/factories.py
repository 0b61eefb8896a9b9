"""Hand-made pipeline results for tests of sessions, actions and stores (no models involved)."""

from __future__ import annotations

import time

import numpy as np

from detector_worker.pipeline.engine import BranchResult, VehicleCycle
from detector_worker.pipeline.models import DetectedObject
from detector_worker.synthetic.standin import BODY, BRAND


def cycle(track_id: int, brand: str, body: str, colour: int) -> VehicleCycle:
    """A vehicle's cycle whose crops are filled with `colour`, so saved images can be told apart."""
    car = np.full((60, 90, 3), colour, np.uint8)
    front = np.full((20, 90, 3), colour, np.uint8)
    return VehicleCycle(
        track_id=track_id, captured_at=time.time(), vehicle_class="Car",
        detections={"Car": DetectedObject((0, 0, 90, 60), "Car", 0.95),
                    "Frontal": DetectedObject((0, 40, 90, 60), "Frontal", 0.9)},
        branches={BRAND: BranchResult(BRAND, brand, 0.99, "brand"),
                  BODY: BranchResult(BODY, body, 0.98, "body_type")},
        crops={"Car": car, "Frontal": front}, inference_ms=5.0)
