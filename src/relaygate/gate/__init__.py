"""The release gate: judge saved reports and answer with an exit code a CI job can use.

The command is ``relaygate gate`` (:mod:`relaygate.cli.gate`, a thin shell around this package)::

    relaygate gate --conformance reports/conformance.json --load reports/load-summary.json \\
                   [--slo 'ttft_p99_ms<=800' ...] [--allow-deviations] \\
                   [--allow-skip AREA|CLASS|ID-GLOB ...] [--json]

Exit codes: 0 the gate passed, 1 it failed, 2 the input was unusable (no report given, a file
missing, not JSON or not a relaygate report, an ``--slo`` rule that does not parse, an
``--allow-skip`` value that is no area, skip class or case id pattern, ``--slo`` without a load
summary or ``--allow-skip`` without a conformance report).

A pass needs evidence: a skipped case was not verified. What fails the gate (each is a line of
:attr:`Verdict.reasons`):

* a conformance case whose outcome is anything but ``passed``, ``skipped`` or ``deviation``
  (``failed``, and any outcome this version does not know, e.g. an error);
* a ``deviation`` (behaviour the profile documents as different from the FAQ/OpenAI) unless
  ``allow_deviations``;
* a skipped MUST-level case ("not verified") unless ``allow_skips`` names its area, its skip
  class (``live``, ``key``, ``profile``, ``other``: see
  :data:`relaygate.suite.results.SKIP_CLASSES`) or matches its id (fnmatch on the full
  parametrised id or the bare id); skipped SHOULD-level cases never fail, they are listed;
* an area of the report in which no case was executed (passed, failed or deviation) unless
  ``allow_skips`` names the area or every skip in it is of class ``profile`` (the relay has no
  such feature);
* a conformance report without a single case, or without a single executed case ("nothing was
  checked"), whatever ``allow_skips`` says;
* an SLO result of the load run (the summary's ``slo`` list) that did not pass, and an extra
  rule (``slos``) that does not hold against the summary's numbers; a metric the summary does
  not hold fails ("not measured"), as it does in Locust;
* latency percentiles the load run's self-check marked invalid (the harness was the
  bottleneck) when any latency rule (a metric in ms) is judged;
* a load report with no SLO to judge it by (neither in the summary nor given here).

Other code calls :func:`evaluate` and :func:`render` (the demo, the report page). Everything
echoed from a report goes through :func:`relaygate.keys.mask_secrets`. The package's rooms:
:mod:`~relaygate.gate.verdict` (the verdict as data), :mod:`~relaygate.gate.reports` (reading
and shape-checking a report), :mod:`~relaygate.gate.judging` (:func:`evaluate`),
:mod:`~relaygate.gate.rendering` (:func:`render`).

Exceptions: :class:`GateInputError` (a ``ValueError``) - unusable input; the CLI exits 2.
"""

from __future__ import annotations

from relaygate.gate.judging import check_allow_skips, evaluate, relay_mismatch, same_relay
from relaygate.gate.rendering import render, terminal_width
from relaygate.gate.reports import load_report
from relaygate.gate.verdict import (
    EXIT_FAILED,
    EXIT_PASSED,
    EXIT_USAGE,
    CaseLine,
    ConformanceVerdict,
    GateInputError,
    LoadVerdict,
    SkipGroup,
    SLOLine,
    UncheckedArea,
    Verdict,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_PASSED",
    "EXIT_USAGE",
    "CaseLine",
    "ConformanceVerdict",
    "GateInputError",
    "LoadVerdict",
    "SLOLine",
    "SkipGroup",
    "UncheckedArea",
    "Verdict",
    "check_allow_skips",
    "evaluate",
    "load_report",
    "relay_mismatch",
    "render",
    "same_relay",
    "terminal_width",
]
