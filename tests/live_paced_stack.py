"""Run the conformance suite in live mode (``--relay-url`` and ``--relay-key`` only) against
the embedded stack, optionally with reference-relay fault switches: what a relay customer's
run sees. The mock upstream paces plain answers like a model (``--default-ttft-ms`` /
``--default-itl-ms``) so a buffered stream is told from a streamed one.

As a script: ``python tests/live_paced_stack.py [FAULT,…|none] [pytest args…]`` prints the counts
and the failed case ids.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Pacing of the mock's plain answers: a model's first token after 50 ms, then one per 5 ms.
MOCK_PACING = ("--default-ttft-ms", "50", "--default-itl-ms", "5")
RUN_LIMIT_S = 300


def run_live(faults: tuple[str, ...], pytest_args: list[str]) -> dict[str, Any]:
    """Start the stack with ``faults``, run ``pytest_args`` in live mode; return the report."""
    from relaygate.stack import EmbeddedStack

    stack = EmbeddedStack(faults=faults, mock_args=MOCK_PACING)
    info = stack.start()
    try:
        with tempfile.TemporaryDirectory(prefix="relaygate-live-") as out:
            command = [
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "--relay-url", info.relay_url, "--relay-key", info.relay_key,
                "--report-dir", out, *pytest_args,
            ]  # fmt: skip
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=RUN_LIMIT_S, check=False, cwd=ROOT
            )
            report = Path(out) / "conformance.json"
            doc = json.loads(report.read_text()) if report.exists() else {"cases": []}
    finally:
        stack.stop()
    doc["returncode"] = proc.returncode
    doc["tail"] = proc.stdout[-3000:] + proc.stderr[-1000:]
    return doc


def main(argv: list[str]) -> int:
    names = argv[0] if argv else "none"
    faults = tuple(f for f in names.split(",") if f and f != "none")
    doc = run_live(faults, argv[1:] or ["conformance"])
    counts = collections.Counter(c["outcome"] for c in doc["cases"])
    print(f"faults {names}: {len(doc['cases'])} cases, {dict(sorted(counts.items()))}")
    for case in doc["cases"]:
        if case["outcome"] == "failed":
            print(f"FAILED {case['id']}: {case['reason'][:160]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
