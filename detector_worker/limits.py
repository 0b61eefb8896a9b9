"""Size limits of every identifier and value that crosses a boundary, defined once.

The backend's protocol, the worker spec, cameras.yaml and the bus messages all check against
these, so a value one layer accepts can never be refused by the next one (a 513-character
subscription identifier that passed the protocol but not the spec once wedged every change).
"""

from __future__ import annotations

MAX_ID = 128  # a display id, a camera id (each half of a subscriptionIdentifier)
MAX_SUBSCRIPTION_ID = 2 * MAX_ID + 1  # "<displayId>;<cameraId>"
MAX_URL = 4096
MAX_MODEL_ID = 128  # a string modelId
MAX_MODEL_ID_INT = 2**63 - 1  # an integer modelId
MAX_MODEL_NAME = 256
MAX_SESSION_ID = 256
MAX_STAGE = 256
MAX_RESULT_MESSAGE = 16_384
MAX_CROP_COORD = 100_000
MAX_DISPLAYS_PER_CAMERA = 32
MAX_SUBSCRIPTIONS = 1000  # one backend's subscriptions at once
MIN_SNAPSHOT_INTERVAL_MS = 100
MAX_SNAPSHOT_INTERVAL_MS = 3_600_000
