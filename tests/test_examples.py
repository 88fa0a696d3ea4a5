"""The CI recipes in ``examples/``: valid YAML (yamllint), the structure a gate needs (the gate
step, reports uploaded even on failure), and every relaygate / pytest / Locust option and
``RELAYGATE_*`` variable they use exists."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from relaygate.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GITHUB = EXAMPLES / "github-actions" / "relay-gate.yml"
GITLAB = EXAMPLES / "gitlab-ci" / ".gitlab-ci.yml"
RECIPES = [GITHUB, GITLAB]

# Strict-ish: yamllint's defaults with warnings counted, 100 columns like the code; GitHub's
# `on:` key is YAML 1.1's boolean, so keys are exempt from the truthy rule.
YAMLLINT = YamlLintConfig(
    """
extends: default
rules:
  document-start: disable
  line-length: {max: 100}
  truthy: {check-keys: false}
"""
)


def load(path: Path) -> dict[Any, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


COMPOSE = [
    EXAMPLES.parent / "fixtures" / "relays" / name / "docker-compose.yml"
    for name in ("one-api", "new-api")
]


@pytest.mark.parametrize("path", RECIPES + COMPOSE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yamllint_clean(path: Path) -> None:
    problems = list(linter.run(path.read_text(), YAMLLINT, str(path)))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column} {p.message}" for p in problems)


def test_github_workflow_structure() -> None:
    doc = load(GITHUB)
    on = doc.get("on", doc.get(True))  # PyYAML reads the bare key `on` as True
    assert isinstance(on, dict) and "pull_request" in on
    (job,) = doc["jobs"].values()
    steps = job["steps"]
    names = [step.get("name", step.get("uses")) for step in steps]
    gate = next(i for i, step in enumerate(steps) if "relaygate gate" in step.get("run", ""))
    suite = next(i for i, step in enumerate(steps) if "relaygate check" in step.get("run", ""))
    load_run = next(i for i, step in enumerate(steps) if "locust -f" in step.get("run", ""))
    upload = next(
        i
        for i, step in enumerate(steps)
        if step.get("uses", "").startswith("actions/upload-artifact")
    )
    assert suite < gate and load_run < gate < upload, names
    # The suite and the load run never end the job: the gate decides, from their reports.
    assert steps[suite].get("continue-on-error") is True
    assert steps[load_run].get("continue-on-error") is True
    assert "continue-on-error" not in steps[gate]
    assert steps[upload]["if"] == "always()"
    assert steps[upload]["with"]["path"].rstrip("/") == "reports"


def test_gitlab_job_structure() -> None:
    doc = load(GITLAB)
    jobs = {name: job for name, job in doc.items() if isinstance(job, dict) and "script" in job}
    (job,) = jobs.values()
    script = job["script"]
    gate = next(i for i, line in enumerate(script) if line.startswith("relaygate gate"))
    assert gate == len(script) - 1, "the gate's exit code must be the job's"
    assert any(line.startswith("relaygate check") for line in script[:gate])
    assert any(line.startswith("locust -f") for line in script[:gate])
    assert job["artifacts"]["when"] == "always"
    assert "reports/" in job["artifacts"]["paths"]
    assert job["artifacts"]["reports"]["junit"] == "reports/junit.xml"
    assert {service["alias"] for service in job["services"]} == {"relay", "upstream"}
    assert job["variables"]["FF_NETWORK_PER_BUILD"] == "true"


# -- every option the recipes use exists ---------------------------------------------------------


def shell_texts(path: Path) -> list[str]:
    """The shell the recipe runs: GitHub ``run`` steps, GitLab ``script`` and service commands."""
    doc = load(path)
    texts: list[str] = []
    if path == GITHUB:
        for job in doc["jobs"].values():
            texts += [step["run"] for step in job["steps"] if "run" in step]
    else:
        for job in doc.values():
            if isinstance(job, dict) and "script" in job:
                texts += job["script"]
                for service in job.get("services", []):
                    texts += service.get("command", [])
    return texts


def commands(path: Path) -> list[tuple[str, list[str]]]:
    """``(tool, options)`` for every relaygate / pytest / locust command of a recipe."""
    found = []
    for text in shell_texts(path):
        text = text.replace("\\\n", " ")
        for segment in re.split(r"&&|\|\||[;|\n]|\$\(", text):
            words = segment.split()
            if not words:
                continue
            if words[0] in ("exec", "nohup"):
                words = words[1:]
            if words[:1] == ["relaygate"] and len(words) > 1:
                tool = "pytest" if words[1] == "check" else f"relaygate {words[1]}"
            elif words[:1] in (["pytest"], ["locust"]):
                tool = words[0]
            else:
                continue
            options = [
                w.split("=")[0] for w in words if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w)
            ]
            found.append((tool, options))
    return found


@pytest.fixture(scope="module")
def known_options(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The options each tool accepts, read from the tools themselves."""
    cwd = tmp_path_factory.mktemp("help")  # no project ini or conftest in the way
    pytest_help = subprocess.run(
        [sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=True,
    ).stdout
    # Locust's own --help exits before plugins add their arguments; its parser has them all.
    locust = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, relaygate.load.locust_plugin\n"
            "from locust.argument_parser import get_parser\n"
            "actions = get_parser()._actions\n"
            "print(json.dumps({'options': [o for a in actions for o in a.option_strings],\n"
            "                  'env': [getattr(a, 'env_var', None) for a in actions]}))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=True,
    )
    locust_parser = json.loads(locust.stdout.strip().splitlines()[-1])
    option = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
    known = {
        "pytest": set(option.findall(pytest_help)),
        "locust": set(locust_parser["options"]),
        "env": set(re.findall(r"RELAYGATE_\w+", pytest_help))
        | {env for env in locust_parser["env"] if env},
    }
    return known


def undash(option: str) -> str:
    return "--" + option[2:].replace("-", "") if option.startswith("--") else option


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_use_only_existing_options(
    path: Path, known_options: dict[str, set[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    used = commands(path)
    tools = {tool for tool, _ in used}
    assert {"relaygate mock-upstream", "pytest", "locust", "relaygate gate"} <= tools
    for tool, options in used:
        if tool.startswith("relaygate "):
            with pytest.raises(SystemExit):
                main([tool.split()[1], "--help"])
            known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", capsys.readouterr().out))
        else:
            known = known_options[tool]
        if tool == "pytest":
            # pytest's help shows --junit-xml for "--junitxml, --junit-xml": compare undashed.
            known = {undash(o) for o in known}
            options = [undash(o) for o in options]
        unknown = [o for o in options if o not in known]
        assert not unknown, f"{path.name}: {tool} has no option {unknown}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_use_only_existing_relaygate_variables(
    path: Path, known_options: dict[str, set[str]]
) -> None:
    used = set(re.findall(r"RELAYGATE_\w+", path.read_text()))
    assert {"RELAYGATE_RELAY_KEY", "RELAYGATE_RELAY_ADMIN_TOKEN"} <= used
    assert used <= known_options["env"]


def test_recipes_find_the_installed_load_scenarios() -> None:
    from relaygate.load import loadtests_dir

    assert (loadtests_dir() / "streaming_chat.py").is_file()
    for path in RECIPES:
        assert "from relaygate.load import loadtests_dir" in path.read_text()


def test_readme_describes_both_recipes() -> None:
    text = (EXAMPLES / "README.md").read_text()
    assert "github-actions/relay-gate.yml" in text and "gitlab-ci/.gitlab-ci.yml" in text


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_slo_rules_parse(path: Path) -> None:
    from relaygate.load.slo import parse_rule

    rules = re.findall(r"--slo '([^']+)'", path.read_text())
    assert rules
    for rule in rules:
        parse_rule(rule)


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.parent.name)
def test_compose_recipes_wire_relay_mock_and_suite(path: Path) -> None:
    doc = load(path)
    services = doc["services"]
    assert set(services) == {"upstream", "relay", "suite"}
    assert services["relay"]["ports"] == ["127.0.0.1:3000:3000"]  # published on loopback only
    suite = services["suite"]
    assert suite["environment"]["RELAY_KIND"] == path.parent.name
    assert suite["environment"]["UPSTREAM_URL"] == "http://upstream:9001"
    script = path.parent.parent / "compose-gate.sh"
    assert "../compose-gate.sh:/compose-gate.sh:ro" in suite["volumes"]
    text = script.read_text()
    for command in ("relaygate check", "locust -f", "relaygate gate"):
        assert command in text
    assert "NOT RUN" in path.read_text()  # said plainly
