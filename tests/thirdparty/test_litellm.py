"""LiteLLM proxy driver, its configurations and profiles (offline: no install, no network)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from relaygate.profiles import SECURITY_RULES, load_profile
from relaygate.thirdparty import get_driver
from relaygate.thirdparty.litellm import (
    DEPLOYMENT_MAX_BUDGET,
    DEPLOYMENT_RPM,
    DEPLOYMENT_TPM,
    KEYS,
    MASTER_KEY,
    RATE_LIMIT_RPM,
    LiteLLMDriver,
)

yaml = pytest.importorskip("yaml")  # a dev dependency; no type stubs

UPSTREAM = "http://127.0.0.1:40121"
MODELS = {"gpt-4o", "gpt-4o-mini", "gpt-4", "gpt-3.5-turbo", "text-embedding-3-small"}
#: the UserAPIKeyAuth fields whose enforcement LiteLLM documents for custom auth
#: (docs/proxy/access_management/custom_auth_permissions, "What gets enforced"), plus a label
DOCUMENTED_KEY_FIELDS = {"key_alias", "rpm_limit", "expires", "models"}


def _render(tmp_path: Path, configuration: str) -> tuple[Any, dict[str, Any], Path]:
    install, run_dir = tmp_path / "install", tmp_path / "run"
    plan = LiteLLMDriver().prepare(
        install,
        run_dir,
        port=4321,
        upstream_url=UPSTREAM + "/",
        upstream_key="sk-up",
        configuration=configuration,
    )
    text = (run_dir / "config.yaml").read_text()
    assert "{{" not in text
    return plan, yaml.safe_load(text), run_dir


def _hook_keys(hook_text: str) -> dict[str, set[str]]:
    """The custom_auth hook's key table: key placeholder/value -> the fields it sets."""
    for node in ast.walk(ast.parse(hook_text)):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "KEYS":
            table = node.value
            assert isinstance(table, ast.Dict)
            fields: dict[str, set[str]] = {}
            for key, value in zip(table.keys, table.values, strict=True):
                assert isinstance(key, ast.Constant) and isinstance(value, ast.Dict)
                fields[str(key.value)] = {
                    str(k.value) for k in value.keys if isinstance(k, ast.Constant)
                }
            return fields
    raise AssertionError("no KEYS table in the hook")


def test_registered_and_pinned() -> None:
    driver = get_driver("litellm")
    assert isinstance(driver, LiteLLMDriver)
    # 1.82.7 and 1.82.8 were compromised releases: the pin is exactly 1.82.6.
    assert driver.version == "1.82.6"
    assert driver.profile == "litellm"


def test_each_configuration_cites_the_litellm_doc_that_presents_it() -> None:
    driver = LiteLLMDriver()
    names = [c.name for c in driver.configurations]
    assert names == ["default", "quickstart", "limits"]
    for configuration in driver.configurations:
        for citation in configuration.docs.split("; "):
            assert citation.startswith("https://docs.litellm.ai/docs/"), citation
            assert "#" in citation, f"{citation}: no section"
        profile = load_profile(configuration.profile or driver.profile)
        assert profile.role == "relay"
    assert driver.configuration("quickstart").profile == "litellm-quickstart"
    assert driver.configuration("limits").profile == "litellm-limits"


def test_an_unknown_configuration_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="nosuch"):
        LiteLLMDriver().prepare(
            tmp_path / "i",
            tmp_path / "r",
            port=1,
            upstream_url=UPSTREAM,
            upstream_key="k",
            configuration="nosuch",
        )


def test_profile_loads_with_documented_deviations() -> None:
    profile = load_profile("litellm")
    assert profile.role == "relay"
    assert profile.admin.adapter == "static"
    assert not profile.billing.applicable
    assert profile.rate_limit.relay_limiter
    assert profile.rate_limit.per_key_limit == f"{RATE_LIMIT_RPM}/60s"
    # No documented way to block a custom-auth key: the state is not expressed, the case skips.
    assert not profile.expect("disabled_key").applicable
    assert "blocked" in (profile.expect("disabled_key").skip_reason or "")
    for condition in ("user_disabled", "token_quota_exhausted", "user_quota_exhausted"):
        assert not profile.expect(condition).applicable
        assert profile.deviation(f"errors.{condition}")
    # Undocumented behaviour keeps the FAQ baseline, so the suite reports it as a failure:
    # 1.82.6's 400 for an expired key, its 401 for a model outside the allow-list, x-api-key,
    # the missing Retry-After-Ms.
    for condition in (
        "expired_key",
        "model_not_allowed",
        "model_missing",
        "unknown_path",
        "upstream_200_error",
        "upstream_4xx",
        "models_unknown_id",
    ):
        assert profile.deviation(f"errors.{condition}") is None, condition
    assert profile.expect("expired_key").status == 401
    assert profile.deviation("auth.x_api_key_accepted") is None
    assert profile.deviation("rate_limit.retry_after_ms_header") is None
    # What LiteLLM's exception-mapping doc promises for an invalid model: 404.
    assert profile.expect("no_channel").status == 404
    assert profile.rate_limit.upstream_retry_after_forwarded
    assert profile.stream.midstream_failure == "error_event"
    assert set(profile.security) == set(SECURITY_RULES)


def test_configuration_profiles_differ_only_in_what_the_configuration_cannot_express() -> None:
    base = load_profile("litellm")
    for name in ("litellm-quickstart", "litellm-limits"):
        profile = load_profile(name)
        assert profile.extends in ("litellm", "litellm-quickstart")
        for condition in ("expired_key", "disabled_key", "model_not_allowed", "rate_limited"):
            expectation = profile.expect(condition)
            assert not expectation.applicable
            assert "database" in (expectation.skip_reason or ""), condition
        assert not profile.rate_limit.relay_limiter
        # Everything the relay answers the same way stays as in the default profile.
        for condition in ("missing_key", "invalid_json", "upstream_timeout", "no_channel"):
            assert profile.expect(condition) == base.expect(condition)


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


def _check_deployments(config: dict[str, Any], **extra: Any) -> None:
    deployments = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert set(deployments) == MODELS
    for name, params in deployments.items():
        assert params == {
            "model": f"openai/{name}",
            "api_base": f"{UPSTREAM}/v1",
            "api_key": "sk-up",
            **extra,
        }
    assert config["litellm_settings"]["num_retries"] == 0
    assert "database_url" not in config["general_settings"]


def test_default_renders_custom_auth_with_documented_key_states_only(tmp_path: Path) -> None:
    plan, config, run_dir = _render(tmp_path, "default")
    _check_deployments(config)
    general = config["general_settings"]
    assert general["master_key"] == MASTER_KEY
    assert general["custom_auth"] == "custom_auth.user_api_key_auth"
    # The two flags the custom-auth docs name for expiry and the key model allow-list.
    assert general["custom_auth_run_common_checks"] is True
    assert config["litellm_settings"]["enable_post_custom_auth_checks"] is True

    hook_text = (run_dir / "custom_auth.py").read_text()
    assert "{{" not in hook_text
    table = _hook_keys(hook_text)
    # Every key the plan hands to the suite is in the hook, and no key state is faked: the hook
    # sets only fields whose enforcement LiteLLM documents for custom auth (no `blocked`).
    assert set(table) == set(plan.keys.values()) - {MASTER_KEY}
    for fields in table.values():
        assert fields <= DOCUMENTED_KEY_FIELDS, fields
    assert "blocked" not in hook_text.split('"""', 2)[2]
    assert set(plan.keys) == {"FUNDED", "EXPIRED", "MODEL_RESTRICTED", "RATE_LIMITED"}
    assert table[KEYS["EXPIRED"]] == {"key_alias", "expires"}
    assert table[KEYS["MODEL_RESTRICTED"]] == {"key_alias", "models"}
    assert table[KEYS["RATE_LIMITED"]] == {"key_alias", "rpm_limit"}
    assert f'"rpm_limit": int("{RATE_LIMIT_RPM}")' in hook_text

    argv = list(plan.argv)
    assert argv[0] == str(tmp_path / "install" / "venv" / "bin" / "litellm")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "4321"
    assert argv[argv.index("--config") + 1] == str(run_dir / "config.yaml")
    assert plan.cwd == run_dir
    assert plan.base_url == "http://127.0.0.1:4321/v1"
    assert plan.health_url == "http://127.0.0.1:4321/health/liveliness"
    # No outbound traffic: the cost map is the bundled one, telemetry off.
    assert plan.env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert argv[argv.index("--telemetry") + 1] == "False"


def test_quickstart_renders_what_the_quick_start_shows(tmp_path: Path) -> None:
    # A run dir left by the default configuration: its hook must not survive.
    _render(tmp_path, "default")
    plan, config, run_dir = _render(tmp_path, "quickstart")
    _check_deployments(config)
    assert config["general_settings"] == {"master_key": MASTER_KEY}
    assert not (run_dir / "custom_auth.py").exists()
    assert dict(plan.keys) == {"FUNDED": MASTER_KEY}
    assert "router_settings" not in config or "routing_strategy" not in config["router_settings"]


def test_limits_renders_per_deployment_limits_and_budgets(tmp_path: Path) -> None:
    plan, config, run_dir = _render(tmp_path, "limits")
    _check_deployments(
        config,
        rpm=DEPLOYMENT_RPM,
        tpm=DEPLOYMENT_TPM,
        max_budget=DEPLOYMENT_MAX_BUDGET,
        budget_duration="1d",
    )
    assert config["general_settings"] == {"master_key": MASTER_KEY}
    assert config["router_settings"]["routing_strategy"] == "simple-shuffle"
    assert not (run_dir / "custom_auth.py").exists()
    assert dict(plan.keys) == {"FUNDED": MASTER_KEY}


def test_keys_are_distinct_litellm_style_keys() -> None:
    # No blocked key (undocumented for custom auth), no budget-exhausted key (key max_budget is
    # not supported with custom auth).
    assert set(KEYS) == {"FUNDED", "EXPIRED", "MODEL_RESTRICTED", "RATE_LIMITED"}
    assert len(set(KEYS.values())) == len(KEYS)
    assert MASTER_KEY not in KEYS.values()
    assert all(key.startswith("sk-") for key in (*KEYS.values(), MASTER_KEY))


@pytest.mark.parametrize("name", ["litellm", "litellm-quickstart", "litellm-limits"])
def test_every_deviation_cites_litellm_documentation(name: str) -> None:
    # A behaviour only LiteLLM's source shows is a finding, not a waiver.
    profile = load_profile(name)
    assert profile.deviations
    uncited = sorted(set(profile.deviations) - set(profile.deviation_docs))
    assert not uncited, f"{name}: deviations without a doc citation: {uncited}"
    for path, doc in profile.deviation_docs.items():
        assert doc.startswith("https://docs.litellm.ai/docs/"), (path, doc)
