"""Benchmark helper (not a scenario): ``loadtests/streaming_chat.py`` unchanged, except that
streams sent outside the bench's measurement window (``$BENCH_FROM_NS``..``$BENCH_UNTIL_NS``,
CLOCK_MONOTONIC) are recorded under the scope ``warmup.``, so the summary's histograms hold
the steady state only - the same window the stock and control clients use. Recording cost is
the same either way.

Inside the window each ok stream's TTFT excess (measured TTFT - the directed
``$BENCH_TTFT_MS``) is split with the mock's arrival stamp (``x-relaygate-arrival-ns``) into
``start_to_sent`` (connection + send), ``sent_to_arrival`` (request written -> the mock's
arrival stamp), ``mock_late`` (the first token's emit stamp - arrival - TTFT) and
``emit_to_recv``; the histograms go to ``$BENCH_OUT`` (JSON) when Locust quits.
"""

import os

import orjson
from locust import events, task

from relaygate.load.client import RequestResult
from relaygate.load.histogram import Histogram
from relaygate.load.locust_plugin import RelaygateUser

FROM_NS = int(os.environ.get("BENCH_FROM_NS", "0"))
UNTIL_NS = int(os.environ.get("BENCH_UNTIL_NS", str(1 << 62)))
TTFT_NS = int(float(os.environ.get("BENCH_TTFT_MS", "0")) * 1e6)
PARTS = {
    name: Histogram()
    for name in (
        "ttft_excess",
        "start_to_sent",
        "sent_to_arrival",
        "mock_late",
        "emit_to_recv",
    )
}


class BenchStreamingChatUser(RelaygateUser):
    @task
    def chat_completions_stream(self) -> None:
        self.stream_chat()

    def report(
        self, name: str, res: RequestResult, *, scope: str = "", expected: tuple[str, ...] = ()
    ) -> None:
        sent = res.t_sent_ns or 0
        in_window = FROM_NS <= sent < UNTIL_NS
        if in_window:
            _split(res)
        super().report(name, res, scope=scope if in_window else "warmup.", expected=expected)


def _split(res: RequestResult) -> None:
    arrival = res.headers.get("x-relaygate-arrival-ns")
    first, lag, sent = res.t_first_token_ns, res.first_token_emit_lag_ns, res.t_sent_ns
    if res.outcome != "ok" or first is None or sent is None:
        return
    PARTS["ttft_excess"].record((first - sent - TTFT_NS) / 1e6)
    if not arrival or lag is None:
        return  # a mock without the arrival header (--before an older tree)
    arrival_ns = int(arrival)
    PARTS["start_to_sent"].record((sent - res.t_start_ns) / 1e6)
    PARTS["sent_to_arrival"].record((arrival_ns - sent) / 1e6)
    PARTS["mock_late"].record((first - lag - arrival_ns - TTFT_NS) / 1e6)
    PARTS["emit_to_recv"].record(lag / 1e6)


@events.quitting.add_listener
def _dump(environment, **_kw):  # type: ignore[no-untyped-def]
    path = os.environ.get("BENCH_OUT")
    if path:
        with open(path, "wb") as handle:
            handle.write(orjson.dumps({name: h.to_dict() for name, h in PARTS.items()}))
