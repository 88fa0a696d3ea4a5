"""Directive syntax: what tests and load scenarios write is exactly what the mock reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaygate.directives import Directive, DirectiveError, directive, find_directive


def test_key_value_and_json_forms_agree() -> None:
    kv = find_directive(["hi [[relaygate ttft_ms=200 itl_ms=20.5 usage=12/50 tag=t1]] there"])
    js = find_directive(
        ['[[relaygate {"ttft_ms": 200, "itl_ms": 20.5, "usage": "12/50", "tag": "t1"}]]']
    )
    assert (
        kv
        == js
        == Directive(tag="t1", prompt_tokens=12, completion_tokens=50, ttft_ms=200.0, itl_ms=20.5)
    )


def test_later_directives_override_earlier_keys() -> None:
    d = find_directive(["[[relaygate chunks=3 tag=a]]", "x [[relaygate chunks=5]]"])
    assert d is not None and (d.chunks, d.tag) == (5, "a")


def test_no_directive_is_none() -> None:
    assert find_directive(["plain text", "[[relaygat chunks=3]]"]) is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[[relaygate ttft=3]]", "ttft"),
        ("[[relaygate chunks=x]]", "chunks"),
        ("[[relaygate chunks=-1]]", "chunks"),
        ("[[relaygate error=700]]", "error"),
        ("[[relaygate itl_ms=nan]]", "itl_ms"),
        ("[[relaygate finish_reason=done]]", "finish_reason"),
        ("[[relaygate framing=weird]]", "framing"),
        ("[[relaygate headers=NoColon]]", "headers"),
        ('[[relaygate headers="X-A:b\\r\\nInjected: 1"]]', "headers"),
        ("[[relaygate usage=12]]", "usage"),
        ("[[relaygate lonely]]", None),
        ("[[relaygate {1: 2}]]", None),
        ("[[relaygate [1, 2]]]", None),
    ],
)
def test_bad_directives_name_the_key(text: str, key: str | None) -> None:
    with pytest.raises(DirectiveError) as info:
        find_directive([text])
    assert info.value.key == key


def test_quoted_values_may_contain_brackets_and_quotes() -> None:
    text = directive(error=500, error_message='a "quoted" ]] thing', tag="with space")
    d = find_directive([f"before {text} after"])
    assert d is not None
    assert (d.error_message, d.tag) == ('a "quoted" ]] thing', "with space")


def test_directive_formatter_validates() -> None:
    with pytest.raises(DirectiveError):
        directive(chunks="many")
    assert directive() == "[[relaygate]]"


_directives = st.builds(
    Directive,
    tag=st.none() | st.text(max_size=30),
    prompt_tokens=st.none() | st.integers(0, 10**6),
    completion_tokens=st.none() | st.integers(0, 10**6),
    ttft_ms=st.floats(0, 10_000).map(lambda v: float(f"{v:g}")),
    itl_ms=st.floats(0, 10_000).map(lambda v: float(f"{v:g}")),
    chunks=st.integers(0, 1000),
    finish_reason=st.sampled_from(["stop", "length", "tool_calls", "content_filter"]),
    error=st.none() | st.integers(100, 599),
    error_message=st.none() | st.text(max_size=40),
    framing=st.frozensets(st.sampled_from(["nospace", "crlf", "split", "coalesce"])),
    no_done=st.booleans(),
    stamp=st.sampled_from(["none", "field", "content"]),
)


@given(_directives)
def test_round_trip(d: Directive) -> None:
    assert find_directive([f"prefix {d.to_text()} suffix"]) == d
