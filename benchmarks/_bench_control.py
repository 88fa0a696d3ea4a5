"""Benchmark helper: minimal asyncio + uvloop control client (not Locust), same measurements.

python _bench_control.py URL KEY PROMPT USERS SECONDS OUT.json
"""

import asyncio
import os
import sys
import time
from urllib.parse import urlsplit

import orjson
import uvloop

from relaygate.load.histogram import Histogram

STREAM_LIMIT_S = 120.0
STREAM_MAX_BYTES = 16 * 1024 * 1024


async def user(host: str, port: int, request: bytes, deadline: float, out: dict) -> None:
    """Closed loop; one connection per stream (Connection: close), so framing is trivial:
    every line starting with ``data: {`` is an event, EOF ends the stream. Only streams sent
    inside the measurement window (``$BENCH_FROM_NS``..``$BENCH_UNTIL_NS``) are recorded."""
    from_ns = int(os.environ.get("BENCH_FROM_NS", "0"))
    until_ns = int(os.environ.get("BENCH_UNTIL_NS", str(1 << 62)))
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        measured = from_ns <= time.monotonic_ns() < until_ns
        first = measured
        last_lag = None
        received = 0
        try:
            # Bounded like every request the harness sends: STREAM_LIMIT_S and
            # STREAM_MAX_BYTES per stream at most.
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + STREAM_LIMIT_S):
                while received <= STREAM_MAX_BYTES:
                    line = await reader.readline()
                    received += len(line)
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
                    out["event"].record(lag / 1e6)
                    out["events"] += 1
                    if first:
                        out["ttft"].record(lag / 1e6)
                        first = False
                    elif last_lag is not None:
                        out["itl"].record(abs(lag - last_lag) / 1e6)
                    last_lag = lag
        except TimeoutError:
            measured = False  # a cut stream is no sample
        finally:
            writer.close()
        out["streams"] += measured and received <= STREAM_MAX_BYTES


async def main(url: str, key: str, prompt: str, users: int, seconds: float, path: str) -> None:
    parts = urlsplit(url)
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    )
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    out = {"ttft": Histogram(), "event": Histogram(), "itl": Histogram(), "streams": 0, "events": 0}
    deadline = time.monotonic() + seconds
    await asyncio.gather(
        *(user(parts.hostname, parts.port, request, deadline, out) for _ in range(users))
    )
    with open(path, "wb") as handle:
        handle.write(
            orjson.dumps(
                {
                    "ttft_err": out["ttft"].to_dict(),
                    "event_err": out["event"].to_dict(),
                    "itl_err": out["itl"].to_dict(),
                    "streams": out["streams"],
                    "events": out["events"],
                }
            )
        )


if __name__ == "__main__":
    uvloop.install()
    url, key, prompt, users, seconds, path = sys.argv[1:7]
    asyncio.run(main(url, key, prompt, int(users), float(seconds), path))
