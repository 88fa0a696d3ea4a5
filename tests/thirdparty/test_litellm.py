"""LiteLLM proxy driver and profile (offline: no install, no network)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from relaygate.profiles import SECURITY_RULES, load_profile
from relaygate.thirdparty import get_driver
from relaygate.thirdparty.litellm import KEYS, MASTER_KEY, RATE_LIMIT_RPM, LiteLLMDriver

yaml = pytest.importorskip("yaml")  # a dev dependency; no type stubs

UPSTREAM = "http://127.0.0.1:40121"
MODELS = {"gpt-4o", "gpt-4o-mini", "gpt-4", "gpt-3.5-turbo", "text-embedding-3-small"}


def test_registered_and_pinned() -> None:
    driver = get_driver("litellm")
    assert isinstance(driver, LiteLLMDriver)
    # 1.82.7 and 1.82.8 were compromised releases: the pin is exactly 1.82.6.
    assert driver.version == "1.82.6"
    assert driver.profile == "litellm"


def test_profile_loads_with_documented_deviations() -> None:
    profile = load_profile("litellm")
    assert profile.role == "relay"
    assert profile.admin.adapter == "static"
    assert not profile.billing.applicable
    assert profile.rate_limit.relay_limiter
    assert profile.rate_limit.per_key_limit == f"{RATE_LIMIT_RPM}/60s"
    assert profile.expect("expired_key").status == 400
    assert profile.deviation("errors.expired_key")
    for condition in ("user_disabled", "token_quota_exhausted", "user_quota_exhausted"):
        assert not profile.expect(condition).applicable
        assert profile.deviation(f"errors.{condition}")
    # Undocumented behaviour keeps the FAQ baseline, so the suite reports it as a failure.
    for condition in ("unknown_path", "upstream_200_error", "upstream_4xx", "models_unknown_id"):
        assert profile.deviation(f"errors.{condition}") is None
    assert profile.rate_limit.upstream_retry_after_forwarded
    assert profile.stream.midstream_failure == "error_event"
    assert set(profile.security) == set(SECURITY_RULES)


def test_is_installed_looks_for_the_pinned_dist_info(tmp_path: Path) -> None:
    driver = LiteLLMDriver()
    assert not driver.is_installed(tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "litellm-1.82.8.dist-info").mkdir(parents=True)
    assert not driver.is_installed(tmp_path)
    (site / "litellm-1.82.6.dist-info").mkdir()
    assert driver.is_installed(tmp_path)


def test_prepare_renders_a_loopback_config_with_every_key(tmp_path: Path) -> None:
    install, run_dir = tmp_path / "install", tmp_path / "run"
    plan = LiteLLMDriver().prepare(
        install, run_dir, port=4321, upstream_url=UPSTREAM + "/", upstream_key="sk-up"
    )
    config_text = (run_dir / "config.yaml").read_text()
    hook_text = (run_dir / "custom_auth.py").read_text()
    assert "{{" not in config_text and "{{" not in hook_text
    config = yaml.safe_load(config_text)
    deployments = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert set(deployments) == MODELS
    for name, params in deployments.items():
        assert params == {
            "model": f"openai/{name}",
            "api_base": f"{UPSTREAM}/v1",
            "api_key": "sk-up",
        }
    general = config["general_settings"]
    assert general["master_key"] == MASTER_KEY
    assert general["custom_auth"] == "custom_auth.user_api_key_auth"
    assert "database_url" not in general
    assert config["litellm_settings"]["num_retries"] == 0
    # The hook is valid Python and knows every key the plan hands to the suite.
    ast.parse(hook_text)
    for key in plan.keys.values():
        assert f'"{key}"' in hook_text
    assert f'"rpm_limit": int("{RATE_LIMIT_RPM}")' in hook_text

    argv = list(plan.argv)
    assert argv[0] == str(install / "venv" / "bin" / "litellm")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "4321"
    assert argv[argv.index("--config") + 1] == str(run_dir / "config.yaml")
    assert plan.cwd == run_dir
    assert plan.base_url == "http://127.0.0.1:4321/v1"
    assert plan.health_url == "http://127.0.0.1:4321/health/liveliness"
    # No outbound traffic: the cost map is the bundled one, telemetry off.
    assert plan.env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert argv[argv.index("--telemetry") + 1] == "False"


def test_keys_are_distinct_litellm_style_keys() -> None:
    # No budget-exhausted key: LiteLLM does not enforce a custom-auth key's max_budget.
    assert set(KEYS) == {"FUNDED", "DISABLED", "EXPIRED", "MODEL_RESTRICTED", "RATE_LIMITED"}
    assert len(set(KEYS.values())) == len(KEYS)
    assert MASTER_KEY not in KEYS.values()
    assert all(key.startswith("sk-") for key in (*KEYS.values(), MASTER_KEY))
