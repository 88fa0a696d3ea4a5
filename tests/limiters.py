"""Exact rate limiters of the common kinds, each served by a tiny stand-in relay on 127.0.0.1.

The 429 prober must judge every honest limiter correct, so these are written the way the
libraries and gateways operators actually run do it:

================  =========================================================================
``fixed-clock``   fixed windows aligned to the wall clock (``floor(now / W)``), counter per
                  key; ``Retry-After`` = seconds to the window's end rounded up (gateways,
                  express-rate-limit's shared stores)
``fixed-first``   a window opens with a key's first request and expires W later (Redis
                  ``INCR`` + ``EXPIRE``); ``Retry-After`` = the key's TTL rounded up
``sliding-log``   admission times of the last W seconds (the reference relay's kind)
``token-bucket``  capacity N, refilled continuously at N/W per second
``gcra``          generic cell rate algorithm (redis-cell, throttled): one theoretical
                  arrival time per key, emission interval W/N, burst N
================  =========================================================================

Each answers a refusal with ``Retry-After`` = the exact wait rounded up to whole seconds (at
least 1), and nothing else: no ``retry-after-ms``, no ``x-ratelimit-*`` headers. Faults for the
prober's own self-tests: ``retry_after="floor"`` (advertises less than the real wait),
``pad_s`` (advertises that much more), ``extra`` (admits N + extra per window).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

import orjson
from aiohttp import web

KINDS = ("fixed-clock", "fixed-first", "sliding-log", "token-bucket", "gcra")

_OK = orjson.dumps(
    {
        "id": "chatcmpl-limiter",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)
_REFUSED = orjson.dumps(
    {"error": {"message": "rate limit exceeded", "type": "requests", "code": "rate_limit_exceeded"}}
)


class Limiter:
    """``check(key) -> wait_s``: 0 admits (and records) the request, > 0 is the exact wait."""

    def __init__(self, kind: str, limit: int, window_s: float, *, extra: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} not in {KINDS}")
        self.kind = kind
        self.limit = limit + extra
        self.window_s = window_s
        self.interval_s = window_s / self.limit
        self._lock = threading.Lock()
        self._count: dict[str, tuple[float, int]] = {}  # fixed: window start, admitted
        self._log: dict[str, deque[float]] = {}
        self._bucket: dict[str, tuple[float, float]] = {}  # last update, tokens
        self._tat: dict[str, float] = {}

    def check(self, key: str) -> float:
        with self._lock:
            return getattr(self, "_" + self.kind.replace("-", "_"))(key)

    def _fixed_clock(self, key: str) -> float:
        now = time.time()  # wall clock on purpose: windows start on whole multiples of W
        start = math.floor(now / self.window_s) * self.window_s
        opened, admitted = self._count.get(key, (start, 0))
        if opened != start:
            admitted = 0
        if admitted < self.limit:
            self._count[key] = (start, admitted + 1)
            return 0.0
        return start + self.window_s - now

    def _fixed_first(self, key: str) -> float:
        now = time.monotonic()
        opened, admitted = self._count.get(key, (now, 0))
        if now >= opened + self.window_s:
            opened, admitted = now, 0
        if admitted < self.limit:
            self._count[key] = (opened, admitted + 1)
            return 0.0
        return opened + self.window_s - now

    def _sliding_log(self, key: str) -> float:
        now = time.monotonic()
        log = self._log.setdefault(key, deque())
        while log and log[0] <= now - self.window_s:
            log.popleft()
        if len(log) < self.limit:
            log.append(now)
            return 0.0
        return log[len(log) - self.limit] + self.window_s - now

    def _token_bucket(self, key: str) -> float:
        now = time.monotonic()
        last, tokens = self._bucket.get(key, (now, float(self.limit)))
        tokens = min(float(self.limit), tokens + (now - last) / self.interval_s)
        if tokens >= 1.0:
            self._bucket[key] = (now, tokens - 1.0)
            return 0.0
        self._bucket[key] = (now, tokens)
        return (1.0 - tokens) * self.interval_s

    def _gcra(self, key: str) -> float:
        now = time.monotonic()
        tat = max(self._tat.get(key, now), now) + self.interval_s
        allow_at = tat - self.window_s
        if now < allow_at:
            return allow_at - now
        self._tat[key] = tat
        return 0.0


def ceil_seconds(wait_s: float) -> str:
    """The honest whole-second ``Retry-After``: the wait rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))


def floor_seconds(wait_s: float) -> str:
    """A faulty ``Retry-After``: rounded down, so a client that honours it is refused again."""
    return str(math.floor(wait_s))


ROUNDING = {"ceil": ceil_seconds, "floor": floor_seconds}


def create_app(limiter: Limiter, retry_after: str = "ceil", pad_s: float = 0.0) -> web.Application:
    """``POST /v1/chat/completions``: 200 when admitted, else 429 with ``Retry-After``."""
    advertise = ROUNDING[retry_after]

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        wait_s = limiter.check(key)
        if wait_s <= 0:
            return web.Response(body=_OK, content_type="application/json")
        headers = {"Retry-After": advertise(wait_s + pad_s)}
        return web.Response(
            status=429, body=_REFUSED, content_type="application/json", headers=headers
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def _serve(
    conn: Connection,
    kind: str,
    limit: int,
    window_s: float,
    extra: int,
    retry_after: str,
    pad_s: float,
) -> None:
    app = create_app(Limiter(kind, limit, window_s, extra=extra), retry_after, pad_s)

    async def main() -> None:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        conn.send(runner.addresses[0][1])
        await asyncio.Event().wait()  # until the parent terminates this process

    asyncio.run(main())


class Threads:
    """Runtime on plain threads (the prober under Locust uses gevent)."""

    def spawn(self, fn: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=fn, daemon=True)
        thread.start()
        return thread

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def join(self, handles: Iterable[Any]) -> None:
        for thread in handles:
            thread.join(30)


class LimiterRelay:
    """A stand-in relay that only rate-limits, in its own process (its own GIL, so the
    prober's timing is not disturbed by the server) on 127.0.0.1."""

    def __init__(
        self,
        kind: str,
        limit: int,
        window_s: float,
        *,
        extra: int = 0,
        retry_after: str = "ceil",
        pad_s: float = 0.0,
    ) -> None:
        Limiter(kind, limit, window_s)  # bad arguments fail here, not in the child
        self.port = 0
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_serve,
            args=(child, kind, limit, window_s, extra, retry_after, pad_s),
            daemon=True,
        )

    def __enter__(self) -> LimiterRelay:
        self._process.start()
        if not self._conn.poll(30):
            self._process.terminate()
            raise RuntimeError("limiter relay did not start")
        self.port = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        self._process.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
