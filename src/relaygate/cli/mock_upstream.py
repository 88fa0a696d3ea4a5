"""``relaygate mock-upstream``: serve the mock OpenAI-compatible upstream.

Prints one JSON ready line (``{"ready": true, "url": ..., "pid": ...}``) on stdout once it
listens; ``--port 0`` picks a free port. With ``--workers N`` (N > 1) the line also carries
``"workers": N`` and ``"worker_pids"``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from relaygate.argtypes import port_number

if TYPE_CHECKING:
    from aiohttp import web

    from relaygate.mock.config import MockConfig
    from relaygate.mock.shards import Shard

_MAX_WORKERS = 64

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``relaygate mock-upstream`` (light: no heavy imports here)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=0, help="port (default 0: a free port)")
    parser.add_argument(
        "--key",
        action="append",
        dest="keys",
        metavar="KEY",
        help="accepted channel key (repeatable; default sk-relaygate-upstream)",
    )
    parser.add_argument(
        "--models-file",
        metavar="FILE",
        help='JSON or TOML {"model-id": {"context_window": N, "max_output": M}, ...}',
    )
    parser.add_argument(
        "--journal-size", type=int, default=10_000, help="requests kept in the journal (per worker)"
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=32 * 1024 * 1024,
        help="larger request bodies are answered 413 (default 32 MiB)",
    )
    parser.add_argument(
        "--default-ttft-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="a plain (directive-free) answer's first content event comes MS after the request "
        "(default 0; a directive's ttft_ms governs directed requests)",
    )
    parser.add_argument(
        "--default-itl-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="gap between a plain answer's content events, one token each (default 0)",
    )
    parser.add_argument(
        "--ignore-directives",
        action="store_true",
        help="behave like a real model: [[relaygate ...]] directives are plain prompt text, "
        "never obeyed",
    )
    parser.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        metavar="N",
        help="serve from N processes on one port (SO_REUSEPORT) for load use; the journal and "
        "/_relaygate/stats still answer for all of them (default 1)",
    )
    parser.add_argument(
        "--timer",
        choices=("precise", "coarse"),
        default="precise",
        help="precise (default): events within ~0.1 ms of their schedule, spinning near each "
        "deadline; coarse: one wake-up per --tick-ms for all due events, less CPU, events up to "
        "a tick + ~1 ms late (never early)",
    )
    parser.add_argument(
        "--tick-ms",
        type=float,
        default=1.0,
        metavar="MS",
        help="the coarse timer's tick (default 1)",
    )
    parser.add_argument(
        "--no-gc-tuning",
        action="store_true",
        help="leave Python's garbage collector at its defaults",
    )


def _worker_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= _MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1..{_MAX_WORKERS}, got {value}")
    return value


def tune_gc() -> None:
    """Keep GC pauses short under load: freeze start-up objects, collect young ones rarely.

    A naive mock saw 60 ms gen-2 pauses; frozen objects are never scanned again, and the
    journal keeps its entries as bytes so the old generations stay small.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard limit (thousands of held streams)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM."""
    import sys

    from relaygate.mock.config import DEFAULT_KEY, DEFAULT_MODELS, MockConfig, load_models_file
    from relaygate.serve import ServeError, run_app

    try:
        models = load_models_file(args.models_file) if args.models_file else dict(DEFAULT_MODELS)
        config = MockConfig(
            keys=tuple(args.keys or (DEFAULT_KEY,)),
            models=models,
            journal_size=args.journal_size,
            max_body_bytes=args.max_body_bytes,
            preload_tokenizers=True,
            default_ttft_ms=args.default_ttft_ms,
            default_itl_ms=args.default_itl_ms,
            ignore_directives=args.ignore_directives,
            timer=args.timer,
            tick_ms=args.tick_ms,
        )
    except (OSError, ValueError) as exc:
        print(f"relaygate mock-upstream: {exc}", file=sys.stderr)
        return 2
    raise_open_files_limit()
    try:
        if args.workers > 1:
            return _serve_workers(config, args)
        run_app(_mock_app(config, None, args.no_gc_tuning), args.host, args.port)
    except ServeError as exc:
        sys.stderr.write(f"relaygate: {exc}\n")
        return 1
    return 0


def _mock_app(config: MockConfig, shard: Shard | None, no_gc_tuning: bool) -> web.Application:
    from relaygate.mock.app import create_app

    app = create_app(config, shard)
    if not no_gc_tuning:

        async def _freeze(_app: web.Application) -> None:
            tune_gc()

        app.on_startup.append(_freeze)
    return app


def _serve_workers(config: MockConfig, args: argparse.Namespace) -> int:
    from relaygate import tokens
    from relaygate.mock.app import create_peer_app
    from relaygate.mock.workers import serve_workers

    # Loaded once before the fork, the vocabularies are shared by every worker.
    tokens.warm()

    def make_app(shard: Shard) -> tuple[web.Application, web.Application]:
        app = _mock_app(config, shard, args.no_gc_tuning)
        return app, create_peer_app(app)

    return serve_workers(make_app, args.host, args.port, args.workers)
