"""One declaration per option (relaygate.options): the public contract is unchanged, and the
pytest plugin, the Locust plugin and ``relaygate demo`` agree on every option they share.

Each surface is read from the tool itself (pytest's --help and config, Locust's parser in a
child process - importing Locust would monkey-patch this one - and the demo's argparse parser),
never from the table, so a surface that stops using the table is caught.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relaygate.options import DEMO, LOCUST, OPTIONS, PYTEST, Option, by_flag, options_for

pytest_plugins = ["pytester"]

UNSET = None
# The contract, taken from the code before the option table existed (issue #11): surface,
# flag, attribute, env var (None: the surface reads none), pytest ini key, default.
# pytest's default is its ini key's default (the flag's own is None so that CLI > env > ini).
CONTRACT: frozenset[tuple[str, str, str, str | None, str | None, Any]] = frozenset({
    ("pytest", "--relay-url", "relay_url", "RELAYGATE_RELAY_URL", "relay_url", None),
    ("pytest", "--relay-key", "relay_key", "RELAYGATE_RELAY_KEY", "relay_key", None),
    ("pytest", "--relay-admin-token", "relay_admin_token", "RELAYGATE_RELAY_ADMIN_TOKEN",
     "relay_admin_token", None),
    ("pytest", "--relay-profile", "relay_profile", "RELAYGATE_RELAY_PROFILE", "relay_profile",
     "faq"),
    ("pytest", "--relay-key-group", "relay_key_group", "RELAYGATE_RELAY_KEY_GROUP",
     "relay_key_group", "default"),
    ("pytest", "--upstream-url", "upstream_url", "RELAYGATE_UPSTREAM_URL", "upstream_url", None),
    ("pytest", "--report-dir", "report_dir", "RELAYGATE_REPORT_DIR", "report_dir", "reports"),
    ("pytest", "--relay-timeout", "relay_timeout", "RELAYGATE_RELAY_TIMEOUT", "relay_timeout",
     "30"),
    ("pytest", "--relay-max-bytes", "relay_max_bytes", "RELAYGATE_RELAY_MAX_BYTES",
     "relay_max_bytes", "16777216"),
    ("pytest", "--relay-fuzz-examples", "relay_fuzz_examples", "RELAYGATE_RELAY_FUZZ_EXAMPLES",
     "relay_fuzz_examples", "25"),
    ("pytest", "--relay-fault", "relay_faults", "RELAYGATE_RELAY_FAULTS", "relay_faults", None),
    ("pytest", "--relay-header", "relay_headers", "RELAYGATE_RELAY_HEADERS", "relay_headers",
     ()),
    # added in session 4 (issue #12: live cost control)
    ("pytest", "--live-budget", "live_budget", "RELAYGATE_LIVE_BUDGET", "live_budget", None),
    ("pytest", "--live-dry-run", "live_dry_run", "RELAYGATE_LIVE_DRY_RUN", "live_dry_run",
     None),
    ("locust", "--relay-key", "relay_key", "RELAYGATE_RELAY_KEY", None, ""),
    ("locust", "--relay-header", "relay_header", "RELAYGATE_RELAY_HEADERS", None, ()),
    ("locust", "--model", "model", "RELAYGATE_MODEL", None, "gpt-4o-mini"),
    ("locust", "--prompt-tokens", "prompt_tokens", "RELAYGATE_PROMPT_TOKENS", None, 64),
    ("locust", "--max-tokens", "max_tokens", "RELAYGATE_MAX_TOKENS", None, 128),
    ("locust", "--mock-ttft-ms", "mock_ttft_ms", "RELAYGATE_MOCK_TTFT_MS", None, None),
    ("locust", "--mock-itl-ms", "mock_itl_ms", "RELAYGATE_MOCK_ITL_MS", None, None),
    ("locust", "--mock-output-tokens", "mock_output_tokens", "RELAYGATE_MOCK_OUTPUT_TOKENS", None,
     None),
    ("locust", "--target-rps", "target_rps", "RELAYGATE_TARGET_RPS", None, None),
    ("locust", "--arrival", "arrival", "RELAYGATE_ARRIVAL", None, "constant"),
    ("locust", "--slo", "slo", "RELAYGATE_SLO", None, ()),
    ("locust", "--report-dir", "report_dir", "RELAYGATE_REPORT_DIR", None, "reports"),
    ("locust", "--no-plots", "no_plots", "RELAYGATE_NO_PLOTS", None, False),
    ("locust", "--stream-timeout", "stream_timeout", "RELAYGATE_STREAM_TIMEOUT", None, 120.0),
    ("locust", "--request-timeout", "request_timeout", "RELAYGATE_REQUEST_TIMEOUT", None, 300.0),
    ("locust", "--max-response-bytes", "max_response_bytes", "RELAYGATE_MAX_RESPONSE_BYTES",
     None, 16777216),
    ("locust", "--rx-stamps", "rx_stamps", "RELAYGATE_RX_STAMPS", None, "kernel"),
    ("locust", "--upstream-url", "upstream_url", "RELAYGATE_UPSTREAM_URL", None, ""),
    ("locust", "--upstream-key", "upstream_key", "RELAYGATE_UPSTREAM_KEY", None, ""),
    ("locust", "--rate-limit", "rate_limit", "RELAYGATE_RATE_LIMIT", None, ""),
    ("locust", "--rl-phases", "rl_phases", "RELAYGATE_RL_PHASES", None,
     "discover,steps,retry_after,recovery,fairness,retry_policies,billing"),
    ("locust", "--rl-measure-windows", "rl_measure_windows", "RELAYGATE_RL_MEASURE_WINDOWS",
     None, 2.0),
    ("locust", "--rl-steps", "rl_steps", "RELAYGATE_RL_STEPS", None, "0.5,1,1.5,3"),
    ("locust", "--rl-key", "rl_key", "RELAYGATE_RL_KEY", None, ""),
    ("locust", "--fairness-keys", "fairness_keys", "RELAYGATE_FAIRNESS_KEYS", None, ""),
    ("locust", "--stack-faults", "stack_faults", "RELAYGATE_STACK_FAULTS", None, ""),
    ("demo", "--relay-url", "relay_url", "RELAYGATE_RELAY_URL", None, None),
    ("demo", "--relay-key", "relay_key", "RELAYGATE_RELAY_KEY", None, None),
    ("demo", "--relay-admin-token", "relay_admin_token", "RELAYGATE_RELAY_ADMIN_TOKEN", None,
     None),
    # Was None (meaning faq: the demo read it as `relay_profile or "faq"`); now faq, as on pytest.
    ("demo", "--relay-profile", "relay_profile", "RELAYGATE_RELAY_PROFILE", None, "faq"),
    ("demo", "--relay-key-group", "relay_key_group", "RELAYGATE_RELAY_KEY_GROUP", None,
     "default"),
    ("demo", "--upstream-url", "upstream_url", "RELAYGATE_UPSTREAM_URL", None, None),
    ("demo", "--rate-limit", "rate_limit", "RELAYGATE_RATE_LIMIT", None, None),
    ("demo", "--rl-key", "rl_key", "RELAYGATE_RL_KEY", None, None),
    # Was None (meaning the demo's default rules); [] means the same.
    ("demo", "--slo", "slo", None, None, ()),
    # Added by the table: the demo reads RELAYGATE_REPORT_DIR as the other surfaces do.
    ("demo", "--report-dir", "report_dir", "RELAYGATE_REPORT_DIR", None, "reports"),
    ("demo", "--load-seconds", "load_seconds", None, None, 35),
    ("demo", "--users", "users", None, None, 6),
    ("demo", "--no-load", "no_load", None, None, False),
    ("demo", "--allow-deviations", "allow_deviations", None, None, False),
    ("demo", "--allow-skip", "allow_skip", None, None, ()),
    ("demo", "--case-timeout", "case_timeout", None, None, 120),
    ("demo", "--run-timeout", "run_timeout", None, None, 900),
})  # fmt: skip
LOCUST_DEFAULTS = {"web_host": "127.0.0.1", "stop_timeout": 10}
SECRETS = {"--relay-key", "--relay-admin-token", "--relay-header", "--upstream-key", "--rl-key",
           "--fairness-keys"}  # fmt: skip


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _words(text: str) -> str:
    """Help text as words: argparse wraps lines (and breaks after hyphens)."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


# -- reading each surface ------------------------------------------------------------------

_LOCUST_DUMP = r"""
import json, relaygate.load.locust_plugin
from locust.argument_parser import default_args_dict, get_parser, ui_extra_args_dict
parser = get_parser()
ours = set(vars(parser.parse_args([]))) - set(default_args_dict())
print(json.dumps({
    "options": [
        {"flag": a.option_strings[0], "dest": a.dest, "env": getattr(a, "env_var", None),
         "default": a.default, "help": a.help, "secret": bool(getattr(a, "is_secret", False)),
         "in_ui": bool(getattr(a, "include_in_web_ui", False))}
        for a in parser._actions if a.dest in ours
    ],
    "defaults": {"web_host": parser.get_default("web_host"),
                 "stop_timeout": parser.get_default("stop_timeout")},
    "help": parser.format_help(),
    "ui": ui_extra_args_dict(),
}))
"""


@pytest.fixture(scope="module")
def locust_surface(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYGATE_", "LOCUST_"))}
    env["RELAYGATE_RELAY_KEY"] = "sk-relaygateOPTIONSkey0123456789"
    env["RELAYGATE_RL_KEY"] = "sk-relaygateOPTIONSrlkey012345678"
    proc = subprocess.run(
        [sys.executable, "-c", _LOCUST_DUMP],
        env=env,
        cwd=tmp_path_factory.mktemp("locust"),  # no locust.conf in the way
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data


def _demo_parser() -> argparse.ArgumentParser:
    from relaygate.cli import demo

    parser = argparse.ArgumentParser(prog="relaygate demo")
    demo.add_arguments(parser)
    return parser


def _demo_actions() -> list[argparse.Action]:
    return [a for a in _demo_parser()._actions if a.option_strings and a.dest != "help"]


@pytest.fixture
def pytest_help(pytester: pytest.Pytester) -> str:
    return "\n".join(pytester.runpytest("--help").outlines)


# -- the contract ---------------------------------------------------------------------------


def _pytest_rows(pytester: pytest.Pytester, help_text: str) -> set[tuple[Any, ...]]:
    start = help_text.index("relaygate conformance suite:")
    section = help_text[start : help_text.index("\n\n", start)]
    flags = re.findall(r"^\s+(--[a-z-]+)", section, re.MULTILINE)
    config = pytester.parseconfig()
    rows = set()
    for flag in flags:
        words = _words(section[section.index(flag) :])
        env = re.search(r"\[env (RELAYGATE_\w+)\]", words)
        assert env is not None, f"{flag}: no [env ...] in pytest --help"
        dest = {"--relay-fault": "relay_faults", "--relay-header": "relay_headers"}.get(
            flag, flag[2:].replace("-", "_")
        )
        assert config.getoption(dest) is None  # the flag's own default: CLI > env > ini
        assert re.search(rf"^\s+{dest} \(", help_text, re.MULTILINE), f"ini key {dest}"
        rows.add(("pytest", flag, dest, env.group(1), dest, _norm(config.getini(dest)) or None))
    return {r if r[1] != "--relay-header" else (*r[:5], ()) for r in rows}


def _demo_rows(monkeypatch: pytest.MonkeyPatch) -> set[tuple[Any, ...]]:
    for name in list(os.environ):
        if name.startswith("RELAYGATE_"):
            monkeypatch.delenv(name)
    rows = set()
    for action in _demo_actions():
        flag = action.option_strings[0]
        env = re.search(r"\[env (RELAYGATE_\w+)\]", action.help or "")
        if env is not None:  # the help says it reads the env var: it does
            monkeypatch.setenv(env.group(1), "from-env")
            got = next(a for a in _demo_actions() if a.dest == action.dest).default
            assert got == "from-env", flag
            monkeypatch.delenv(env.group(1))
        default = _norm(action.default)
        rows.add(("demo", flag, action.dest, env and env.group(1), None, default))
    return rows


def test_the_public_contract_is_unchanged(
    pytester: pytest.Pytester,
    pytest_help: str,
    locust_surface: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    locust_rows = {
        ("locust", o["flag"], o["dest"], o["env"], None, _norm(o["default"]))
        for o in locust_surface["options"]
    }
    actual = _pytest_rows(pytester, pytest_help) | locust_rows | _demo_rows(monkeypatch)
    assert actual == CONTRACT, {"added": actual - CONTRACT, "gone": CONTRACT - actual}
    assert locust_surface["defaults"] == LOCUST_DEFAULTS


def test_table_defaults_match_the_constants_they_mirror() -> None:
    from relaygate.load.client import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_REQUEST_TIMEOUT_S
    from relaygate.load.prober import PHASES
    from relaygate.suite.target import DEFAULT_MAX_BYTES

    assert by_flag("--relay-max-bytes").default == DEFAULT_MAX_BYTES
    assert by_flag("--request-timeout").default == DEFAULT_REQUEST_TIMEOUT_S
    assert by_flag("--max-response-bytes").default == DEFAULT_MAX_RESPONSE_BYTES
    assert by_flag("--rl-phases").default == ",".join(PHASES)


def test_the_table_is_well_formed() -> None:
    flags = [o.flag for o in OPTIONS]
    assert len(flags) == len(set(flags))
    envs = [o.env for o in OPTIONS]
    assert len(envs) == len(set(envs))
    assert {o.flag for o in OPTIONS if o.secret} == SECRETS
    for option in OPTIONS:
        assert option.env.startswith("RELAYGATE_"), option
        assert (option.ini is not None) == (PYTEST in option.surfaces), option
        assert option.help and "%" not in option.help, option  # argparse formats help with %


# -- the surfaces agree -----------------------------------------------------------------------


def _shared() -> list[Option]:
    return [o for o in OPTIONS if len([s for s in (PYTEST, LOCUST, DEMO) if s in o.surfaces]) > 1]


def test_shared_options_have_one_help_env_and_default_everywhere(
    pytest_help: str, locust_surface: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("RELAYGATE_"):
            monkeypatch.delenv(name)
    helps = {
        "pytest": _words(pytest_help),
        "locust": _words(locust_surface["help"]),
        "demo": _words(_demo_parser().format_help()),
    }
    locust_by_flag = {o["flag"]: o for o in locust_surface["options"]}
    demo_by_flag = {a.option_strings[0]: a for a in _demo_actions()}
    assert len(_shared()) >= 8
    for option in _shared():
        text = _words(option.help)
        defaults = []
        if PYTEST in option.surfaces:
            assert f"{text} [env {option.env}]" in helps["pytest"], option.flag
        if LOCUST in option.surfaces:
            assert f"{text} [env {option.env}]" in helps["locust"], option.flag
            seen = locust_by_flag[option.flag]
            assert (seen["env"], seen["secret"]) == (option.env, option.secret)
            defaults.append(_norm(seen["default"]) or None)
        if DEMO in option.surfaces:
            shown = text if option.repeatable else f"{text} [env {option.env}]"
            assert shown in helps["demo"], option.flag
            defaults.append(_norm(demo_by_flag[option.flag].default) or None)
        assert set(defaults) <= {_norm(option.default) or None}, option.flag


def test_locust_options_are_in_its_help_and_web_ui_and_secrets_are_not(
    locust_surface: dict[str, Any],
) -> None:
    help_text = _words(locust_surface["help"])
    ui = locust_surface["ui"]
    for option in options_for(LOCUST):
        assert option.flag in help_text
        if option.secret or option.repeatable:
            assert option.name not in ui, option.flag
        else:
            assert ui[option.name]["help_text"] == option.help_with_env
            assert not ui[option.name]["is_secret"]
    dumped = json.dumps(ui)
    assert "OPTIONSkey" not in dumped and "OPTIONSrlkey" not in dumped
    assert ui["arrival"]["choices"] == ["constant", "poisson"]


def test_demo_help_never_prints_a_key_from_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key in the environment is the option's default: the demo's --help never prints it."""
    monkeypatch.setenv("RELAYGATE_RELAY_KEY", "sk-relaygateDEMOhelpkey0123456789")
    assert "DEMOhelpkey" not in _demo_parser().format_help()


def test_every_option_is_documented() -> None:
    root = Path(__file__).resolve().parents[1]
    load_doc = (root / "docs" / "load.md").read_text(encoding="utf-8")
    readme = (root / "README.md").read_text(encoding="utf-8")
    for option in options_for(LOCUST):
        assert f"`{option.flag}" in load_doc, option.flag
    for option in options_for(PYTEST):
        assert f"`{option.flag}" in readme, option.flag


def test_values_the_web_ui_sends_as_text_are_typed_again() -> None:
    """Locust's start form sets an option whose default is None to the field's text; the run
    would then compare ``"abc" < 0``. Blank is the default, a number is a number, anything else
    is one line (and the default)."""
    from types import SimpleNamespace

    from relaygate.load.locust_options import values_from_web_ui  # imports no Locust

    options = SimpleNamespace(
        **{o.name: o.default for o in options_for(LOCUST)},
    )
    options.mock_ttft_ms, options.mock_itl_ms, options.target_rps = "60", "", "abc"
    options.mock_output_tokens = "7"
    problems = values_from_web_ui(options)
    assert problems == ["web UI: --target-rps: 'abc' is not a valid value"]
    assert (options.mock_ttft_ms, options.mock_itl_ms, options.target_rps) == (60.0, None, None)
    assert options.mock_output_tokens == 7
