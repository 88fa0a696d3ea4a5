"""The mock upstream served by several worker processes (``mock-upstream --workers N``).

The parent binds everything before it forks: one public listening socket per worker on the same
port with ``SO_REUSEPORT`` (the kernel spreads connections over them; one shared socket where the
option is missing) and one private loopback control socket per worker. Each forked worker serves
the mock app on its public socket and the peer control app (:func:`~relaygate.mock.app.
create_peer_app`) on its private one; journal numbers come from one shared counter
(:mod:`relaygate.mock.shards`). The parent prints the ready line once every worker listens, then
only waits: SIGTERM / SIGINT stop every worker; a worker that dies stops the others and the
parent exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from relaygate.mock.shards import Shard, SharedSequence
from relaygate.serve import ServeError, print_ready

__all__ = ["serve_workers"]

_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0
# How often a worker checks that its parent still lives (it exits if not).
_PARENT_CHECK_S = 1.0


def _bind_public(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port (SO_REUSEPORT), or one shared socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    sockets: list[socket.socket] = []
    try:
        if reuse_port and port != 0:
            # SO_REUSEPORT would silently share a port another mock of this user holds (and
            # split its traffic): claim it once without the option, so that fails as usual.
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        for _ in range(count if reuse_port else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, sockets[0].getsockname()[1] if len(sockets) > 1 else port))
            sock.listen(4096)
            sock.setblocking(False)
    except (OSError, OverflowError) as exc:
        for sock in sockets:
            sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None
    return sockets if reuse_port else sockets * count


def _bind_control() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _serve_worker(
    shard: Shard,
    app: web.Application,
    peer_app: web.Application,
    public: socket.socket,
    control: socket.socket,
    ready_fd: int,
    parent_pid: int,
) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    peer_runner = web.AppRunner(peer_app, handle_signals=False, access_log=None)
    await runner.setup()
    await peer_runner.setup()
    try:
        await web.SockSite(peer_runner, control).start()
        await web.SockSite(runner, public, backlog=4096).start()
        # Peers' control sockets listen since the fork: this waits for them to serve.
        await shard.warm_up()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        os.write(ready_fd, b".")
        os.close(ready_fd)
        while not stop.is_set() and os.getppid() == parent_pid:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _PARENT_CHECK_S)
    finally:
        await runner.cleanup()
        await peer_runner.cleanup()


def _worker(
    make_app: Callable[[Shard], tuple[web.Application, web.Application]],
    shard: Shard,
    public: list[socket.socket],
    control: list[socket.socket],
    ready_fds: tuple[int, int],
    parent_pid: int,
) -> None:
    """A forked worker's life: keep its own two sockets, serve until told to stop."""
    index = shard.index
    os.close(ready_fds[0])
    ready_fd = ready_fds[1]
    for other in {id(s): s for s in public + control}.values():
        if other is not public[index] and other is not control[index]:
            other.close()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app, peer_app = make_app(shard)
    asyncio.run(
        _serve_worker(shard, app, peer_app, public[index], control[index], ready_fd, parent_pid)
    )


class _Stop:
    """The parent's stop flag, set by SIGTERM / SIGINT."""

    requested = False

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        cls.requested = True


def _wait_ready(read_fd: int, processes: list[Any], count: int) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    seen = 0
    while seen < count:
        if _Stop.requested:
            raise ServeError("stopped before every worker was ready")
        dead = [p for p in processes if p.exitcode is not None]
        if dead:
            raise ServeError(f"worker {dead[0].name} exited with {dead[0].exitcode} at start")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServeError(f"{count - seen} of {count} workers not ready in {_READY_TIMEOUT_S} s")
        readable, _, _ = select.select([read_fd], [], [], min(left, 0.2))
        if readable:
            seen += len(os.read(read_fd, count))


def _stop_all(processes: list[Any]) -> None:
    for process in processes:
        if process.exitcode is None and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.kill()
            process.join(1.0)


def serve_workers(
    make_app: Callable[[Shard], tuple[web.Application, web.Application]],
    host: str,
    port: int,
    workers: int,
) -> int:
    """Serve ``workers`` forked copies of ``make_app(shard)`` (the mock app and its peer app)
    on ``host:port`` until SIGTERM / SIGINT; 0 when stopped, 1 when a worker died.

    Raises :class:`ServeError` when it cannot listen or a worker does not start.
    """
    context = multiprocessing.get_context("fork")
    sequence = SharedSequence(context.Value("q", 1))
    public = _bind_public(host, port, workers)
    public_port = public[0].getsockname()[1]
    control = [_bind_control() for _ in range(workers)]
    urls = [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in control]
    read_fd, write_fd = os.pipe()
    parent_pid = os.getpid()
    processes = []
    for index in range(workers):
        peers = tuple(url for i, url in enumerate(urls) if i != index)
        shard = Shard(index, workers, sequence, peers)
        process = context.Process(
            target=_worker,
            args=(make_app, shard, public, control, (read_fd, write_fd), parent_pid),
            name=f"mock-worker-{index}",
        )
        process.start()
        processes.append(process)
    os.close(write_fd)
    for sock in {id(s): s for s in public + control}.values():
        sock.close()
    previous = {sig: signal.signal(sig, _Stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            _wait_ready(read_fd, processes, workers)
        finally:
            os.close(read_fd)
        print_ready(
            _url(host, public_port),
            workers=workers,
            worker_pids=[p.pid for p in processes],
        )
        sentinels = [p.sentinel for p in processes]
        while not _Stop.requested:
            # Ctrl-C reaches the workers too: their exit after a stop request is no failure.
            ready = multiprocessing.connection.wait(sentinels, timeout=0.2)
            if ready and not _Stop.requested:
                # The sentinel closes a moment before the process can be reaped.
                dead = next(p for p in processes if p.sentinel in ready)
                dead.join(5.0)
                sys.stderr.write(
                    f"relaygate: mock worker {dead.name} (pid {dead.pid}) exited with "
                    f"{dead.exitcode}; stopping the others\n"
                )
                return 1
        return 0
    finally:
        _stop_all(processes)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _url(host: str, port: int) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"
