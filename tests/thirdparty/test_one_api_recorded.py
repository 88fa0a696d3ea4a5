"""one-api and new-api cannot be built or pulled here, so their profiles are checked against
answers derived from their source at the pinned tags
(``fixtures/relays/{one-api,new-api}/recorded/pairs.json``, each answer citing path:line).

Each recorded answer goes through the suite's own judge (:func:`check_error`) with the shipped
profile, and must come out with the verdict recorded next to it: ``pass`` (as the faq
baseline), ``deviation``/``skip`` (a difference the relay's documentation promises: the profile
must cite it), or ``finding`` (an undocumented difference: the case fails, and
docs/relays/one-api-new-api.md lists it). A profile edit that contradicts the source, or waives
something without a documentation citation, fails here."""

from __future__ import annotations

import json
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaygate.profiles import load_profile
from relaygate.profiles.rules import CONDITIONS
from relaygate.suite.checks import check_error
from relaygate.suite.client import Exchange
from relaygate.suite.failures import CaseFailure

ROOT = Path(__file__).resolve().parents[2]
RELAYS = ("one-api", "new-api")
FINDINGS_DOC = ROOT / "docs" / "relays" / "one-api-new-api.md"
# A source citation: a Go file (or README) at the tag, with a line or a line range.
SOURCE = re.compile(r"^[\w./-]+\.go:\d+(-\d+)?$")


@cache
def recorded(relay: str) -> dict[str, Any]:
    doc = json.loads((ROOT / "fixtures" / "relays" / relay / "recorded" / "pairs.json").read_text())
    assert isinstance(doc, dict)
    return doc


@cache
def raw_profile(relay: str) -> dict[str, Any]:
    with (ROOT / "fixtures" / "profiles" / f"{relay}.toml").open("rb") as fh:
        return tomllib.load(fh)


def _pairs(kind: str) -> list[Any]:
    return [
        pytest.param(relay, pair, id=f"{relay}:{pair.get('condition') or pair.get('rule')}")
        for relay in RELAYS
        for pair in recorded(relay)[kind]
    ]


def _exchange(pair: dict[str, Any]) -> Exchange:
    answer = pair["answer"]
    if "json" in answer:
        body = json.dumps(answer["json"], ensure_ascii=False).encode()
    else:
        body = str(answer.get("text", "")).encode()
    request = pair["request"]
    return Exchange(
        method=request["method"],
        url="http://127.0.0.1:3000" + request["path"],
        status=answer["status"],
        headers=httpx.Headers(answer.get("headers", {})),
        body=body,
        elapsed_s=0.0,
        curl=f"curl -X {request['method']} http://127.0.0.1:3000{request['path']}",
    )


def judge(relay: str, pair: dict[str, Any]) -> tuple[str, str]:
    """What the suite makes of the recorded answer with the shipped profile: (verdict, text)."""
    upstream = pair.get("upstream") or {}
    upstream_error = (upstream.get("json") or {}).get("error")
    try:
        check_error(
            _exchange(pair),
            load_profile(relay),
            pair["condition"],
            f"recorded {pair['condition']}",
            upstream_error=upstream_error,
            upstream_status=upstream.get("status"),
            values=pair.get("values"),
        )
    except CaseFailure as exc:
        return "finding", str(exc)
    except pytest.xfail.Exception as exc:
        return "deviation", str(exc)
    except pytest.skip.Exception as exc:
        return "skip", str(exc)
    return "pass", ""


# --- the recordings themselves ----------------------------------------------------------------


@pytest.mark.parametrize("relay", RELAYS)
def test_every_condition_is_recorded_once(relay: str) -> None:
    conditions = [pair["condition"] for pair in recorded(relay)["errors"]]
    assert sorted(conditions) == sorted(CONDITIONS)


@pytest.mark.parametrize("relay", RELAYS)
def test_recordings_cite_source_lines_at_the_pinned_tag(relay: str) -> None:
    doc = recorded(relay)
    assert re.fullmatch(r"[0-9a-f]{40}", doc["commit"])
    assert doc["image"].endswith(":" + doc["tag"])
    for pair in doc["errors"] + doc["rules"]:
        assert pair["source"], pair
        for cite in pair["source"]:
            assert SOURCE.match(cite), f"{relay} {pair.get('condition') or pair['rule']}: {cite!r}"
        assert pair["verdict"] in ("pass", "deviation", "skip", "finding")
        assert pair["why"]


@pytest.mark.parametrize("relay", RELAYS)
def test_profile_refs_name_the_pinned_tag(relay: str) -> None:
    tag = recorded(relay)["tag"]
    errors = raw_profile(relay)["errors"]
    for condition in CONDITIONS:
        ref = errors[condition].get("ref", "")
        assert re.search(r"\.go:\d+", ref) and ref.endswith(f"@{tag}"), (condition, ref)
    assert tag in raw_profile(relay)["description"]


# --- the profile agrees with the recordings ---------------------------------------------------


@pytest.mark.parametrize(("relay", "pair"), _pairs("errors"))
def test_profile_judges_recorded_answer_as_recorded(relay: str, pair: dict[str, Any]) -> None:
    verdict, text = judge(relay, pair)
    assert verdict == pair["verdict"], (
        f"{relay} {pair['condition']}: the recorded answer (source: {', '.join(pair['source'])}) "
        f"is now judged {verdict!r}, recorded {pair['verdict']!r} ({pair['why']}).\n{text}"
    )


@pytest.mark.parametrize(("relay", "pair"), _pairs("rules"))
def test_profile_rules_agree_with_recorded_behaviour(relay: str, pair: dict[str, Any]) -> None:
    section, field = pair["rule"].split(".")
    mine = getattr(getattr(load_profile(relay), section), field)
    base = getattr(getattr(load_profile("faq"), section), field)
    observed = pair["observed"]
    if mine == observed:
        verdict = "pass" if mine == base else "deviation"
    else:
        # A rule the relay breaks keeps the baseline value, so the case fails (a finding).
        assert mine == base, f"{relay} {pair['rule']} = {mine!r}: not the source's, not the faq's"
        verdict = "finding"
    assert verdict == pair["verdict"], (relay, pair["rule"], mine, observed, pair["why"])


@pytest.mark.parametrize("relay", RELAYS)
def test_waivers_are_exactly_the_documented_ones(relay: str) -> None:
    """The profile waives what the recordings say the relay's documentation promises, each with
    its citation (the loader checks the citation's form), and nothing else."""
    profile = load_profile(relay)
    assert set(profile.deviations) == set(profile.deviation_docs)
    doc = recorded(relay)
    documented = {f"errors.{p['condition']}" for p in doc["errors"] if p["verdict"] != "pass"}
    documented -= {f"errors.{p['condition']}" for p in doc["errors"] if p["verdict"] == "finding"}
    documented |= {p["rule"] for p in doc["rules"] if p["verdict"] == "deviation"}
    assert set(profile.deviations) == documented


@pytest.mark.parametrize("relay", RELAYS)
def test_every_finding_is_documented_with_a_curl(relay: str) -> None:
    text = FINDINGS_DOC.read_text()
    section = text.split(f"<!-- findings:{relay} -->", 1)[1].split("<!-- /findings -->", 1)[0]
    doc = recorded(relay)
    names = [f"errors.{p['condition']}" for p in doc["errors"] if p["verdict"] == "finding"]
    names += [p["rule"] for p in doc["rules"] if p["verdict"] == "finding"]
    for name in names:
        assert f"`{name}`" in section, f"{relay}: finding {name} missing from {FINDINGS_DOC.name}"
    assert section.count("curl ") >= 1


def test_known_corrections_of_the_old_notes() -> None:
    """What reading the source at the tags corrected (docs/spec/RELAY_SPEC.md was wrong)."""
    # one-api: a non-JSON upstream error body leaves the message empty (error.go:88 returns
    # before "bad response status code N" is set); new-api says it.
    html_o = next(p for p in recorded("one-api")["errors"] if p["condition"] == "upstream_5xx_html")
    assert html_o["answer"]["json"]["error"]["message"].startswith(" (request id:")
    # one-api at v0.6.11-preview.7 prices no o3-mini: the unknown-model ratio 30 applies.
    assert "o3-mini" not in load_profile("one-api").billing.model_ratio
    assert load_profile("one-api").quota_for("o3-mini", "default", 10, 20) == 900


def test_findings_no_case_checks_are_said_so() -> None:
    """A finding for a condition no conformance case looks at fails no run: the page says which."""
    cases = "\n".join(p.read_text() for p in (ROOT / "conformance").glob("test_*.py"))
    unchecked = {c for c in CONDITIONS if f'"{c}"' not in cases}
    text = FINDINGS_DOC.read_text()
    note = text.split("<!-- unchecked -->", 1)[1].split("<!-- /unchecked -->", 1)[0]
    named = set(re.findall(r"`errors\.([a-z_0-9]+)`", note))
    findings = {
        p["condition"] for r in RELAYS for p in recorded(r)["errors"] if p["verdict"] == "finding"
    }
    assert named == unchecked & findings
