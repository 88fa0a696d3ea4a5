"""A stand-in relay that answers like a model for what the live ``params`` cases ask beyond
the mock upstream's repertoire: ``logprobs``, ``response_format`` json_object and a forced
``tool_choice`` (stream and not). ``drop`` names parameters it ignores, as a relay that does
not forward them would (the reference relay's ``drop_*`` switches).

Until the mock upstream honours these three, the live paths of ``params.logprobs``,
``params.response-format-json``, ``params.tool-choice`` and ``streaming.tool-calls`` are shown
to pass and to fail here.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from stand_in_relays import StandInRelay

KEY = "sk-relaygate-model-stand-in-0000"
WORDS = ("one", " two", " three")
COLOURS = '{"colours": ["red", "green", "blue"]}'
#: parameter -> the request fields a relay that drops it leaves out
DROPPABLE = {
    "logprobs": ("logprobs", "top_logprobs"),
    "response_format": ("response_format",),
    "tools": ("tools", "tool_choice"),
}


def _json(status: int, data: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _forced_tool(body: dict[str, Any]) -> tuple[str, str] | None:
    """(function name, finish_reason) when tool_choice forces a call, as OpenAI answers it."""
    tools, choice = body.get("tools") or [], body.get("tool_choice")
    if not tools:
        return None
    if isinstance(choice, dict):
        return str(choice["function"]["name"]), "stop"
    if choice == "required":
        return str(tools[0]["function"]["name"]), "tool_calls"
    return None


def _logprobs(pieces: list[str], top: int) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": piece,
                "logprob": -0.01,
                "bytes": list(piece.encode()),
                "top_logprobs": [{"token": piece, "logprob": -0.01, "bytes": list(piece.encode())}][
                    :top
                ],
            }
            for piece in pieces
        ]
    }


def model_handler(drop: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path.rstrip("/") == "/v1/models":
            return _json(200, {"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            error = {"message": "Invalid API key", "type": "invalid_request_error",
                     "param": None, "code": "invalid_api_key"}  # fmt: skip
            return _json(401, {"error": error})
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return _json(404, {"error": {"message": "Not found", "type": "invalid_request_error",
                                         "param": None, "code": "not_found"}})  # fmt: skip
        body = orjson.loads(await request.read())
        for param in drop:
            for field in DROPPABLE[param]:
                body.pop(field, None)
        tool = _forced_tool(body)
        fmt = (body.get("response_format") or {}).get("type")
        pieces = [COLOURS] if fmt == "json_object" else list(WORDS)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
        finish = "stop"
        if tool is not None:
            call = {"id": "call_1", "type": "function",
                    "function": {"name": tool[0], "arguments": '{"city": "Paris"}'}}  # fmt: skip
            message, finish = {"role": "assistant", "content": None, "tool_calls": [call]}, tool[1]
        logprobs = (
            _logprobs(pieces, int(body.get("top_logprobs") or 0))
            if body.get("logprobs") and tool is None
            else None
        )
        usage = {
            "prompt_tokens": 9,
            "completion_tokens": len(pieces),
            "total_tokens": 9 + len(pieces),
        }
        head = {"id": "chatcmpl-standin", "created": int(time.time()), "model": "gpt-4o"}
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}
            return _json(200, {**head, "object": "chat.completion", "choices": [choice],
                               "usage": usage})  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            chunk = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        await send({"role": "assistant", "content": ""})
        if tool is not None:
            for i, part in enumerate(('{"city": ', '"Paris"}')):
                function = {"name": tool[0], "arguments": part} if i == 0 else {"arguments": part}
                call = {"index": 0, "function": function}
                if i == 0:
                    call |= {"id": "call_1", "type": "function"}
                await send({"tool_calls": [call]})
        else:
            for piece in pieces:
                await send({"content": piece})
        await send({}, finish)
        await response.write(b"data: [DONE]\n\n")
        return response

    return handle


class ModelStandIn(StandInRelay):
    """A :class:`StandInRelay` answering like a model; ``drop``: parameters it ignores."""

    def __init__(self, drop: frozenset[str] = frozenset()) -> None:
        super().__init__("refuse-404")
        self.kind = "model" + "".join(f"-drop-{p}" for p in sorted(drop))
        self._handler = model_handler(drop)
