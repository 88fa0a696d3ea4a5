"""Every citation in the project resolves to a file in the repo (docs/spec/).

Code, profiles, cases and docs cite ``RELAY_SPEC §N`` / ``§10.N``, ``LOCUST_BASELINE.md``,
``TOKENIZER.md`` and the FAQ clauses F1-F22. A user must be able to follow each one inside the
repository: this test finds every citation and checks its target exists.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "spec"
SCANNED = ("src", "conformance", "loadtests", "docs", "fixtures", "benchmarks", "examples", "tests")
SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".json", ".sh", ".j2", ".txt"}
SPEC_FILES = ("RELAY_SPEC", "LOCUST_BASELINE", "TOKENIZER", "LOAD_ANCHORS", "STYLE_ANCHORS")

_SECTION = re.compile(r"§\s*(\d+)(?:\.(\d+))?(?:\s*-\s*(\d+))?")
_CASE = re.compile(r'@pytest\.mark\.case\(\s*"([^"]+)"(.*?)\n(?:async )?def ', re.S)
_FAQ_ARG = re.compile(r"faq=\(([^)]*)\)")
_FAQ_ROW = re.compile(r"^\| (F\d+) \|", re.M)


def _texts() -> list[tuple[Path, str]]:
    files = [ROOT / "README.md"]
    for top in SCANNED:
        files += [p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in SUFFIXES]
    this = Path(__file__).resolve()
    out = []
    for path in sorted(files):
        if path == this or "__pycache__" in path.parts:
            continue
        try:
            out.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def _relay_spec_targets() -> tuple[set[int], set[int]]:
    text = (SPEC / "RELAY_SPEC.md").read_text(encoding="utf-8")
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", text, re.M)}
    part10 = text.split("## 10.", 1)[1]
    items = {int(n) for n in re.findall(r"^(\d+)\. ", part10, re.M)}
    return sections, items


def _case_faqs() -> dict[str, list[str]]:
    """FAQ clause -> ids of the cases citing it, from the case markers."""
    by_clause: dict[str, list[str]] = collections.defaultdict(list)
    for module in sorted((ROOT / "conformance").glob("test_*.py")):
        for match in _CASE.finditer(module.read_text(encoding="utf-8")):
            faq = _FAQ_ARG.search(match.group(2))
            for clause in re.findall(r'"(F\d+)"', faq.group(1) if faq else ""):
                by_clause[clause].append(match.group(1))
    return by_clause


def test_no_citation_points_outside_the_repo() -> None:
    bad = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path, text in _texts()
        for line in text.splitlines()
        if re.search(r"shared/(?:research|seed|design)|FAQ-CLAUSES|\bseed/", line)
    ]
    assert not bad, "citations of files that are not in the repo:\n" + "\n".join(bad)


def test_every_spec_file_cited_exists() -> None:
    missing = []
    for path, text in _texts():
        for name in SPEC_FILES:
            if re.search(rf"\b{name}(?:\.md)?\b", text) and not (SPEC / f"{name}.md").is_file():
                missing.append(f"{path.relative_to(ROOT)} cites {name}")
    assert not missing, "\n".join(missing)


def test_every_relay_spec_section_cited_exists() -> None:
    sections, items = _relay_spec_targets()
    assert sections == set(range(1, 11)) and items == set(range(1, 43))
    bad = []
    for path, text in _texts():
        for line in text.splitlines():
            if "RELAY_SPEC" not in line:
                continue
            for sec, item, upto in _SECTION.findall(line):
                ok = int(sec) in sections
                if item:
                    ok = ok and int(sec) == 10 and int(item) in items
                    ok = ok and (not upto or int(upto) in items)
                if not ok:
                    bad.append(f"{path.relative_to(ROOT)}: §{sec}{'.' + item if item else ''}")
    assert not bad, "RELAY_SPEC citations with no such section:\n" + "\n".join(bad)


def test_locust_baseline_quoted_sections_exist() -> None:
    baseline = (SPEC / "LOCUST_BASELINE.md").read_text(encoding="utf-8")
    bad = []
    for path, text in _texts():
        for quoted in re.findall(r'LOCUST_BASELINE\.md[`]?,\s*"([^"]+)"', text):
            if quoted not in baseline:
                bad.append(f"{path.relative_to(ROOT)}: {quoted!r}")
    assert not bad, "\n".join(bad)


def test_every_faq_clause_cited_by_a_case_is_in_the_spec() -> None:
    rows = set(_FAQ_ROW.findall((SPEC / "FAQ.md").read_text(encoding="utf-8")))
    assert rows == {f"F{n}" for n in range(1, 23)}
    cited = set(_case_faqs())
    assert cited, "no case cites a FAQ clause: the marker pattern no longer matches"
    assert cited <= rows, f"cases cite clauses the spec lacks: {sorted(cited - rows)}"


def test_cases_per_clause_list_matches_the_suite() -> None:
    faq = (SPEC / "FAQ.md").read_text(encoding="utf-8")
    block = faq.split("<!-- cases-per-clause:start -->", 1)[1].split("<!-- cases-per-clause:end")[0]
    listed = {
        clause: sorted(re.findall(r"`([^`]+)`", ids))
        for clause, ids in re.findall(r"^- \*\*(F\d+)\*\*: (.*)$", block, re.M)
    }
    actual = {clause: sorted(set(ids)) for clause, ids in _case_faqs().items()}
    if listed != actual:
        expected = "\n".join(
            f"- **{c}**: " + ", ".join(f"`{i}`" for i in actual[c])
            for c in sorted(actual, key=lambda c: int(c[1:]))
        )
        pytest.fail(
            "docs/spec/FAQ.md's cases-per-clause list is stale; it should read:\n" + expected
        )


def test_spec_links_resolve() -> None:
    bad = []
    for page in SPEC.glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                bad.append(f"{page.name}: {target}")
    assert not bad, "\n".join(bad)
