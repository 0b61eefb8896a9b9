"""Safe names derived from untrusted identifiers (camera ids come from the network).

A camera id becomes a slug used in supervisord program names, file names and log names. The
slug is stable (same id, same slug, across restarts), made only of `[a-z0-9_-]`, at most 60
characters, never a supervisord keyword, and unique: whenever the id had to be altered to fit,
a short hash of the original id is appended, so two ids can't collapse into one slug. An id that
already ends like such a hash (`-` and 10 hex digits) gets one too: kept as it is, "x-y-887fcea6a8"
would be the slug of "x y".
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^a-z0-9_-]+")
_RESERVED = {"all", "supervisord", "gateway", "events"}  # "events": the camera-events listener
MAX_SLUG = 60
_HASHED = re.compile(r"-[0-9a-f]{10}$")  # how an altered id's slug ends


def camera_slug(camera_id: str) -> str:
    if not camera_id:
        raise ValueError("camera id must not be empty")
    cleaned = _UNSAFE.sub("-", camera_id.lower()).strip("-_")
    digest = hashlib.sha256(camera_id.encode()).hexdigest()[:10]
    if cleaned == camera_id and len(cleaned) <= MAX_SLUG and cleaned not in _RESERVED and not _HASHED.search(cleaned):
        return cleaned
    head = cleaned[: MAX_SLUG - len(digest) - 1].strip("-_") or "camera"
    return f"{head}-{digest}"
