"""Benchmark helper (not a scenario): the best *stock* Locust method from LOCUST_BASELINE.md,
FastHttpUser + ``response._response.readline(b"\\n")``, timing the mock's stamped events.

Each line is stamped on return from ``readline``; errors vs the mock's ``relaygate_emit_ns``
go into relaygate histograms, dumped as JSON to ``$BENCH_OUT`` when Locust quits. Only streams
sent inside the measurement window (``$BENCH_FROM_NS``..``$BENCH_UNTIL_NS``, CLOCK_MONOTONIC)
are recorded, as for the other clients. ``ttft_excess``: measured TTFT (from just before the
post call) - the directed ``$BENCH_TTFT_MS``.
"""

import os
import time

import orjson
from locust import FastHttpUser, events, task

from relaygate.load.histogram import Histogram

TTFT_ERR = Histogram()
EVENT_ERR = Histogram()
ITL_ERR = Histogram()
TTFT_EXCESS = Histogram()  # measured TTFT (from just before the post call) - $BENCH_TTFT_MS
TTFT_NS = int(float(os.environ.get("BENCH_TTFT_MS", "0")) * 1e6)
COUNTS = {"streams": 0, "events": 0}
FROM_NS = int(os.environ.get("BENCH_FROM_NS", "0"))
UNTIL_NS = int(os.environ.get("BENCH_UNTIL_NS", str(1 << 62)))


class StockReadlineUser(FastHttpUser):
    @task
    def stream(self) -> None:
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": os.environ["BENCH_PROMPT"]}],
        }
        headers = {
            "Authorization": f"Bearer {os.environ['BENCH_KEY']}",
            "Accept-Encoding": "identity",
        }
        sent = time.monotonic_ns()
        measured = FROM_NS <= sent < UNTIL_NS
        with self.client.post(
            "/v1/chat/completions", json=body, headers=headers, stream=True, catch_response=True
        ) as resp:
            raw = resp._response
            first = measured
            last_lag = None
            while True:
                line = raw.readline(b"\n")
                now = time.monotonic_ns()
                if not line:
                    break
                if not line.startswith(b"data: {"):
                    continue
                obj = orjson.loads(line[6:])
                stamp = obj.get("relaygate_emit_ns")
                choices = obj.get("choices") or [{}]
                if stamp is None or not (choices[0].get("delta") or {}).get("content"):
                    continue
                if not measured:
                    continue
                lag = now - stamp
                EVENT_ERR.record(lag / 1e6)
                COUNTS["events"] += 1
                if first:
                    TTFT_ERR.record(lag / 1e6)
                    TTFT_EXCESS.record((now - sent - TTFT_NS) / 1e6)
                    first = False
                elif last_lag is not None:
                    ITL_ERR.record(abs(lag - last_lag) / 1e6)
                last_lag = lag
            COUNTS["streams"] += measured
            resp.success()


@events.quitting.add_listener
def _dump(environment, **_kw):  # type: ignore[no-untyped-def]
    out = {
        "ttft_err": TTFT_ERR.to_dict(),
        "event_err": EVENT_ERR.to_dict(),
        "itl_err": ITL_ERR.to_dict(),
        "ttft_excess": TTFT_EXCESS.to_dict(),
        **COUNTS,
    }
    with open(os.environ["BENCH_OUT"], "wb") as handle:
        handle.write(orjson.dumps(out))
