"""The benchmark's Locust user stays in step with the class it extends.

``benchmarks/_bench_relaygate_locustfile.py`` overrides ``RelaygateUser.report``; when the
plugin grew an argument, the override silently broke every relaygate benchmark row (no stream
recorded). Read with ``ast``: importing Locust here would monkey-patch this test process.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _parameters(path: Path, cls: str, method: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    args = item.args
                    return [a.arg for a in (*args.args, *args.kwonlyargs)]
    raise AssertionError(f"{cls}.{method} not found in {path}")


def test_bench_user_report_takes_what_the_plugin_passes() -> None:
    plugin = _parameters(ROOT / "src/relaygate/load/locust_plugin.py", "RelaygateUser", "report")
    bench = _parameters(
        ROOT / "benchmarks/_bench_relaygate_locustfile.py", "BenchStreamingChatUser", "report"
    )
    assert bench == plugin
