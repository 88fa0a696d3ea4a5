"""``relaygate gate``: judge saved reports (:mod:`relaygate.gate`) and exit 0 when the gate
passed, 1 when it failed, 2 when the input was unusable (see the epilog and docs/gating.md)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def _slo_rule(text: str) -> str:
    from relaygate.load.slo import SLOSyntaxError, parse_rule

    try:
        return parse_rule(text).text
    except SLOSyntaxError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_EPILOG = """\
A pass needs evidence: a skipped MUST case fails the gate ("not verified") unless an
--allow-skip accepts it, and an area where every case was skipped fails unless
--allow-skip AREA names it or all its skips are of class profile. A report in which
nothing was executed always fails. Skip classes: live (no ground truth: --upstream-url,
admin API), key (a key the run could not get), profile (the profile says the relay has
no such feature), other. See docs/gating.md.

exit codes:
  0  the gate passed
  1  the gate failed (a failed case, a deviation, a MUST case not verified, an area or
     report where nothing was checked, a failed or unmeasured SLO)
  2  unusable input (no report, a missing or malformed file, a bad --slo rule or
     --allow-skip value)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``relaygate gate`` (cheap: the judging code is imported by :func:`run`)."""
    parser.description = "judge saved conformance/load reports: exit 0 pass, 1 fail, 2 bad input"
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--conformance",
        metavar="FILE",
        help="conformance report written by the suite (reports/conformance.json)",
    )
    parser.add_argument(
        "--load",
        metavar="FILE",
        help="load summary written by locust -f loadtests (reports/load-summary.json)",
    )
    parser.add_argument(
        "--slo",
        metavar="RULE",
        action="append",
        default=[],
        type=_slo_rule,
        help="extra SLO rule checked against the load summary (repeatable), e.g. "
        "error_rate<=0.01 or ttft_p99_ms<=800; same syntax as locust --slo",
    )
    parser.add_argument(
        "--allow-deviations",
        action="store_true",
        help="accept deviations the relay profile documents (they are still listed)",
    )
    parser.add_argument(
        "--allow-skip",
        metavar="X",
        action="append",
        default=[],
        help="accept skipped MUST cases (repeatable; they are still listed): an area "
        "(quota), a skip class (live, key, profile, inconclusive, other) or a case id glob "
        "matched on the full or bare id (auth.*, quota.formula[gpt-4])",
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument(
        "--audit-md",
        metavar="FILE",
        help="also write the customer's audit report (Markdown, keys masked) built from "
        "--conformance to FILE (the suite writes one as reports/audit.md)",
    )


def run(args: argparse.Namespace) -> int:
    """Read the reports, judge them, print the verdict; 0 passed, 1 failed, 2 bad input."""
    from relaygate.gate import EXIT_USAGE, GateInputError, evaluate, load_report, render
    from relaygate.keys import mask_secrets

    if not args.conformance and not args.load:
        print(
            "relaygate gate: error: give --conformance FILE and/or --load FILE "
            "(e.g. reports/conformance.json, reports/load-summary.json)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.audit_md and not args.conformance:
        print("relaygate gate: error: --audit-md needs --conformance FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        conformance = load_report(args.conformance, "conformance") if args.conformance else None
        load = load_report(args.load, "load") if args.load else None
        verdict = evaluate(
            conformance,
            load,
            slos=args.slo,
            allow_deviations=args.allow_deviations,
            allow_skips=args.allow_skip,
        )
    except GateInputError as exc:
        print(f"relaygate gate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.audit_md and conformance is not None:
        from pathlib import Path

        from relaygate.report.audit import write_audit

        try:
            write_audit(Path(args.audit_md), conformance)
        except OSError as exc:
            why = exc.strerror or exc
            print(f"relaygate gate: error: --audit-md {args.audit_md}: {why}", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        import orjson

        text = orjson.dumps(verdict.to_json(), option=orjson.OPT_INDENT_2).decode()
        print(mask_secrets(text))
    else:
        print(render(verdict))
    return verdict.exit_code
