"""Benchmark helper (not a scenario): ``loadtests/streaming_chat.py`` unchanged, except that
streams sent outside the bench's measurement window (``$BENCH_FROM_NS``..``$BENCH_UNTIL_NS``,
CLOCK_MONOTONIC) are recorded under the scope ``warmup.``, so the summary's histograms hold
the steady state only - the same window the stock and control clients use. Recording cost is
the same either way.
"""

import os

from locust import task

from relaygate.load.client import RequestResult
from relaygate.load.locust_plugin import RelaygateUser

FROM_NS = int(os.environ.get("BENCH_FROM_NS", "0"))
UNTIL_NS = int(os.environ.get("BENCH_UNTIL_NS", str(1 << 62)))


class BenchStreamingChatUser(RelaygateUser):
    @task
    def chat_completions_stream(self) -> None:
        self.stream_chat()

    def report(
        self, name: str, res: RequestResult, *, scope: str = "", expected: tuple[str, ...] = ()
    ) -> None:
        sent = res.t_sent_ns or 0
        in_window = FROM_NS <= sent < UNTIL_NS
        super().report(name, res, scope=scope if in_window else "warmup.", expected=expected)
