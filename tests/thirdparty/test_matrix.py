"""The conformance matrix from per-relay report dirs: rows = cases, columns = relays, a relay
that did not run is a "not run" column with its reason (never an empty, green-looking one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from relaygate.thirdparty.matrix import load_column, write_matrix


def _case(cid: str, outcome: str, reason: str = "") -> dict[str, Any]:
    return {"id": cid, "title": f"t {cid}", "area": cid.split(".")[0], "outcome": outcome,
            "reason": reason, "faq": [], "level": "MUST", "duration_s": 0.1}  # fmt: skip


def _relay(root: Path, name: str, cases: list[dict[str, Any]] | None, **run: Any) -> None:
    out = root / name
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"relay": name, "version": "1.0", **run}))
    if cases is not None:
        (out / "conformance.json").write_text(json.dumps({"profile": name, "cases": cases}))


def test_matrix_rows_columns_and_reasons(tmp_path: Path) -> None:
    _relay(tmp_path, "alpha", [_case("auth.a", "passed"), _case("auth.b", "failed", "401 vs 200")])
    _relay(tmp_path, "beta", [_case("auth.a", "deviation", "documented 403"),
                              _case("quota.c", "skipped", "no quota")])  # fmt: skip
    _relay(tmp_path, "gamma", None, error="npm install exited with 1")
    (tmp_path / "alpha" / "load-summary.json").write_text(
        json.dumps({"requests": {"ok": 9, "server_error": 1, "total": 10},
                    "ttft_ms": {"p50": 101.0, "p99": 120.0}, "itl_ms": {"p50": 10.0}})
    )  # fmt: skip
    md_path, html_path = write_matrix(tmp_path, ["alpha", "beta", "gamma"])
    md = md_path.read_text()
    assert "| `auth.a` | pass | dev | not run |" in md
    assert "| `auth.b` | **FAIL** | not run | not run |" in md
    assert "| `quota.c` | not run | skip | not run |" in md
    assert "not run: npm install exited with 1" in md
    assert "9 ok / 1 not ok; TTFT p50 101.0 ms" in md  # "total" is not counted as not ok
    assert "`auth.b` — t auth.b: 401 vs 200" in md
    assert "`quota.c` — t quota.c: no quota" in md
    html = html_path.read_text()
    assert "documented 403" in html and "<script" not in html
    gamma = load_column(tmp_path / "gamma")
    assert gamma.error == "npm install exited with 1" and not gamma.cases


def test_a_configuration_row_shows_what_ran_its_findings_and_citations(tmp_path: Path) -> None:
    should = {**_case("streaming.x", "failed", "no usage chunk"), "level": "SHOULD"}
    cited = "LiteLLM answers 400 (docs: https://docs.litellm.ai/docs/proxy/virtual_keys#expiry)"
    configuration = {
        "name": "quickstart",
        "description": "no database, master key only",
        "docs": "https://docs.litellm.ai/docs/proxy/quick_start#quick-start",
    }
    _relay(
        tmp_path,
        "alpha:quickstart",
        [_case("auth.b", "failed", "401 vs 200"), should, _case("auth.e", "deviation", cited)],
        configuration=configuration,
        profile="alpha-quickstart",
    )
    md = write_matrix(tmp_path, ["alpha:quickstart"])[0].read_text()
    assert "| alpha:quickstart | 1.0 | alpha-quickstart | 0 | 1 | 1 | 1 | 0 |" in md
    assert (
        "Configuration: no database, master key only "
        "(docs: https://docs.litellm.ai/docs/proxy/quick_start#quick-start)" in md
    )
    assert "### Findings: failed MUST cases (1)" in md
    assert "### Findings: failed SHOULD cases (1)" in md
    assert cited in md  # the citation is never cut
