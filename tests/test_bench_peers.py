"""The pure parts of ``benchmarks/bench_peers.py``: rows, ratios, the "not available" path.

No network, no peer install, no load run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peers.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


MOCK = {"window_s": 10.0, "streams": {"finished": 400}, "write_lateness_ms": {"p99": 0.4}}


def test_reported_row_is_reported_minus_directed(bench: ModuleType) -> None:
    measured = {
        "method": "reported",
        "ttft_ms": {"p50": 203.5, "p99": 250.0},
        "itl_ms": {"p50": 20.25, "p99": 31.0},
        "requests": 512,
    }
    row = bench.make_row("aiperf", "default", 50, measured, MOCK, 8.0, "per-event stamps")
    assert row["method"] == "reported"
    assert (row["ttft_err_p50"], row["ttft_err_p99"]) == (3.5, 50.0)
    assert (row["itl_err_p50"], row["itl_err_p99"]) == (0.25, 11.0)
    assert row["requests"] == 400  # the mock's count in the window, not the tool's
    assert row["tool_requests"] == 512
    assert row["streams_per_s"] == 40.0
    assert row["cpu_s_per_1k"] == 20.0  # 8 CPU-s over 400 streams
    assert row["cannot_measure"] == "per-event stamps"


def test_stamp_row_keeps_errors_and_missing_values(bench: ModuleType) -> None:
    measured = {"method": "stamps", "ttft_err_p50": 0.8, "ttft_err_p99": 2.1, "requests": 3}
    row = bench.make_row("control", "dense", 200, measured, {"streams": {}}, 1.0, "-")
    assert (row["ttft_err_p50"], row["ttft_err_p99"]) == (0.8, 2.1)
    assert row["itl_err_p50"] is None and row["itl_err_p99"] is None
    # Nothing finished in the window: no rate and no per-stream CPU, rather than a division.
    assert row["requests"] == 0 and row["streams_per_s"] is None and row["cpu_s_per_1k"] is None


def test_ratios_are_against_the_relaygate_row_of_the_same_level(bench: ModuleType) -> None:
    def row(tool: str, users: int, rate: float, cpu: float) -> dict[str, Any]:
        return {
            "tool": tool,
            "shape": "default",
            "streams_concurrent": users,
            "streams_per_s": rate,
            "cpu_s_per_1k": cpu,
        }

    rows = [row("relaygate", 50, 40.0, 10.0), row("aiperf", 50, 20.0, 30.0)]
    rows.append({"tool": "guidellm", "shape": "default", "streams_concurrent": 50, "error": "x"})
    rows.append(row("aiperf", 200, 80.0, 5.0))  # no relaygate row at 200
    bench.add_ratios(rows)
    assert rows[0]["streams_per_s_vs_relaygate"] == 1.0
    assert rows[1]["streams_per_s_vs_relaygate"] == 0.5
    assert rows[1]["cpu_s_per_1k_vs_relaygate"] == 3.0
    assert rows[2]["streams_per_s_vs_relaygate"] is None
    assert rows[3]["cpu_s_per_1k_vs_relaygate"] is None


def test_cpu_delta_counts_processes_born_in_the_window_whole(bench: ModuleType) -> None:
    assert bench.cpu_delta({1: 2.0, 2: 1.0}, {1: 3.5, 3: 0.5}) == 2.0


def test_a_tool_that_fails_to_install_is_not_available(bench: ModuleType, tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if "venv" in cmd:  # creating the venv works ...
            (Path(cmd[-1]) / "bin").mkdir(parents=True)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        # ... pip does not: its last line is the reason.
        err = (
            "Collecting nope\nERROR: No matching distribution found for nope==9.9\n"
            "WARNING: Location 'file:///x' is ignored\n"
        )
        return subprocess.CompletedProcess(cmd, 1, "", err)

    peer = bench.Peer("nope", "9.9", sys.executable, (("nope==9.9",),), "everything")
    venv, reason = bench.ensure_venv(peer, tmp_path, run=fake_run)
    assert venv is None
    assert reason == "install failed: ERROR: No matching distribution found for nope==9.9"
    assert len(calls) == 2
    assert not (tmp_path / "nope-9.9" / bench.MARKER).exists()  # retried next run


def test_a_missing_interpreter_is_not_available(bench: ModuleType, tmp_path: Path) -> None:
    peer = bench.Peer("late", "1.0", str(tmp_path / "python9"), (("late==1.0",),), "-")
    venv, reason = bench.ensure_venv(peer, tmp_path)
    assert venv is None and reason.startswith("no interpreter ")


def test_an_install_that_takes_too_long_is_not_available(bench: ModuleType, tmp_path: Path) -> None:
    seen: list[float] = []

    def slow_run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append(kw["timeout"])
        if "venv" in cmd:
            (Path(cmd[-1]) / "bin").mkdir(parents=True)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    peer = bench.Peer("big", "1.0", sys.executable, (("torch==9",), ("big==1.0",)), "-")
    venv, reason = bench.ensure_venv(peer, tmp_path, run=slow_run, timeout_s=5)
    assert venv is None
    assert reason == "install timed out after 5 s (torch==9)"
    assert seen == [5, 5]  # every step is bounded; the second pip step never starts
    assert not (tmp_path / "big-1.0").exists()  # the half-built venv is not left behind


def test_an_interpreter_is_found_by_name_or_in_pyenv(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bench.find_python(sys.executable) == sys.executable
    assert bench.find_python(str(tmp_path / "python9")) is None
    fake = tmp_path / "versions" / "3.99.1" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert bench.find_python("python3.99") == str(fake)
    assert bench.find_python("python3.98") is None


def test_an_installed_venv_is_reused_and_fresh_rebuilds(bench: ModuleType, tmp_path: Path) -> None:
    peer = bench.Peer("ok", "1.0", sys.executable, (("ok==1.0",),), "-")
    (tmp_path / "ok-1.0").mkdir()
    (tmp_path / "ok-1.0" / bench.MARKER).write_text("ok==1.0\n")

    def refuse(cmd: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "offline")

    assert bench.ensure_venv(peer, tmp_path, run=refuse) == (tmp_path / "ok-1.0", "")
    assert bench.ensure_venv(peer, tmp_path, fresh=True, run=refuse) == (
        None,
        "install failed: offline",
    )


def test_local_inputs_need_no_download(bench: ModuleType, tmp_path: Path) -> None:
    inputs = bench.write_inputs(tmp_path, "benchmark [[relaygate ttft_ms=1]]", 5)
    rows = inputs["jsonl"].read_text().splitlines()
    assert len(rows) == 5 and json.loads(rows[0])["prompt"].startswith("benchmark")
    assert len(json.loads(inputs["sharegpt"].read_text())) == 5
    tokenizer = json.loads((inputs["tokenizer"] / "tokenizer.json").read_text())
    assert tokenizer["model"]["vocab"]["tok"] == 1  # the mock's content word is one token


def test_table_prints_a_not_available_row_beside_measured_ones(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    measured = {"method": "stamps", "ttft_err_p50": 0.1, "ttft_err_p99": 0.2, "requests": 400}
    kernel = measured | {"arrival": "kernel"}
    rows = [bench.make_row("relaygate", "default", 50, kernel, MOCK, 2.0, "-")]
    rows.append(bench.make_row("relaygate-user", "default", 50, measured, MOCK, 2.0, "-"))
    rows.append(
        {
            "tool": "guidellm",
            "shape": "default",
            "streams_concurrent": 50,
            "error": "not available: install failed: offline",
        }
    )
    bench.add_ratios(rows)
    bench.print_table(rows)
    out = capsys.readouterr().out
    assert "guidellm       default     50 not available: install failed: offline" in out
    # The kernel-stamped row is told apart from the read-stamped ones.
    assert "relaygate      default     50 stamps-k" in out
    assert "relaygate-user default     50 stamps  " in out


def test_a_tool_that_echoes_the_key_gets_it_masked_in_its_row(bench: ModuleType) -> None:
    key = "sk-upstream-0123456789abcdef0123456789abcdef"
    lead = {"tool": "inference-perf", "shape": "dense", "streams_concurrent": 200}
    exc = RuntimeError(f"no summary; tool said:   api_key: {key}")
    row = bench.error_row(lead, exc, key)
    assert key not in row["error"] and "0123456789abcdef0123" not in row["error"]
    assert row["error"].startswith("not available: no summary; tool said:")


def test_kept_outputs_hold_no_usable_key(bench: ModuleType, tmp_path: Path) -> None:
    """``--keep`` leaves the peers' configs and logs behind: the mock's key in them is masked."""
    key = "sk-relaygate-upstream-0123456789abcdef"
    (tmp_path / "default-50-aiperf").mkdir()
    config = tmp_path / "default-50-aiperf" / "config.yaml"
    config.write_text(f"api_key: {key}\nurl: http://127.0.0.1:1\n")
    (tmp_path / "inputs.jsonl").write_text('{"text": "no key here"}\n')
    assert bench.scrub_secret(tmp_path, key) == 1
    assert key not in config.read_text() and "api_key: sk-rel" in config.read_text()
    assert bench.scrub_secret(tmp_path, key) == 0
