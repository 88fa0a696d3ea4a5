"""``relaygate up``: start the embedded stack (:mod:`relaygate.stack`) and keep it up until
Ctrl-C or SIGTERM, printing where it listens and the keys it provisioned."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relaygate.argtypes import port_number

if TYPE_CHECKING:
    from relaygate.stack import StackInfo

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``relaygate up``."""
    parser.add_argument("--json", action="store_true", help="print one JSON line when ready")
    parser.add_argument(
        "--relay-port", type=port_number, default=0, help="relay port (0: a free one)"
    )
    parser.add_argument(
        "--upstream-port", type=port_number, default=0, help="mock upstream port (0: a free one)"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME",
        help="reference-relay fault switch (repeatable); each breaks one FAQ rule",
    )
    parser.add_argument(
        "--rate-limit", metavar="N/Ws", help="per-key request limit of the relay, e.g. 10/1s"
    )
    parser.add_argument(
        "--default-ttft-ms",
        type=_milliseconds,
        default=0.0,
        metavar="MS",
        help="the mock upstream answers a plain (directive-free) request's first token MS "
        "after it arrives (default 0)",
    )
    parser.add_argument(
        "--default-itl-ms",
        type=_milliseconds,
        default=0.0,
        metavar="MS",
        help="gap between the mock's plain-answer tokens (default 0)",
    )


def _milliseconds(text: str) -> float:
    """A pacing of the mock upstream: 0..600000 ms (the mock's own bounds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not 0.0 <= value <= 600_000.0:
        raise argparse.ArgumentTypeError(f"must be within 0..600000 ms, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    """Start the stack, print where it listens (or one JSON line), wait for a signal; 0 on a
    clean stop, 1 when the stack does not start or one of its servers exits."""
    from relaygate.keys import mask_key
    from relaygate.stack import EmbeddedStack, StackError

    stack = EmbeddedStack(
        faults=args.fault,
        rate_limit=args.rate_limit,
        relay_port=args.relay_port,
        upstream_port=args.upstream_port,
        mock_args=(
            "--default-ttft-ms",
            repr(args.default_ttft_ms),
            "--default-itl-ms",
            repr(args.default_itl_ms),
        ),
    )
    stopping = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        info = stack.start()
    except StackError as exc:
        print(f"relaygate up: {exc}", file=sys.stderr)
        return 1
    env_dir = tempfile.TemporaryDirectory(prefix="relaygate-up-")
    try:
        if args.json:
            import orjson

            sys.stdout.write(orjson.dumps(info.public()).decode() + "\n")
        else:
            env_file = _write_env_file(Path(env_dir.name), info)
            print(
                f"relaygate up: relay {info.relay_url}  upstream {info.upstream_url}\n"
                f"  relay key   {info.relay_key}\n"
                f"  admin token {mask_key(info.admin_token)} (full value with --json)\n"
                f"  faults      {', '.join(stack.faults) or 'none'}\n"
                f"  env file    {env_file} (the four RELAYGATE_* settings below; removed at stop)"
                "\n"
                "The whole conformance suite against this stack (keys from the env file):\n"
                f"  set -a; . {env_file}; set +a\n"
                f"  relaygate check --relay-url {info.relay_url} --upstream-url "
                f"{info.upstream_url}\n"
                "Ctrl-C to stop."
            )
        sys.stdout.flush()
        while not stopping.wait(0.5):
            exited = stack.exited()
            if exited is not None:
                print(f"relaygate up: {exited}", file=sys.stderr)
                return 1
        return 0
    finally:
        stack.stop()
        env_dir.cleanup()


def _write_env_file(directory: Path, info: StackInfo) -> Path:
    """``RELAYGATE_RELAY_URL/KEY/ADMIN_TOKEN`` and ``RELAYGATE_UPSTREAM_URL`` for ``set -a; .``,
    readable by the owner only: the suite's command line then carries no secret."""
    path = directory / "env"
    lines = {
        "RELAYGATE_RELAY_URL": info.relay_url,
        "RELAYGATE_RELAY_KEY": info.relay_key,
        "RELAYGATE_RELAY_ADMIN_TOKEN": info.admin_token,
        "RELAYGATE_UPSTREAM_URL": info.upstream_url,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.writelines(f"{name}={value}\n" for name, value in lines.items())
    return path
