"""Every command the README and docs show works as written (issue #15).

Each ``relaygate`` / ``locust`` / ``pytest`` / ``tox`` line of a fenced shell block is checked
against the real parsers (relaygate's argparse, the option names pytest and Locust report with
our plugins loaded: the helper ``test_examples.py`` uses for the CI recipes). The ones that can
run offline in bounded time run, from a scratch directory, against servers on 127.0.0.1:
``relaygate up`` (its output vs the README's sample) and ``up --json``, the conformance suite
against that stack as ``up`` prints it, the README's Locust worked example (its table must have
the sample output's rows), the gate examples on the reports those two wrote, ``relay list``.
``not_run_reason`` says why each of the others is only parsed (network, placeholders, minutes).
"""

from __future__ import annotations

import configparser
import itertools
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# The option sets of pytest and Locust (with our plugins), read from the tools themselves.
from test_examples import known_options, undash  # noqa: F401

from relaygate.cli import build_parser

#: Judges timing (the demo's gate, with its latency self-check): under xdist it runs last and
#: alone (conftest.py).
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "docs" / "relays").glob("*.md")),
    ROOT / "examples" / "README.md",
    ROOT / "reports" / "README.md",
]
PROGRAMS = ("relaygate", "locust", "pytest", "tox")
ELLIPSES = ("…", "...")
# A synopsis's metavar stands for any valid value; options that check theirs get one.
METAVAR_EXAMPLES = {"--slo": "ttft_p99_ms<=500"}


@dataclass(frozen=True)
class Command:
    """One documented command line: where it is, its text (comment stripped), its words."""

    path: Path
    line: int
    text: str
    argv: tuple[str, ...]
    synopsis: bool  # written with [optional] parts

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _words(text: str) -> tuple[list[str], bool]:
    """Shell words of a command, with a synopsis's ``[optional …]`` parts taken as given.

    A lone ``…`` is a value after an option (``--relay-admin-token …``), otherwise it only
    says "and so on" and is dropped."""
    words = shlex.split(text, comments=True)
    synopsis = any(w.startswith("[") or w.endswith("]") for w in words)
    out: list[str] = []
    for word in words:
        if synopsis:
            word = word.removeprefix("[").removesuffix("]")
            if out and re.fullmatch(r"[A-Z][A-Z_|-]*", word):  # a metavar: RULE, X
                word = METAVAR_EXAMPLES.get(out[-1], word)
        if word in ELLIPSES and not (out and out[-1].startswith("-")):
            continue
        out.append(word)
    return out, synopsis


def _is_command(words: list[str], tagged: bool) -> bool:
    if not words or words[0] not in PROGRAMS:
        return False
    if tagged or len(words) == 1:
        return True
    # An untagged block is sample output: a command there is one the output prints (``up``
    # prints the suite's command), not a label such as "relaygate up:" or a table header.
    second = words[1]
    return second.startswith("-") or words[0] != "relaygate" or second in _subcommands()


def _subcommands() -> set[str]:
    from relaygate.cli import SUBCOMMANDS

    return set(SUBCOMMANDS)


def documented_commands() -> list[Command]:
    """Every relaygate/locust/pytest/tox command in a fenced bash, console or plain block."""
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        lang: str | None = None
        i = 0
        while i < len(lines):
            fence = re.match(r"\s*```\s*(\S*)\s*$", lines[i])
            if fence:
                lang = fence.group(1) if lang is None else None
                i += 1
                continue
            if lang not in ("bash", "console", "sh", "shell", ""):
                i += 1
                continue
            start, text = i, lines[i]
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            text = text.strip()
            if text.startswith("$ "):
                text = text[2:]
            elif lang == "console":
                continue  # output of a console session
            try:
                words, synopsis = _words(text)
            except ValueError:  # unbalanced quotes: prose or output, not a command
                continue
            if _is_command(words, tagged=lang != ""):
                clean = shlex.join(words)
                found.append(Command(path, start + 1, clean, tuple(words), synopsis))
    return found


COMMANDS = documented_commands()

# Commands that only get parsed, and why they cannot run here.
NOT_RUN_PREFIXES = {
    "pytest": "the whole test suite: about 10 min",
    "tox": "tox builds its environments from package indexes (network)",
    "relaygate relay start": "installs the third-party relay from its registry (network)",
    "relaygate relay stop": "stops a relay that 'relay start' started",
    "relaygate relay run": "installs the third-party relay from its registry (network)",
    "relaygate bench": "500 streams for 10 s: a benchmark, too heavy for a shared 2-core runner",
    "relaygate demo": "about 70 s; its parts (check, locust, gate) run here one by one",
    "relaygate check --relay-profile ./my-relay.toml": "a profile file the reader writes",
    # Runnable offline, but long: the worked example runs the same embedded path in 10 s.
    "locust -f loadtests --headless -u 20 -r 20 -t 30s": "a 30 s load run",
    "locust -f loadtests RateLimitUser": "a 2 to 5 min rate-limit run",
    "locust -f loadtests RelayOverheadUser": "a 1 min run that needs --upstream-url",
}
PLACEHOLDER = re.compile(r"relay:3000|sk-(…|\.\.\.)|40123|<\w+>")


def not_run_reason(command: Command) -> str | None:
    """Why a documented command is only parsed, or None when this file runs it."""
    if command.text in RUN:
        return None
    if command.synopsis:
        return "a synopsis with [optional] parts"
    if PLACEHOLDER.search(command.text):
        return "placeholders (a relay at http://relay:3000, a key sk-…, the sample's ports)"
    for prefix, reason in NOT_RUN_PREFIXES.items():
        if command.text.startswith(prefix):
            return reason
    return None


# The commands run below, exactly as documented (text as extracted, quotes normalised).
WORKED_EXAMPLE = (
    "locust -f loadtests --headless -u 10 -r 10 -t 10s --mock-ttft-ms 200 --mock-itl-ms 20 "
    "--mock-output-tokens 50 --slo 'ttft_p95_ms<=400' --slo 'error_rate<=0.01'"
)
UP = "relaygate up --json"
GATES = [
    "relaygate gate --conformance reports/conformance.json --load reports/load-summary.json",
    "relaygate gate --conformance reports/conformance.json --allow-deviations --allow-skip profile",
    "relaygate gate --conformance reports/conformance.json --allow-skip live --allow-skip key "
    "--allow-skip quota --allow-skip max_tokens --allow-skip rate_limits "
    "--allow-skip properties",
]
# Printed by `relaygate up` (the sample's ports): run with the stack's real ones.
UP_PRINTED_CHECK = (
    "relaygate check --relay-url http://127.0.0.1:40123 --upstream-url http://127.0.0.1:40121"
)
RELAY_LIST = "relaygate relay list"
RUN = {WORKED_EXAMPLE, UP, UP_PRINTED_CHECK, RELAY_LIST, *GATES}


def test_the_docs_have_commands() -> None:
    texts = {c.text for c in COMMANDS}
    assert texts >= RUN, f"documented commands this file runs are gone: {RUN - texts}"
    assert {c.argv[0] for c in COMMANDS} == set(PROGRAMS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_command_is_run_or_has_a_reason(command: Command) -> None:
    assert command.text in RUN or not_run_reason(command), (
        f"{command.where}: `{command.text}` neither runs in this file nor says why not"
    )


# -- every command parses --------------------------------------------------------------------


def _pytest_options(argv: list[str], known: dict[str, set[str]], where: str) -> None:
    options = [w.split("=")[0] for w in argv if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w)]
    unknown = [o for o in options if undash(o) not in {undash(k) for k in known["pytest"]}]
    assert not unknown, f"{where}: pytest has no option {unknown}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_command_parses(
    command: Command,
    known_options: dict[str, set[str]],  # noqa: F811 (the fixture imported above)
    capsys: pytest.CaptureFixture[str],
) -> None:
    program, *args = command.argv
    where = f"{command.where}: `{command.text}`"
    if program == "relaygate":
        if args[:1] == ["check"]:  # everything after "check" goes to pytest
            _pytest_options(args[1:], known_options, where)
            return
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            error = capsys.readouterr().err.strip().splitlines()
            pytest.fail(f"{where}: relaygate refuses it ({exc.code}): {error[-1:]}")
    elif program == "pytest":
        _pytest_options(args, known_options, where)
        # A path is a word that is neither an option nor the value of one (``-n 4``).
        values = {b for a, b in itertools.pairwise(args) if a in {"-n", "-k", "-m"}}
        paths = [
            a
            for a in args
            if not a.startswith("-") and a not in values and "/" not in a and ":" not in a
        ]
        for path in paths[:1]:
            assert (ROOT / path).is_dir(), f"{where}: no directory {path}"
    elif program == "locust":
        options = [w.split("=")[0] for w in args if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w)]
        unknown = [o for o in options if o not in known_options["locust"]]
        assert not unknown, f"{where}: locust has no option {unknown}"
        assert args[:2] == ["-f", "loadtests"], where
        users = [a for a in args[2:] if re.fullmatch(r"[A-Z]\w*User", a)]
        scenarios = "\n".join(p.read_text() for p in (ROOT / "loadtests").glob("*.py"))
        for user in users:
            assert f"class {user}(" in scenarios, f"{where}: no user class {user}"
    else:
        tox = configparser.ConfigParser()
        tox.read(ROOT / "tox.ini")
        envs = {s.removeprefix("testenv:") for s in tox.sections() if s.startswith("testenv:")}
        assert args[:1] == ["-e"], where
        missing = set(args[1].split(",")) - envs
        assert not missing, f"{where}: tox.ini has no environment {missing}"
        # What those environments run: relaygate's commands parse too (`relay matrix`).
        for env in args[1].split(","):
            for line in tox.get(f"testenv:{env}", "commands", fallback="").splitlines():
                words = line.replace("{posargs}", "").split()
                if words[:1] == ["relaygate"]:
                    try:
                        build_parser().parse_args(words[1:])
                    except SystemExit:
                        pytest.fail(f"{where}: tox.ini [testenv:{env}] runs `{line}`: refused")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("relaygate gaet --conformance x.json", "invalid choice: 'gaet'"),
        ("relaygate gate --conformance x.json --slo-rule x", "unrecognized arguments"),
    ],
)
def test_a_wrong_command_fails(text: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The relaygate check above is real: a typo'd subcommand or option does not parse."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(shlex.split(text)[1:])
    assert message in capsys.readouterr().err


# -- the commands that run --------------------------------------------------------------------

URL = re.compile(r"http://127\.0\.0\.1:\d+")
ENV_FILE = re.compile(r"/tmp/relaygate-up-\w+/env")


def command_at(text: str) -> Command:
    (command,) = [c for c in COMMANDS if c.text == text][:1]
    return command


def sample_output(command: Command) -> list[str]:
    """The first untagged fenced block after ``command``: the output the docs show for it."""
    lines = command.path.read_text().splitlines()[command.line :]
    closing = next(i for i, line in enumerate(lines) if line.strip() == "```")
    start = next(i for i in range(closing + 1, len(lines)) if lines[i].strip() == "```") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "```")
    return lines[start:end]


def tool_env() -> dict[str, str]:
    """The environment the documented commands run in: this venv's relaygate and locust."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in list(env):
        if name.startswith(("RELAYGATE_", "LOCUST_")):
            del env[name]
    return env


def run(script: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Up:
    """``relaygate up`` (+ options) started in ``cwd``; its stdout lines as they come."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.stderr = (cwd / f"up-{time.monotonic_ns()}.err").open("w+")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=tool_env(), stdout=subprocess.PIPE, stderr=self.stderr, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_until(self, pattern: str, timeout: float = 60) -> list[str]:
        """Lines up to and including the first that matches ``pattern``."""
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"relaygate up printed no {pattern!r} in {timeout} s: {out}")
            if line is None:
                pytest.fail(f"relaygate up ended ({self.proc.wait()}): {out} {self.errors()}")
            out.append(line)
            if re.search(pattern, line):
                return out

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-2000:]

    def stop(self) -> int:
        """SIGTERM (the README's way to stop it); its exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        finally:
            self.stderr.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory laid out like the checkout for ``-f loadtests``; reports land here."""
    work = tmp_path_factory.mktemp("docs")
    (work / "loadtests").symlink_to(ROOT / "loadtests")
    return work


@dataclass
class UpSession:
    printed: list[str]  # what `relaygate up` printed until ready
    check: subprocess.CompletedProcess[str]  # the suite, run as `up` printed it
    refused: subprocess.CompletedProcess[str]  # the suite with a key the relay refuses
    env_file: Path
    env_file_existed: bool  # while the stack ran
    exit_code: int  # of `relaygate up`, stopped with SIGTERM


@pytest.fixture(scope="module")
def up_session(workdir: Path) -> UpSession:
    """``relaygate up``; the conformance suite exactly as it prints it (env file sourced, in
    ``workdir``: the report lands in ``workdir/reports``); then the stack stopped."""
    up = Up(["relaygate", "up"], workdir)
    try:
        printed = up.read_until(r"^Ctrl-C to stop")
        at = next(i for i, line in enumerate(printed) if line.strip().startswith("set -a;"))
        script = "\n".join(line.strip() for line in printed[at : at + 2])
        env_file = Path(ENV_FILE.findall(script)[0])
        existed = env_file.is_file()
        check = run(script, workdir, timeout=180)
        # README's sample of an unusable input: a key the relay refuses.
        elsewhere = workdir / "refused-key"
        elsewhere.mkdir()
        relay_url = URL.findall(printed[0])[0]
        refused = run(f"relaygate check --relay-url {relay_url} --relay-key sk-0", elsewhere, 60)
    finally:
        code = up.stop()
    return UpSession(printed, check, refused, env_file, existed, code)


@pytest.fixture(scope="module")
def worked_example(workdir: Path, up_session: UpSession) -> subprocess.CompletedProcess[str]:
    """The README's Locust worked example, as written, in ``workdir`` (after the stack of
    ``up_session`` stopped: one load at a time on two cores)."""
    return run(command_at(WORKED_EXAMPLE).text, workdir, timeout=180)


MASKED_KEY = re.compile(r"sk-\w{3}…\w{3}")


def _normalise(line: str) -> str:
    """A line with what differs run to run (ports, temp paths, masked keys) made constant."""
    line = MASKED_KEY.sub("sk-KEY", line.rstrip())
    return ENV_FILE.sub("ENV", URL.sub("URL", line))


@pytest.mark.timeout(300)
def test_up_prints_what_the_readme_shows_and_stops(up_session: UpSession) -> None:
    sample = [_normalise(line) for line in sample_output(command_at(UP)) if line.strip() != "…"]
    printed = [_normalise(line) for line in up_session.printed]
    missing = [line for line in sample if line not in printed]
    assert not missing, f"README.md: `relaygate up` prints no {missing}; it printed {printed}"
    order = [printed.index(line) for line in sample]
    assert order == sorted(order), f"README.md: `relaygate up` prints {printed}"
    # README: "runs until Ctrl-C / SIGTERM"; the env file is "removed when the stack stops".
    assert up_session.exit_code == 0
    assert up_session.env_file_existed and not up_session.env_file.exists()


@pytest.mark.timeout(300)
def test_the_check_up_prints_passes(up_session: UpSession, workdir: Path) -> None:
    done = up_session.check
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((workdir / "reports" / "conformance.json").read_text())
    # README: "with the admin token and upstream URL every case runs".
    summary = report["summary"]
    assert summary["passed"] > 0 and summary["failed"] == summary["skipped"] == 0, summary


@pytest.mark.timeout(300)
def test_a_refused_key_stops_the_suite_as_the_readme_shows(
    up_session: UpSession, workdir: Path
) -> None:
    done = up_session.refused
    out = done.stdout + done.stderr
    # README: "relaygate check exits 2" and "writes no report".
    assert done.returncode == 2, out[-3000:]
    assert not (workdir / "refused-key" / "reports").exists()
    readme = (ROOT / "README.md").read_text().splitlines()
    (sample,) = [line for line in readme if line.startswith("! _pytest.outcomes.Exit:")]
    pattern = re.escape(sample).replace(re.escape('{"error":…}'), r"\{.*\}")
    assert re.search(pattern, out), f"README.md: the refused-key line is not {sample!r}: {out}"


@pytest.mark.timeout(120)
def test_up_json_prints_the_documented_keys_and_stops(workdir: Path) -> None:
    command = command_at(UP)
    block = command.path.read_text().splitlines()[command.line : command.line + 4]
    comment = " ".join(line.lstrip("# ") for line in block if line.startswith("#"))
    documented = json.loads(comment)
    up = Up(list(command.argv), workdir)
    try:
        (line,) = up.read_until(r"^\{")
        printed = json.loads(line)
        assert printed.keys() == documented.keys()
        for key in ("relay_url", "upstream_url"):
            assert URL.fullmatch(printed[key]), printed[key]
        assert printed["relay_key"].startswith("sk-")
        assert printed["admin_token"].startswith("rg-admin-")
    finally:
        code = up.stop()
    assert code == 0


@pytest.mark.timeout(300)
def test_worked_example_passes_and_prints_the_sample_rows(
    worked_example: subprocess.CompletedProcess[str],
) -> None:
    out = worked_example.stdout + worked_example.stderr
    assert worked_example.returncode == 0, out[-4000:]
    sample = sample_output(command_at(WORKED_EXAMPLE))
    printed = out.splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith("relaygate metric"))
    assert printed[start].split() == sample[0].split()

    def rows(lines: list[str]) -> list[str]:
        labels = []
        for line in lines[1:]:
            fields = line.split()
            if len(fields) != 6 or not fields[1].isdigit():
                break
            labels.append(fields[0])
        return labels

    assert rows(printed[start:]) == rows(sample), "README.md: the worked example's rows differ"
    checks = [line.split(":")[0] for line in sample if line.startswith("CHECK ")]
    assert checks == [line.split(":")[0] for line in printed if line.startswith("CHECK ")]
    written = "relaygate summary written to reports/load-summary.json"
    assert any(line.endswith(written) for line in sample)
    assert any(line.endswith(written) for line in printed)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("text", GATES, ids=lambda t: command_at(t).where)
def test_gate_examples_pass_on_the_reports_written_above(
    text: str,
    workdir: Path,
    up_session: UpSession,
    worked_example: subprocess.CompletedProcess[str],
) -> None:
    where = command_at(text).where
    done = run(command_at(text).text, workdir, timeout=60)
    summary = json.loads((workdir / "reports" / "load-summary.json").read_text())
    if "--load" in text and not summary["latency_valid"]:
        # The load run's self-check found the harness itself too slow (a busy machine): the
        # gate must fail on that, and only on that.
        assert done.returncode == 1, f"{where}: {done.stdout}{done.stderr}"
        assert "self-check: latency percentiles INVALID" in done.stdout, done.stdout
        assert "FAILED" not in done.stdout.replace("GATE FAILED", ""), done.stdout
        return
    assert done.returncode == 0, f"{where}: {done.stdout}{done.stderr}"
    assert done.stdout.startswith("GATE PASSED"), done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        *([name, "--help"] for name in sorted(_subcommands())),
    ],
    ids=" ".join,
)
def test_help_runs(argv: list[str], tmp_path: Path) -> None:
    """Where readers find the options the docs leave out: offline, quick, exit 0."""
    done = subprocess.run(
        ["relaygate", *argv],
        cwd=tmp_path,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_relay_list_names_the_relays_of_the_readme_matrix(tmp_path: Path) -> None:
    done = run(command_at(RELAY_LIST).text, tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if not line[:1].isspace()}
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Third-party relays", 1)[1].split("\n## ", 1)[0]
    table = set(re.findall(r"^\| ([a-z][\w-]*) \| \d", section, flags=re.MULTILINE))
    assert listed and table - {"reference"} == listed, done.stdout


@pytest.mark.timeout(180)
def test_a_failed_case_prints_what_the_readme_shows(tmp_path: Path) -> None:
    """README "Reading a failure": F20 against the reference relay with the fault switch that
    answers an exhausted token with 429 (``wrong_quota_status``), on the embedded stack."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Reading a failure", 1)[1].split("```\n", 2)[1]
    sample = [line.strip() for line in block.splitlines() if line.strip()]
    assert sample[0].startswith("-> F20:"), sample
    done = run(
        "relaygate check --relay-fault wrong_quota_status -k test_token_exhausted",
        tmp_path,
        timeout=150,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    printed = [_normalise(line) for line in done.stdout.splitlines()]
    at = 0
    for line in sample:
        # "…" elides (a JSON body, the rest of a command, the middle of a masked key).
        pattern = ".*".join(re.escape(part) for part in _normalise(line).split("…"))
        found = [i for i in range(at, len(printed)) if re.search(pattern, printed[i])]
        assert found, f"README.md: a failed case prints no {line!r}: {done.stdout[-3000:]}"
        at = found[0] + 1
