"""A relay profile without a relay-side limiter: the rate-limit cases skip with the profile's
cited reason (issue #13: a state the relay cannot express skips with that reason), not with a
bare "no rate limiter" that LM-Proxy's own RateLimiter would contradict."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from relaygate.profiles import load_profile

CASES = Path(__file__).resolve().parents[2] / "conformance" / "test_rate_limits.py"


def _limited_key_fixture() -> Callable[..., object]:
    spec = importlib.util.spec_from_file_location("relaygate_rate_limit_cases", CASES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.limited_key.__wrapped__


@pytest.mark.parametrize(
    ("profile", "cause"),
    [
        ("lm-proxy", "no key can be rate-limited on its own"),
        ("openai-forward-quickstart", "the quick start configures no request limit"),
    ],
)
def test_skip_names_the_cited_reason(profile: str, cause: str) -> None:
    with pytest.raises(pytest.skip.Exception) as skipped:
        _limited_key_fixture()(SimpleNamespace(), load_profile(profile))
    text = str(skipped.value)
    assert "no relay-side rate limiter" in text
    assert cause in text and "(docs: " in text
