"""Rules for the text values that cross a boundary, defined once for every layer.

The backend's protocol, the worker spec, cameras.yaml and the bus all use these types, so a
value one layer accepts is accepted by the next (see `detector_worker.limits`). Each rule
raises `ValueError` with a phrase that names no input (source URLs carry credentials).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, Field, PlainValidator

from .. import limits


def check_printable(value: str, *, allow: str = "") -> None:
    """No control, format, separator (other than ' '), private-use, unassigned or surrogate code points."""
    if value.isprintable():
        return
    for index, char in enumerate(value):
        if not char.isprintable() and char not in allow:
            if 0xD800 <= ord(char) <= 0xDFFF:
                raise ValueError(f"must be valid Unicode text (lone surrogate U+{ord(char):04X} at position {index})")
            raise ValueError(f"must not contain control or invisible characters "
                             f"(U+{ord(char):04X} at position {index})")


def check_identifier(value: str, what: str, limit: int) -> None:
    """Non-empty, at most `limit` characters, printable, no leading or trailing whitespace."""
    subject = f"{what} " if what else ""
    if not value:
        raise ValueError(f"{subject}must not be empty")
    if len(value) > limit:
        raise ValueError(f"{subject}must be at most {limit} characters (got {len(value)})")
    check_printable(value)
    if value != value.strip():
        raise ValueError(f"{subject}must not start or end with whitespace")


def _id_part(value: str) -> str:
    check_identifier(value, "", limits.MAX_ID)
    if ";" in value:
        raise ValueError('must not contain ";" (it separates display and camera in a subscriptionIdentifier)')
    return value


def split_subscription_identifier(value: str) -> tuple[str, str]:
    """`"<displayId>;<cameraId>"` → `(display_id, camera_id)`; ValueError when malformed."""
    check_printable(value)  # first, so a reported position counts from the start of the whole identifier
    if value.count(";") != 1:
        raise ValueError('must be "<displayId>;<cameraId>" with exactly one ";"')
    display_id, camera_id = value.split(";")
    check_identifier(display_id, 'display id (before ";")', limits.MAX_ID)
    check_identifier(camera_id, 'camera id (after ";")', limits.MAX_ID)
    return display_id, camera_id


def _subscription_identifier(value: str) -> str:
    split_subscription_identifier(value)
    return value


def is_subscription_identifier(value: object) -> bool:
    if not isinstance(value, str) or len(value) > limits.MAX_SUBSCRIPTION_ID:
        return False
    try:
        split_subscription_identifier(value)
    except ValueError:
        return False
    return True


def url_checker(schemes: tuple[str, ...], *, file_urls: bool = False,
                plain_paths: bool = False) -> Callable[[str], str]:
    """A validator for URLs with one of `schemes` (case-insensitive; the text itself is kept as sent).
    `plain_paths`: also accept a local path without a scheme (operator-written configuration only)."""
    expected = " or ".join(schemes) if len(schemes) < 3 else f"{', '.join(schemes[:-1])} or {schemes[-1]}"

    def check(value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        check_printable(value)
        try:
            parts = urllib.parse.urlsplit(value)
        except ValueError:
            raise ValueError("is not a valid URL") from None
        scheme = parts.scheme.lower()
        if not parts.scheme and plain_paths:
            return value
        if " " in value:
            raise ValueError("must not contain spaces (percent-encode them as %20)")
        if scheme not in schemes:
            if not parts.scheme and file_urls:
                raise ValueError(f"must be a URL with scheme {expected}, not a plain path (use file:///absolute/path)")
            raise ValueError(f"URL scheme must be {expected}")
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ValueError("file:// URL must name this host (file:///path or file://localhost/path)")
            if not parts.path.startswith("/"):
                raise ValueError("file:// URL must name an absolute path")
            return value
        if not parts.hostname:
            raise ValueError("URL must name a host")
        try:
            parts.port  # noqa: B018 (property access validates the port)
        except ValueError:
            raise ValueError("URL port must be a number from 0 to 65535") from None
        return value

    return check


def _model_id(value: object) -> int | str:
    """An integer or a string, kept as it came: the backend gets its modelId back with its own JSON type."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be an integer or a string")
    if isinstance(value, int):
        if not 0 <= value <= limits.MAX_MODEL_ID_INT:
            raise ValueError(f"must be between 0 and {limits.MAX_MODEL_ID_INT}")
        return value
    check_identifier(value, "", limits.MAX_MODEL_ID)
    return value


def _session_id(value: object) -> int | str:
    """An integer or a string, kept as it came (echoed back with its JSON type)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a string or an integer")
    if isinstance(value, int):
        if not -(2**63) <= value <= 2**63 - 1:
            raise ValueError("must fit in 64 bits")
        return value
    check_identifier(value, "", limits.MAX_SESSION_ID)
    return value


def _nullable_session_id(value: object) -> int | str | None:
    return None if value is None else _session_id(value)


def line_text(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters (got {len(value)})")
        check_printable(value)
        return value

    return check


def _free_text(value: str) -> str:
    if len(value) > limits.MAX_RESULT_MESSAGE:
        raise ValueError(f"must be at most {limits.MAX_RESULT_MESSAGE} characters (got {len(value)})")
    check_printable(value, allow="\t\n\r")
    return value


SubscriptionIdentifier = Annotated[str, Field(max_length=limits.MAX_SUBSCRIPTION_ID),
                                   AfterValidator(_subscription_identifier)]
DisplayId = Annotated[str, Field(max_length=limits.MAX_ID), AfterValidator(_id_part)]
CameraId = Annotated[str, Field(max_length=limits.MAX_ID), AfterValidator(_id_part)]
RtspUrl = Annotated[str, Field(max_length=limits.MAX_URL), AfterValidator(url_checker(("rtsp", "rtsps")))]
HttpUrl = Annotated[str, Field(max_length=limits.MAX_URL), AfterValidator(url_checker(("http", "https")))]
ModelUrl = Annotated[str, Field(max_length=limits.MAX_URL),
                     AfterValidator(url_checker(("http", "https", "file"), file_urls=True))]
ModelName = Annotated[str, Field(max_length=limits.MAX_MODEL_NAME), AfterValidator(line_text(limits.MAX_MODEL_NAME))]
ModelId = Annotated[int | str, PlainValidator(_model_id, json_schema_input_type=int | str)]
SessionId = Annotated[int | str, PlainValidator(_session_id, json_schema_input_type=int | str)]
NullableSessionId = Annotated[int | str | None,
                              PlainValidator(_nullable_session_id, json_schema_input_type=int | str | None)]
ProgressionStage = Annotated[str, Field(max_length=limits.MAX_STAGE), AfterValidator(line_text(limits.MAX_STAGE))]
ResultText = Annotated[str, Field(max_length=limits.MAX_RESULT_MESSAGE), AfterValidator(_free_text)]
CropCoord = Annotated[int, Field(ge=0, le=limits.MAX_CROP_COORD)]
SnapshotInterval = Annotated[int, Field(ge=limits.MIN_SNAPSHOT_INTERVAL_MS, le=limits.MAX_SNAPSHOT_INTERVAL_MS)]
