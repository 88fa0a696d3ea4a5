"""The ``relaygate`` command. Each subcommand lives in its own module; this file only routes.

Subcommand modules expose ``add_arguments(parser)`` and ``run(args) -> int`` and are imported
only when their subcommand runs (no import-time cost for the others).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from relaygate import __version__

__all__ = ["main"]

# name -> (module, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "relaygate.cli.demo",
        "suite + short load run + gate on the embedded stack (or --relay-url); reports/index.html",
    ),
    "up": ("relaygate.cli.up", "start the mock upstream + reference relay, provision a key, wait"),
    "check": ("relaygate.cli.check", "run the conformance suite against a relay (pytest options)"),
    "mock-upstream": ("relaygate.cli.mock_upstream", "run the mock OpenAI-compatible upstream"),
    "reference-relay": ("relaygate.cli.reference_relay", "run the reference relay (FAQ semantics)"),
    "bench": (
        "relaygate.cli.bench",
        "benchmark the mock upstream (streams held, events/s, jitter)",
    ),
    "gate": ("relaygate.cli.gate", "judge saved reports: exit 0 pass, 1 fail, 2 unusable input"),
    "relay": ("relaygate.cli.relay", "install/start/stop third-party relays; run the matrix"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relaygate",
        description="Conformance and load-testing harness for OpenAI-compatible API relays.",
    )
    parser.add_argument("--version", action="version", version=f"relaygate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        # Argument definitions are cheap to import; the heavy imports happen inside run().
        importlib.import_module(module).add_arguments(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["check"] and args_list[1:2] not in (["-h"], ["--help"]):
        # Everything after "check" belongs to pytest, options included (argparse's REMAINDER
        # cannot take a leading option such as "-k").
        from relaygate.cli.check import run_pytest

        return run_pytest(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
