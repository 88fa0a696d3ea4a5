"""Every relaygate option, declared once.

The pytest plugin (:mod:`relaygate.pytest_plugin`), the Locust plugin
(:mod:`relaygate.load.locust_options`) and ``relaygate demo`` (:mod:`relaygate.cli.demo`) build
their options from :data:`OPTIONS`, so a flag, its environment variable, its help and its
default cannot differ between them. ``tests/test_options.py`` pins the public contract (every
flag, env var, ini key and default) and checks that the three ``--help`` texts agree.

How each surface reads an :class:`Option`:

* **pytest**: the flag, the ini key ``ini`` and the env var; command line > env var > ini file.
  ``default`` is the ini key's default.
* **Locust**: the flag with ``env_var`` (configargparse); offered in the web UI's start form
  unless ``secret`` or ``repeatable``. An unset text option is ``""`` there, as Locust's form
  expects.
* **demo**: the flag; a single-valued option falls back to its env var.

Every ``--help`` shows :attr:`Option.help_with_env`.

Adding an option (e.g. a new pytest option ``--live-budget``)::

    Option(
        "--live-budget", "RELAYGATE_LIVE_BUDGET", "spend cap of the live audit in USD",
        default="1.0", type=float, surfaces=PYTEST, ini="live_budget",
    ),

then read it where it is used (pytest: ``relaygate.pytest_plugin.option_value(config,
"--live-budget")``; Locust: ``environment.parsed_options.live_budget``) and add it to
``CONTRACT`` in ``tests/test_options.py``. A secret (a key, or a value that carries one) gets
``secret=True``: the pytest and Locust plugins mask its value in everything they write, and
Locust's web UI never offers it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

__all__ = [
    "DEMO",
    "LOCUST",
    "OPTIONS",
    "PYTEST",
    "Option",
    "Surface",
    "by_flag",
    "options_for",
    "parse_text",
]


class Surface(enum.Flag):
    """Where an option is offered."""

    PYTEST = enum.auto()
    LOCUST = enum.auto()
    DEMO = enum.auto()


PYTEST = Surface.PYTEST
LOCUST = Surface.LOCUST
DEMO = Surface.DEMO


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """One option: the same flag, env var, help and default on every surface it is on."""

    flag: str
    env: str
    help: str
    default: Any = None
    """The value when neither the flag nor the env var (nor, for pytest, the ini key) is given;
    ``None``: not set."""
    type: Callable[[str], Any] = str
    """Parses the text of a command line, an env var or a web-UI field."""
    surfaces: Surface = PYTEST
    secret: bool = False
    """A key or a value that carries one: masked wherever shown, never in the web UI's form."""
    repeatable: bool = False
    """``--flag a --flag b``: a list (default ``[]``)."""
    switch: bool = False
    """A flag without a value (``store_true``)."""
    choices: tuple[str, ...] | None = None
    ini: str | None = None
    """The pytest ini key (pytest options only)."""
    pytest_dest: str | None = None
    """pytest's attribute name when it is not :attr:`name` (``--relay-fault`` ->
    ``relay_faults``; kept as it was, pytest's ``config.getoption`` is public)."""
    section: str = "target"
    """The demo's help group: ``target``, ``load``, ``gate`` or ``output``."""

    @property
    def name(self) -> str:
        """The attribute the parsed value is stored under (argparse's, from the flag)."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def help_with_env(self) -> str:
        """The help as every ``--help`` shows it: with the env var."""
        return f"{self.help} [env {self.env}]"


# Defaults that are also constants elsewhere (tests/test_options.py keeps them equal):
# relaygate.suite.target.DEFAULT_MAX_BYTES, relaygate.load.client.DEFAULT_REQUEST_TIMEOUT_S
# and DEFAULT_MAX_RESPONSE_BYTES, relaygate.load.prober.PHASES. Not imported: loading the
# pytest plugin must not import the load package.
_MIB_16 = 16 * 1024 * 1024
_PHASES = "discover,steps,retry_after,recovery,fairness,retry_policies,billing"

OPTIONS: tuple[Option, ...] = (
    # -- the relay under test -------------------------------------------------------------
    Option(
        "--relay-url", "RELAYGATE_RELAY_URL",
        "base URL of the relay under test (with or without /v1); absent: start the embedded "
        "mock upstream + reference relay",
        surfaces=PYTEST | DEMO, ini="relay_url",
    ),
    Option(
        "--relay-key", "RELAYGATE_RELAY_KEY",
        "a funded key of the relay (prefer the env var: a command line is visible to other "
        "users of the machine); embedded stack: its own key",
        surfaces=PYTEST | LOCUST | DEMO, secret=True, ini="relay_key",
    ),
    Option(
        "--relay-admin-token", "RELAYGATE_RELAY_ADMIN_TOKEN",
        "admin token: lets the suite provision the other keys a case needs",
        surfaces=PYTEST | DEMO, secret=True, ini="relay_admin_token",
    ),
    Option(
        "--relay-profile", "RELAYGATE_RELAY_PROFILE",
        "a shipped profile name (faq, strict-openai, one-api, new-api, litellm, …; "
        "fixtures/profiles) or a TOML path (default faq)",
        default="faq", surfaces=PYTEST | DEMO, ini="relay_profile",
    ),
    Option(
        "--relay-key-group", "RELAYGATE_RELAY_KEY_GROUP",
        "the group --relay-key's user belongs to (one-api/new-api groups price by it): billing "
        "checks and the live audit's spend use its ratio from the profile (default: default)",
        default="default", surfaces=PYTEST | DEMO, ini="relay_key_group",
    ),
    Option(
        "--upstream-url", "RELAYGATE_UPSTREAM_URL",
        "URL of the upstream the relay's channels point at: the relaygate mock upstream enables "
        "the ground-truth cases (absent with --relay-url: live mode); RelayOverheadUser calls it "
        "directly for comparison",
        surfaces=PYTEST | LOCUST | DEMO, ini="upstream_url",
    ),
    Option(
        "--relay-header", "RELAYGATE_RELAY_HEADERS",
        "'Name: value' sent on every request to the relay, over the profile's [http] "
        "extra_headers (repeatable; the env var takes newline- or ';'-separated lines)",
        surfaces=PYTEST | LOCUST, secret=True, repeatable=True, ini="relay_headers",
        pytest_dest="relay_headers",
    ),
    # -- the conformance suite ------------------------------------------------------------
    Option(
        "--relay-timeout", "RELAYGATE_RELAY_TIMEOUT",
        "total deadline in seconds for every request the suite sends, reading the answer "
        "included (a stream that drips forever is cut; default 30)",
        default=30, type=float, ini="relay_timeout",
    ),
    Option(
        "--relay-max-bytes", "RELAYGATE_RELAY_MAX_BYTES",
        "byte cap on every answer the suite reads (default 16 MiB); a longer one is cut",
        default=_MIB_16, type=int, ini="relay_max_bytes",
    ),
    Option(
        "--relay-fuzz-examples", "RELAYGATE_RELAY_FUZZ_EXAMPLES",
        "examples per property-based case (seeded, bounded; default 25)",
        default=25, type=int, ini="relay_fuzz_examples",
    ),
    Option(
        "--relay-fault", "RELAYGATE_RELAY_FAULTS",
        "embedded stack only: start the reference relay with this fault switch (comma list)",
        ini="relay_faults", pytest_dest="relay_faults",
    ),
    # -- live mode: what the audit may spend ------------------------------------------------
    Option(
        "--live-budget", "RELAYGATE_LIVE_BUDGET",
        "live mode: cap on what the run may spend, in US dollars (0.50, 0.5usd, $0.5) or quota "
        "units (250000q); a request that could pass it is not sent and the remaining live cases "
        "skip with 'live budget spent'",
        ini="live_budget",
    ),
    Option(
        "--live-dry-run", "RELAYGATE_LIVE_DRY_RUN",
        "live mode: send nothing to the relay; run the suite against a local stand-in (the "
        "embedded stack, keys only) and print the plan: requests, max tokens, estimated cost",
        default=False, switch=True, ini="live_dry_run",
    ),
    # -- the load run ---------------------------------------------------------------------
    Option(
        "--model", "RELAYGATE_MODEL", "model name sent in every request (default gpt-4o-mini)",
        default="gpt-4o-mini", surfaces=LOCUST, section="load",
    ),
    Option(
        "--prompt-tokens", "RELAYGATE_PROMPT_TOKENS",
        "approximate prompt length in tokens (synthetic text; default 64)",
        default=64, type=int, surfaces=LOCUST, section="load",
    ),
    Option(
        "--max-tokens", "RELAYGATE_MAX_TOKENS", "max_tokens of every request (default 128)",
        default=128, type=int, surfaces=LOCUST, section="load",
    ),
    Option(
        "--mock-ttft-ms", "RELAYGATE_MOCK_TTFT_MS",
        "directive to the mock upstream: arrival -> first content event (ms)",
        type=float, surfaces=LOCUST, section="load",
    ),
    Option(
        "--mock-itl-ms", "RELAYGATE_MOCK_ITL_MS",
        "directive to the mock upstream: gap between content events (ms)",
        type=float, surfaces=LOCUST, section="load",
    ),
    Option(
        "--mock-output-tokens", "RELAYGATE_MOCK_OUTPUT_TOKENS",
        "directive to the mock upstream: number of content events (one token each)",
        type=int, surfaces=LOCUST, section="load",
    ),
    Option(
        "--target-rps", "RELAYGATE_TARGET_RPS",
        "open loop: total requests/s over all users and processes (spare users needed)",
        type=float, surfaces=LOCUST, section="load",
    ),
    Option(
        "--arrival", "RELAYGATE_ARRIVAL", "open-loop arrival process for --target-rps",
        default="constant", choices=("constant", "poisson"), surfaces=LOCUST, section="load",
    ),
    Option(
        "--slo", "RELAYGATE_SLO",
        "SLO rule for the load run, repeatable, e.g. ttft_p95_ms<=500, error_rate<=0.01, "
        "rate_limit_accuracy>=0.9; any failing rule makes the exit code 1",
        repeatable=True, surfaces=LOCUST | DEMO, section="gate",
    ),
    Option(
        "--no-plots", "RELAYGATE_NO_PLOTS", "skip the PNG plots (saves the matplotlib import)",
        default=False, switch=True, surfaces=LOCUST, section="output",
    ),
    Option(
        "--stream-timeout", "RELAYGATE_STREAM_TIMEOUT",
        "seconds without a byte before a request counts as timeout (default 120)",
        default=120.0, type=float, surfaces=LOCUST, section="load",
    ),
    Option(
        "--request-timeout", "RELAYGATE_REQUEST_TIMEOUT",
        "total seconds per request, connect to last byte, before it counts as request_timeout "
        "(a stream that drips forever; default 300)",
        default=300.0, type=float, surfaces=LOCUST, section="load",
    ),
    Option(
        "--max-response-bytes", "RELAYGATE_MAX_RESPONSE_BYTES",
        "byte cap per response (head and body) before it counts as oversize (default 16777216)",
        default=_MIB_16, type=int, surfaces=LOCUST, section="load",
    ),
    Option(
        "--rx-stamps", "RELAYGATE_RX_STAMPS",
        "arrival time of received bytes: the kernel's receive stamp (SO_TIMESTAMPNS, plain HTTP "
        "on Linux; default) or when recv() returned in the client",
        default="kernel", choices=("kernel", "user"), surfaces=LOCUST, section="load",
    ),
    Option(
        "--upstream-key", "RELAYGATE_UPSTREAM_KEY", "RelayOverheadUser: API key for --upstream-url",
        secret=True, surfaces=LOCUST, section="load",
    ),
    Option(
        "--rate-limit", "RELAYGATE_RATE_LIMIT",
        "declared per-key limit N/Ws (e.g. 10/1s): runs the 429 prober's analysis against it; "
        "also the embedded stack's limit (default there with the prober: 10/1s)",
        surfaces=LOCUST | DEMO, section="load",
    ),
    Option(
        "--rl-phases", "RELAYGATE_RL_PHASES",
        f"RateLimitUser phases, comma list of: {_PHASES.replace(',', ', ')}",
        default=_PHASES, surfaces=LOCUST, section="load",
    ),
    Option(
        "--rl-measure-windows", "RELAYGATE_RL_MEASURE_WINDOWS",
        "RateLimitUser: measured windows per offered-load step (default 2)",
        default=2.0, type=float, surfaces=LOCUST, section="load",
    ),
    Option(
        "--rl-steps", "RELAYGATE_RL_STEPS",
        "RateLimitUser: offered load per step as multiples of the limit rate",
        default="0.5,1,1.5,3", surfaces=LOCUST, section="load",
    ),
    Option(
        "--rl-key", "RELAYGATE_RL_KEY",
        "the 429 prober's (RateLimitUser's) key (default --relay-key); give it a key of its own "
        "when other users run alongside (the embedded stack does)",
        secret=True, surfaces=LOCUST | DEMO, section="load",
    ),
    Option(
        "--fairness-keys", "RELAYGATE_FAIRNESS_KEYS",
        "extra relay keys (comma list) for the fairness phase; the embedded stack provisions 3 "
        "when empty",
        secret=True, surfaces=LOCUST, section="load",
    ),
    Option(
        "--stack-faults", "RELAYGATE_STACK_FAULTS",
        "embedded stack only: reference-relay fault switches, comma list (e.g. buffer_streams, "
        "ignore_rate_limit)",
        surfaces=LOCUST, section="load",
    ),
    # -- reports --------------------------------------------------------------------------
    Option(
        "--report-dir", "RELAYGATE_REPORT_DIR",
        "directory for the reports (default reports): conformance.json/.html, load-summary.json, "
        "load-metrics.csv, the PNG plots, index.html; the suite on the embedded stack writes "
        "them only when it is given",
        default="reports", surfaces=PYTEST | LOCUST | DEMO, ini="report_dir", section="output",
    ),
)  # fmt: skip


def parse_text(option: Option, text: str) -> Any:
    """The value of ``text`` typed into a form field for ``option`` (Locust's web UI passes
    a field it has no default type for as text): blank is the default; raises ``ValueError``
    with the flag for text the option does not take."""
    if not text.strip():
        return option.default
    try:
        value = option.type(text.strip())
    except ValueError:
        raise ValueError(f"{option.flag}: {text.strip()!r} is not a valid value") from None
    if option.choices is not None and value not in option.choices:
        raise ValueError(f"{option.flag}: {value!r} is not one of {', '.join(option.choices)}")
    return value


def options_for(surface: Surface) -> tuple[Option, ...]:
    """The options offered on ``surface``, in table order."""
    return tuple(option for option in OPTIONS if surface in option.surfaces)


def by_flag(flag: str) -> Option:
    """The option declared as ``flag`` (``KeyError`` when there is none)."""
    for option in OPTIONS:
        if option.flag == flag:
            return option
    raise KeyError(flag)
