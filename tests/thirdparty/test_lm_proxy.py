"""LM-Proxy driver and profile (offline: no install, no network)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from relaygate.profiles import SECURITY_RULES, load_profile
from relaygate.thirdparty import get_driver
from relaygate.thirdparty.base import fixture_dir
from relaygate.thirdparty.lm_proxy import KEYS, LMProxyDriver

UPSTREAM = "http://127.0.0.1:40121"


def _prepare(tmp_path: Path, configuration: str = "default") -> tuple[dict, object]:
    plan = LMProxyDriver().prepare(
        tmp_path / "install",
        tmp_path / "run",
        port=4321,
        upstream_url=UPSTREAM + "/",
        upstream_key="sk-up",
        configuration=configuration,
    )
    text = (tmp_path / "run" / "config.toml").read_text()
    assert "{{" not in text
    return tomllib.loads(text), plan


def test_registered_and_pinned() -> None:
    driver = get_driver("lm-proxy")
    assert isinstance(driver, LMProxyDriver)
    assert driver.version == "3.3.2"
    assert driver.profile == "lm-proxy"


def test_configurations_are_documented_rows() -> None:
    driver = LMProxyDriver()
    assert [c.name for c in driver.configurations] == ["default", "wildcard"]
    for configuration in driver.configurations:
        # The README shipped in the package (its PyPI description), with the section.
        assert configuration.docs.startswith("package:lm-proxy/")
        assert " § " in configuration.docs and ".py" not in configuration.docs
        assert configuration.profile is None  # nothing in the profile differs


def test_profile_loads_with_documented_deviations() -> None:
    profile = load_profile("lm-proxy")
    assert profile.role == "relay"
    assert profile.admin.adapter == "static"
    assert not profile.billing.applicable
    for condition in ("expired_key", "disabled_key", "token_quota_exhausted"):
        assert not profile.expect(condition).applicable
        assert profile.deviation(f"errors.{condition}")
    # Undocumented answers are not waived: 403 for a bad key, 502 for every upstream error,
    # no usage chunk, no CORS (findings in docs/relays/lm-proxy.md).
    assert profile.expect("invalid_key").status == 401
    for condition in (
        "missing_key",
        "invalid_key",
        "upstream_4xx",
        "upstream_429",
        "upstream_5xx_json",
        "upstream_auth",
        "no_channel",
        "invalid_json",
    ):
        assert profile.deviation(f"errors.{condition}") is None
    # Its RateLimiter limits every key alike (README "Rate Limiter"): no key is limited alone,
    # and the rate-limit cases skip with that cited reason.
    assert not profile.rate_limit.relay_limiter
    assert "Rate Limiter" in (profile.deviation("rate_limit.relay_limiter") or "")
    assert profile.stream.usage_chunk == "iff_requested"
    assert profile.http.cors
    assert set(profile.security) == set(SECURITY_RULES)


def test_is_installed_looks_for_the_pinned_dist_info(tmp_path: Path) -> None:
    driver = LMProxyDriver()
    assert not driver.is_installed(tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "lm_proxy-3.3.1.dist-info").mkdir(parents=True)
    assert not driver.is_installed(tmp_path)
    (site / "lm_proxy-3.3.2.dist-info").mkdir()
    assert driver.is_installed(tmp_path)


def test_prepare_renders_a_loopback_config_with_every_key(tmp_path: Path) -> None:
    config, plan = _prepare(tmp_path)
    run_dir = tmp_path / "run"
    assert config["host"] == "127.0.0.1"
    assert config["port"] == 4321
    for connection in config["connections"].values():
        assert connection == {
            "api_type": "open_ai",
            "api_base": UPSTREAM + "/v1",
            "api_key": "sk-up",
        }
    # Exact names only: no catch-all that would remap an unknown model.
    assert not [pattern for pattern in config["routing"] if "*" in pattern or "?" in pattern]
    assert config["routing"]["gpt-4o-mini"] == "mock_mini.*"
    groups = config["groups"]
    assert groups["default"]["api_keys"] == [KEYS["FUNDED"]]
    assert groups["mini_only"] == {
        "api_keys": [KEYS["MODEL_RESTRICTED"]],
        "allowed_connections": "mock_mini",
    }
    # No handler of ours: LM-Proxy's documented RateLimiter limits every key alike, so no key
    # is in state RATE_LIMITED (the rate-limit cases skip with that reason).
    assert "before" not in config
    assert set(KEYS) == {"FUNDED", "MODEL_RESTRICTED"}
    assert not list(run_dir.glob("*.py"))
    assert not list(fixture_dir("lm-proxy").glob("*.py"))

    assert plan.cwd == run_dir
    assert plan.argv[0] == str(tmp_path / "install" / "venv" / "bin" / "python")
    assert plan.argv[1:3] == ["-m", "lm_proxy"]
    assert plan.argv[plan.argv.index("--config") + 1] == str(run_dir / "config.toml")
    assert plan.argv[plan.argv.index("--env") + 1] == ""  # no .env is loaded
    assert plan.env["USE_DOT_ENV"] == "false"
    assert plan.base_url == "http://127.0.0.1:4321/v1"
    assert plan.health_url == "http://127.0.0.1:4321/openapi.json"
    assert dict(plan.keys) == KEYS
    assert list(plan.load_args) == []


def test_prepare_wildcard_uses_the_readme_patterns(tmp_path: Path) -> None:
    config, plan = _prepare(tmp_path, "wildcard")
    assert config["host"] == "127.0.0.1"
    # README "Quick Start" / "Dynamic Model Routing": specific pattern first, then "gpt*", then
    # the fallback "*" to one fixed model; first match wins, so the order is the point.
    assert list(config["routing"].items()) == [
        ("gpt-4o-mini", "mock_mini.*"),
        ("gpt*", "mock.*"),
        ("*", "mock.gpt-3.5-turbo"),
    ]
    assert config["groups"]["mini_only"]["allowed_connections"] == "mock_mini"
    assert dict(plan.keys) == KEYS


def test_prepare_refuses_an_unknown_configuration(tmp_path: Path) -> None:
    with pytest.raises((KeyError, ValueError), match="nope"):
        _prepare(tmp_path, "nope")
    assert not (tmp_path / "run" / "config.toml").exists()
