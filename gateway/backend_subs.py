"""The backend's subscription (protocol model) as the gateway plans with it."""

from __future__ import annotations

from detector_worker.config.spec import Crop, ModelRef, SourceSettings

from . import protocol as p
from .desired import BackendSubscription

# Older cropX/cropY give only the top-left: crop to the frame's own edges. Beyond every offset the
# protocol accepts (0 … MAX_CROP_COORD), so x1 < x2 always holds; the worker clips it to the frame.
LEGACY_CROP_EDGE = p.MAX_CROP_COORD + 1


def to_backend_subscription(sub: p.Subscription) -> BackendSubscription:
    display_id, camera_id = p.split_subscription_identifier(sub.subscription_identifier)
    if sub.rtsp_url is not None:
        source = SourceSettings(kind="rtsp", url=sub.rtsp_url)
    else:
        assert sub.snapshot_url is not None
        source = SourceSettings(kind="snapshot", url=sub.snapshot_url, snapshot_interval_ms=sub.snapshot_interval)
    crop = None
    if sub.crop is not None:
        c = sub.crop
        crop = Crop(x1=c.x1, y1=c.y1, x2=c.x2 if c.x2 is not None else LEGACY_CROP_EDGE,
                    y2=c.y2 if c.y2 is not None else LEGACY_CROP_EDGE)
    model = ModelRef(url=sub.model_url, id=sub.model_id, name=sub.model_name)
    return BackendSubscription(sub.subscription_identifier, display_id, camera_id, source, model, crop)
