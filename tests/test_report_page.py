"""The report page: content, masking, self-containment, and rendering in headless Chromium."""

from __future__ import annotations

import html
import html.parser
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relaygate import gate
from relaygate.report.page import render_page, write_page

if TYPE_CHECKING:
    from conftest import ChromiumRender

SECRET = "sk-live-abcdefghijklmnopqrstuvwxyz0123"

FAILURE = (
    "relaygate.suite.failures.CaseFailure: -> an unknown key is refused with 401\n"
    "   Expected: HTTP 401, error.code 'invalid_api_key'\n"
    '     Actual: HTTP 403 application/json \'{"error":{"code":"invalid_api_key"}}\'\n'
    f"  Reproduce: curl -sS -X POST http://127.0.0.1:1/v1/chat/completions -H "
    f"'Authorization: Bearer {SECRET}'\n"
    "  (how to read this: README.md#reading-a-failure)"
)


def _case(cid: str, outcome: str, reason: str = "", details: str = "") -> dict[str, Any]:
    return {
        "id": cid,
        "title": f"title of {cid}",
        "area": cid.split(".")[0],
        "faq": ["F15"],
        "level": "MUST",
        "outcome": outcome,
        "reason": reason,
        "duration_s": 0.01,
        **({"details": details} if details else {}),
    }


CONFORMANCE: dict[str, Any] = {
    "relay_url": "http://127.0.0.1:3000",
    "profile": "faq",
    "mode": "mock",
    "started_at": "2026-11-28T00:00:00+00:00",
    "duration_s": 1.5,
    "summary": {"passed": 1, "failed": 1, "skipped": 1, "deviations": 1},
    "cases": [
        _case("auth.funded-key-works", "passed"),
        _case("auth.refused[invalid_key]", "failed", FAILURE.splitlines()[0], FAILURE),
        _case("quota.exhausted", "deviation", "one-api answers 401 for an exhausted token"),
        _case("rate_limits.retry-after", "skipped", "the relay has no limiter"),
    ],
}
LOAD: dict[str, Any] = {
    "host": "http://127.0.0.1:3000",
    "users": 5,
    "duration_s": 10.0,
    "scenario": "StreamingChatUser",
    "requests": {"ok": 100, "rate_limited": 0, "total": 100},
    "error_rate": 0.0,
    "ttft_ms": {"p50": 101.5, "p90": 110.0, "p99": 120.25, "max": 130.0, "count": 100},
    "itl_ms": {"p50": 10.0, "p90": 10.5, "p99": 12.0, "max": 20.0, "count": 3100},
    "output_tokens_per_s": 320.0,
    "latency_valid": True,
    "self_check": {"latency_valid": True, "reasons": []},
    "slo": [{"rule": "ttft_p99_ms<=500", "observed": 120.25, "threshold": 500, "passed": True}],
    "rate_limit": {
        "limit": {"requests": 10, "window_s": 1.0, "rps": 10.0},
        "accuracy": 0.95,
        "steps": [{"multiplier": 3.0, "offered_rps": 30, "accepted_rps": 10, "accuracy": 1.0}],
    },
}
# The smallest valid PNG (1x1).
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


class _Refs(html.parser.HTMLParser):
    """Every URL-valued attribute and every CSS url(...) in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data") and value:
                self.refs.append(value)

    def handle_data(self, data: str) -> None:
        self.refs += re.findall(r"url\(([^)]*)\)", data)
        self.refs += re.findall(r"@import\s+([^;]+)", data)


def _page(tmp_path: Path) -> str:
    (tmp_path / "load-ttft-itl-cdf.png").write_bytes(PNG)
    verdict = gate.evaluate(CONFORMANCE, LOAD)
    return render_page(CONFORMANCE, LOAD, plots_dir=tmp_path, verdict=verdict)


def test_page_shows_verdict_failures_deviations_and_skips_separately(tmp_path: Path) -> None:
    page = _page(tmp_path)
    assert "GATE FAILED" in page
    failures = page.index("Failures (1)")
    # issue #10: skipped MUST cases are "not verified", listed right after failures
    not_verified = page.index("Not verified (1)")
    deviations = page.index("Documented deviations (1)")
    skipped = page.index("Skipped, not failing the gate (0)")
    assert failures < not_verified < deviations < skipped
    failure_block = page[failures:not_verified]
    assert "an unknown key is refused with 401" in failure_block
    assert "HTTP 401, error.code &#39;invalid_api_key&#39;" in failure_block
    assert "HTTP 403 application/json" in failure_block
    assert "curl -sS -X POST" in failure_block
    assert "CaseFailure" not in failure_block
    assert "one-api answers 401 for an exhausted token" in page[deviations:skipped]
    assert "the relay has no limiter" in page[not_verified:deviations]
    assert "120.25" in page  # TTFT p99
    assert "CHECK PASSED" in page
    assert "data:image/png;base64," in page


def test_page_masks_keys_and_escapes_html(tmp_path: Path) -> None:
    evil = dict(CONFORMANCE)
    evil["cases"] = [
        *CONFORMANCE["cases"],
        _case("errors.x", "failed", "<script>alert(1)</script>"),
    ]
    page = render_page(evil, LOAD, plots_dir=tmp_path, secrets=[SECRET])
    assert SECRET not in page
    assert "sk-liv…123" in page
    assert "<script>alert(1)</script>" not in page


def test_page_is_self_contained(tmp_path: Path) -> None:
    parser = _Refs()
    parser.feed(_page(tmp_path))
    assert parser.scripts == 0
    external = [r for r in parser.refs if not r.startswith(("data:", "#"))]
    assert external == []


def test_page_without_load_or_conformance(tmp_path: Path) -> None:
    only_conf = render_page(CONFORMANCE, None)
    assert "No load report." in only_conf
    only_load = render_page(None, LOAD, plots_dir=tmp_path)
    assert "No conformance report." in only_load
    write_page(tmp_path / "sub" / "index.html", CONFORMANCE, LOAD)
    assert (tmp_path / "sub" / "index.html").read_text().startswith("<!doctype html>")


# ---------------------------------------------------------------------------------------------
# Headless Chromium (the ``chromium`` fixture of conftest.py)


def test_console_check_can_fail(tmp_path: Path, chromium: ChromiumRender) -> None:
    """The control: a page that logs an error is caught by the console check."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><p>x</p><script>console.error('relaygate-boom')</script>")
    console = chromium(bad, tmp_path / "bad.png", height=300)
    assert any("relaygate-boom" in line for line in console)


def test_page_renders_in_chromium_without_console_messages(
    tmp_path: Path, chromium: ChromiumRender
) -> None:
    page = write_page(
        tmp_path / "index.html",
        CONFORMANCE,
        LOAD,
        plots_dir=tmp_path,
        verdict=gate.evaluate(CONFORMANCE, LOAD),
    )
    shot = tmp_path / "page.png"
    console = chromium(page, shot)
    assert console == []
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert shot.stat().st_size > 20_000  # a blank page is ~5 KB


# ---------------------------------------------------------------------------------------------
# Nothing left out silently (issue #10, issue #15 item 8)

SKIPS: dict[str, Any] = {
    **CONFORMANCE,
    "cases": [
        *CONFORMANCE["cases"],
        _case("quota.formula[gpt-4]", "skipped", "needs ground truth: pass --upstream-url"),
        _case("quota.formula[gpt-4o]", "skipped", "needs ground truth: pass --upstream-url"),
        _case("auth.cors", "skipped", "profile: this relay documents no CORS support"),
    ],
}


def _text(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_not_verified_is_counted_and_listed_right_after_failures() -> None:
    verdict = gate.evaluate(SKIPS, None, allow_skips=["profile"])
    text = _text(render_page(SKIPS, None, verdict=verdict))
    assert "1 failed 3 not verified" in text  # the headline pills
    assert "3 MUST cases not verified (skipped: 2 live, 1 other;" in text  # the banner
    block = text[text.index("Not verified (3)") : text.index("Documented deviations")]
    assert "2 × [live] needs ground truth: pass --upstream-url" in block
    assert "quota.formula[gpt-4] quota.formula[gpt-4o]" in block
    assert "1 × [other] the relay has no limiter" in block
    assert "Nothing was checked in rate_limits" in block
    other = text[text.index("Skipped, not failing the gate (1)") :]
    assert "1 × [profile] profile: this relay documents no CORS support" in other
    assert "allowed by --allow-skip profile" in other
    # the area table has a column for it: Quota and billing has 2 not verified
    assert re.search(r"Quota and billing \(F6[^)]*\) 0 0 2 1 2", text)


def test_without_a_verdict_the_page_judges_with_nothing_allowed() -> None:
    text = _text(render_page(SKIPS, None))
    assert "no verdict (reports only)" in text
    assert "Not verified (4)" in text and "Skipped, not failing the gate (0)" in text


PROBER_LOAD: dict[str, Any] = {
    **LOAD,
    "scenario": "RateLimitUser,StreamingChatUser",
    "rate_limit": {**LOAD["rate_limit"], "requests": 479, "rate_limited": 228},
}


def test_the_prober_traffic_has_its_own_row_and_the_plot_says_so(tmp_path: Path) -> None:
    (tmp_path / "load-over-time.png").write_bytes(PNG)
    page = render_page(CONFORMANCE, PROBER_LOAD, plots_dir=tmp_path)
    row = page[page.index('<tr id="prober-row">') :]
    row = _text(row[: row.index("</tr>")])
    assert row == "429 prober – – – 228 – – – – 479"
    text = _text(page)
    assert "load users 100 – – 0 – – – – 100" in text
    assert "they are counted in its own row, not in the load users' row" in text
    assert "load users only: the 429 prober's 479 requests (228 answered 429)" in text
    # without a prober run there is no row and no note
    assert "prober-row" not in render_page(CONFORMANCE, LOAD)


def test_two_relay_addresses_are_named_in_one_line_and_masked() -> None:
    elsewhere = {**LOAD, "host": f"http://127.0.0.1:4000/?key={SECRET}"}
    page = render_page(CONFORMANCE, elsewhere)
    assert SECRET not in page
    text = _text(page)
    line = (
        "The load run targeted http://127.0.0.1:4000/?key=sk-liv…123, not the relay the "
        "conformance suite checked (http://127.0.0.1:3000): the two results are about "
        "different relay instances."
    )
    assert line in text
    # with a verdict the line is there once (the verdict's note is not repeated)
    with_verdict = _text(
        render_page(CONFORMANCE, elsewhere, verdict=gate.evaluate(None, elsewhere))
    )
    assert with_verdict.count("the two results are about different relay instances") == 1
    same = _text(render_page(CONFORMANCE, {**LOAD, "host": "http://127.0.0.1:3000/v1"}))
    assert "different relay instances" not in same
    assert same.count("127.0.0.1:3000") == 1 and "relay: the one above" in same
    assert gate.evaluate(CONFORMANCE, elsewhere).notes[0].startswith("the load run targeted")
