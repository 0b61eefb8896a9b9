"""Worker results as the backend's messages: one conversion each, no state."""

from __future__ import annotations

from datetime import UTC, datetime

from detector_worker.comms.messages import DisplayDetection, SessionResult, VehicleResult

from .protocol import DetectionBody, DetectionData, ImageDetection, PatchSession, PatchSessionPayload


def _vehicle_fields(v: VehicleResult) -> dict[str, object]:
    return {"carBrand": v.brand, "bodyType": v.body_type, "carBrandConfidence": v.brand_confidence,
            "bodyTypeConfidence": v.body_type_confidence}


def image_detection(det: DisplayDetection) -> ImageDetection:
    """`imageDetection` for one display: the original's fields, our boxes and track id beside them,
    and the session (when bound) with the JSON type the backend gave it."""
    v = det.vehicle
    body = DetectionBody.model_validate({
        **_vehicle_fields(v), "carBox": v.car_box, "frontalBox": v.frontal_box, "trackId": det.track_id,
        "confidence": round(v.confidence, 4), "sessionId": det.session_id, "cameraId": det.camera})
    return ImageDetection(subscription_identifier=det.subscription_identifier,
                          timestamp=datetime.fromtimestamp(det.captured_at, UTC),
                          data=DetectionData(detection=body, model_id=det.model_id, model_name=det.model_name))


def patch_session(result: SessionResult) -> PatchSession:
    """`patchSession` (only when enabled): the vehicle's result is stored under the session."""
    data: dict[str, object] = {**_vehicle_fields(result.vehicle), "imageKey": result.image_key,
                               "trackId": result.track_id, "displayIdentifier": result.display_id,
                               "subscriptionIdentifier": result.subscription_identifier}
    return PatchSession(payload=PatchSessionPayload(session_id=result.session_id, data=data))
