"""openai-forward driver and profile (offline: no install, no network)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from relaygate.profiles import SECURITY_RULES, load_profile
from relaygate.thirdparty import get_driver
from relaygate.thirdparty.openai_forward import KEYS, RATE_LIMIT, OpenAIForwardDriver

UPSTREAM = "http://127.0.0.1:40121"


def _env(path: Path) -> dict[str, str]:
    """The KEY=value lines of a rendered .env (comments and blanks skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def test_registered_and_pinned() -> None:
    driver = get_driver("openai-forward")
    assert isinstance(driver, OpenAIForwardDriver)
    assert driver.version == "0.8.1"
    assert driver.profile == "openai-forward"


def test_configurations_are_documented_rows() -> None:
    driver = OpenAIForwardDriver()
    assert [c.name for c in driver.configurations] == ["default", "quickstart"]
    for configuration in driver.configurations:
        # The relay's own documentation presents it (a doc page, never a source file).
        assert configuration.docs.startswith(
            "https://github.com/KenyonY/openai-forward/blob/v0.8.1/"
        )
        assert ".md#" in configuration.docs and ".py" not in configuration.docs
    assert driver.configuration("quickstart").profile == "openai-forward-quickstart"


def test_quickstart_profile_differs_only_in_its_limiter_and_keys() -> None:
    profile, parent = load_profile("openai-forward-quickstart"), load_profile("openai-forward")
    assert profile.extends == "openai-forward"
    assert not profile.rate_limit.relay_limiter
    assert "README_EN.md#quick-start" in (profile.deviation("rate_limit.relay_limiter") or "")
    assert profile.errors == parent.errors
    # no forward keys: the client's key is the upstream's own (bring your own key), cited
    assert profile.auth == dataclasses.replace(parent.auth, client_key_is_provider_key=True)
    waiver = profile.deviation("auth.client_key_is_provider_key") or ""
    assert "README_EN.md#proxy-openai-model" in waiver


def test_profile_loads_with_documented_deviations() -> None:
    profile = load_profile("openai-forward")
    assert profile.role == "relay"
    assert profile.admin.adapter == "static"
    assert not profile.billing.applicable
    assert profile.rate_limit.relay_limiter
    assert profile.rate_limit.per_key_limit == "2/1s"
    for condition in ("expired_key", "disabled_key", "token_quota_exhausted"):
        assert not profile.expect(condition).applicable
        assert profile.deviation(f"errors.{condition}")
    # Pass-through answers are declared as such, with the source that says so.
    assert "upstream" in (profile.deviation("errors.missing_key") or "")
    assert profile.expect("model_not_allowed").status == 403
    # What the relay answers itself keeps the FAQ baseline (no waiver of its 429 or 403 shape).
    assert profile.deviation("errors.model_not_allowed") is None
    assert profile.deviation("errors.rate_limited") is None
    assert profile.deviation("errors.upstream_5xx_html") is None
    # No doc says a 429 comes without Retry-After: not waived (a finding, not a deviation).
    assert profile.rate_limit.retry_after_header
    assert profile.deviation("rate_limit.retry_after_header") is None
    assert set(profile.security) == set(SECURITY_RULES)


def test_is_installed_looks_for_the_pinned_dist_info(tmp_path: Path) -> None:
    driver = OpenAIForwardDriver()
    assert not driver.is_installed(tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "openai_forward-0.8.0.dist-info").mkdir(parents=True)
    assert not driver.is_installed(tmp_path)
    (site / "openai_forward-0.8.1.dist-info").mkdir()
    assert driver.is_installed(tmp_path)


def test_prepare_renders_a_loopback_config_with_every_key(tmp_path: Path) -> None:
    install, run_dir = tmp_path / "install", tmp_path / "run"
    plan = OpenAIForwardDriver().prepare(
        install, run_dir, port=4321, upstream_url=UPSTREAM + "/", upstream_key="sk-up"
    )
    dotenv = run_dir / ".env"
    assert "{{" not in dotenv.read_text()
    env = _env(dotenv)
    assert json.loads(env["FORWARD_CONFIG"]) == [
        {"base_url": UPSTREAM, "route": "/", "type": "openai"}
    ]
    assert json.loads(env["OPENAI_API_KEY_CONFIG"]) == {"sk-up": [0, 1, 2]}
    levels = json.loads(env["FORWARD_KEY_CONFIG"])
    assert levels == {
        KEYS["FUNDED"]: 0,
        KEYS["MODEL_RESTRICTED"]: 1,
        KEYS["RATE_LIMITED"]: 2,
    }
    assert json.loads(env["LEVEL_MODELS"])["1"] == ["gpt-4o-mini"]
    assert json.loads(env["REQ_RATE_LIMIT"]) == {
        "/v1/chat/completions": [{"level": 2, "limit": RATE_LIMIT}]
    }
    # No cache answering for the upstream; the chat log (needed for level checks) stays local.
    assert env["CACHE_OPENAI"] == env["CACHE_GENERAL"] == "false"
    assert env["LOG_OPENAI"] == "true"
    assert all(key.startswith("fk-") for key in KEYS.values())

    assert plan.cwd == run_dir  # .env and Log/ are read and written in the working directory
    assert plan.argv[0] == str(install / "venv" / "bin" / "python")
    assert plan.argv[1:4] == ["-m", "uvicorn", "openai_forward.app:app"]
    host = plan.argv[plan.argv.index("--host") + 1]
    assert host == "127.0.0.1"
    assert plan.argv[plan.argv.index("--port") + 1] == "4321"
    assert plan.base_url == "http://127.0.0.1:4321/v1"
    assert plan.health_url == "http://127.0.0.1:4321/healthz"
    assert dict(plan.keys) == KEYS
    assert "FUNDED" in plan.keys
    assert list(plan.load_args) == ["--rl-key", KEYS["RATE_LIMITED"], "--rate-limit", "2/1s"]


def test_prepare_quickstart_has_no_forward_keys(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    plan = OpenAIForwardDriver().prepare(
        tmp_path / "install",
        run_dir,
        port=4321,
        upstream_url=UPSTREAM,
        upstream_key="sk-up",
        configuration="quickstart",
    )
    env = _env(run_dir / ".env")
    assert json.loads(env["FORWARD_CONFIG"]) == [
        {"base_url": UPSTREAM, "route": "/", "type": "openai"}
    ]
    # `aifd run` without keys: no key, level or limit settings at all.
    for name in ("OPENAI_API_KEY_CONFIG", "FORWARD_KEY_CONFIG", "LEVEL_MODELS", "REQ_RATE_LIMIT"):
        assert name not in env
    assert env["GLOBAL_RATE_LIMIT"] == "inf"
    assert env["CACHE_OPENAI"] == "false"
    # The client's key is the upstream's own; there is no limited key for the 429 prober.
    assert dict(plan.keys) == {"FUNDED": "sk-up"}
    assert list(plan.load_args) == []
    assert plan.argv[plan.argv.index("--host") + 1] == "127.0.0.1"


def test_prepare_refuses_an_unknown_configuration(tmp_path: Path) -> None:
    with pytest.raises((KeyError, ValueError), match="nope"):
        OpenAIForwardDriver().prepare(
            tmp_path / "install",
            tmp_path / "run",
            port=4321,
            upstream_url=UPSTREAM,
            upstream_key="sk-up",
            configuration="nope",
        )
    assert not (tmp_path / "run" / ".env").exists()
