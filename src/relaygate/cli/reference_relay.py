"""``relaygate reference-relay``: run the reference relay until SIGINT/SIGTERM.

Imports at module top stay light (argparse only): ``relaygate --help`` builds every
subcommand's parser; aiohttp and the relay load inside :func:`run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relaygate.argtypes import port_number

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``relaygate reference-relay``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=port_number, default=0, help="port (0: a free port, see the ready line)"
    )
    parser.add_argument(
        "--admin-token", help="bearer token of /api/admin (default: random, printed)"
    )
    parser.add_argument("--upstream", metavar="URL", help="base URL of one upstream channel")
    parser.add_argument("--upstream-key", metavar="KEY", help="API key the relay sends upstream")
    parser.add_argument(
        "--models",
        default="",
        metavar="A,B,…",
        help="models the --upstream channel serves (exact, case-sensitive names)",
    )
    parser.add_argument(
        "--config", type=Path, metavar="STATE", help="JSON or TOML state file to preload"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME",
        help="break one rule on purpose (repeatable; see relaygate.reference.faults.FAULTS)",
    )
    parser.add_argument("--rate-limit", metavar="N/Ws", help="per-key limit, e.g. 60/60s")
    parser.add_argument(
        "--max-body-bytes", type=int, default=8 * 1024 * 1024, help="request body limit (413 above)"
    )
    parser.add_argument("--retry-times", type=int, default=0, help="upstream retries on 5xx/429")
    parser.add_argument(
        "--upstream-timeout", type=float, default=60.0, metavar="S", help="upstream silence limit"
    )
    from relaygate.reference.config import (  # light: no aiohttp
        DEFAULT_UPSTREAM_DEADLINE_S,
        DEFAULT_UPSTREAM_MAX_BYTES,
    )

    parser.add_argument(
        "--upstream-deadline",
        type=float,
        default=DEFAULT_UPSTREAM_DEADLINE_S,
        metavar="S",
        help="total time limit of one upstream answer, connect to last byte",
    )
    parser.add_argument(
        "--upstream-max-bytes",
        type=int,
        default=DEFAULT_UPSTREAM_MAX_BYTES,
        metavar="N",
        help="most bytes read of one upstream answer (a stream's events all together)",
    )


def run(args: argparse.Namespace) -> int:
    """Start the relay; returns the exit code (2 on a bad option)."""
    import secrets
    import sys

    from relaygate.reference.app import create_app
    from relaygate.reference.config import RateLimit, RelayConfig
    from relaygate.reference.faults import UnknownFaultError, validate_faults
    from relaygate.reference.store import FieldError
    from relaygate.serve import ServeError, print_ready, run_app

    try:
        if not args.upstream_deadline > 0:
            raise ValueError(f"--upstream-deadline must be > 0, got {args.upstream_deadline:g}")
        if args.upstream_max_bytes < 1:
            raise ValueError(f"--upstream-max-bytes must be >= 1, got {args.upstream_max_bytes}")
        config = RelayConfig(
            host=args.host,
            port=args.port,
            admin_token=args.admin_token or secrets.token_urlsafe(24),
            upstream=args.upstream,
            upstream_key=args.upstream_key,
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            state_file=args.config,
            faults=validate_faults(args.fault),
            rate_limit=RateLimit.parse(args.rate_limit) if args.rate_limit else None,
            max_body_bytes=args.max_body_bytes,
            retry_times=args.retry_times,
            upstream_timeout_s=args.upstream_timeout,
            upstream_deadline_s=args.upstream_deadline,
            upstream_max_bytes=args.upstream_max_bytes,
        )
        app = create_app(config)
    except (UnknownFaultError, FieldError, ValueError, OSError) as exc:
        sys.stderr.write(f"relaygate reference-relay: {exc}\n")
        return 2
    from relaygate import tokens
    from relaygate.cli.mock_upstream import tune_gc

    tokens.warm()  # before the ready line: the first request must not pay for loading the vocab

    async def _tune_gc(_app: object) -> None:
        # Gen-2 collections over the start-up heap (vocabularies, aiohttp) paused the relay
        # for up to ~90 ms under load: freeze it and collect young objects rarely, as the mock.
        tune_gc()

    app.on_startup.append(_tune_gc)
    admin_token = config.admin_token

    def ready(url: str) -> None:
        print_ready(url, admin_token=admin_token)

    try:
        run_app(app, args.host, args.port, on_ready=ready)
    except ServeError as exc:
        sys.stderr.write(f"relaygate: {exc}\n")
        return 1
    return 0
