"""LM-Proxy driver and profile (offline: no install, no network)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from relaygate.profiles import SECURITY_RULES, load_profile
from relaygate.thirdparty import get_driver
from relaygate.thirdparty.base import fixture_dir
from relaygate.thirdparty.lm_proxy import KEYS, RATE_LIMIT, LMProxyDriver

UPSTREAM = "http://127.0.0.1:40121"


def test_registered_and_pinned() -> None:
    driver = get_driver("lm-proxy")
    assert isinstance(driver, LMProxyDriver)
    assert driver.version == "3.3.2"
    assert driver.profile == "lm-proxy"


def test_profile_loads_with_documented_deviations() -> None:
    profile = load_profile("lm-proxy")
    assert profile.role == "relay"
    assert profile.admin.adapter == "static"
    assert not profile.billing.applicable
    assert profile.rate_limit.relay_limiter
    assert profile.rate_limit.per_key_limit == RATE_LIMIT
    assert profile.rate_limit.retry_after_header
    for condition in ("expired_key", "disabled_key", "token_quota_exhausted"):
        assert not profile.expect(condition).applicable
        assert profile.deviation(f"errors.{condition}")
    assert profile.expect("invalid_key").status == 403
    assert profile.deviation("errors.invalid_key")
    # Not waived: a client or rate error turned into a 502, FastAPI's own 4xx/5xx answers.
    for condition in ("upstream_4xx", "upstream_429", "no_channel", "invalid_json"):
        assert profile.deviation(f"errors.{condition}") is None
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
    install, run_dir = tmp_path / "install", tmp_path / "run"
    plan = LMProxyDriver().prepare(
        install, run_dir, port=4321, upstream_url=UPSTREAM + "/", upstream_key="sk-up"
    )
    text = (run_dir / "config.toml").read_text()
    assert "{{" not in text
    config = tomllib.loads(text)
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
    assert groups["rate_limited"]["api_keys"] == [KEYS["RATE_LIMITED"]]
    [limiter] = config["before"]
    assert limiter["group"] == "rate_limited"
    assert (limiter["max_requests"], limiter["window_seconds"]) == (2, 1)
    assert limiter["per"] == "api_key"

    hook = run_dir / "relaygate_lm_proxy_hooks.py"
    assert hook.read_text() == (fixture_dir("lm-proxy") / hook.name).read_text()
    ast.parse(hook.read_text())

    assert plan.cwd == run_dir
    assert plan.argv[0] == str(install / "venv" / "bin" / "python")
    assert plan.argv[1:3] == ["-m", "lm_proxy"]
    assert plan.argv[plan.argv.index("--config") + 1] == str(run_dir / "config.toml")
    assert plan.argv[plan.argv.index("--env") + 1] == ""  # no .env is loaded
    assert plan.env["USE_DOT_ENV"] == "false"
    assert plan.env["PYTHONPATH"] == str(run_dir)  # the hook module is importable
    assert plan.base_url == "http://127.0.0.1:4321/v1"
    assert plan.health_url == "http://127.0.0.1:4321/openapi.json"
    assert dict(plan.keys) == KEYS
    assert list(plan.load_args) == ["--rl-key", KEYS["RATE_LIMITED"], "--rate-limit", RATE_LIMIT]
