"""benchmarks/bench_relay_overhead.py: with ``--rounds``, each figure is a median over runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_relay_overhead", ROOT / "benchmarks" / "bench_relay_overhead.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_medians_per_version_and_level() -> None:
    def run(relay: str, streams: int, p50: float, not_ok: dict[str, int]) -> dict[str, object]:
        return {"relay": relay, "round": 0, "streams": streams, "ttft_p50_added_ms": p50,
                "ttft_p99_added_ms": None, "not_ok": not_ok, "load_avg_1m": 2.0}  # fmt: skip

    rows = [
        run("main", 50, 9.0, {}),
        run("this tree", 50, 1.0, {"incomplete": 1}),
        run("main", 50, 3.0, {}),
        run("this tree", 50, 5.0, {"incomplete": 2}),
        run("this tree", 50, 2.0, {}),
        {"relay": "main", "round": 3, "streams": 50, "error": "locust died"},
    ]
    by = {(r["relay"], r["streams"]): r for r in _bench().medians(rows)}
    assert by["main", 50]["rounds"] == 2 and by["main", 50]["ttft_p50_added_ms"] == 6.0
    mine = by["this tree", 50]
    assert mine["rounds"] == 3 and mine["ttft_p50_added_ms"] == 2.0
    assert mine["not_ok"] == {"incomplete": 3} and mine["ttft_p99_added_ms"] is None
