"""streaming: well-formed SSE, one [DONE] last, a finish_reason per choice, usage iff asked,
tool calls, no buffering, and upstream failures surfaced honestly (F4)."""

from __future__ import annotations

import itertools
import json
import statistics

import pytest

from relaygate.directives import directive
from relaygate.suite.client import chat_body
from relaygate.suite.failures import require
from relaygate.suite.live import (
    AT_LENGTH,
    MIN_SPREAD_SHARE,
    STREAM_PROBE_TOKENS,
    answer_text,
    judge_streamed,
    live_body,
    repeat,
    skip_outside_view,
    stream_text,
    stream_timing,
)


def _require_content(ex, relay, want=1):
    """Evidence first: a 200 event stream that delivered content, before judging how it ends."""
    __tracebackhide__ = True
    got = len(ex.content_events())
    require(
        ex.status == 200 and ex.content_type == "text/event-stream" and got >= want,
        "the stream answers with content (without it, how it ends proves nothing)",
        f"HTTP 200 text/event-stream with >= {want} content event(s)",
        f"{got} content event(s); {ex.describe()}",
        ex.curl,
        relay.secrets,
    )


def _finish_reasons(ex):
    reasons = {}
    for chunk in ex.chunks():
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                reasons[choice.get("index", 0)] = choice["finish_reason"]
    return reasons


@pytest.mark.case(
    "streaming.event-stream",
    title="A stream is text/event-stream of JSON data events ending in one [DONE]",
    area="streaming",
    faq=("F4",),
    spec="WHATWG HTML §9.2 (event stream interpretation)",
)
def test_event_stream(client, profile, tag, relay):
    # Read as a client reads it (WHATWG rules, like the OpenAI SDK): comments, event:/id:/
    # retry: fields, CR or CRLF line ends and 'data:' without the space are all legal.
    live = relay.upstream_url is None
    if live:
        # A model obeys no directive: a long answer cut at max_tokens gives several events,
        # but how many the upstream sent shows only with the mock (--upstream-url).
        ex = client.stream(live_body(AT_LENGTH, max_tokens=LIVE_EVENT_TOKENS))
    else:
        ex = client.stream(chat_body(directive=directive(chunks=5, tag=tag)))
    require(
        ex.status == 200, "the stream answers", "HTTP 200", ex.describe(), ex.curl, relay.secrets
    )
    require(
        ex.content_type == "text/event-stream",
        "streams are served as text/event-stream",
        "Content-Type text/event-stream",
        ex.content_type,
        ex.curl,
        relay.secrets,
    )
    got = len(ex.content_events())
    require(
        got >= 1 if live else got == 5,
        "the answer's content arrives as SSE data events"
        if live
        else "every content event the upstream sent arrives as an SSE data event",
        ">= 1 content event" if live else "5 content events",
        f"{got} content events ({len(ex.events)} events in all)",
        ex.curl,
        relay.secrets,
    )
    for event in ex.data_events:
        require(
            event.json() is not None,
            "every data frame but [DONE] is JSON",
            "JSON",
            repr(event.data[:200]),
            ex.curl,
            relay.secrets,
        )
    done_last = bool(ex.events) and ex.events[-1].data.strip() == "[DONE]"
    require(
        ex.done_count == 1 and done_last,
        "F4: a stream ends with exactly one data: [DONE]",
        "one [DONE], last",
        f"{ex.done_count} [DONE], last event {ex.events[-1].data[:60]!r}"
        if ex.events
        else "no events",
        ex.curl,
        relay.secrets,
    )


#: max_tokens of the live event-stream requests: a long answer cut there (a few dozen events).
LIVE_EVENT_TOKENS = 24


@pytest.mark.parametrize("finish", ["stop", "length", "content_filter"])
@pytest.mark.case(
    "streaming.finish-reason",
    title="Every choice of a stream ends with the upstream's finish_reason",
    area="streaming",
    faq=("F4",),
)
def test_finish_reason(finish, client, _journal, tag, relay):
    if _journal is None:
        _live_finish_reason(finish, client, relay)
        return
    ex = client.stream(chat_body(directive=directive(chunks=3, finish_reason=finish, tag=tag)))
    reasons = _finish_reasons(ex)
    require(
        reasons == {0: finish},
        "F4: every stream carries the finish_reason the upstream sent",
        {0: finish},
        reasons,
        ex.curl,
        relay.secrets,
    )


def _live_finish_reason(finish, client, relay):
    """Live: 'stop' for an answer that ends by itself, 'length' for one cut by max_tokens."""
    __tracebackhide__ = True
    if finish == "content_filter":
        skip_outside_view("an upstream content_filter finish on demand (no request triggers a "
                          "model's moderation reliably)")  # fmt: skip
    if finish == "stop":
        body = live_body(repeat("hello world"), temperature=0, max_tokens=50)
    else:
        body = live_body(AT_LENGTH, max_tokens=8)
    ex = client.stream(body)
    _require_content(ex, relay)
    reasons = _finish_reasons(ex)
    require(
        reasons == {0: finish},
        f"F4: every stream carries its finish_reason ({finish!r}: "
        + ("the answer ended by itself)" if finish == "stop" else "max_tokens cut it)"),
        {0: finish},
        reasons,
        ex.curl,
        relay.secrets,
    )


@pytest.mark.parametrize("asked", [True, False], ids=["asked", "not-asked"])
@pytest.mark.case(
    "streaming.usage-chunk",
    title="The usage chunk arrives iff stream_options.include_usage asked for it",
    area="streaming",
    faq=("F4", "F9"),
)
def test_usage_chunk(asked, client, profile, _journal, tag, relay):
    extra = {"stream_options": {"include_usage": True}} if asked else {}
    live = _journal is None
    if live:
        # Live: a long answer cut at max_tokens, whose completion_tokens is then known.
        ex = client.stream(live_body(AT_LENGTH, max_tokens=LIVE_USAGE_TOKENS, **extra))
    else:
        ex = client.stream(chat_body(directive=directive(chunks=4, usage="77/4", tag=tag), **extra))
    # "No usage chunk" only means something in a stream that was served to its end.
    _require_content(ex, relay, want=1 if live else 4)
    require(
        bool(_finish_reasons(ex)),
        "the stream is served to its end",
        "a finish_reason",
        "none",
        ex.curl,
        relay.secrets,
    )
    usage_chunks = [c for c in ex.chunks() if c.get("usage")]
    if asked:
        require(
            len(usage_chunks) == 1 and usage_chunks[0].get("choices") == [],
            "with include_usage, exactly one final chunk with choices [] carries the usage",
            "one usage chunk",
            f"{len(usage_chunks)}: {usage_chunks[:2]}",
            ex.curl,
            relay.secrets,
        )
        usage = usage_chunks[0]["usage"]
        if live:
            _live_usage_counts(ex, usage, relay)
        require(
            live or (usage.get("prompt_tokens"), usage.get("completion_tokens")) == (77, 4),
            "the streamed usage is the upstream's",
            "77 prompt / 4 completion",
            usage,
            ex.curl,
            relay.secrets,
        )
        data = [e for e in ex.data_events]
        require(
            bool(data) and data[-1].json() == usage_chunks[0],
            "the usage chunk is the last data event before [DONE]",
            "usage chunk last",
            data[-1].data[:120] if data else None,
            ex.curl,
            relay.secrets,
        )
    else:
        policy = profile.stream.usage_chunk
        if policy == "always":
            require(
                len(usage_chunks) == 1,
                "the profile documents an unrequested usage chunk",
                "one usage chunk",
                len(usage_chunks),
                ex.curl,
                relay.secrets,
            )
            pytest.xfail(
                "deviation: "
                + (profile.deviation("stream.usage_chunk") or "usage chunk always sent")
            )
        require(
            not usage_chunks,
            "without include_usage no usage chunk is sent (OpenAI's contract)",
            "no usage chunk",
            usage_chunks[:1],
            ex.curl,
            relay.secrets,
        )


#: max_tokens of the live usage-chunk request (a long answer is cut there: finish "length").
LIVE_USAGE_TOKENS = 12


def _live_usage_counts(ex, usage, relay):
    """Live: the usage counts this answer (no upstream to compare with): a prompt, and as
    many completion tokens as max_tokens allowed when the answer was cut there."""
    __tracebackhide__ = True
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    cut = _finish_reasons(ex).get(0) == "length"
    require(
        isinstance(prompt, int)
        and prompt > 0
        and isinstance(completion, int)
        and completion > 0
        and usage.get("total_tokens") == prompt + completion
        and (not cut or completion == LIVE_USAGE_TOKENS),
        "the streamed usage counts this answer: prompt and completion tokens > 0, total their "
        f"sum, and {LIVE_USAGE_TOKENS} completion tokens when max_tokens "
        f"{LIVE_USAGE_TOKENS} cut the answer (finish_reason length)",
        f"prompt > 0, completion {LIVE_USAGE_TOKENS if cut else '> 0'}, total = sum",
        usage,
        ex.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "streaming.tool-calls",
    title="Tool-call streams arrive as OpenAI streams them, ending in tool_calls",
    area="streaming",
    faq=("F4",),
)
def test_tool_calls(client, tag, relay, _journal):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    if _journal is None:
        # Live: only a forced tool_choice makes the model call the tool.
        forced = {"type": "function", "function": {"name": "get_weather"}}
        body = live_body("What is the weather in Paris?", tools=tools, tool_choice=forced)
    else:
        body = chat_body(
            directive=directive(finish_reason="tool_calls", chunks=4, tag=tag), tools=tools
        )
    ex = client.stream(body)
    name, args = None, ""
    for chunk in ex.chunks():
        for choice in chunk.get("choices") or []:
            for call in (choice.get("delta") or {}).get("tool_calls") or []:
                fn = call.get("function") or {}
                name = fn.get("name") or name
                args += fn.get("arguments") or ""
    require(
        name == "get_weather",
        "F4: a tool-call stream names the function",
        "get_weather",
        name,
        ex.curl,
        relay.secrets,
    )
    try:
        json.loads(args)
        parsed = True
    except ValueError:
        parsed = False
    require(
        parsed,
        "the streamed argument fragments join into JSON",
        "valid JSON arguments",
        repr(args[:200]),
        ex.curl,
        relay.secrets,
    )
    # OpenAI ends a call the client forced by name with "stop", one the model chose with
    # "tool_calls": live, either is the model's; with the mock, the upstream sent tool_calls.
    wanted = [{0: "tool_calls"}] if _journal is not None else [{0: "tool_calls"}, {0: "stop"}]
    require(
        _finish_reasons(ex) in wanted,
        "a tool-call stream ends with its finish_reason (tool_calls; 'stop' live when the "
        "call was forced)",
        " or ".join(repr(w) for w in wanted),
        _finish_reasons(ex),
        ex.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "streaming.not-buffered",
    title="Events arrive when the upstream sends them (no buffering)",
    area="streaming",
    faq=("F4",),
)
def test_not_buffered(client, profile, _journal, tag, relay):
    if _journal is None:
        _live_not_buffered(client, relay)
        return
    itl_ms, chunks = 80.0, 6
    ex = client.stream(
        chat_body(
            directive=directive(ttft_ms=60, itl_ms=itl_ms, chunks=chunks, stamp="field", tag=tag)
        )
    )
    events = ex.content_events()
    require(
        len(events) == chunks,
        "every content event arrives",
        f"{chunks} content events",
        len(events),
        ex.curl,
        relay.secrets,
    )
    gaps = [(b.arrived_ns - a.arrived_ns) / 1e6 for a, b in itertools.pairwise(events)]
    tolerance = profile.stream.gap_tolerance_ms
    # Buffering shows in the typical gap (all at once: ~0; in batches: 0 and n x ITL); one
    # stall of the machine running the harness shows as one long gap and one short catch-up
    # gap, which must not fail a relay that streams.
    off = [g for g in gaps if abs(g - itl_ms) > tolerance]
    typical = statistics.median(gaps)
    require(
        abs(typical - itl_ms) <= tolerance and len(off) <= 2,
        f"F4: events are flushed as they arrive: gaps through the relay match the upstream's "
        f"{itl_ms:.0f} ms (tolerance {tolerance} ms)",
        f"gaps {itl_ms:.0f} ± {tolerance} ms (median; at most one stall: 2 gaps off)",
        f"gaps {[round(g, 1) for g in gaps]} ms (median {typical:.1f}, {len(off)} off)",
        ex.curl,
        relay.secrets,
    )


def _live_not_buffered(client, relay):
    """Live: a long answer's content spreads over its duration (relaygate.suite.live)."""
    __tracebackhide__ = True
    ex = client.stream(live_body(AT_LENGTH, max_tokens=STREAM_PROBE_TOKENS))
    _require_content(ex, relay)
    timing = stream_timing(ex)
    assert timing is not None  # _require_content saw content
    require(
        judge_streamed(timing),
        "F4: events are flushed as the model writes them: a long answer's content arrives "
        f"spread over at least {MIN_SPREAD_SHARE:.0%} of the time to its last event, not in "
        "one burst at the end",
        f"first-to-last content spread >= {MIN_SPREAD_SHARE:.0%} of {timing.last_s * 1000:.0f} ms",
        timing.describe(),
        ex.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "streaming.upstream-error-surfaces",
    title="An in-stream upstream error reaches the client, with no invented finish_reason",
    area="streaming",
    faq=("F4",),
    spec="RELAY_SPEC §10.32-33",
)
def test_upstream_error_surfaces(client, profile, tag, relay, _journal):
    if _journal is None:
        skip_outside_view("an upstream that fails mid-stream on demand (the mock's "
                          "stream_error_after)")  # fmt: skip
    ex = client.stream(chat_body(directive=directive(chunks=6, stream_error_after=2, tag=tag)))
    _require_content(ex, relay)
    errors = [c for c in ex.chunks() if isinstance(c.get("error"), dict)]
    reasons = _finish_reasons(ex)
    require(
        not reasons,
        "F4: a stream the upstream broke carries no finish_reason",
        "no finish_reason",
        reasons,
        ex.curl,
        relay.secrets,
    )
    require(
        bool(errors),
        "the upstream's in-stream error event is delivered to the client",
        'a data: {"error": …} event',
        f"{len(ex.events)} events, none an error",
        ex.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "streaming.upstream-disconnect-surfaces",
    title="An upstream that drops mid-stream is not disguised as a finished answer",
    area="streaming",
    faq=("F4",),
    spec="RELAY_SPEC §10.33",
)
def test_upstream_disconnect_surfaces(client, profile, tag, relay, _journal):
    if _journal is None:
        skip_outside_view("an upstream that drops the connection mid-stream on demand (the "
                          "mock's disconnect_after)")  # fmt: skip
    ex = client.stream(chat_body(directive=directive(chunks=6, disconnect_after=2, tag=tag)))
    # A relay that never streamed has no [DONE] either: that is no evidence of honesty.
    _require_content(ex, relay)
    reasons = _finish_reasons(ex)
    require(
        not reasons,
        "F4: a truncated stream carries no finish_reason (no fake 'stop')",
        "no finish_reason",
        reasons,
        ex.curl,
        relay.secrets,
    )
    signalled = any(isinstance(c.get("error"), dict) for c in ex.chunks()) or ex.done_count == 0
    require(
        signalled,
        "the truncation is visible: an error event or no [DONE]",
        "an error event or a missing [DONE]",
        f"{ex.done_count} [DONE], no error event",
        ex.curl,
        relay.secrets,
    )


@pytest.mark.parametrize("framing", ["nospace", "crlf", "split", "coalesce"])
@pytest.mark.case(
    "streaming.upstream-framing-tolerated",
    title="Odd but legal upstream SSE framing still delivers every event",
    area="streaming",
    faq=("F4",),
    level="SHOULD",
    spec="WHATWG SSE; RELAY_SPEC §5",
)
def test_upstream_framing(framing, client, profile, _journal, tag, relay):
    if _journal is None:
        skip_outside_view(f"an upstream that frames its SSE '{framing}' on demand (the "
                          "mock's framing directive)")  # fmt: skip
    ex = client.stream(chat_body(directive=directive(chunks=5, framing=framing, tag=tag)))
    got = len(ex.content_events())
    require(
        ex.status == 200 and got == 5 and ex.done_count == 1,
        f"an upstream stream framed '{framing}' is delivered whole",
        "5 content events + [DONE]",
        f"{got} content events, {ex.done_count} [DONE] ({ex.describe()})",
        ex.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "streaming.event-stream-canonical",
    title="Stream frames are exactly 'data: <json>' and a blank line, as OpenAI sends them",
    area="streaming",
    faq=("F4",),
    level="SHOULD",
    spec="OpenAI API streaming format",
)
def test_event_stream_canonical(client, tag, relay):
    # Stricter than SSE requires (streaming.event-stream is the MUST): naive line-splitting
    # clients parse only OpenAI's own framing.
    if relay.upstream_url is None:
        # Live: a model obeys no directive; a long answer cut at max_tokens has many frames.
        ex = client.stream(live_body(AT_LENGTH, max_tokens=LIVE_EVENT_TOKENS))
        _require_content(ex, relay, want=1)
    else:
        ex = client.stream(chat_body(directive=directive(chunks=5, tag=tag)))
        _require_content(ex, relay, want=5)
    text = ex.body.decode("utf-8", "replace")
    frames = [f for f in text.split("\n\n") if f.strip()]
    bad = [f for f in frames if not f.startswith("data: ") or "\n" in f.strip("\n")]
    require(
        not bad and "\r" not in text,
        "every frame is 'data: <json>' followed by a blank line (no comments, other fields "
        "or CR line ends)",
        "'data: …\\n\\n' frames only",
        f"{len(bad)} other frame(s): {bad[:2]!r}" if bad else "CR line ends",
        ex.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "streaming.matches-non-stream",
    title="A stream says what the same request says without streaming: same text, same usage",
    area="streaming",
    faq=("F4", "F9"),
)
def test_matches_non_stream(client, relay):
    # A request with one right answer, at temperature 0: the model's answer does not depend
    # on how it is delivered, so the stream and the JSON answer agree word for word.
    body = live_body(repeat("the quick brown fox jumps"), temperature=0, max_tokens=30)
    ex = client.stream({**body, "stream_options": {"include_usage": True}})
    _require_content(ex, relay)
    plain = client.chat(body)
    data = plain.json()
    require(
        plain.status == 200 and isinstance(data, dict) and answer_text(plain) is not None,
        "the same request without streaming is served",
        "HTTP 200 with a chat completion",
        plain.describe(),
        plain.curl,
        relay.secrets,
    )
    streamed = stream_text(ex)
    usage_chunks = [c["usage"] for c in ex.chunks() if isinstance(c.get("usage"), dict)]
    streamed_usage = usage_chunks[-1] if usage_chunks else None
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    plain_usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    same_text = streamed == answer_text(plain)
    same_usage = streamed_usage is not None and all(
        streamed_usage.get(k) == plain_usage.get(k) for k in counts
    )
    if not same_text:
        # A model that is not deterministic even here shows nothing about the relay.
        again = client.chat(body)
        if answer_text(again) != answer_text(plain):
            pytest.skip("the model answers this request differently each time, even at "
                        "temperature 0: stream and non-stream cannot be compared")  # fmt: skip
    require(
        same_text,
        "F4: a streamed answer is the same answer: its deltas join into the text the "
        "non-stream request gets",
        repr((answer_text(plain) or "")[:200]),
        repr(streamed[:200]),
        ex.curl,
        relay.secrets,
    )
    require(
        same_usage,
        "F9: the stream's usage chunk (include_usage) reports the usage of the same answer "
        "without streaming (the two are billed alike)",
        {k: plain_usage.get(k) for k in counts},
        streamed_usage if streamed_usage is not None else "no usage chunk",
        ex.curl,
        relay.secrets,
    )
