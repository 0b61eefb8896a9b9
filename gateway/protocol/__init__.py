"""The controlling backend's WebSocket protocol, as the gateway reads and writes it.

`incoming`: the backend's messages, read tolerantly into our own types; `parsing`: one frame →
one message or a ProtocolError; `outgoing`: what the gateway sends. docs/protocol.md says, for
every message, what is accepted, ignored and refused, and what the gateway answers.
"""

from detector_worker.config.fields import split_subscription_identifier

from .errors import ErrorCode, ProtocolError
from .incoming import (
    INCOMING_TYPES,
    IncomingMessage,
    PatchSessionResult,
    RefusedItem,
    RequestState,
    SetProgressionStage,
    SetSessionId,
    SetSubscriptionList,
    Subscribe,
    Unsubscribe,
    WireSubscription,
)
from .outgoing import (
    CameraConnection,
    DetectionBody,
    DetectionData,
    ErrorMessage,
    ImageDetection,
    OutgoingMessage,
    PatchSession,
    PatchSessionPayload,
    StateReport,
    dump_outgoing,
    error_message,
)
from .parsing import MAX_MESSAGE_BYTES, OUTGOING_TYPES, parse_incoming

__all__ = [
    "INCOMING_TYPES", "MAX_MESSAGE_BYTES", "OUTGOING_TYPES", "CameraConnection", "DetectionBody", "DetectionData",
    "ErrorCode", "ErrorMessage", "ImageDetection", "IncomingMessage", "OutgoingMessage", "PatchSession",
    "PatchSessionPayload", "PatchSessionResult", "ProtocolError", "RefusedItem", "RequestState",
    "SetProgressionStage", "SetSessionId", "SetSubscriptionList", "StateReport", "Subscribe", "Unsubscribe",
    "WireSubscription", "dump_outgoing", "error_message", "parse_incoming", "split_subscription_identifier",
]
