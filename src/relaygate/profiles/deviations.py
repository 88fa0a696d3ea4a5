"""A relay profile may differ from the ``faq`` baseline only where it says why, and why must
be the relay's own documentation.

Every behavioural field (see :func:`relaygate.profiles.schema.setting`) of a ``role = "relay"``
profile that differs from the baseline must carry a ``deviation`` reason; the report lists each
as an accepted deviation. Each deviation cites the documentation that promises the behaviour
(``doc``, :mod:`relaygate.profiles.citations`): what only the relay's source code shows is a
finding, not a waiver. Configuration (prices, timings, adapter settings) may differ freely.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from relaygate.profiles.rules import CONDITIONS, SECTIONS, ErrorExpectation, Profile
from relaygate.profiles.schema import error, is_behaviour, toml_fields

__all__ = ["check_citations", "check_deviations"]

_NO_CITATION = (
    "a deviation must cite the relay's documentation that promises it: add "
    'doc = "https://…#section" (or "package:<distribution>/<doc file> § Section"); behaviour '
    "that only the source code shows is a finding, not a waiver: remove the deviation instead"
)


def check_citations(profile: Profile, path: Path) -> None:
    """Raise :class:`~relaygate.profiles.schema.ProfileError` for a deviation without a
    documentation citation."""
    for dotted in sorted(profile.deviations):
        if dotted in profile.deviation_docs:
            continue
        section, _, name = dotted.partition(".")
        key = f"errors.{name}.doc" if section == "errors" else f"{section}.deviations.{name}"
        raise error(path, key, _NO_CITATION)


def check_deviations(profile: Profile, baseline: Profile, path: Path) -> None:
    """Raise :class:`~relaygate.profiles.schema.ProfileError` for an undeclared difference."""
    behaviour = [f.name for f in toml_fields(ErrorExpectation) if is_behaviour(f)]
    for condition in CONDITIONS:
        mine, base = profile.errors[condition], baseline.errors[condition]
        differs = [f for f in behaviour if getattr(mine, f) != getattr(base, f)]
        # Wording may vary (a suffix around the upstream's message is a dialect), but a relay
        # that drops the upstream's message altogether changes what the client learns.
        if mine.upstream_message == "replaced" != base.upstream_message:
            differs.append("upstream_message")
        if differs and not mine.deviation:
            detail = ", ".join(f"{f} {getattr(mine, f)!r} vs {getattr(base, f)!r}" for f in differs)
            raise error(
                path,
                f"errors.{condition}.deviation",
                f"differs from the faq baseline ({detail}) but no deviation reason is given; "
                'add deviation = "why this relay differs (source)"',
            )
    for section in SECTIONS:
        if section == "billing" and not profile.billing.applicable:
            continue
        mine_rules, base_rules = getattr(profile, section), getattr(baseline, section)
        for field in dataclasses.fields(mine_rules):
            name = field.name
            if not is_behaviour(field) or profile.deviation(f"{section}.{name}"):
                continue
            if getattr(mine_rules, name) != getattr(base_rules, name):
                raise error(
                    path,
                    f"{section}.deviations.{name}",
                    f"{section}.{name} = {getattr(mine_rules, name)!r} differs from the faq "
                    f"baseline ({getattr(base_rules, name)!r}) but no deviation reason is given",
                )
