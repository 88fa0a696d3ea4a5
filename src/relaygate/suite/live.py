"""Live mode: evidence a relay customer holds (a URL and a key, no upstream journal).

Without ``--upstream-url`` no case can ask the mock upstream what it received or make it fail
on demand; a live case instead asks the model something whose answer shows the rule held
(``Repeat exactly: …`` has one right answer; ``Answer at length`` runs into ``max_tokens``),
and judges what came back: status, JSON shape, headers, the stream's receive stamps. A rule
that only the upstream can see skips with :func:`skip_outside_view`, never passes.

The buffering rule (:func:`judge_streamed`) in full: ask for a long answer as a stream
(``Answer at length``, ``max_tokens`` :data:`STREAM_PROBE_TOKENS`); ``D`` is the time from
sending the request to the last content event's arrival, ``S`` the time between the first and
the last content event's arrival (the client's receive stamps). A streamed answer spreads its
content over its generation time, so ``S`` is most of ``D``; a buffered one arrives in one
burst at the end, so ``S`` is about 0. The answer is streamed iff ``S >= MIN_SPREAD_SHARE x
D``. An answer with ``D < MIN_JUDGED_S`` came too fast to tell the two apart: the case skips.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from relaygate.suite.client import Exchange, StreamExchange

__all__ = [
    "AT_LENGTH",
    "MIN_JUDGED_S",
    "MIN_SPREAD_SHARE",
    "STREAM_PROBE_TOKENS",
    "StreamTiming",
    "answer_text",
    "finish_reasons",
    "judge_streamed",
    "live_body",
    "repeat",
    "skip_outside_view",
    "stream_text",
    "stream_timing",
]

#: A prompt whose answer runs into ``max_tokens`` (finish_reason "length").
AT_LENGTH = "Answer at length: describe, step by step, how a request travels through a relay."
#: ``max_tokens`` of the buffering probe: long enough to take a model most of a second.
STREAM_PROBE_TOKENS = 128
#: Below this, a streamed and a buffered answer cannot be told apart: the case skips.
MIN_JUDGED_S = 0.3
#: A streamed answer's content spans at least this share of the time to its last event.
MIN_SPREAD_SHARE = 0.25


def repeat(text: str) -> str:
    """A prompt with one right answer: ``text`` itself."""
    return f"Repeat exactly: {text}"


def live_body(prompt: str, model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    """A chat body without any relaygate directive (a real model would read it as text)."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def skip_outside_view(what: str) -> NoReturn:
    """Skip a rule that only the upstream can show (live mode has no journal)."""
    pytest.skip(
        f"needs ground truth: {what} (live mode has no upstream journal; run with "
        "--upstream-url, the relaygate mock upstream)"
    )


def answer_text(ex: Exchange, index: int = 0) -> str | None:
    """``choices[index].message.content`` of a JSON answer, or None."""
    data = ex.json()
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == index:
            message = choice.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            return content if isinstance(content, str) else None
    return None


def stream_text(ex: StreamExchange, index: int = 0) -> str:
    """The content deltas of choice ``index``, joined."""
    parts = []
    for chunk in ex.chunks():
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == index:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    parts.append(content)
    return "".join(parts)


def finish_reasons(ex: Exchange) -> dict[int, str]:
    """choice index -> finish_reason, from a JSON answer or a stream's chunks."""
    from relaygate.suite.client import StreamExchange

    if isinstance(ex, StreamExchange):
        choices = [c for chunk in ex.chunks() for c in chunk.get("choices") or []]
    else:
        data = ex.json()
        choices = data.get("choices") or [] if isinstance(data, dict) else []
    return {
        int(c.get("index", 0)): str(c["finish_reason"])
        for c in choices
        if isinstance(c, dict) and c.get("finish_reason")
    }


@dataclasses.dataclass(frozen=True)
class StreamTiming:
    """When a stream's content arrived, in seconds since the request was sent."""

    content_events: int
    first_s: float
    last_s: float

    @property
    def spread_s(self) -> float:
        return self.last_s - self.first_s

    def describe(self) -> str:
        return (
            f"{self.content_events} content events; first at {self.first_s * 1000:.0f} ms, "
            f"last at {self.last_s * 1000:.0f} ms (spread {self.spread_s * 1000:.0f} ms)"
        )


def stream_timing(ex: StreamExchange) -> StreamTiming | None:
    """The content events' receive stamps; None without content."""
    events = ex.content_events()
    if not events:
        return None
    return StreamTiming(
        len(events),
        (events[0].arrived_ns - ex.sent_ns) / 1e9,
        (events[-1].arrived_ns - ex.sent_ns) / 1e9,
    )


def judge_streamed(timing: StreamTiming) -> bool:
    """True: streamed; False: buffered (see the module docstring). Skips when too fast."""
    if timing.last_s < MIN_JUDGED_S:
        pytest.skip(
            f"the answer came too fast to tell streaming from buffering: {timing.describe()}; "
            f"needs >= {MIN_JUDGED_S * 1000:.0f} ms to the last content event"
        )
    return timing.spread_s >= MIN_SPREAD_SHARE * timing.last_s
