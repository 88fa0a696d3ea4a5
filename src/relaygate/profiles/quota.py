"""Quota arithmetic: what a request must cost under a profile (F6, F9, RELAY_SPEC §2).

``charge = group_ratio × model_ratio × (prompt + completion × completion_ratio)``, computed
with exact fractions and rounded the relay's way (``ceil`` in one-api, half away from zero in
new-api), never below the minimum charge, and 0 when no token was used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Final, Literal

from relaygate.profiles.schema import NotApplicable, setting

__all__ = ["ROUNDINGS", "BillingRules", "Rounding", "round_quota"]

Rounding = Literal["ceil", "round_half_away", "round_half_even"]
ROUNDINGS: Final[tuple[str, ...]] = ("ceil", "round_half_away", "round_half_even")


def _round_half_away(x: Fraction) -> int:
    # Go's decimal.Round(0) rounds half away from zero (new-api, RELAY_SPEC §2).
    sign = -1 if x < 0 else 1
    return sign * math.floor(abs(x) + Fraction(1, 2))


_ROUNDERS: Final[Mapping[str, Callable[[Fraction], int]]] = MappingProxyType(
    {
        "ceil": math.ceil,
        "round_half_away": _round_half_away,
        "round_half_even": round,  # Fraction.__round__ is banker's rounding
    }
)


def round_quota(raw: Fraction, rounding: str) -> int:
    """``raw`` rounded the way ``rounding`` names (one of :data:`ROUNDINGS`)."""
    return _ROUNDERS[rounding](raw)


@dataclass(frozen=True, kw_only=True)
class BillingRules:
    """Quota arithmetic and how balances are read (F6, F9, RELAY_SPEC §2).

    Prices (ratios), rounding and timings are configuration: a relay profile may set them
    without declaring a deviation. The rest is behaviour.
    """

    applicable: bool = setting(True)
    skip_reason: str | None = setting(None, behaviour=False)
    quota_per_usd: int = setting(500000)
    rounding: Rounding = setting(behaviour=False)  # F9: "rounding per profile"
    min_charge: int = setting(1)
    group_ratio: Mapping[str, Fraction] = setting(behaviour=False)
    model_ratio: Mapping[str, Fraction] = setting(behaviour=False)
    completion_ratio: Mapping[str, Fraction] = setting(behaviour=False)
    default_completion_ratio: Fraction = setting(Fraction(1), behaviour=False)
    unknown_model_ratio: Fraction | None = setting(None, behaviour=False)
    unlimited_tracks_used: bool = setting(True)
    settle: Literal["sync", "async"] = setting("sync", behaviour=False)
    settle_timeout_s: float = setting(5.0, behaviour=False)
    poll_interval_s: float = setting(0.1, behaviour=False)
    balance_source: Literal["billing_endpoints", "admin_logs", "none"] = setting()
    hard_limit_usd: Literal["total_granted", "remaining"] = setting("total_granted")
    usage_unit: Literal["cents", "usd"] = setting("cents")
    unlimited_hard_limit_usd: Fraction | None = setting(None, behaviour=False)
    billed_model: Literal["original", "mapped"] = setting("original", behaviour=False)

    def require_applicable(self) -> None:
        """Raise :class:`NotApplicable` when the relay has no quota semantics."""
        if not self.applicable:
            raise NotApplicable(self.skip_reason or "billing is not applicable to this relay")

    def ratio_for(self, model: str) -> Fraction:
        """The model ratio; unknown models use ``unknown_model_ratio`` or raise LookupError."""
        if model in self.model_ratio:
            return self.model_ratio[model]
        if self.unknown_model_ratio is not None:
            return self.unknown_model_ratio
        raise LookupError(
            f"model {model!r} has no model ratio in this profile and the relay refuses unpriced "
            f"models; known: {', '.join(sorted(self.model_ratio))}"
        )

    def raw_quota(self, model: str, group: str, prompt: int, completion: int) -> Fraction:
        """The unrounded charge ``group × model × (prompt + completion × completion_ratio)``."""
        if group not in self.group_ratio:
            raise LookupError(
                f"group {group!r} has no group ratio; known: {', '.join(sorted(self.group_ratio))}"
            )
        completion_ratio = self.completion_ratio.get(model, self.default_completion_ratio)
        return (
            self.group_ratio[group]
            * self.ratio_for(model)
            * (Fraction(prompt) + Fraction(completion) * completion_ratio)
        )

    def quota_for(self, model: str, group: str, prompt: int, completion: int) -> int:
        """The exact expected charge in quota units (rounding and minimum per profile)."""
        self.require_applicable()
        if prompt < 0 or completion < 0:
            raise ValueError("token counts cannot be negative")
        if prompt + completion == 0:
            # Both relays refund everything when no token was used (RELAY_SPEC §2).
            return 0
        raw = self.raw_quota(model, group, prompt, completion)
        rounded = round_quota(raw, self.rounding)
        if raw > 0 and rounded < self.min_charge:
            return self.min_charge
        return rounded
