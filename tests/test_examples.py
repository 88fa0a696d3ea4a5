"""The recipes in ``examples/``: valid YAML (yamllint), the structure a gate needs (the gate
step, reports uploaded even on failure), and every relaygate / pytest / Locust option and
``RELAYGATE_*`` variable they use exists. The multi-host Locust recipes (Docker Compose,
Kubernetes) cannot be run here (no images can be pulled): their wiring (master, workers,
ports, the key from a Secret) is checked instead."""

from __future__ import annotations

import json
import os
import re
import shlex
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
    return commands_in(shell_texts(path))


def commands_in(texts: list[str]) -> list[tuple[str, list[str]]]:
    """``(tool, options)`` for every relaygate / pytest / locust command in shell ``texts``."""
    found = []
    for text in texts:
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


# -- multi-host Locust: Docker Compose and Kubernetes (examples/multi-host/) ---------------------

MULTIHOST = EXAMPLES / "multi-host"
MH_COMPOSE = MULTIHOST / "docker-compose.yml"
MH_KUBE = MULTIHOST / "kubernetes.yml"


@pytest.mark.parametrize("path", [MH_COMPOSE, MH_KUBE], ids=lambda p: p.name)
def test_multihost_yamllint_clean(path: Path) -> None:
    problems = list(linter.run(path.read_text(), YAMLLINT, str(path)))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column} {p.message}" for p in problems)


def kube_docs() -> dict[str, dict[str, Any]]:
    """The manifest's documents by kind."""
    docs = [doc for doc in yaml.safe_load_all(MH_KUBE.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one document per kind"
    return by_kind


def container_command(container: dict[str, Any]) -> str:
    """A container's command as shell text (``sh -c`` scripts as they are)."""
    command = container["command"]
    return command[2] if command[:2] == ["sh", "-c"] else " ".join(map(str, command))


def option_value(text: str, option: str) -> str:
    words = text.split()
    return words[words.index(option) + 1]


def multihost_commands() -> dict[str, str]:
    """``{"compose master": text, "compose worker": …, "kube master": …, "kube worker": …}``."""
    services = load(MH_COMPOSE)["services"]
    kube = kube_docs()
    (master,) = kube["Job"]["spec"]["template"]["spec"]["containers"]
    (worker,) = kube["Deployment"]["spec"]["template"]["spec"]["containers"]
    return {
        "compose master": " ".join(map(str, services["master"]["command"])),
        "compose worker": " ".join(map(str, services["worker"]["command"])),
        "kube master": container_command(master),
        "kube worker": container_command(worker),
    }


def test_compose_wires_master_and_workers() -> None:
    doc = load(MH_COMPOSE)
    services = doc["services"]
    assert set(services) == {"master", "worker"}
    master = " ".join(map(str, services["master"]["command"]))
    worker = " ".join(map(str, services["worker"]["command"]))
    assert "--master" in master.split() and "--headless" in master.split()
    assert "--worker" in worker.split()
    # The master waits for exactly the workers compose starts.
    assert option_value(master, "--expect-workers") == services["worker"]["deploy"]["replicas"]
    assert option_value(worker, "--master-host") == "${LOCUST_MASTER_NODE_HOST:-master}"
    assert option_value(master, "--master-bind-port") == option_value(worker, "--master-port")
    report_dir = option_value(master, "--report-dir")
    assert any(v.endswith(":" + report_dir) for v in services["master"]["volumes"])
    # The key (and the relay) come from the caller's environment, required, never a value.
    env = services["master"]["environment"]
    assert env["RELAYGATE_RELAY_KEY"].startswith("${RELAYGATE_RELAY_KEY:?")
    assert env["LOCUST_HOST"].startswith("${RELAY_URL:?")
    assert services["worker"]["environment"] == env
    assert "NOT RUN" in MH_COMPOSE.read_text()  # said plainly


def test_kubernetes_wires_master_workers_and_the_key_secret() -> None:
    kube = kube_docs()
    assert set(kube) == {"ConfigMap", "Service", "Job", "Deployment"}
    service, job, workers = kube["Service"], kube["Job"], kube["Deployment"]
    commands = multihost_commands()
    # The Service finds the master pod (and only it), on the port the master binds and the
    # workers dial, by the name the workers dial; inside the cluster only.
    master_labels = job["spec"]["template"]["metadata"]["labels"]
    worker_labels = workers["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= master_labels.items()
    assert not selector.items() <= worker_labels.items()
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert str(port["port"]) == option_value(commands["kube master"], "--master-bind-port")
    assert str(port["port"]) == option_value(commands["kube worker"], "--master-port")
    assert option_value(commands["kube worker"], "--master-host") == service["metadata"]["name"]
    assert workers["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    # The master waits for as many workers as the Deployment runs; a bounded run, once.
    (master,) = job["spec"]["template"]["spec"]["containers"]
    master_env = {e["name"]: e for e in master["env"]}
    assert master_env["LOCUST_EXPECT_WORKERS"]["value"] == str(workers["spec"]["replicas"])
    assert "LOCUST_RUN_TIME" in master_env and "--headless" in commands["kube master"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0
    # The job's exit code is the run's (after the summary is printed).
    assert commands["kube master"].rstrip().endswith("exit $code")
    # The key: from the Secret in both pods, never a literal value.
    (worker,) = workers["spec"]["template"]["spec"]["containers"]
    for container in (master, worker):
        env = {e["name"]: e for e in container["env"]}
        key = env["RELAYGATE_RELAY_KEY"]
        assert "value" not in key
        assert key["valueFrom"]["secretKeyRef"]["key"] == "RELAYGATE_RELAY_KEY"
        (source,) = container["envFrom"]
        assert source["configMapRef"]["name"] == kube["ConfigMap"]["metadata"]["name"]
    assert "LOCUST_HOST" in kube["ConfigMap"]["data"]
    assert "NOT RUN" in MH_KUBE.read_text()


def test_multihost_recipes_carry_no_key() -> None:
    for path in (MH_COMPOSE, MH_KUBE, MULTIHOST / "Dockerfile"):
        text = path.read_text()
        assert not re.search(r"\bsk-[A-Za-z0-9]{6,}", text), path
        assert "kind: Secret" not in text, path  # created from the shell, never a file here


def test_multihost_commands_use_only_existing_options(
    known_options: dict[str, set[str]],
) -> None:
    for name, text in multihost_commands().items():
        used = commands_in([text])
        assert [tool for tool, _ in used] == ["locust"], name
        unknown = [o for o in used[0][1] if o not in known_options["locust"]]
        assert not unknown, f"{name}: locust has no option {unknown}"
        # The scenario named exists in the shipped locustfiles, at the path the image links.
        words = text.split()
        assert option_value(text, "-f") == "/loadtests", name
        from relaygate.load import loadtests_dir

        classes = {w for w in words if re.fullmatch(r"[A-Z]\w*User", w)}
        assert classes, name
        shipped = "".join(p.read_text() for p in loadtests_dir().glob("*.py"))
        for cls in classes:
            assert f"class {cls}(" in shipped, f"{name}: no user class {cls}"
    dockerfile = (MULTIHOST / "Dockerfile").read_text()
    assert "loadtests_dir()" in dockerfile and " /loadtests" in dockerfile


def test_multihost_recipes_use_only_existing_variables(known_options: dict[str, set[str]]) -> None:
    for path in (MH_COMPOSE, MH_KUBE):
        text = path.read_text()
        used = set(re.findall(r"\b(?:RELAYGATE|LOCUST)_[A-Z_]+\b", text))
        assert "RELAYGATE_RELAY_KEY" in used and "LOCUST_HOST" in used
        unknown = used - known_options["env"]
        assert not unknown, f"{path.name}: no such variable {sorted(unknown)}"
        for rule in re.findall(r"--slo '?([^'\s]+)'?", " ".join(multihost_commands().values())):
            from relaygate.load.slo import parse_rule

            parse_rule(rule)


def test_readme_and_docs_describe_the_multihost_recipes() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    assert "multi-host/docker-compose.yml" in readme and "multi-host/kubernetes.yml" in readme
    load_doc = (EXAMPLES.parent / "docs" / "load.md").read_text()
    assert "## Past one machine" in load_doc
    assert "examples/multi-host/" in load_doc


PARSE = """
import json, sys
import relaygate.load.locust_plugin
from locust.argument_parser import get_parser
options = get_parser().parse_args(args=json.loads(sys.argv[1]))
fields = ("master", "worker", "headless", "num_users", "spawn_rate", "run_time", "host",
          "expect_workers", "master_host", "master_port", "master_bind_port", "user_classes",
          "slo", "report_dir")
out = {name: getattr(options, name) for name in fields}
out["relay_key_seen"] = options.relay_key == "sk-relaygateEXAMPLEkey0123456789"
print(json.dumps(out))
"""
FAKE_KEY = "sk-relaygateEXAMPLEkey0123456789"


def compose_value(text: str) -> str:
    """``${NAME:-default}`` -> default; ``${NAME:?…}`` (required) -> a stand-in value."""

    def sub(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if op == ":-":
            return rest
        return FAKE_KEY if name == "RELAYGATE_RELAY_KEY" else "http://relay.test:3000"

    return re.sub(r"\$\{(\w+)(:[-?])([^}]*)\}", sub, text)


def parsed_by_locust(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """What Locust's own parser (with our arguments) makes of ``argv`` under ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "RELAYGATE_"))}
    done = subprocess.run(
        [sys.executable, "-c", PARSE, json.dumps(argv)],
        env=base | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"locust {' '.join(argv)}: {done.stderr[-1500:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def kube_env(container: dict[str, Any], config: dict[str, str]) -> dict[str, str]:
    env = dict(config)
    for item in container["env"]:
        env[item["name"]] = item.get("value", FAKE_KEY)  # no value: from the Secret
    return env


def test_multihost_commands_parse_with_locusts_parser(tmp_path: Path) -> None:
    """Each command, with its container's environment, as Locust reads it: the values are
    valid, the master is headless and bounded and expects as many workers as run, each worker
    dials the master, and the key reaches ``--relay-key`` through ``RELAYGATE_RELAY_KEY``."""
    services = load(MH_COMPOSE)["services"]
    compose_env = {k: compose_value(v) for k, v in services["master"]["environment"].items()}
    replicas = int(compose_value(services["worker"]["deploy"]["replicas"]))
    argv = {
        name: [compose_value(str(w)) for w in services[name]["command"][1:]]
        for name in ("master", "worker")
    }
    master = parsed_by_locust(argv["master"], compose_env, tmp_path)
    worker = parsed_by_locust(argv["worker"], compose_env, tmp_path)
    kube = kube_docs()
    config = kube["ConfigMap"]["data"]
    (kmaster,) = kube["Job"]["spec"]["template"]["spec"]["containers"]
    (kworker,) = kube["Deployment"]["spec"]["template"]["spec"]["containers"]
    script = container_command(kmaster).split(";")[0]
    kube_master = parsed_by_locust(shlex.split(script)[1:], kube_env(kmaster, config), tmp_path)
    kube_worker = parsed_by_locust(
        [str(w) for w in kworker["command"][1:]], kube_env(kworker, config), tmp_path
    )
    for run, workers in ((master, replicas), (kube_master, kube["Deployment"]["spec"]["replicas"])):
        assert run["master"] and run["headless"] and not run["worker"]
        assert run["run_time"] and run["run_time"] > 0 and run["num_users"] > 0
        assert run["expect_workers"] == workers
        assert run["host"] and run["relay_key_seen"]
        assert run["user_classes"] == ["StreamingChatUser"] and run["slo"]
    for run, master_host in ((worker, "master"), (kube_worker, "relaygate-load-master")):
        assert run["worker"] and not run["master"]
        assert run["master_host"] == master_host and run["master_port"] == 5557
        assert run["relay_key_seen"]
    assert master["master_bind_port"] == kube_master["master_bind_port"] == 5557
