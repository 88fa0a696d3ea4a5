"""The FAQ's billing formula (F9), computed exactly.

``quota = ceil(group_ratio × model_ratio × (prompt + completion × completion_ratio))``, at least
1 when any token was used and 0 when none was. Ratios are decimal numbers written by people
(``1.33``); they are turned into :class:`fractions.Fraction` from their decimal text, never
through binary floating point, so ``1.33 × 100`` is exactly 133.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

__all__ = [
    "DEFAULT_COMPLETION_RATIO",
    "DEFAULT_GROUP_RATIO",
    "DEFAULT_MODEL_RATIO",
    "QUOTA_PER_USD",
    "Ratio",
    "RatioError",
    "format_ratio",
    "parse_ratio",
    "quota_for",
]

#: Quota units per US dollar (F6).
QUOTA_PER_USD = 500_000

#: A ratio as an admin may write it: a number or a decimal string.
Ratio = int | float | str | Decimal | Fraction

#: Built-in ratios: F9 for gpt-3.5-turbo's completion ratio, one-api's table for the rest.
DEFAULT_MODEL_RATIO: dict[str, str] = {
    "gpt-3.5-turbo": "0.75",
    "gpt-4": "15",
    "gpt-4o": "2.5",
    "gpt-4o-mini": "0.075",
}
DEFAULT_COMPLETION_RATIO: dict[str, str] = {
    "gpt-3.5-turbo": "1.33",
    "gpt-4": "2",
    "gpt-4o": "4",
    "gpt-4o-mini": "4",
}
DEFAULT_GROUP_RATIO: dict[str, str] = {"default": "1", "vip": "1", "svip": "1"}


class RatioError(ValueError):
    """A ratio that is not a finite, non-negative decimal number."""


def parse_ratio(value: Ratio) -> Fraction:
    """Exact value of a ratio; floats are read through their shortest repr (1.33 -> 133/100)."""
    if isinstance(value, bool):
        raise RatioError(f"ratio must be a number or decimal string, got {value!r}")
    try:
        if isinstance(value, Fraction):
            exact = value
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise RatioError(f"ratio must be finite, got {value!r}")
            exact = Fraction(repr(value))
        elif isinstance(value, int | Decimal):
            exact = Fraction(value)
        elif isinstance(value, str):
            exact = Fraction(value.strip())
        else:
            raise RatioError(f"ratio must be a number or decimal string, got {value!r}")
    except (ValueError, ArithmeticError) as exc:
        raise RatioError(f"ratio must be a decimal number, got {value!r}") from exc
    if exact < 0:
        raise RatioError(f"ratio must not be negative, got {value!r}")
    return exact


def format_ratio(value: Fraction) -> str:
    """Shortest exact decimal text of a ratio (falls back to ``p/q`` when none exists)."""
    if value.denominator == 1:
        return str(value.numerator)
    digits = Decimal(value.numerator) / Decimal(value.denominator)
    if Fraction(digits) == value:
        return format(digits.normalize(), "f")
    return f"{value.numerator}/{value.denominator}"


def quota_for(
    prompt: int,
    completion: int,
    group_ratio: Ratio,
    model_ratio: Ratio,
    completion_ratio: Ratio,
    *,
    rounding: str = "ceil",
) -> int:
    """Quota charged for ``prompt`` + ``completion`` tokens (F9), exactly.

    ``rounding`` is ``"ceil"`` (the FAQ's, one-api's) or ``"half_even"`` (only used by the
    ``round_billing`` fault switch). The result is 0 when no token was used, 0 for a free
    (ratio 0) model as in one-api, and at least 1 otherwise.
    """
    if prompt < 0 or completion < 0:
        raise ValueError(f"token counts must not be negative: {prompt=}, {completion=}")
    if prompt + completion == 0:
        return 0
    group, model, completion_r = (
        parse_ratio(group_ratio),
        parse_ratio(model_ratio),
        parse_ratio(completion_ratio),
    )
    # group × model × (prompt + completion × completion_ratio) as one fraction of integers:
    # exact, and a tenth of the cost of Fraction arithmetic (it runs before every forward).
    numerator = (
        group.numerator
        * model.numerator
        * (prompt * completion_r.denominator + completion * completion_r.numerator)
    )
    denominator = group.denominator * model.denominator * completion_r.denominator
    if numerator == 0:
        return 0
    if rounding == "ceil":
        quota = -(-numerator // denominator)
    elif rounding == "half_even":
        quota = round(Fraction(numerator, denominator))
    else:
        raise ValueError(f"rounding must be 'ceil' or 'half_even', got {rounding!r}")
    return max(quota, 1)
