"""The mock upstream's aiohttp application: routes, handlers and the control endpoints.

``create_app(MockConfig(...))`` builds an app that can be served in-process (tests, the
embedded stack) or by ``relaygate mock-upstream``. Control endpoints live under
``/_relaygate/``, need no key and are not journaled; nor is ``GET /health``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import time
from array import array
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import HttpVersion11, web

from relaygate import tokens
from relaygate.directives import Directive, DirectiveError, find_directive
from relaygate.keys import mask_key
from relaygate.mock import model as plain_model
from relaygate.mock import validation as checks
from relaygate.mock.clock import Clock, CoarseClock, PreciseClock, TimingStats
from relaygate.mock.config import MockConfig, ModelLimits
from relaygate.mock.journal import Journal, JournalEntry
from relaygate.mock.responses import (
    TOKEN_TEXT,
    StreamPayloads,
    chat_completion,
    chat_reply,
    chat_reply_payloads,
    chat_stream_payloads,
    completion_reply_payloads,
    completion_stream_payloads,
    directed_error,
    error_page,
    request_id,
    text_completion,
    text_reply,
)
from relaygate.mock.shards import PEER_PREFIX, PeerError, Shard, merge_journal_pages
from relaygate.mock.stream import StreamPlan, write_stream
from relaygate.mock.validation import RequestError
from relaygate.serve import error_body, json_errors_middleware

__all__ = ["ARRIVAL_HEADER", "STATE", "MockState", "create_app", "create_peer_app"]

CONTROL_PREFIX = "/_relaygate/"
ARRIVAL_HEADER = "x-relaygate-arrival-ns"
# The liveness probe benchmark peers (guidellm, AIPerf, inference-perf) expect; like the control
# endpoints it needs no key and is not journaled.
PEER_HEALTH_PATH = "/health"
EMBEDDING_DIMENSIONS = 1536
_DEFAULT_TOOL_NAME = "relaygate_tool"
_monotonic_ns = time.monotonic_ns


class MockState:
    """Per-app state: config, journal, clock and timing statistics (and, in a worker process,
    its :class:`~relaygate.mock.shards.Shard`)."""

    def __init__(self, config: MockConfig, shard: Shard | None = None) -> None:
        self.config = config
        self.shard = shard
        self.keys = frozenset(config.keys)
        if shard is None:
            self.journal = Journal(config.journal_size)
        else:
            self.journal = Journal(config.journal_size, shard.sequence, shard.index)
        self.clock: Clock = (
            CoarseClock(int(config.tick_ms * 1e6)) if config.timer == "coarse" else PreciseClock()
        )
        self.stats = TimingStats()


STATE = web.AppKey("relaygate_mock_state", MockState)
_ENTRY = web.RequestKey("relaygate_journal_entry", JournalEntry)
# True when the request carries a directive; a plain request is answered like a model.
_DIRECTED = web.RequestKey("relaygate_directed", bool)
_log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _journal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Journal every non-control request before anything can refuse it."""
    if request.path.startswith(CONTROL_PREFIX) or request.path == PEER_HEALTH_PATH:
        return await handler(request)
    entry = request.app[STATE].journal.record(
        request.method,
        request.path,
        request.query,
        tuple(request.headers.items()),
        _monotonic_ns(),
    )
    request[_ENTRY] = entry
    # Let the other requests read in this loop pass take their arrival stamps before this
    # one does its work (parse, checks, rendering the stream): a burst of N requests then
    # gets N stamps of when they were read, not stamps late by the handlers before them
    # (the schedule counts from arrival, so that lateness was in every TTFT).
    await asyncio.sleep(0)
    try:
        try:
            response = await handler(request)
        except Exception:
            # A bug must still answer OpenAI-shaped JSON; the traceback goes to the log.
            _log.exception("mock upstream failed on %s %s", request.method, request.path)
            entry.answered(500, "error")
            return _json(error_body("The mock upstream failed (see its log).", "server_error"), 500)
        if entry.status is None:
            entry.answered(response.status, "error" if response.status >= 400 else "json")
        return response
    finally:
        entry.done = True


def _headers(extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    headers = {"x-request-id": request_id()}
    headers.update(extra)
    return headers


def _json(body: Any, status: int = 200, extra: tuple[tuple[str, str], ...] = ()) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=_headers(extra),
    )


def _refusal(entry: JournalEntry, exc: RequestError) -> web.Response:
    entry.answered(exc.status, "error")
    response = _json(error_body(exc.message, exc.type, exc.code, exc.param), exc.status)
    if exc.status == 413:
        response.force_close()
    return response


async def _read_body(request: web.Request, limit: int) -> tuple[bytes, int, bool]:
    """``(body, size, too_big)``: stops reading (and keeps nothing) past ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return b"", declared, True
    parts: list[bytes] = []
    size = 0
    while True:
        data = await request.content.readany()
        if not data:
            break
        size += len(data)
        if size > limit:
            return b"".join(parts), size, True
        parts.append(data)
    return b"".join(parts), size, False


def _check_auth(request: web.Request, keys: frozenset[str]) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() == "bearer" and key in keys:
        return
    if not key:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        message = (
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
    raise RequestError(401, message, code="invalid_api_key")


_NOT_JSON = object()


async def _intake(request: web.Request) -> tuple[dict[str, Any], Directive]:
    """Read, journal, authenticate and parse a request: its JSON object and directive."""
    state = request.app[STATE]
    entry: JournalEntry = request[_ENTRY]
    config = state.config
    raw, size, too_big = await _read_body(request, config.max_body_bytes)
    parsed: Any = _NOT_JSON
    if not too_big:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = _NOT_JSON
    entry.set_body(raw, size, None if parsed is _NOT_JSON else parsed, config.journal_body_bytes)
    directive: Directive | None = None
    problem: DirectiveError | None = None
    # A real model reads a directive as plain text: with ignore_directives it is never parsed.
    if isinstance(parsed, dict) and not config.ignore_directives:
        try:
            directive = find_directive(checks.directive_texts(parsed))
        except DirectiveError as exc:
            problem = exc
        if directive is not None:
            entry.tag = directive.tag
    request[_DIRECTED] = directive is not None or problem is not None
    if too_big:
        raise RequestError(
            413,
            f"Request body too large: {size} bytes; the limit is {config.max_body_bytes} bytes.",
            code="request_too_large",
        )
    _check_auth(request, state.keys)
    if parsed is _NOT_JSON:
        raise RequestError(400, checks.PARSE_ERROR)
    if not isinstance(parsed, dict):
        checks.check_type("body", parsed, "object")
    if problem is not None:
        raise RequestError(
            400,
            f"invalid relaygate directive: {problem}",
            code="invalid_directive",
            param=problem.key,
        )
    directive = directive or Directive()
    if directive.error is not None and directive.error < 200:
        raise RequestError(
            400,
            "invalid relaygate directive: error must be a final status (200..599)",
            code="invalid_directive",
            param="error",
        )
    assert isinstance(parsed, dict)
    return parsed, directive


async def _directed_error(request: web.Request, d: Directive) -> web.Response:
    state = request.app[STATE]
    entry: JournalEntry = request[_ENTRY]
    assert d.error is not None
    status = d.error
    await state.clock.sleep_until(entry.arrival_ns + int(d.delay_ms * 1e6))
    extra = d.headers
    if d.retry_after is not None:
        extra = (("Retry-After", d.retry_after), *extra)
    entry.answered(status, "directed_error")
    if d.error_body == "openai" and status not in (204, 304):
        return _json(directed_error(status, d), status, extra)
    body, content_type = error_page(status, d.error_body)
    response = web.Response(body=body or None, status=status, headers=_headers(extra))
    if content_type is not None and status not in (204, 304):
        response.content_type = content_type
    return response


def _api(
    handler: Callable[[web.Request, dict[str, Any], Directive], Awaitable[web.StreamResponse]],
) -> Handler:
    """Wrap an API handler: intake, directed errors, refusals as OpenAI JSON."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        entry: JournalEntry = request[_ENTRY]
        try:
            body, directive = await _intake(request)
            if directive.error is not None:
                return await _directed_error(request, directive)
            return await handler(request, body, directive)
        except RequestError as exc:
            return _refusal(entry, exc)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """``(stream, include_usage)`` from the body, type-checked."""
    stream = body.get("stream")
    if stream is not None:
        checks.check_type("stream", stream, "boolean")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        checks.check_type("stream_options", options, "object")
        value = options.get("include_usage")
        if value is not None:
            checks.check_type("stream_options.include_usage", value, "boolean")
            include_usage = bool(value)
    return bool(stream), include_usage


def _with_usage_chunk(d: Directive, include_usage: bool) -> bool:
    if d.usage_chunk == "always":
        return True
    if d.usage_chunk == "never":
        return False
    return include_usage


def _completion_tokens(d: Directive) -> int:
    if d.completion_tokens is not None:
        return d.completion_tokens
    return d.chunks * d.tokens_per_chunk


def _tool_name(body: Mapping[str, Any]) -> str:
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        function = choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return str(function["name"])
    tools = body.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[0], Mapping):
        function = tools[0].get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return str(function["name"])
    return _DEFAULT_TOOL_NAME


async def _answer_json(request: web.Request, d: Directive, body: dict[str, Any]) -> web.Response:
    """A non-stream answer after ttft + (chunks-1)*itl + delay from arrival.

    ``disconnect_after`` (any k) on a non-stream request drops the connection at that time
    without answering: a transport failure as the relay sees it.
    """
    state = request.app[STATE]
    entry: JournalEntry = request[_ENTRY]
    latency_ms = d.ttft_ms + max(d.chunks - 1, 0) * d.itl_ms + d.delay_ms
    await state.clock.sleep_until(entry.arrival_ns + int(latency_ms * 1e6))
    now = _monotonic_ns()
    if d.disconnect_after is not None and request.transport is not None:
        entry.answered(0, "disconnect")
        request.transport.abort()
        raise asyncio.CancelledError
    if d.stamp == "field":
        body["relaygate_emit_ns"] = now
    entry.first_event_ns = entry.last_event_ns = now
    entry.answered(200, "json")
    return _json(body, 200, d.headers)


async def _answer_stream(
    request: web.Request,
    d: Directive,
    build: Callable[[bool], Any],
    include_usage: bool,
) -> web.StreamResponse:
    state = request.app[STATE]
    entry: JournalEntry = request[_ENTRY]
    payloads = build(_with_usage_chunk(d, include_usage))
    error = directed_error(500, d)
    if d.error_message is None:
        error["error"]["message"] = (
            f"The server had an error while processing your request (relaygate "
            f"stream_error_after={d.stream_error_after})."
        )
    arrival = entry.arrival_ns
    plan = StreamPlan(
        payloads=payloads,
        role_ns=arrival + int(d.role_ms * 1e6),
        first_ns=arrival + int(d.ttft_ms * 1e6),
        itl_ns=int(d.itl_ms * 1e6),
        error_payload=orjson.dumps(error),
        stream_error_after=d.stream_error_after,
        disconnect_after=d.disconnect_after,
        framing=d.framing,
        split_gap_ns=int(d.split_gap_ms * 1e6),
        send_done=not d.no_done,
        stamp=d.stamp,
    )
    headers = _headers(d.headers)
    headers["Content-Type"] = "text/event-stream"
    headers["Cache-Control"] = "no-cache"
    if d.stamp != "none":
        # The arrival stamp the schedule counts from, so a client can split its TTFT into
        # send -> arrival, arrival + ttft -> emit and emit -> receive.
        headers[ARRIVAL_HEADER] = str(arrival)
    response = web.StreamResponse(status=200, headers=headers)
    if request.version >= HttpVersion11:
        response.enable_chunked_encoding()
    entry.answered(200, "stream")
    state.stats.stream_started()
    try:
        await response.prepare(request)
        kind = await write_stream(
            response, request.transport, plan, state.clock, state.stats, entry
        )
    except ConnectionError:
        kind = "client_gone"
    finally:
        state.stats.stream_finished()
    entry.answer = kind
    return response


def _chat_checks(
    body: Mapping[str, Any], models: Mapping[str, ModelLimits]
) -> tuple[str, ModelLimits, list[Any]]:
    messages = checks.require(body, "messages")
    checks.check_type("messages", messages, "array")
    if not messages:
        raise RequestError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.",
            code="empty_array",
            param="messages",
        )
    for index, message in enumerate(messages):
        checks.check_type(f"messages[{index}]", message, "object")
        if "role" not in message:
            raise RequestError(
                400,
                f"Missing required parameter: 'messages[{index}].role'.",
                code="missing_required_parameter",
                param=f"messages[{index}].role",
            )
    tools = body.get("tools")
    if tools is not None:
        checks.check_type("tools", tools, "array")
    model, limits = checks.check_model(body, models)
    return model, limits, messages


@_api
async def chat_completions(
    request: web.Request, body: dict[str, Any], d: Directive
) -> web.StreamResponse:
    """``POST /v1/chat/completions``: stream and non-stream, tool calls, usage."""
    model, limits, messages = _chat_checks(body, request.app[STATE].config.models)
    tool_name = _tool_name(body) if d.finish_reason == "tool_calls" else None
    return await _generate(
        request,
        body,
        d,
        model,
        limits,
        "messages",
        lambda: tokens.count_chat_prompt(messages, model, body.get("tools")),
        chat_reply_payloads,
        chat_reply,
        lambda prompt, completion, with_usage: chat_stream_payloads(
            model,
            d.chunks,
            d.tokens_per_chunk,
            d.finish_reason,
            prompt,
            completion,
            with_usage,
            tool_name,
        ),
        lambda text, prompt, completion: chat_completion(
            model,
            text,
            d.finish_reason,
            prompt,
            completion,
            tool_name,
            d.chunks,
            d.tokens_per_chunk,
        ),
    )


async def _generate(
    request: web.Request,
    body: dict[str, Any],
    d: Directive,
    model: str,
    limits: ModelLimits,
    prompt_field: str,
    count_prompt: Callable[[], int],
    reply_payloads: Callable[[str, plain_model.Reply, int, bool], StreamPayloads],
    reply_answer: Callable[[str, plain_model.Reply, int], dict[str, Any]],
    stream_payloads: Callable[[int, int, bool], StreamPayloads],
    answer: Callable[[str, int, int], dict[str, Any]],
) -> web.StreamResponse:
    """What chat and legacy completions share once the request is checked: max_tokens against
    the model's caps, the prompt (the directive's count, else ours) against its window, then a
    stream or one JSON answer: of the directed length, or a model's answer to a plain request
    (:mod:`relaygate.mock.model`) paced by the configured defaults."""
    stream, include_usage = _stream_flags(body)
    max_tokens = checks.check_max_tokens(body, limits)
    prompt_tokens = d.prompt_tokens if d.prompt_tokens is not None else count_prompt()
    checks.check_context(prompt_tokens, max_tokens, limits, prompt_field)
    if not request[_DIRECTED]:
        reply = plain_model.reply(body, model, max_tokens)
        config = request.app[STATE].config
        paced = dataclasses.replace(
            d,
            ttft_ms=config.default_ttft_ms,
            itl_ms=config.default_itl_ms,
            chunks=reply.events,
        )
        if stream:
            return await _answer_stream(
                request,
                paced,
                lambda with_usage: reply_payloads(model, reply, prompt_tokens, with_usage),
                include_usage,
            )
        return await _answer_json(request, paced, reply_answer(model, reply, prompt_tokens))
    completion_tokens = _completion_tokens(d)
    if stream:
        return await _answer_stream(
            request,
            d,
            lambda with_usage: stream_payloads(prompt_tokens, completion_tokens, with_usage),
            include_usage,
        )
    text = TOKEN_TEXT * (d.chunks * d.tokens_per_chunk)
    return await _answer_json(request, d, answer(text, prompt_tokens, completion_tokens))


def _count_prompt(value: Any, model: str) -> int:
    """Tokens of a completions ``prompt`` / embeddings ``input`` (text or token arrays)."""
    if isinstance(value, str):
        return tokens.count_text(value, model)
    total = 0
    for item in value:
        if isinstance(item, str):
            total += tokens.count_text(item, model)
        elif isinstance(item, list):
            total += len(item)
        else:
            total += 1
    return total


def _check_prompt_value(name: str, value: Any) -> None:
    checks.check_type(name, value, "string", "array")
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (str, int, list)):
                checks.check_type(f"{name}[{index}]", item, "string", "integer", "array")


@_api
async def completions(
    request: web.Request, body: dict[str, Any], d: Directive
) -> web.StreamResponse:
    """``POST /v1/completions`` (legacy): ``prompt`` in, ``text`` choices out."""
    prompt = body.get("prompt", "")
    _check_prompt_value("prompt", prompt)
    model, limits = checks.check_model(body, request.app[STATE].config.models)
    return await _generate(
        request,
        body,
        d,
        model,
        limits,
        "prompt",
        lambda: _count_prompt(prompt, model),
        completion_reply_payloads,
        text_reply,
        lambda prompt_tokens, completion, with_usage: completion_stream_payloads(
            model,
            d.chunks,
            d.tokens_per_chunk,
            d.finish_reason,
            prompt_tokens,
            completion,
            with_usage,
        ),
        lambda text, prompt_tokens, completion: text_completion(
            model, text, d.finish_reason, prompt_tokens, completion
        ),
    )


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text`` (same text, same vector)."""
    digest = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    raw = array("H")
    raw.frombytes(digest)
    values = [(v - 32767.5) / 32767.5 for v in raw]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


@_api
async def embeddings(
    request: web.Request, body: dict[str, Any], d: Directive
) -> web.StreamResponse:
    """``POST /v1/embeddings``: deterministic vectors, exact ``prompt_tokens``."""
    state = request.app[STATE]
    value = checks.require(body, "input")
    _check_prompt_value("input", value)
    model, limits = checks.check_model(body, state.config.models)
    dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
    checks.check_type("dimensions", dimensions, "integer")
    if isinstance(dimensions, bool) or not 1 <= dimensions <= 8192:
        raise RequestError(
            400,
            f"Invalid 'dimensions': expected 1..8192, got {dimensions}.",
            code="invalid_value",
            param="dimensions",
        )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise RequestError(
            400,
            f"Invalid 'encoding_format': expected 'float' or 'base64', got {encoding!r}.",
            code="invalid_value",
            param="encoding_format",
        )
    prompt_tokens = d.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = _count_prompt(value, model)
    checks.check_context(prompt_tokens, None, limits, "input")
    inputs = [value] if isinstance(value, str) else value
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(
            item if isinstance(item, str) else orjson.dumps(item).decode(), dimensions
        )
        embedding: Any = vector
        if encoding == "base64":
            embedding = base64.b64encode(array("f", vector).tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    answer = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return await _answer_json(request, d, answer)


def _model_object(model: str, limits: ModelLimits) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": limits.created, "owned_by": limits.owned_by}


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models``: the configured models."""
    state = request.app[STATE]
    try:
        _check_auth(request, state.keys)
    except RequestError as exc:
        return _refusal(request[_ENTRY], exc)
    data = [_model_object(m, limits) for m, limits in state.config.models.items()]
    return _json({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models/{id}``: one model, or 404 ``model_not_found``."""
    state = request.app[STATE]
    entry: JournalEntry = request[_ENTRY]
    model = request.match_info["model"]
    try:
        _check_auth(request, state.keys)
        limits = state.config.models.get(model)
        if limits is None:
            raise RequestError(
                404,
                f"The model '{model}' does not exist or you do not have access to it.",
                code="model_not_found",
            )
    except RequestError as exc:
        return _refusal(entry, exc)
    return _json(_model_object(model, limits))


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=orjson.dumps(
                error_body(f"{name} must be an integer, got {raw!r}", param=name)
            ).decode(),
            content_type="application/json",
        ) from None


def _peer_failure(exc: PeerError) -> web.Response:
    return _json(error_body(f"another mock worker failed to answer: {exc}", "server_error"), 502)


async def read_journal(request: web.Request) -> web.StreamResponse:
    """``GET /_relaygate/journal?tag=&since_seq=&limit=`` -> ``{"data": [...], "next_seq"}``.

    With worker processes: every worker's entries, merged in sequence order.
    """
    state = request.app[STATE]
    journal = state.journal
    tag = request.query.get("tag")
    since_seq = _int_param(request, "since_seq", 0)
    limit = max(0, _int_param(request, "limit", 1000))
    if state.shard is None:
        found, next_seq = journal.query(tag, since_seq, limit)
        return _json({"data": [entry.to_json() for entry in found], "next_seq": next_seq})
    horizon = state.shard.sequence.peek()
    own, stop = journal.page(tag, since_seq, limit, horizon)
    params = {"since_seq": str(since_seq), "limit": str(limit), "below": str(horizon)}
    if tag is not None:
        params["tag"] = tag
    try:
        answers = await state.shard.ask_peers("GET", "journal", params)
    except PeerError as exc:
        return _peer_failure(exc)
    pages = [([entry.to_json() for entry in own], stop)]
    pages += [(answer["data"], answer["stop"]) for answer in answers]
    data, next_seq = merge_journal_pages(pages, since_seq, limit, horizon)
    return _json({"data": data, "next_seq": next_seq})


async def reset_journal(request: web.Request) -> web.StreamResponse:
    """``DELETE /_relaygate/journal``: forget every entry (in every worker)."""
    state = request.app[STATE]
    state.journal.clear()
    if state.shard is not None:
        try:
            await state.shard.ask_peers("DELETE", "journal")
        except PeerError as exc:
            return _peer_failure(exc)
    return _json({"ok": True, "next_seq": state.journal.next_seq})


async def health(request: web.Request) -> web.StreamResponse:
    """``GET /_relaygate/health``."""
    return _json({"ok": True})


async def peer_health(request: web.Request) -> web.StreamResponse:
    """``GET /health``: ``{"status": "ok"}``, the probe benchmark tools send before a run."""
    return _json({"status": "ok"})


async def read_stats(request: web.Request) -> web.StreamResponse:
    """``GET /_relaygate/stats``: the mock's own write lateness and gap error (every worker's,
    added up)."""
    state = request.app[STATE]
    if state.shard is None:
        return _json(state.stats.summary())
    try:
        answers = await state.shard.ask_peers("GET", "stats")
    except PeerError as exc:
        return _peer_failure(exc)
    merged = TimingStats()
    for raw in (state.stats.export(), *answers):
        merged.absorb(raw)
    return _json({**merged.summary(), "workers": state.shard.workers})


async def reset_stats(request: web.Request) -> web.StreamResponse:
    """``POST /_relaygate/stats/reset``: start a new measurement window (in every worker)."""
    state = request.app[STATE]
    state.stats.reset()
    if state.shard is not None:
        try:
            await state.shard.ask_peers("POST", "stats/reset")
        except PeerError as exc:
            return _peer_failure(exc)
    return _json({"ok": True})


async def _peer_journal(request: web.Request) -> web.StreamResponse:
    """A peer's ``GET journal?tag=&since_seq=&limit=&below=``: this worker's page."""
    journal = request.app[STATE].journal
    below = _int_param(request, "below", 0)
    found, stop = journal.page(
        request.query.get("tag"),
        _int_param(request, "since_seq", 0),
        max(0, _int_param(request, "limit", 1000)),
        below,
    )
    return _json({"data": [entry.to_json() for entry in found], "stop": stop})


async def _peer_reset_journal(request: web.Request) -> web.StreamResponse:
    request.app[STATE].journal.clear()
    return _json({"ok": True})


async def _peer_stats(request: web.Request) -> web.StreamResponse:
    return _json(request.app[STATE].stats.export())


async def _peer_reset_stats(request: web.Request) -> web.StreamResponse:
    request.app[STATE].stats.reset()
    return _json({"ok": True})


def create_peer_app(app: web.Application) -> web.Application:
    """The control endpoints a worker serves its peers (on its private loopback port)."""
    peer = web.Application()
    peer[STATE] = app[STATE]
    peer.router.add_get(PEER_PREFIX + "journal", _peer_journal, allow_head=False)
    peer.router.add_delete(PEER_PREFIX + "journal", _peer_reset_journal)
    peer.router.add_get(PEER_PREFIX + "stats", _peer_stats, allow_head=False)
    peer.router.add_post(PEER_PREFIX + "stats/reset", _peer_reset_stats)
    return peer


async def _preload_tokenizers(app: web.Application) -> None:
    if app[STATE].config.preload_tokenizers:
        tokens.count_text("warm up", "gpt-4o")
        tokens.count_text("warm up", "gpt-4")


async def _close_clock(app: web.Application) -> None:
    app[STATE].clock.close()


async def _start_shard(app: web.Application) -> None:
    shard = app[STATE].shard
    if shard is not None:
        await shard.start()


async def _close_shard(app: web.Application) -> None:
    shard = app[STATE].shard
    if shard is not None:
        await shard.close()


def create_app(config: MockConfig | None = None, shard: Shard | None = None) -> web.Application:
    """The mock upstream as an aiohttp application (serve it with ``web.AppRunner``).

    ``shard``: this app is one of several worker processes (:mod:`relaygate.mock.workers`);
    its control endpoints then answer for all of them.
    """
    config = config or MockConfig()
    app = web.Application(middlewares=[_journal_middleware, json_errors_middleware])
    app[STATE] = MockState(config, shard)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models, allow_head=False)
    app.router.add_get("/v1/models/{model:.+}", get_model, allow_head=False)
    app.router.add_get("/_relaygate/journal", read_journal, allow_head=False)
    app.router.add_delete("/_relaygate/journal", reset_journal)
    app.router.add_get("/_relaygate/health", health, allow_head=False)
    app.router.add_get(PEER_HEALTH_PATH, peer_health)
    app.router.add_get("/_relaygate/stats", read_stats, allow_head=False)
    app.router.add_post("/_relaygate/stats/reset", reset_stats)
    app.on_startup.append(_preload_tokenizers)
    app.on_startup.append(_start_shard)
    app.on_cleanup.append(_close_clock)
    app.on_cleanup.append(_close_shard)
    return app
