"""Filling action templates (`{display_id}`, `{car_brand_cls_v1.brand}`, ...) from a run's context.

Values are inserted as text, except into a `redis_publish` message, which is a JSON document:
there values are JSON-escaped, so a brand or session id holding quotes can't break or inject
into the message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from .schema import PLACEHOLDER

Context = Mapping[str, object]


class TemplateError(ValueError):
    pass


def _lookup(name: str, context: Context, branches: Mapping[str, Mapping[str, object]]) -> object:
    if "." in name:
        branch, _, field = name.rpartition(".")
        result = branches.get(branch)
        if result is None:
            raise TemplateError(f"branch {branch!r} has no result in this run")
        return result.get(field)
    if name not in context:
        raise TemplateError(f"{{{name}}} has no value in this run")
    return context[name]


def _text(value: object) -> str:
    return "" if value is None else str(value)


def fill(template: str, context: Context, branches: Mapping[str, Mapping[str, object]]) -> str:
    return PLACEHOLDER.sub(lambda m: _text(_lookup(m.group(1), context, branches)), template)


def fill_json(template: str, context: Context, branches: Mapping[str, Mapping[str, object]]) -> str:
    """Fill a JSON message template; the result is checked to be valid JSON."""
    def escaped(match: object) -> str:
        value = _lookup(match.group(1), context, branches)  # type: ignore[attr-defined]
        return json.dumps(_text(value))[1:-1]

    text = PLACEHOLDER.sub(escaped, template)
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise TemplateError(f"message template does not give valid JSON: {err}") from None
    return text
