"""Request checks a real provider makes, with OpenAI's status codes and messages.

Each check raises :class:`RequestError`; the handler turns it into the OpenAI error JSON.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from relaygate.mock.config import ModelLimits

__all__ = [
    "PARSE_ERROR",
    "RequestError",
    "check_context",
    "check_max_tokens",
    "check_model",
    "check_type",
    "directive_texts",
    "json_type_name",
    "require",
]

PARSE_ERROR = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please contact "
    "us through our help center at help.openai.com.)"
)


class RequestError(Exception):
    """A request the mock refuses: ``status`` plus the fields of the OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param


def json_type_name(value: Any) -> str:
    """JSON Schema's name for the type of ``value`` (as OpenAI's messages use)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def require(body: Mapping[str, Any], name: str) -> Any:
    """``body[name]``, or 400 ``missing_required_parameter``."""
    if name not in body:
        raise RequestError(
            400,
            f"Missing required parameter: '{name}'.",
            code="missing_required_parameter",
            param=name,
        )
    return body[name]


def check_type(name: str, value: Any, *expected: str) -> None:
    """400 ``invalid_type`` unless ``value`` has one of the JSON types ``expected``."""
    actual = json_type_name(value)
    if actual in expected or (actual == "integer" and "number" in expected):
        return
    wanted = " or ".join(f"an {t}" if t[0] in "aeiou" else f"a {t}" for t in expected)
    got = f"an {actual}" if actual[0] in "aeiou" else f"a {actual}"
    raise RequestError(
        400,
        f"Invalid type for '{name}': expected {wanted}, but got {got} instead.",
        code="invalid_type",
        param=name,
    )


def check_model(
    body: Mapping[str, Any], models: Mapping[str, ModelLimits]
) -> tuple[str, ModelLimits]:
    """The requested model and its limits; 404 ``model_not_found`` (case-sensitive)."""
    model = require(body, "model")
    check_type("model", model, "string")
    limits = models.get(model)
    if limits is None:
        raise RequestError(
            404,
            f"The model '{model}' does not exist or you do not have access to it.",
            code="model_not_found",
        )
    return model, limits


def check_max_tokens(body: Mapping[str, Any], limits: ModelLimits) -> int | None:
    """The requested completion cap (``max_completion_tokens`` or ``max_tokens``), checked."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            check_type(name, value, "integer")
        if value < 1:
            raise RequestError(
                400,
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                code="integer_below_min_value",
                param=name,
            )
        if value > limits.max_output:
            raise RequestError(
                400,
                f"max_tokens is too large: {value}. This model supports at most "
                f"{limits.max_output} completion tokens, whereas you provided {value}.",
                code="invalid_value",
                param=name,
            )
        return int(value)
    return None


def check_context(
    prompt_tokens: int, max_tokens: int | None, limits: ModelLimits, param: str
) -> None:
    """400 ``context_length_exceeded`` when prompt + completion do not fit the window."""
    window = limits.context_window
    if max_tokens is None:
        if prompt_tokens <= window:
            return
        message = (
            f"This model's maximum context length is {window} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
        )
    else:
        if prompt_tokens + max_tokens <= window:
            return
        message = (
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion."
        )
    raise RequestError(400, message, code="context_length_exceeded", param=param)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                yield item
            elif isinstance(item, Mapping) and isinstance(item.get("text"), str):
                yield item["text"]


def directive_texts(body: Mapping[str, Any]) -> Iterator[str]:
    """Every text that may carry a directive: message contents, ``prompt``, ``input``."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping):
                yield from _strings(message.get("content"))
    yield from _strings(body.get("prompt"))
    yield from _strings(body.get("input"))
