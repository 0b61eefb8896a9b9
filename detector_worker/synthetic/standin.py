"""The stand-in pipeline archive: `pipeline.json` in the backend's format plus the three models.

The archive is packed deterministically (sorted members, fixed timestamps), so repacking the
same files gives the same bytes and git sees no change.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

ARCHIVE_NAME = "car_frontal_pipeline.mpta"
DETECTOR = "car_frontal_detection_v1"
BRAND = "car_brand_cls_v1"
BODY = "car_bodytype_cls_v1"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def standin_pipeline(brand_size: int, body_size: int) -> dict[str, Any]:
    """pipeline.json of the stand-in: detector at the root, classifiers as branches on its crops.

    The store credentials here are the local defaults; a deployment overrides them from its own
    configuration, so no real credential ever needs to live in an archive.
    """
    return {
        "redis": {"host": "127.0.0.1", "port": 6379, "password": None, "db": 0},
        "postgresql": {"host": "127.0.0.1", "port": 5432, "database": "inference",
                       "username": "postgres", "password": None},
        "pipeline": {
            "modelId": DETECTOR,
            "modelFile": f"{DETECTOR}.pt",
            "crop": False,
            "triggerClasses": ["Car", "Frontal"],
            "minConfidence": 0.6,
            "multiClass": True,
            "expectedClasses": ["Car", "Frontal"],
            "stabilityThreshold": 5,
            "actions": [
                {"type": "redis_save_image", "region": "Frontal",
                 "key": "inference:{display_id}:{timestamp}:{session_id}:{filename}",
                 "expire_seconds": 600, "format": "jpeg", "quality": 90},
                {"type": "redis_publish", "channel": "car_detections",
                 "message": json.dumps({"event": "frontal_detected", "display_id": "{display_id}",
                                        "session_id": "{session_id}", "image_key": "{image_key}"})},
            ],
            "branches": [
                {"modelId": BRAND, "modelFile": f"{BRAND}.pt", "crop": True, "cropClass": "Frontal",
                 "resizeTarget": [brand_size, brand_size], "triggerClasses": ["Frontal"],
                 "resultRole": "brand", "minConfidence": 0.5, "parallel": True, "branches": []},
                {"modelId": BODY, "modelFile": f"{BODY}.pt", "crop": True, "cropClass": "Car",
                 "resizeTarget": [body_size, body_size], "triggerClasses": ["Car"],
                 "resultRole": "body_type", "minConfidence": 0.5, "parallel": True, "branches": []},
            ],
            "parallelActions": [
                {"type": "postgresql_update_combined", "table": "car_frontal_info",
                 "key_field": "session_id", "key_value": "{session_id}",
                 "waitForBranches": [BRAND, BODY],
                 "fields": {"car_brand": f"{{{BRAND}.brand}}", "car_body_type": f"{{{BODY}.body_type}}"}},
            ],
        },
    }


def pack_archive(out: Path, pipeline: dict[str, Any], files: dict[str, Path]) -> Path:
    """Write a .mpta: pipeline.json plus `files` (member name → source), reproducibly."""
    members: dict[str, bytes] = {"pipeline.json": (json.dumps(pipeline, indent=2) + "\n").encode()}
    for name, src in files.items():
        members[name] = src.read_bytes()
    tmp = out.with_name(out.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])
    tmp.replace(out)
    return out


def pack_standin_pipeline(models_dir: Path, brand_size: int, body_size: int) -> Path:
    files = {f"{m}.pt": models_dir / f"{m}.pt" for m in (DETECTOR, BRAND, BODY)}
    return pack_archive(models_dir / ARCHIVE_NAME, standin_pipeline(brand_size, body_size), files)
