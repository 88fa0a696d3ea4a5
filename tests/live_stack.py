"""Live mode against the embedded stack: the suite gets the relay's URL and key only.

:class:`LiveStack` starts the mock upstream + reference relay on loopback, keeps the admin
token to itself (to switch fault switches between runs and restore the relay's state), and
runs ``pytest conformance`` as a relay customer would: ``--relay-url`` and ``--relay-key``
(through the environment, so the key never lands on a command line), nothing else.

The mock paces plain answers like a model (:data:`MOCK_PACING`: first token after 50 ms, then
one per 5 ms), so a buffered stream is told from a streamed one and a client that leaves a
stream early leaves it while it still runs. ``ignore_directives=True`` makes it a real model
in one more way: ``[[relaygate ...]]`` text in a prompt is plain text, never obeyed (a live
case must not depend on the mock obeying a directive).

As a script it lists which live cases each fault switch makes fail (the live detection pairs)::

    python tests/live_stack.py [--ignore-directives] [--fault NAME ...] [-- pytest args]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from relaygate.stack import EmbeddedStack, StackInfo

ROOT = Path(__file__).resolve().parents[1]
#: Pacing of the mock's plain answers: a model's first token after 50 ms, then one per 5 ms.
MOCK_PACING = ("--default-ttft-ms", "50", "--default-itl-ms", "5")


class LiveStack:
    """The embedded stack, seen by the suite as a live relay (URL and key only).

    ``pacing``: the mock's flags for pacing plain answers; ``ignore_directives``: the mock
    reads directives as plain text, like a real model.
    """

    def __init__(
        self, *, pacing: Sequence[str] = MOCK_PACING, ignore_directives: bool = False
    ) -> None:
        flags = [*pacing, *(["--ignore-directives"] if ignore_directives else [])]
        self._stack = EmbeddedStack(mock_args=flags)
        self.info: StackInfo | None = None
        self.keys: dict[str, str] = {}  # RELAYGATE_KEY_<STATE> -> key: the holder's other keys

    def __enter__(self) -> LiveStack:
        self.info = self._stack.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.stop()

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        assert self.info is not None
        answer = httpx.request(
            method,
            self.info.relay_url + "/api/admin" + path,
            json=body,
            headers={"Authorization": f"Bearer {self.info.admin_token}"},
            timeout=10,
        )
        answer.raise_for_status()
        return answer.json()

    def add_rate_limited_key(self, rate_limit: str = "2/1s") -> None:
        """A second key of the holder's, with a tight per-key limit (for the 429 cases)."""
        from relaygate.profiles import load_profile
        from relaygate.provision import KeyState, make_provisioner

        assert self.info is not None
        prov = make_provisioner(load_profile("faq"), self.info.relay_url, self.info.admin_token)
        try:
            key = prov.key_with(KeyState.RATE_LIMITED, rate_limit=rate_limit)
        finally:
            prov.close()
        self.keys[KeyState.RATE_LIMITED.env_var] = key.key

    def snapshot(self) -> None:
        """Remember the relay's state (balances, keys, log) for :meth:`restore`."""
        self._admin("POST", "/snapshot")

    def restore(self, faults: Sequence[str] = ()) -> None:
        """Back to the snapshot, then these fault switches on."""
        self._admin("POST", "/restore")
        self._admin("PUT", "/settings", {"faults": list(faults)})

    def run(
        self, args: Sequence[str] = (), *, report_dir: Path, timeout_s: float = 600
    ) -> tuple[int, dict[str, Any] | None, str]:
        """``pytest conformance`` in live mode; (exit code, conformance.json or None, output)."""
        assert self.info is not None
        env = {
            **os.environ,
            "RELAYGATE_RELAY_URL": self.info.relay_url,
            "RELAYGATE_RELAY_KEY": self.info.relay_key,
            **self.keys,
        }
        for name in ("RELAYGATE_UPSTREAM_URL", "RELAYGATE_RELAY_ADMIN_TOKEN"):
            env.pop(name, None)
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
        argv += ["--report-dir", str(report_dir), *(args or ["conformance"])]
        done = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        path = report_dir / "conformance.json"
        doc = json.loads(path.read_text()) if path.exists() else None
        return done.returncode, doc, done.stdout + done.stderr


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault", action="append", default=[], help="fault switch (repeatable)")
    parser.add_argument(
        "--ignore-directives", action="store_true", help="the mock obeys no directive"
    )
    parser.add_argument(
        "--rate-limited-key", action="store_true", help="give the suite a 2/1s key as well"
    )
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest arguments")
    opts = parser.parse_args()
    runs = [[]] + [[f] for f in opts.fault]
    live = LiveStack(ignore_directives=opts.ignore_directives)
    with live as stack, tempfile.TemporaryDirectory() as tmp:
        if opts.rate_limited_key:
            stack.add_rate_limited_key()
        stack.snapshot()
        for i, faults in enumerate(runs):
            stack.restore(faults)
            code, doc, output = stack.run(opts.pytest_args, report_dir=Path(tmp) / str(i))
            cases = (doc or {}).get("cases", [])
            counts: dict[str, int] = {}
            for case in cases:
                counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
            failed = {c["id"]: c["reason"][:160] for c in cases if c["outcome"] == "failed"}
            print(json.dumps({"faults": faults, "exit": code, "counts": counts, "failed": failed}))
            if doc is None:
                print(output[-3000:])
    return 0


if __name__ == "__main__":
    sys.exit(_main())
