"""Benchmark relaygate's load client against other LLM load tools, in one run (numbers, not a test).

Every tool drives the embedded stack's mock upstream directly (127.0.0.1, no relay) with the
same directed streams - a shape of TTFT / ITL / events set by a directive in the prompt - at
each concurrency level, one tool at a time:

* ``relaygate`` - ``StreamingChatUser`` (Locust + our TimingClient), this venv; arrival is
  the kernel's receive stamp (its default ``--rx-stamps kernel``)
* ``relaygate-user`` - the same with ``--rx-stamps user``: arrival is when ``recv`` returns,
  as for ``stock`` and ``control`` (the like-for-like row)
* ``stock``     - best stock Locust method (``_bench_stock_locustfile.py``), this venv
* ``control``   - minimal asyncio client (``_bench_control.py``), this venv
* ``aiperf``, ``guidellm``, ``inference-perf`` - peer tools, each pip-installed into its own
  cached venv (``$XDG_CACHE_HOME/relaygate/bench-peers/<tool>-<version>``; ``--fresh``
  rebuilds). A tool pip cannot install, or that fails to run, gets a row "not available:
  <reason>"; the run goes on.

Measurement window: once the mock sees the tool's streams, ``--warmup`` seconds pass, then the
mock's counters are reset and ``--seconds`` are measured (for the three tools of this venv, the
window is fixed from launch, as in ``bench_load.py``). Per tool and level:

* TTFT / ITL error p50/p99 ms. Method ``stamps``: received time - the mock's emission stamp
  (``relaygate_emit_ns`` in every chunk), streams sent in the window only. Method
  ``reported``: the tool's own TTFT / ITL minus the directed one (peers report only their own
  numbers, over their whole run, warm-up included).
* requests completed and streams/s: the mock's own count of streams finished in the window.
* CPU-s per 1000 streams: user+system CPU of the tool's process tree over the window (psutil).
* "could not measure": what the tool cannot report.

    python benchmarks/bench_peers.py --quick              # one level (20 streams), 8 s windows
    python benchmarks/bench_peers.py --json OUT.json      # levels 50,200, shapes default,dense
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

from relaygate.bounded import bounded_client
from relaygate.directives import directive
from relaygate.keys import mask_key, mask_secrets
from relaygate.load.histogram import Histogram
from relaygate.stack import EmbeddedStack

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
MODEL = "gpt-4o-mini"
SHAPES: dict[str, dict[str, int]] = {
    "default": {"ttft_ms": 200, "itl_ms": 20, "chunks": 50},
    "dense": {"ttft_ms": 20, "itl_ms": 2, "chunks": 200},
}
OURS = ("relaygate", "relaygate-user", "stock", "control")
# Whole-run bounds: a tool that does not start sending, or does not stop, is ended.
START_TIMEOUT_S = 180.0
# inference-perf writes its reports after its last request; at 200 dense streams that took
# over 76 s on the shared 2-core box.
STOP_GRACE_S = 180.0
# Each pip step of a peer's install is ended after this long (--install-timeout); the tool
# is then "not available: install timed out". torch alone is a large wheel.
INSTALL_TIMEOUT_S = 900.0


@dataclasses.dataclass(frozen=True)
class Peer:
    """A peer tool: how to install it into its own venv, and what it cannot report."""

    name: str
    version: str
    python: str
    # pip install steps, in order (torch first for guidellm: the CPU wheel on disk).
    installs: tuple[tuple[str, ...], ...]
    cannot: str


PEERS: dict[str, Peer] = {
    "aiperf": Peer(
        "aiperf",
        "0.13.0",
        sys.executable,
        (("aiperf==0.13.0",),),
        "emission stamps; per-gap ITL (reports each stream's mean); window-only stats",
    ),
    "guidellm": Peer(
        "guidellm",
        "0.8.1",
        sys.executable,
        (("torch==2.13.0",), ("guidellm==0.8.1",)),
        "emission stamps; per-gap ITL (reports each stream's mean); window-only stats",
    ),
    "inference-perf": Peer(
        "inference-perf",
        "0.7.0",
        "python3.12",  # inference-perf needs Python >= 3.12; see find_python
        (("inference-perf==0.7.0",),),
        "emission stamps; window-only stats",
    ),
}
OUR_CANNOT = {
    "relaygate": "-",
    "relaygate-user": "-",
    "stock": "-",
    "control": "-",
}
MARKER = ".relaygate-installed"

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relaygate" / "bench-peers"


def one_line(text: str, limit: int = 160) -> str:
    """The last ``ERROR`` line of ``text`` (pip's reason; its warnings may follow), else the
    last non-empty line, cut to ``limit``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return ((errors or lines)[-1] if lines else "no output")[:limit]


def find_python(name: str) -> str | None:
    """An interpreter by path or by name: on PATH (a pyenv shim only if it runs), else in
    pyenv's versions (``python3.12`` -> ``~/.pyenv/versions/3.12.*/bin/python``)."""
    if os.sep in name:
        return name if Path(name).exists() else None
    found = shutil.which(name)
    if found:
        try:
            probe = subprocess.run([found, "-V"], capture_output=True, timeout=30)
            if probe.returncode == 0:
                return found
        except (OSError, subprocess.TimeoutExpired):
            pass
    version = name.removeprefix("python")
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for candidate in sorted(pyenv.glob(f"{version}.*/bin/python"), reverse=True):
        return str(candidate)
    return None


def ensure_venv(
    peer: Peer,
    root: Path,
    *,
    fresh: bool = False,
    run: Runner = subprocess.run,
    timeout_s: float = INSTALL_TIMEOUT_S,
) -> tuple[Path | None, str]:
    """The peer's venv (installed on first use, reused after), or (None, one-line reason).

    Every step (venv, each pip install) is bounded by ``timeout_s``."""
    venv = root / f"{peer.name}-{peer.version}"
    if fresh and venv.exists():
        shutil.rmtree(venv)
    if (venv / MARKER).exists():
        return venv, ""
    python = find_python(peer.python)
    if python is None:
        return None, f"no interpreter {peer.python}"
    shutil.rmtree(venv, ignore_errors=True)  # a half-built venv from an interrupted install
    steps = [[python, "-m", "venv", str(venv)]] + [
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *step]
        for step in peer.installs
    ]
    for cmd in steps:
        try:
            done = run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            shutil.rmtree(venv, ignore_errors=True)
            return None, f"install timed out after {timeout_s:.0f} s ({' '.join(cmd[-1:])})"
        except OSError as exc:
            return None, f"install failed: {one_line(str(exc))}"
        if done.returncode != 0:
            return None, f"install failed: {one_line(done.stderr or done.stdout)}"
    (venv / MARKER).write_text(" ".join(" ".join(step) for step in peer.installs) + "\n")
    return venv, ""


# -- inputs the peers need, written locally (nothing is downloaded) -------------------------
def write_tokenizer(path: Path) -> Path:
    """A Hugging Face-style tokenizer directory: a word-level vocabulary in which the mock's
    content text (`` tok``) is one token, so a tool's token count equals the event count."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = {"[UNK]": 0, "tok": 1, "benchmark": 2}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": 0,
                "content": "[UNK]",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "unk_token": "[UNK]",
                "model_max_length": 1_000_000,
            }
        )
    )
    (path / "special_tokens_map.json").write_text(json.dumps({"unk_token": "[UNK]"}))
    return path


def dataset_rows(prompt: str, rows: int) -> list[dict[str, Any]]:
    return [{"prompt": prompt, "text": prompt} for _ in range(rows)]


def write_inputs(tmp: Path, prompt: str, rows: int) -> dict[str, Path]:
    """Every peer's input files: a JSONL of prompts, a shareGPT-style file, a tokenizer."""
    tmp.mkdir(parents=True, exist_ok=True)
    jsonl = tmp / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in dataset_rows(prompt, rows)))
    sharegpt = tmp / "sharegpt.json"
    sharegpt.write_text(
        json.dumps(
            [
                {
                    "id": str(i),
                    "conversations": [
                        {"from": "human", "value": prompt},
                        {"from": "gpt", "value": "tok " * 8},
                    ],
                }
                for i in range(rows)
            ]
        )
    )
    return {"jsonl": jsonl, "sharegpt": sharegpt, "tokenizer": write_tokenizer(tmp / "tokenizer")}


# -- measurement ---------------------------------------------------------------------------
class Mock:
    """The mock's own counters (``/_relaygate/stats``): the same count for every tool."""

    def __init__(self, upstream: str, key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.key = key

    def call(self, method: str, path: str) -> dict[str, Any]:
        # Bounded like every request the harness sends: 10 s in all, 1 MiB at most.
        with bounded_client(timeout_s=10.0, max_bytes=1024 * 1024, secrets=[self.key]) as http:
            response = http.request(
                method, self.upstream + path, headers={"Authorization": f"Bearer {self.key}"}
            )
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            return data

    def reset(self) -> None:
        self.call("POST", "/_relaygate/stats/reset")

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "/_relaygate/stats")


def tree_cpu(proc: psutil.Process) -> dict[int, float]:
    """user+system CPU seconds of ``proc`` and every descendant, by pid."""
    out: dict[int, float] = {}
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            continue
    return out


def cpu_delta(start: dict[int, float], end: dict[int, float]) -> float:
    """CPU spent between two :func:`tree_cpu` samples (a process born inside counts whole)."""
    return sum(max(0.0, value - start.get(pid, 0.0)) for pid, value in end.items())


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


def r2(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def make_row(
    tool: str,
    shape_name: str,
    users: int,
    measured: dict[str, Any],
    mock: dict[str, Any],
    cpu_s: float,
    cannot: str,
) -> dict[str, Any]:
    """One table row from what a tool measured and what the mock counted in the window.

    ``measured`` is either ``{"method": "stamps", "ttft_err_p50": ...}`` (errors against the
    emission stamps, already in ms) or ``{"method": "reported", "ttft_ms": {"p50":, "p99":},
    "itl_ms": {...}}`` (the tool's own numbers; error = reported - directed).
    """
    shape = SHAPES[shape_name]
    row: dict[str, Any] = {"tool": tool, "shape": shape_name, "streams_concurrent": users}
    if measured["method"] == "reported":
        ttft, itl = measured.get("ttft_ms") or {}, measured.get("itl_ms") or {}

        def err(stat: dict[str, Any], key: str, directed: int) -> float | None:
            value = stat.get(key)
            return None if value is None else round(float(value) - directed, 2)

        errors = {
            "ttft_err_p50": err(ttft, "p50", shape["ttft_ms"]),
            "ttft_err_p99": err(ttft, "p99", shape["ttft_ms"]),
            "itl_err_p50": err(itl, "p50", shape["itl_ms"]),
            "itl_err_p99": err(itl, "p99", shape["itl_ms"]),
        }
    else:
        errors = {k: measured.get(k) for k in ("ttft_err_p50", "ttft_err_p99")}
        errors |= {k: measured.get(k) for k in ("itl_err_p50", "itl_err_p99")}
    finished = int((mock.get("streams") or {}).get("finished", 0))
    window_s = float(mock.get("window_s") or 0.0)
    row |= {
        "method": measured["method"],
        # stamps rows: "kernel" (the kernel's receive stamp) or "read" (when the read returned)
        "arrival": measured.get("arrival"),
        **errors,
        "requests": finished,
        "tool_requests": measured.get("requests"),
        "streams_per_s": round(finished / window_s, 1) if window_s > 0 else None,
        "cpu_s_per_1k": round(1000 * cpu_s / finished, 2) if finished else None,
        "mock_write_lateness_p99_ms": (mock.get("write_lateness_ms") or {}).get("p99"),
        "cannot_measure": cannot,
    }
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's streams/s and CPU per 1000 streams over the relaygate row of its level."""
    base = {
        (r["shape"], r["streams_concurrent"]): r
        for r in rows
        if r["tool"] == "relaygate" and "error" not in r
    }
    for row in rows:
        ref = base.get((row["shape"], row["streams_concurrent"]))
        for key in ("streams_per_s", "cpu_s_per_1k"):
            mine, theirs = row.get(key), (ref or {}).get(key)
            row[f"{key}_vs_relaygate"] = round(mine / theirs, 2) if mine and theirs else None


# -- running one tool at one level ---------------------------------------------------------
@dataclasses.dataclass
class Level:
    shape: str
    users: int
    seconds: float
    warmup: float
    upstream: str
    key: str
    tmp: Path
    inputs: dict[str, Path]

    @property
    def prompt(self) -> str:
        return "benchmark " + directive(**SHAPES[self.shape], stamp="field")

    @property
    def run_s(self) -> int:
        return math.ceil(self.warmup + self.seconds + 2)


def run_measured(
    cmd: list[str],
    env: dict[str, str],
    level: Level,
    mock: Mock,
    *,
    fixed_start_s: float | None,
    cwd: Path,
) -> tuple[dict[str, Any], float, str]:
    """Run a tool; returns (mock stats over the window, tool tree CPU-s in it, output tail).

    ``fixed_start_s``: the window opens that long after launch; None: ``level.warmup`` after
    the mock first sees an active stream (peers take long and unknown times to start).
    """
    log = level.tmp / "tool.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    ps = psutil.Process(proc.pid)
    launched = time.monotonic()
    stats: dict[str, Any] = {}
    cpu = 0.0
    try:
        if fixed_start_s is None:
            mock.reset()
            while time.monotonic() - launched < START_TIMEOUT_S and proc.poll() is None:
                if mock.stats()["streams"]["started"] > 0:
                    break
                time.sleep(0.2)
            time.sleep(level.warmup)
        else:
            time.sleep(max(0.0, launched + fixed_start_s - time.monotonic()))
        if proc.poll() is None:
            mock.reset()
            before = tree_cpu(ps)
            time.sleep(level.seconds)
            after = tree_cpu(ps)
            stats = mock.stats()
            cpu = cpu_delta(before, after)
        proc.wait(timeout=level.run_s + STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
    return stats, cpu, log.read_text(errors="replace")[-3000:]


def hist_errors(data: dict[str, Any]) -> dict[str, Any]:
    ttft, itl = Histogram.from_dict(data["ttft_err"]), Histogram.from_dict(data["itl_err"])
    return {
        "method": "stamps",
        "ttft_err_p50": r2(ttft.percentile(50)),
        "ttft_err_p99": r2(ttft.percentile(99)),
        "itl_err_p50": r2(itl.percentile(50)),
        "itl_err_p99": r2(itl.percentile(99)),
        "requests": data["streams"],
        "arrival": "read",
    }


def run_ours(tool: str, level: Level, mock: Mock) -> tuple[dict[str, Any], dict[str, Any], float]:
    out_path = level.tmp / f"{tool}.json"
    launch_ns = time.monotonic_ns()
    env = dict(
        os.environ,
        BENCH_OUT=str(out_path),
        BENCH_KEY=level.key,
        BENCH_PROMPT=level.prompt,
        BENCH_FROM_NS=str(launch_ns + int(level.warmup * 1e9)),
        BENCH_UNTIL_NS=str(launch_ns + int((level.warmup + level.seconds) * 1e9)),
    )
    shape = SHAPES[level.shape]
    locust = [
        "--headless",
        *("-u", str(level.users), "-r", str(level.users), "-t", f"{level.run_s}s"),
        *("--host", level.upstream, "--only-summary", "--loglevel", "WARNING"),
    ]
    report = level.tmp / "report"
    if tool.startswith("relaygate"):
        env["RELAYGATE_RX_STAMPS"] = "user" if tool == "relaygate-user" else "kernel"
        cmd = [
            str(BIN / "locust"),
            *("-f", str(HERE / "_bench_relaygate_locustfile.py"), *locust),
            *("--relay-key", level.key, "--report-dir", str(report), "--no-plots"),
            *("--mock-ttft-ms", str(shape["ttft_ms"]), "--mock-itl-ms", str(shape["itl_ms"])),
            *("--mock-output-tokens", str(shape["chunks"])),
            # The client fails a stream that sends more events than max_tokens allows
            # (an overrun): the dense shape sends 200, past the default 128.
            *("--max-tokens", str(shape["chunks"])),
        ]
    elif tool == "stock":
        cmd = [str(BIN / "locust"), "-f", str(HERE / "_bench_stock_locustfile.py"), *locust]
    else:
        cmd = [sys.executable, str(HERE / "_bench_control.py"), level.upstream, level.key]
        cmd += [level.prompt, str(level.users), str(level.run_s), str(out_path)]
    stats, cpu, tail = run_measured(cmd, env, level, mock, fixed_start_s=level.warmup, cwd=ROOT)
    if tool.startswith("relaygate"):
        path = report / "load-summary.json"
        if not path.exists():
            raise RuntimeError(one_line(tail))
        summary = json.loads(path.read_text())
        ttft, itl = summary["first_token_emit_to_recv_ms"], summary["itl_stamp_error_ms"]
        measured = {
            "method": "stamps",
            "ttft_err_p50": r2(ttft["p50"]),
            "ttft_err_p99": r2(ttft["p99"]),
            "itl_err_p50": r2(itl["p50"]),
            "itl_err_p99": r2(itl["p99"]),
            "requests": ttft["count"],
            "arrival": "kernel" if tool == "relaygate" else "read",
        }
        return measured, stats, cpu
    if not out_path.exists():
        raise RuntimeError(one_line(tail))
    return hist_errors(json.loads(out_path.read_text())), stats, cpu


def peer_command(tool: str, venv: Path, level: Level, out: Path) -> list[str]:
    """The peer's command line for one level: closed loop at ``level.users`` concurrency,
    bounded in time and requests, streaming chat against the mock, local inputs only."""
    bin_dir = venv / "bin"
    base = level.upstream.rstrip("/")
    cap = str(level.users * 2000)  # a request bound well above what the time allows
    if tool == "aiperf":
        return [
            str(bin_dir / "aiperf"),
            "profile",
            *("--model", MODEL, "--url", base, "--endpoint-type", "chat", "--streaming"),
            *("--concurrency", str(level.users), "--benchmark-duration", str(level.run_s)),
            *("--benchmark-grace-period", "0", "--request-count", cap),
            *("--input-file", str(level.inputs["jsonl"]), "--custom-dataset-type", "single_turn"),
            *("--tokenizer", str(level.inputs["tokenizer"])),
            *("--no-server-metrics", "--no-gpu-telemetry"),
            *("--api-key", level.key, "--artifact-dir", str(out), "--ui-type", "none"),
        ]
    if tool == "guidellm":
        scenario = level.tmp / "guidellm-scenario.json"
        spec = {
            "backend": {
                "kind": "openai_http",
                "target": base,
                "model": MODEL,
                "api_key": level.key,
                "request_format": "/v1/chat/completions",
                "validate_backend": False,
                "stream": True,
            },
            "profile": {"kind": "concurrent", "streams": [level.users]},
            "constraints": [
                {"kind": "max_duration", "seconds": level.run_s},
                {"kind": "max_requests", "count": int(cap)},
            ],
            "tokenizer": {"kind": "huggingface_auto", "model": str(level.inputs["tokenizer"])},
            "data": [{"kind": "json_file", "path": str(level.inputs["jsonl"])}],
            "outputs": [{"kind": "json", "path": str(out / "guidellm.json")}],
        }
        scenario.write_text(json.dumps({"metadata": {"name": "bench-peers"}, "spec": spec}))
        return [
            str(bin_dir / "guidellm"),
            *("run", "--scenario", str(scenario), "--disable-console-interactive"),
        ]
    # inference-perf's concurrent stage is bounded by a request count, not time: enough
    # streams for the run at the directed pace (the whole run is still cut at its bound).
    shape = SHAPES[level.shape]
    stream_s = (shape["ttft_ms"] + shape["itl_ms"] * (shape["chunks"] - 1)) / 1000
    requests = level.users * max(1, math.ceil(level.run_s / stream_s))
    config = level.tmp / "inference-perf.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "load": {
                    "type": "concurrent",
                    "stages": [{"num_requests": requests, "concurrency_level": level.users}],
                    "request_timeout": 60,
                },
                "api": {"type": "chat", "streaming": True},
                "server": {
                    "type": "vllm",
                    "model_name": MODEL,
                    "base_url": base,
                    "ignore_eos": False,
                    "api_key": level.key,
                },
                "tokenizer": {"pretrained_model_name_or_path": str(level.inputs["tokenizer"])},
                "data": {"type": "shareGPT", "path": str(level.inputs["sharegpt"])},
                "report": {"request_lifecycle": {"summary": True, "percentiles": [50, 99]}},
                "storage": {"local_storage": {"path": str(out)}},
            }
        )
    )
    return [str(bin_dir / "inference-perf"), "--config_file", str(config)]


def peer_results(tool: str, out: Path) -> dict[str, Any]:
    """The peer's own TTFT / ITL (ms) and completed count, from its report files."""
    if tool == "aiperf":
        found = sorted(out.rglob("profile_export_aiperf.json"))
        if not found:
            raise RuntimeError("no profile_export_aiperf.json")
        data = json.loads(found[-1].read_text())
        return {
            "method": "reported",
            "ttft_ms": data.get("time_to_first_token") or {},
            "itl_ms": data.get("inter_token_latency") or {},
            "requests": (data.get("request_count") or {}).get("avg"),
        }
    if tool == "guidellm":
        metrics = json.loads((out / "guidellm.json").read_text())["benchmarks"][-1]["metrics"]

        def pcts(name: str) -> dict[str, float]:
            found = ((metrics.get(name) or {}).get("successful") or {}).get("percentiles") or {}
            return {k: found[k] for k in ("p50", "p99") if k in found}

        return {
            "method": "reported",
            "ttft_ms": pcts("time_to_first_token_ms"),
            "itl_ms": pcts("inter_token_latency_ms"),
            "requests": (metrics.get("request_totals") or {}).get("successful"),
        }
    if tool == "inference-perf":
        found = sorted(out.rglob("summary_lifecycle_metrics.json"))
        if not found:
            raise RuntimeError("no summary_lifecycle_metrics.json")
        ok = json.loads(found[-1].read_text())["successes"]
        latency = ok.get("latency") or {}

        def ms(stat: dict[str, Any] | None) -> dict[str, float]:
            stat = stat or {}  # seconds; the median is called "median"
            return {k: 1000 * stat[s] for k, s in (("p50", "median"), ("p99", "p99")) if s in stat}

        return {
            "method": "reported",
            "ttft_ms": ms(latency.get("time_to_first_token")),
            "itl_ms": ms(latency.get("inter_token_latency")),
            "requests": ok.get("count"),
        }
    raise RuntimeError(f"no reader for {tool}")


def run_peer(
    tool: str, venv: Path, level: Level, mock: Mock
) -> tuple[dict[str, Any], dict[str, Any], float]:
    out = level.tmp / f"{tool}-out"
    out.mkdir(parents=True, exist_ok=True)
    cmd = peer_command(tool, venv, level, out)
    # TMPDIR inside the run's temp dir: aiperf leaves an aiperf_mmap_* directory per run in
    # the system temp directory; this way it goes with the rest.
    scratch = level.tmp / "tmp"
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, NO_PROXY="127.0.0.1", TMPDIR=str(scratch))
    env.pop("VIRTUAL_ENV", None)
    if tool != "aiperf":  # aiperf's offline mode takes a local tokenizer path for a repo id
        env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    stats, cpu, tail = run_measured(cmd, env, level, mock, fixed_start_s=None, cwd=out)
    try:
        return peer_results(tool, out), stats, cpu
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise RuntimeError(f"{exc}; tool said: {one_line(tail)}") from exc


# -- main ----------------------------------------------------------------------------------
def scrub_secret(folder: Path, secret: str) -> int:
    """Mask ``secret`` in every file under ``folder`` (the peers' configs and logs carry the
    mock's key); the number of files changed. Kept outputs never hold a usable key."""
    needle, masked = secret.encode(), mask_key(secret).encode()
    changed = 0
    for path in folder.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if needle in data:
            path.write_bytes(data.replace(needle, masked))
            changed += 1
    return changed


def error_row(lead: dict[str, Any], exc: BaseException, key: str) -> dict[str, Any]:
    """A "not available" row; a tool's last words may echo its config, so the key is masked."""
    return {**lead, "error": f"not available: {one_line(mask_secrets(str(exc), key))}"}


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def method_label(row: dict[str, Any]) -> str:
    """``stamps`` (arrival = read), ``stamps-k`` (arrival = kernel stamp), ``reported``."""
    return row["method"] + ("-k" if row.get("arrival") == "kernel" else "")


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'tool':<15}{'shape':<8}{'users':>6} {'method':<9}{'TTFT err p50/p99':>18}"
        f"{'ITL err p50/p99':>18}{'done':>7}{'str/s':>8}{'CPU-s/1k':>9}{'x str/s':>8}"
        f"{'x CPU':>7}{'mock late':>10}  could not measure"
    )
    print("\n" + head)
    for r in rows:
        lead = f"{r['tool']:<15}{r['shape']:<8}{r['streams_concurrent']:>6} "
        if "error" in r:
            print(f"{lead}{r['error']}")
            continue
        print(
            f"{lead}{method_label(r):<9}"
            f"{fmt(r['ttft_err_p50']):>9}/{fmt(r['ttft_err_p99']):<8}"
            f"{fmt(r['itl_err_p50']):>9}/{fmt(r['itl_err_p99']):<8}"
            f"{fmt(r['requests']):>7}{fmt(r['streams_per_s']):>8}{fmt(r['cpu_s_per_1k']):>9}"
            f"{fmt(r.get('streams_per_s_vs_relaygate')):>8}"
            f"{fmt(r.get('cpu_s_per_1k_vs_relaygate')):>7}"
            f"{fmt(r['mock_write_lateness_p99_ms']):>10}  {r['cannot_measure']}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one level (20 streams), 8 s")
    parser.add_argument("--levels", default=None, help="comma list of concurrent streams")
    parser.add_argument("--shapes", default="default,dense", help=f"of {','.join(SHAPES)}")
    parser.add_argument("--tools", default=",".join((*OURS, *PEERS)))
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    parser.add_argument("--fresh", action="store_true", help="rebuild the peers' venvs")
    parser.add_argument(
        "--install-timeout",
        type=float,
        default=INSTALL_TIMEOUT_S,
        help="seconds each pip step of a peer's install may take (then 'not available')",
    )
    parser.add_argument("--json", default=None, help="write rows and context to this file")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep every tool's output files (the mock's key masked in them)",
    )
    args = parser.parse_args(argv)
    levels = [int(x) for x in (args.levels or ("20" if args.quick else "50,200")).split(",")]
    seconds = float(args.seconds or (8 if args.quick else 10))
    tools = [t for t in args.tools.split(",") if t]
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [t for t in tools if t not in OURS and t not in PEERS]
    unknown += [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown tool or shape: {', '.join(unknown)}")
    result: dict[str, Any] = {"load1_start": load1(), "cpu_count": os.cpu_count()}
    print(f"load average (1 min) at start: {result['load1_start']}", flush=True)
    venvs: dict[str, Path | None] = {}
    reasons: dict[str, str] = {}
    for tool in tools:
        if tool in PEERS:
            print(f"installing/checking {tool} ...", flush=True)
            venvs[tool], reasons[tool] = ensure_venv(
                PEERS[tool], cache_root(), fresh=args.fresh, timeout_s=args.install_timeout
            )
    rows: list[dict[str, Any]] = []
    began = time.monotonic()
    max_users = max(levels)
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmpdir = tempfile.mkdtemp(prefix="bench-peers-")
            print(f"tool outputs kept in {tmpdir}", flush=True)
        else:
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peers-"))
        info = stack.enter_context(EmbeddedStack())
        root = Path(tmpdir)
        mock = Mock(info.upstream_url, info.upstream_key)
        for shape in shapes:
            level_prompt = "benchmark " + directive(**SHAPES[shape], stamp="field")
            # Enough rows that no tool runs out: every user, many streams each.
            inputs = write_inputs(root / shape, level_prompt, max(2000, max_users * 40))
            for users in levels:
                for tool in tools:
                    tmp = root / f"{shape}-{users}-{tool}"
                    tmp.mkdir()
                    level = Level(
                        shape, users, seconds, args.warmup, info.upstream_url,
                        info.upstream_key, tmp, inputs,
                    )  # fmt: skip
                    lead = {"tool": tool, "shape": shape, "streams_concurrent": users}
                    try:
                        if tool in OURS:
                            measured, stats, cpu = run_ours(tool, level, mock)
                            cannot = OUR_CANNOT[tool]
                        else:
                            venv = venvs[tool]
                            if venv is None:
                                raise RuntimeError(reasons[tool])
                            measured, stats, cpu = run_peer(tool, venv, level, mock)
                            cannot = PEERS[tool].cannot
                        if not stats:
                            raise RuntimeError("stopped before its window closed")
                        row = make_row(tool, shape, users, measured, stats, cpu, cannot)
                    except Exception as exc:  # a broken tool is a row, never the whole run
                        row = error_row(lead, exc, info.upstream_key)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        if args.keep:
            scrubbed = scrub_secret(root, info.upstream_key)
            print(f"the mock's key masked in {scrubbed} kept file(s)", flush=True)
    add_ratios(rows)
    result |= {
        "load1_end": load1(),
        "shapes": {s: SHAPES[s] for s in shapes},
        "seconds": seconds,
        "warmup_s": args.warmup,
        "elapsed_s": round(time.monotonic() - began, 1),
        "rows": rows,
    }
    print_table(rows)
    print(
        f"load average (1 min): start {result['load1_start']}, end {result['load1_end']} "
        f"({result['cpu_count']} cores); x = ratio to the relaygate row of the same level; "
        "mock late = the mock's own write lateness p99 ms (a 'reported' error includes it); "
        "stamps-k = arrival is the kernel's receive stamp, stamps = when the read returned"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
