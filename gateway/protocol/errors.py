"""How the gateway tells the backend that a message (or one item of it) was refused."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """The `code` of an `error` message (docs/protocol.md#errors)."""

    INVALID_JSON = "invalid_json"  # not UTF-8, not JSON, or JSON we refuse (NaN, duplicate keys, too deep)
    UNKNOWN_TYPE = "unknown_type"  # a JSON object whose `type` we do not handle
    INVALID_MESSAGE = "invalid_message"  # a known type (or one item of it) whose fields break a rule
    TOO_LARGE = "too_large"  # the message is over the size limit
    LIMIT_EXCEEDED = "limit_exceeded"  # valid, but over a gateway limit
    CONFLICT = "conflict"  # valid, but its camera is already watched through another source
    UNAUTHORIZED = "unauthorized"  # the connection is not allowed
    INTERNAL = "internal"  # the gateway failed; not the backend's fault


class ProtocolError(Exception):
    """A message (or one item of one) the gateway cannot accept. `message` is one line naming the field."""

    def __init__(self, code: ErrorCode | str, message: str, request_type: str | None = None, *,
                 subscription_identifier: str | None = None, index: int | None = None) -> None:
        super().__init__(code, message, request_type)
        self.code = ErrorCode(code)
        self.message = message
        self.request_type = request_type
        self.subscription_identifier = subscription_identifier
        self.index = index

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"
