"""The chat parameters a plain request's model honours beyond length: ``logprobs``,
``response_format``, ``tools`` / ``tool_choice`` and the ``temperature`` range.

:func:`chat_options` checks them (400s shaped as OpenAI's) and keeps only what shapes the
answer, as JSON-ready values, so an answer can be cached on them. :func:`instance` builds a
JSON value for a (simple) JSON schema; :func:`token_logprobs` the logprob entries of tokens.
See docs/mock.md for the rules.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from relaygate.mock.validation import RequestError, check_type

__all__ = ["MAX_TOP_LOGPROBS", "chat_options", "check_temperature", "instance", "token_logprobs"]

MAX_TOP_LOGPROBS = 20
_TOOL_CHOICES = ("none", "auto", "required")
_FORMATS = ("text", "json_object", "json_schema")
_MAX_DEPTH = 6


def _bad(message: str, param: str, code: str | None = "invalid_value") -> RequestError:
    return RequestError(400, message, code=code, param=param)


def check_temperature(body: Mapping[str, Any]) -> None:
    """400 naming ``temperature`` when it is a number outside 0..2 (other types are ignored,
    as before)."""
    value = body.get("temperature")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if value > 2:
        raise _bad(
            "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but "
            f"got {value} instead.",
            "temperature",
            "decimal_above_max_value",
        )
    if value < 0:
        raise _bad(
            "Invalid 'temperature': decimal below minimum value. Expected a value >= 0, but "
            f"got {value} instead.",
            "temperature",
            "decimal_below_min_value",
        )


def _top_logprobs(body: Mapping[str, Any]) -> int | None:
    """The number of alternatives per token when ``logprobs`` is true, else None."""
    logprobs = body.get("logprobs")
    if logprobs is not None:
        check_type("logprobs", logprobs, "boolean")
    top = body.get("top_logprobs")
    if top is None:
        return 0 if logprobs else None
    if isinstance(top, bool) or not isinstance(top, int):
        check_type("top_logprobs", top, "integer")
    if not logprobs:
        raise _bad(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
            "'top_logprobs' is set.",
            "top_logprobs",
        )
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        above = top > MAX_TOP_LOGPROBS
        raise _bad(
            f"Invalid 'top_logprobs': integer {'above maximum' if above else 'below minimum'} "
            f"value. Expected a value {'<=' if above else '>='} "
            f"{MAX_TOP_LOGPROBS if above else 0}, but got {top} instead.",
            "top_logprobs",
            "integer_above_max_value" if above else "integer_below_min_value",
        )
    return int(top)


def _mentions_json(messages: Any) -> bool:
    from relaygate.tokens import content_text

    return isinstance(messages, list) and any(
        "json" in content_text(m.get("content")).lower() for m in messages if isinstance(m, Mapping)
    )


def _response_format(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """None (plain text), ``{}`` (json_object) or ``{"schema": …}`` (json_schema)."""
    value = body.get("response_format")
    if value is None:
        return None
    check_type("response_format", value, "object")
    kind = value.get("type")
    if kind is None:
        raise _bad(
            "Missing required parameter: 'response_format.type'.",
            "response_format.type",
            "missing_required_parameter",
        )
    if kind not in _FORMATS:
        raise _bad(
            f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object', and "
            "'json_schema'.",
            "response_format.type",
        )
    if kind == "text":
        return None
    if kind == "json_object":
        if not _mentions_json(body.get("messages")):
            raise _bad(
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                "messages",
                None,
            )
        return {}
    spec = value.get("json_schema")
    if spec is None:
        raise _bad(
            "Missing required parameter: 'response_format.json_schema'.",
            "response_format.json_schema",
            "missing_required_parameter",
        )
    check_type("response_format.json_schema", spec, "object")
    name = spec.get("name")
    if name is None:
        raise _bad(
            "Missing required parameter: 'response_format.json_schema.name'.",
            "response_format.json_schema.name",
            "missing_required_parameter",
        )
    check_type("response_format.json_schema.name", name, "string")
    schema = spec.get("schema", {})
    check_type("response_format.json_schema.schema", schema, "object")
    return {"schema": schema}


def _tool_functions(tools: Any) -> list[tuple[str, Any]]:
    """``(name, parameters)`` of every function tool, in order."""
    found = []
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            found.append((function["name"], function.get("parameters") or {}))
    return found


def _tool_call(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The call the model must make: ``{"name", "parameters", "finish"}``, or None."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if not body.get("tools"):
        raise _bad(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            "tool_choice",
        )
    functions = _tool_functions(body.get("tools"))
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise _bad(
                f"Invalid value: {choice!r}. Supported values are: 'none', 'auto', and 'required'.",
                "tool_choice",
            )
        if choice != "required" or not functions:
            return None
        first, parameters = functions[0]
        # A call the model chose (required) ends "tool_calls"; one forced by name, "stop".
        return {"name": first, "parameters": parameters, "finish": "tool_calls"}
    check_type("tool_choice", choice, "string", "object")
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise _bad(
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": …}}.',
            "tool_choice",
        )
    for known, parameters in functions:
        if known == name:
            return {"name": name, "parameters": parameters, "finish": "stop"}
    raise _bad(
        f"Invalid value for 'tool_choice': function {name!r} is not one of the 'tools'.",
        "tool_choice",
    )


def chat_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """The checked options that shape a chat answer (JSON-ready, for the reply cache):
    ``top_logprobs`` (None: no logprobs), ``format`` and ``tool`` (None: plain text)."""
    return {
        "top_logprobs": _top_logprobs(body),
        "format": _response_format(body),
        "tool": _tool_call(body),
    }


def instance(schema: Any, rng: random.Random, words: Sequence[str], depth: int = 0) -> Any:
    """A JSON value for ``schema``: ``enum``/``const`` first, then the (first non-null)
    ``type``; an object gets its ``required`` keys (all ``properties`` when none is
    required), an array one item. Best effort: no ``$ref``, formats or bounds."""
    if not isinstance(schema, Mapping):
        schema = {}
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if isinstance(schema.get("properties"), Mapping) else "string"
    if kind == "object":
        if depth >= _MAX_DEPTH:
            return {}
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = schema.get("required")
        keys = [k for k in required if isinstance(k, str)] if isinstance(required, list) else []
        return {
            key: instance(properties.get(key), rng, words, depth + 1)
            for key in (keys or list(properties))
        }
    if kind == "array":
        items = schema.get("items")
        if depth >= _MAX_DEPTH or not isinstance(items, Mapping):
            return []
        return [instance(items, rng, words, depth + 1)]
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(words).strip().capitalize()


def token_logprobs(
    raw_tokens: Sequence[bytes], texts: Sequence[str], top: int, rng: random.Random,
    alternatives: Sequence[str],
) -> list[dict[str, Any]]:  # fmt: skip
    """Logprob entries of tokens (``raw_tokens[i]`` shown as ``texts[i]``): the chosen
    token's logprob (mostly near 0) and ``top`` alternatives, most likely first, whose
    probabilities with the chosen one's sum to at most 1."""
    entries = []
    for raw, text in zip(raw_tokens, texts, strict=True):
        chosen = -rng.expovariate(4.0)
        rest = max(1.0 - math.exp(chosen), 1e-9)
        ranked = [(chosen, text, raw)]
        pool = [a for a in alternatives if a != text]
        for i, other in enumerate(rng.sample(pool, min(top, len(pool)))):
            share = 0.6 * 0.4**i * (0.5 + 0.5 * rng.random())
            ranked.append((math.log(rest * share), other, other.encode()))
        ranked.sort(key=lambda item: -item[0])
        entries.append(
            {
                "token": text,
                "logprob": chosen,
                "bytes": list(raw),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(b)} for lp, t, b in ranked[:top]
                ],
            }
        )
    return entries
