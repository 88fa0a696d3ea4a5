"""The verdict for a terminal: ``GATE PASSED`` / ``GATE FAILED``, the reasons, then what was
judged, wrapped to the terminal's width with nothing cut off and every key masked."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence

from relaygate.gate.verdict import ConformanceVerdict, LoadVerdict, SkipGroup, Verdict, plural
from relaygate.keys import mask_secrets

__all__ = ["render", "terminal_width"]

# What the render shows at most (the JSON verdict has everything).
_MAX_FAILED = 5
_MAX_DEVIATIONS = 4
_MAX_SKIP_GROUPS = 3
_MAX_OTHER_SKIP_GROUPS = 2
# Width of the render when stdout is no terminal (CI logs); a terminal's own width otherwise.
_WIDTH = 100
_MIN_WIDTH = 40


def _wrap(text: str, width: int) -> list[str]:
    """``text`` folded into lines of at most ``width`` characters; nothing is cut off.

    The indentation is kept and continuation lines are indented 4 more; a word longer than a
    line (a URL, a curl) stays whole rather than being broken.
    """
    indent = text[: len(text) - len(text.lstrip(" "))]
    words = " ".join(text.split())
    if not words:
        return [indent.rstrip()]
    return textwrap.wrap(
        words,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent + "    ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _id_list(ids: Sequence[str], *, indent: str, width: int) -> list[str]:
    """As many whole ids as fit on one line, then ``+N more`` (the JSON verdict has them all)."""
    line = indent
    for index, case_id in enumerate(ids):
        rest = len(ids) - index
        piece = case_id if index == 0 else f", {case_id}"
        tail = f", +{rest - 1} more" if rest > 1 else ""
        if len(line) + len(piece) + len(tail) > width and index > 0:
            return [f"{line}, +{rest} more"]
        line += piece
    return [line]


def terminal_width() -> int:
    """Columns of the terminal stdout is (``COLUMNS`` wins); 100 when it is no terminal."""
    return max(_MIN_WIDTH, shutil.get_terminal_size((_WIDTH, 24)).columns)


def render(verdict: Verdict, *, width: int | None = None) -> str:
    """The verdict for a terminal, header ``GATE PASSED`` or ``GATE FAILED``.

    Long lines wrap at ``width`` (default: :func:`terminal_width`); no text is cut off. Long
    lists end in ``... N more`` pointing at the JSON verdict and the report page.
    """
    width = max(_MIN_WIDTH, width or terminal_width())
    lines = ["GATE PASSED" if verdict.passed else "GATE FAILED"]
    for reason in verdict.reasons:
        lines += _wrap(f"  - {reason}", width)
    if verdict.conformance is not None:
        lines += _render_conformance(verdict.conformance, verdict.allow_deviations, width)
    if verdict.load is not None:
        lines += _render_load(verdict.load, width)
    for note in verdict.notes:
        lines += _wrap(f"note: {note}", width)
    return mask_secrets("\n".join(lines))


def _skip_label(group: SkipGroup) -> str:
    return f"{len(group.ids)}x [{group.skip_class or 'other'}] {group.reason}"


def _render_conformance(c: ConformanceVerdict, allow_deviations: bool, width: int) -> list[str]:
    counts = ", ".join(
        plural(n, "deviation") if outcome == "deviation" else f"{n} {outcome}"
        for outcome, n in c.counts.items()
    )
    if c.not_verified:
        counts += f"; {c.not_verified_count} NOT VERIFIED"
    lines = _wrap(
        f"conformance: {c.total} cases ({counts}); profile {c.profile}, mode {c.mode}", width
    )
    lines += _wrap(f"  relay {c.relay_url}", width)
    for case in c.failed[:_MAX_FAILED]:
        label = "FAILED" if case.outcome == "failed" else f"FAILED ({case.outcome})"
        lines += _wrap(f"{label} {case.id}: {case.title or case.reason}", width)
        if case.expected is not None or case.actual is not None:
            expected, actual = case.expected or "?", case.actual or "?"
            lines += _wrap(f"    expected {expected} | actual {actual}", width)
        elif case.reason:
            lines += _wrap(f"    {case.reason}", width)
    if len(c.failed) > _MAX_FAILED:
        lines.append(f"... {len(c.failed) - _MAX_FAILED} more failed (conformance.json/.html)")
    # Not verified comes right after failures: it fails the gate just the same.
    for group in c.not_verified[:_MAX_SKIP_GROUPS]:
        lines += _wrap(f"NOT VERIFIED {_skip_label(group)}", width)
        lines += _id_list(group.ids, indent="    ", width=width)
    if len(c.not_verified) > _MAX_SKIP_GROUPS:
        rest = sum(len(g.ids) for g in c.not_verified[_MAX_SKIP_GROUPS:])
        lines.append(f"... {rest} more not verified for other reasons (--json lists them)")
    label = "DEVIATION (allowed)" if allow_deviations else "DEVIATION"
    for case in c.deviations[:_MAX_DEVIATIONS]:
        lines += _wrap(f"{label} {case.id}: {case.reason}", width)
    if len(c.deviations) > _MAX_DEVIATIONS:
        lines.append(f"... {len(c.deviations) - _MAX_DEVIATIONS} more deviations")
    for area in c.unchecked_areas:
        if area.allowed_by is not None:
            why = "all profile skips" if area.allowed_by == "profile" else "allowed"
            lines += _wrap(f"UNCHECKED AREA {area.area} ({why}: {area.allowed_by})", width)
    others = [(g, f"allowed: {g.allowed_by}") for g in c.allowed_skips]
    others += [(g, "SHOULD") for g in c.should_skips]
    for group, why in others[:_MAX_OTHER_SKIP_GROUPS]:
        lines += _wrap(f"SKIPPED ({why}) {_skip_label(group)}", width)
        lines += _id_list(group.ids, indent="    ", width=width)
    if len(others) > _MAX_OTHER_SKIP_GROUPS:
        rest = sum(len(g.ids) for g, _ in others[_MAX_OTHER_SKIP_GROUPS:])
        lines.append(f"... {rest} more skipped (allowed or SHOULD; --json lists them)")
    return lines


def _render_load(load: LoadVerdict, width: int) -> list[str]:
    facts = [load.scenario]
    if load.requests is not None:
        facts.append(plural(load.requests, "request"))
    if load.users is not None:
        facts.append(plural(load.users, "user"))
    if load.duration_s is not None:
        facts.append(f"{load.duration_s:g} s")
    lines = _wrap(f"load: {', '.join(facts)}; host {load.host}", width)
    for result in load.slos:
        suffix = " [gate]" if result.source == "gate" else ""
        lines += _wrap(result.check_line + suffix, width)
        if result.note:
            lines += _wrap(f"    {result.note}", width)
    if not load.latency_valid:
        for reason in load.latency_reasons or ("the self-check gave no reason",):
            lines += _wrap(f"self-check: latency percentiles INVALID - {reason}", width)
    return lines
