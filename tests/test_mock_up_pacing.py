"""``relaygate up --default-ttft-ms/--default-itl-ms`` pace the embedded mock upstream's plain
answers, as ``relaygate mock-upstream`` does (issue #12: a live run against the stack)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from relaygate.cli import build_parser
from relaygate.sse import SSEDecoder

#: Judges timing (the mock's pacing): under xdist it runs last and alone (conftest.py).
pytestmark = pytest.mark.serial


def test_up_passes_the_pacing_to_its_mock() -> None:
    argv = [sys.executable, "-m", "relaygate", "up", "--json"]
    argv += ["--default-ttft-ms", "120", "--default-itl-ms", "40"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    try:
        info = json.loads(proc.stdout.readline())
        body = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Answer at length."}],
            "max_tokens": 5,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {info['relay_key']}"}
        url = info["relay_url"] + "/v1/chat/completions"
        arrived: list[float] = []
        sent = time.monotonic()
        with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
            assert response.status_code == 200
            decoder = SSEDecoder()
            for raw in response.iter_raw():
                for event in decoder.feed(raw):
                    if '"content":"' in event.data and '"content":""' not in event.data:
                        arrived.append(time.monotonic())
        assert len(arrived) == 5
        # Earliness is impossible, lateness (a loaded machine) is not: the last token comes
        # no sooner than ttft + 4 x itl after the request was sent.
        assert (arrived[-1] - sent) * 1000 >= 120 + 4 * 40 - 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.mark.parametrize("value", ["-1", "600001", "fast"])
def test_up_refuses_a_bad_pacing(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["up", "--default-itl-ms", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --default-itl-ms:" in err
    assert "0..600000 ms" in err or "expected milliseconds" in err
