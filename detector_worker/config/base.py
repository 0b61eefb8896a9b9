"""The one strict base model and the one validation-error formatter of the project.

Configuration (worker specs, cameras.yaml, gateway settings, pipeline.json) is parsed once at
the edge into frozen models that reject unknown keys; every error becomes one line naming the
file and the field path (`cameras.cam-001.source.url: ...`). The backend's protocol uses the
same formatter, with its own tolerant models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

_IDENTIFIER_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_ECHO_CHARS = 60  # the most of any input string an error message quotes


class StrictModel(BaseModel):
    """Frozen, unknown keys rejected: configuration that people and the gateway write."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SpecError(Exception):
    """Configuration that cannot be used; the message is one line naming the file and the field."""


def quote(text: str, limit: int = _ECHO_CHARS) -> str:
    """`text` as an ASCII-only, JSON-quoted string of at most `limit` characters between the quotes
    (then "…"): safe to put in a log line or a message, whatever `text` holds."""
    pieces: list[str] = []
    used = 0
    for char in text:
        piece = json.dumps(char)[1:-1]  # escapes quotes, backslashes, controls, non-ASCII, lone surrogates
        if used + len(piece) > limit:
            return '"' + "".join(pieces) + '"…'
        pieces.append(piece)
        used += len(piece)
    return '"' + "".join(pieces) + '"'


def format_loc(loc: tuple[str | int, ...], skip: frozenset[str] = frozenset()) -> str:
    """A pydantic error location as a path: `payload[2].rtspUrl`, `cameras["cam 1"].source`.
    `skip`: union member tags pydantic puts in locations, left out of the path."""
    out = ""
    for part in loc:
        if part in skip:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{quote(part, 40)}]"
    return out


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as a short human phrase, without echoing the input."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    match kind:
        case "missing":
            return "is required"
        case "extra_forbidden":
            return "is not a known field"
        case "string_type":
            return "must be a string"
        case "string_unicode":
            return "must be valid Unicode text (no lone surrogates)"
        case "int_type" | "int_from_float" | "int_parsing":
            return "must be an integer"
        case "bool_type" | "bool_parsing":
            return "must be true or false"
        case "float_type" | "float_parsing":
            return "must be a number"
        case "list_type":
            return "must be a list"
        case "model_type" | "model_attributes_type" | "dict_type":
            return "must be an object"
        case "string_too_short":
            minimum = ctx.get("min_length")
            return "must not be empty" if minimum == 1 else f"must be at least {minimum} characters"
        case "string_too_long":
            return f"must be at most {ctx['max_length']} characters"
        case "too_short":
            return f"must have at least {ctx.get('min_length')} item(s)"
        case "too_long":
            return f"must have at most {ctx.get('max_length')} item(s)"
        case "greater_than_equal":
            return f"must be at least {ctx['ge']}"
        case "greater_than":
            return f"must be greater than {ctx['gt']}"
        case "less_than_equal":
            return f"must be at most {ctx['le']}"
        case "less_than":
            return f"must be less than {ctx['lt']}"
        case "literal_error":
            return f"must be {ctx['expected']}"
        case "value_error":
            return str(ctx["error"])
    return str(error["msg"])


def describe_validation_error(err: ValidationError, origin: str = "", prefix: tuple[str | int, ...] = (),
                              skip: frozenset[str] = frozenset(), top_level: str = "(top level)") -> str:
    """The first problem of `err` as `origin: path: phrase (and N more)` (`top_level` names an empty path)."""
    errors = err.errors(include_url=False, include_input=False)
    first = errors[0]
    where = format_loc((*prefix, *first["loc"]), skip) or top_level
    text = f"{where}: {describe_error(first)}" if where else describe_error(first)
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return f"{origin}: {text}" if origin else text


def read_yaml_file(path: Path) -> Any:
    """A YAML (or JSON) file's content; SpecError with one line naming the file when it can't be read."""
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(f"{path}: cannot read: {err.strerror}") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"{path}: not valid JSON: {err}") from None
    import yaml  # here: a worker's JSON spec (the gateway writes JSON) does not wait for it at start

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
