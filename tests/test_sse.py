"""SSE decoding is independent of how the bytes were split into reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaygate.sse import SSEDecoder, encode_event


def _decode(chunks: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    out = [e.data for c in chunks for e in decoder.feed(c)]
    return out + [e.data for e in decoder.flush()]


def test_line_endings_and_space_variants() -> None:
    raw = b'data: {"a":1}\n\ndata:{"b":2}\r\n\r\ndata: x\rdata: y\r\r: comment\n\ndata: [DONE]\n\n'
    assert _decode([raw]) == ['{"a":1}', '{"b":2}', "x\ny", "[DONE]"]


def test_final_event_without_blank_line_is_flushed() -> None:
    assert _decode([b"data: last"]) == ["last"]


def test_unknown_field_counts_as_malformed() -> None:
    decoder = SSEDecoder()
    list(decoder.feed(b"garbage line\n\n"))
    assert decoder.malformed_lines == 1


def test_encode_event() -> None:
    assert encode_event("x") == b"data: x\n\n"


_payloads = st.lists(
    st.text(
        alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=30,
    ),
    min_size=1,
    max_size=8,
)


@given(_payloads, st.sampled_from([b"\n", b"\r\n", b"\r"]), st.data())
def test_any_split_decodes_the_same(payloads: list[str], eol: bytes, data: st.DataObject) -> None:
    raw = b"".join(b"data: " + p.encode() + eol + eol for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    chunks, last = [], 0
    for cut in cuts:
        chunks.append(raw[last:cut])
        last = cut
    chunks.append(raw[last:])
    # "data: " + p: the decoder drops the one space after the colon, so each payload comes back
    # exactly (a payload's own leading space included).
    assert _decode(chunks) == payloads


def test_a_long_line_in_small_pieces_is_searched_once() -> None:
    """4 MB line fed 1 KB at a time: the decoder searches each byte about once (counted, not
    timed); the old re-join-and-rescan per feed was quadratic."""
    line = b"data: " + b"y" * (4 * 1024 * 1024) + b"\r\n\r\n"
    decoder = SSEDecoder()
    events = [e for i in range(0, len(line), 1024) for e in decoder.feed(line[i : i + 1024])]
    assert [len(e.data) for e in events] == [4 * 1024 * 1024]
    assert decoder.work_bytes <= 2 * len(line), decoder.work_bytes


@pytest.mark.parametrize("split", [0, 1, 2, 3, 5])
def test_a_leading_byte_order_mark_is_ignored_wherever_the_read_splits(split: int) -> None:
    raw = b'\xef\xbb\xbfdata: {"a":1}\n\n'
    decoder = SSEDecoder()
    events = [*decoder.feed(raw[:split]), *decoder.feed(raw[split:]), *decoder.flush()]
    assert [e.data for e in events] == ['{"a":1}']
    assert decoder.malformed_lines == 0


def test_a_byte_order_mark_after_the_start_is_data() -> None:
    decoder = SSEDecoder()
    events = [*decoder.feed(b"data: x\n\n\xef\xbb\xbfdata: y\n\n"), *decoder.flush()]
    assert [e.data for e in events] == ["x"]
    assert decoder.malformed_lines == 1
