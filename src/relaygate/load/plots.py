"""PNG plots of a run, written next to the summary. matplotlib is imported lazily (Agg).

* ``load-ttft-itl-cdf.png``: CDFs of TTFT and ITL (ok streams)
* ``load-over-time.png``: per second: outcomes (ok / 429 / other) and mean/max TTFT
* ``load-rate-limit.png``: per offered-load step: accepted rate and 429 share vs offered rate
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relaygate.load import outcomes
from relaygate.load.metrics import Registry

__all__ = ["write_plots"]


def write_plots(
    registry: Registry, summary: Mapping[str, Any], report_dir: str | os.PathLike[str]
) -> list[Path]:
    """Write the plots that have data; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(report_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    cdfs = [(n, registry.hists.get(n)) for n in ("ttft_ms", "itl_ms")]
    if any(h is not None and h.count for _, h in cdfs):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, (name, hist) in zip(axes, cdfs, strict=True):
            if hist is not None and hist.count:
                points = hist.cdf()
                ax.step([x for x, _ in points], [y for _, y in points], where="post")
            ax.set_xlabel(f"{name.replace('_ms', '')} (ms)")
            ax.set_ylabel("fraction of samples")
            ax.grid(alpha=0.3)
        fig.suptitle("TTFT and ITL CDFs (ok streams)")
        written.append(_save(fig, out_dir / "load-ttft-itl-cdf.png"))
        plt.close(fig)

    if registry.series:
        secs = sorted(registry.series)
        t0 = secs[0]
        xs = [s - t0 for s in secs]
        rows = [registry.series[s] for s in secs]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
        ok = [r.get(outcomes.OK, 0) for r in rows]
        limited = [r.get(outcomes.RATE_LIMITED, 0) for r in rows]
        other = [
            sum(
                r.get(o, 0)
                for o in outcomes.OUTCOMES
                if o not in (outcomes.OK, outcomes.RATE_LIMITED)
            )
            for r in rows
        ]
        top.plot(xs, ok, label="ok/s")
        top.plot(xs, limited, label="429/s")
        top.plot(xs, other, label="other errors/s")
        top.set_ylabel("requests per second")
        top.legend()
        top.grid(alpha=0.3)
        mean = [r["ttft_sum"] / r["ttft_n"] if r.get("ttft_n") else float("nan") for r in rows]
        peak = [r.get("ttft_max", float("nan")) for r in rows]
        bottom.plot(xs, mean, label="TTFT mean")
        bottom.plot(xs, peak, label="TTFT max", alpha=0.6)
        bottom.set_ylabel("ms")
        bottom.set_xlabel("seconds since first request")
        bottom.legend()
        bottom.grid(alpha=0.3)
        written.append(_save(fig, out_dir / "load-over-time.png"))
        plt.close(fig)

    steps = (summary.get("rate_limit") or {}).get("steps")
    if steps:
        offered = [s["offered_rps"] for s in steps]
        fig, left = plt.subplots(figsize=(8, 5))
        left.plot(offered, [s["accepted_rps"] for s in steps], "o-", label="accepted rps")
        limit = (summary.get("rate_limit") or {}).get("limit", {}).get("rps")
        if limit:
            left.axhline(limit, linestyle="--", color="grey", label="limit")
        left.plot(offered, offered, ":", color="lightgrey", label="offered = accepted")
        left.set_xlabel("offered rps")
        left.set_ylabel("accepted rps")
        right = left.twinx()
        right.plot(
            offered,
            [s["rate_limited_share"] or 0 for s in steps],
            "s--",
            color="C3",
            label="429 share",
        )
        right.set_ylabel("429 share")
        right.set_ylim(0, 1)
        left.legend(loc="upper left")
        right.legend(loc="lower right")
        left.grid(alpha=0.3)
        written.append(_save(fig, out_dir / "load-rate-limit.png"))
        plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path
