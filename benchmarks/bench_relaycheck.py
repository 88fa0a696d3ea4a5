"""relaygate's live audit beside relaycheck (PyPI ``relaycheck``), fault by fault.

For the clean reference relay and then each fault switch, the embedded stack (mock upstream +
reference relay, 127.0.0.1 only) is started with that switch on and both tools audit it the
way a relay's customer would, with the relay's URL and one key and nothing else:

* ``relaygate``: ``pytest conformance --relay-url URL --relay-key KEY`` (live mode);
* ``relaycheck``: ``relaycheck -u URL`` with the key in ``RELAYCHECK_API_KEY`` (its default
  probes, no retries, no delay, a 60 s budget per probe).

A fault is **caught** by a tool when, with the switch on, it reports something it did not
report on the clean relay: a failed case for relaygate, a finding of severity low or higher
(id + title) for relaycheck. A new relaycheck finding it grades ``info`` only is shown as
"info only", not as caught. What a tool reports on the clean relay is printed as its false
alarms. The table is faults x tools (caught / missed, with the first ids that caught it).

    python benchmarks/bench_relaycheck.py                 # the customer-facing faults (~8 min)
    python benchmarks/bench_relaycheck.py --quick         # three faults
    python benchmarks/bench_relaycheck.py --faults substitute_model,clamp_max_tokens

relaycheck is not a dependency of relaygate: install it into the virtualenv that runs this
script (``pip install relaycheck``). Without it the script says so in one line and prints
relaygate's column alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from relaygate.reference.faults import FAULTS
from relaygate.stack import EmbeddedStack

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Switches whose effect a customer with URL + key could see: the model served, the bill, the
# answer's size, the stream. Names not in this relaygate's FAULTS are left out with a note.
CUSTOMER_FAULTS = (
    "substitute_model",
    "downgrade_models",
    "fold_model_case",
    "clamp_max_tokens",
    "buffer_streams",
    "no_usage_chunk",
    "round_billing",
    "ignore_completion_ratio",
    "billing_usage_in_usd",
    "drop_tool_calls",
)
QUICK_FAULTS = ("substitute_model", "clamp_max_tokens", "buffer_streams")
RELAYGATE_TIMEOUT_S = 600
RELAYCHECK_TIMEOUT_S = 600
_REPORTED = {"low", "medium", "high", "critical"}
_INFO = "info"


@dataclass(frozen=True)
class Outcome:
    """What one tool reported on one relay: the ids, or why it could not tell."""

    ids: frozenset[str]
    seconds: float
    error: str | None = None
    info: frozenset[str] = frozenset()  # noticed, graded as information only


def _loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"bench_relaycheck: refusing a non-loopback target {url}")
    return url


def run_relaygate(url: str, key: str, work: Path) -> Outcome:
    """The conformance suite in live mode; the failed case ids."""
    out = work / "relaygate"
    cmd = [
        sys.executable, "-m", "pytest", str(ROOT / "conformance"), "-q", "-p", "no:cacheprovider",
        "--relay-url", url, "--report-dir", str(out), "--timeout", "120",
    ]  # fmt: skip
    env = {**os.environ, "RELAYGATE_RELAY_KEY": key}  # the key stays out of argv
    started = time.monotonic()
    try:
        subprocess.run(
            cmd,
            env=env,
            cwd=work,
            capture_output=True,
            timeout=RELAYGATE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Outcome(frozenset(), time.monotonic() - started, "timed out")
    seconds = time.monotonic() - started
    try:
        doc = json.loads((out / "conformance.json").read_text())
    except (OSError, ValueError):
        return Outcome(frozenset(), seconds, "wrote no conformance.json")
    failed = {c["id"] for c in doc.get("cases", []) if c.get("outcome") == "failed"}
    return Outcome(frozenset(failed), seconds)


def relaycheck_command() -> list[str] | None:
    """How to run relaycheck from this interpreter's environment, or None."""
    local = BIN / "relaycheck"
    if local.exists():
        return [str(local)]
    found = shutil.which("relaycheck")
    return [found] if found else None


def relaycheck_version(command: list[str]) -> str:
    try:
        proc = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"
    return (proc.stdout or proc.stderr).strip().splitlines()[-1] if proc.returncode == 0 else "?"


def run_relaycheck(command: list[str], url: str, key: str, work: Path) -> Outcome:
    """relaycheck's default probes; its findings of severity low or higher (id: title)."""
    out = work / "relaycheck"
    cmd = [
        *command, "-u", url, "--out-dir", str(out), "--delay", "0", "--max-retries", "0",
        "--timeout", "15", "--budget", "60", "--fail-on", "none",
    ]  # fmt: skip
    env = {**os.environ, "RELAYCHECK_API_KEY": key}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=RELAYCHECK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Outcome(frozenset(), time.monotonic() - started, "timed out")
    seconds = time.monotonic() - started
    try:
        doc = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return Outcome(frozenset(), seconds, f"exit {proc.returncode}: {last[0][:120]}")
    findings = doc.get("findings", [])

    def graded(levels: set[str]) -> frozenset[str]:
        return frozenset(
            f"{f.get('id')}: {f.get('title')}" for f in findings if f.get("severity") in levels
        )

    return Outcome(graded(_REPORTED), seconds, info=graded({_INFO}))


def audit(fault: str | None, relaycheck: list[str] | None) -> dict[str, Outcome]:
    """Both tools against the embedded stack with ``fault`` on (None: clean)."""
    outcomes: dict[str, Outcome] = {}
    with (
        EmbeddedStack(faults=(fault,) if fault else ()) as info,
        tempfile.TemporaryDirectory(prefix="bench-relaycheck-") as tmp,
    ):
        url = _loopback(info.relay_url) + "/v1"
        work = Path(tmp)
        outcomes["relaygate"] = run_relaygate(url, info.relay_key, work)
        if relaycheck is not None:
            outcomes["relaycheck"] = run_relaycheck(relaycheck, url, info.relay_key, work)
    return outcomes


def cell(outcome: Outcome | None, baseline: Outcome | None) -> str:
    if outcome is None:
        return "-"
    if outcome.error:
        return f"error ({outcome.error})"
    new = sorted(outcome.ids - (baseline.ids if baseline else frozenset()))
    label = "CAUGHT"
    if not new:
        new = sorted(outcome.info - (baseline.info if baseline else frozenset()))
        label = "missed (info only:"
        if not new:
            return "missed"
    shown = ", ".join(i.split(": ")[0] for i in new[:2])
    more = f" +{len(new) - 2}" if len(new) > 2 else ""
    if len(shown) > 36:  # one id, whole, and how many more
        shown, more = new[0].split(": ")[0], f" +{len(new) - 1}" if len(new) > 1 else ""
    return f"{label} {shown}{more}" + (")" if label != "CAUGHT" else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--faults", help="comma list of fault switches (default: the customer set)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_FAULTS)}")
    args = parser.parse_args(argv)
    wanted = (
        tuple(f.strip() for f in args.faults.split(",") if f.strip())
        if args.faults
        else (QUICK_FAULTS if args.quick else CUSTOMER_FAULTS)
    )
    unknown = [f for f in wanted if f not in FAULTS]
    if unknown:
        print(f"not fault switches of this reference relay, left out: {', '.join(unknown)}")
    faults = [f for f in wanted if f in FAULTS]
    relaycheck = relaycheck_command()
    tools = ["relaygate"]
    if relaycheck is None:
        print("relaycheck: not installed here (pip install relaycheck); relaygate's column only")
    else:
        tools.append("relaycheck")
        print(f"relaycheck: {relaycheck_version(relaycheck)} ({relaycheck[0]})")

    rows: list[tuple[str, dict[str, Outcome]]] = []
    print("clean reference relay ...", flush=True)
    baseline = audit(None, relaycheck)
    for fault in faults:
        print(f"{fault} ...", flush=True)
        rows.append((fault, audit(fault, relaycheck)))

    width = max(len(f) for f in ["fault", *faults])
    col = 52
    print()
    print(f"{'fault':<{width}}  " + "  ".join(f"{t:<{col}}" for t in tools))
    clean_cells = []
    for tool in tools:
        base = baseline.get(tool)
        if base is None or base.error:
            clean_cells.append(cell(base, None))
        else:
            alarms = len(base.ids)
            clean_cells.append("clean" if not alarms else f"{alarms} false alarm(s)")
    print(f"{'(clean)':<{width}}  " + "  ".join(f"{c:<{col}}" for c in clean_cells))
    for fault, outcomes in rows:
        cells = [cell(outcomes.get(t), baseline.get(t)) for t in tools]
        print(f"{fault:<{width}}  " + "  ".join(f"{c[:col]:<{col}}" for c in cells))
    print()
    for tool in tools:
        caught = sum(cell(o.get(tool), baseline.get(tool)).startswith("CAUGHT") for _, o in rows)
        seconds = sum(o[tool].seconds for _, o in rows if tool in o) + baseline[tool].seconds
        print(f"{tool}: caught {caught}/{len(rows)} faults; {seconds:.0f} s in all")
    for tool in tools:
        for alarm in sorted(baseline[tool].ids):
            print(f"{tool} on the clean relay: {alarm}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
