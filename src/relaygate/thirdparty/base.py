"""What a third-party relay driver provides, and the install helpers drivers share.

A driver knows one relay: which exact version to install (into its own directory, never into
relaygate's environment), how to configure it against the relaygate mock upstream, how to start
it on loopback, how to tell it is ready, and which keys it was configured with. The launcher
(:mod:`relaygate.thirdparty.launcher`) does the rest (processes, health, PID files, stopping).

Layout of a relay's home (``<relays home>/<name>/``)::

    install/   the relay's venv or node_modules (kept between runs; reinstalled on version change)
    run/       per-start work dir: rendered config, relay.log, relay.pid, relay.json
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, ClassVar

from relaygate.keys import masked_repr

__all__ = [
    "DEFAULT_CONFIGURATION",
    "LOOPBACK",
    "InstallError",
    "PipRelayDriver",
    "RelayConfiguration",
    "RelayDriver",
    "RelayPlan",
    "config_values",
    "fixture_dir",
    "loopback_plan",
    "npm_install",
    "parse_row",
    "relays_home",
    "render_template",
    "venv_install",
    "venv_python",
    "write_private",
]

LOOPBACK = "127.0.0.1"

#: The name of a driver's first configuration, the one its plain name (``litellm``) runs.
DEFAULT_CONFIGURATION = "default"


class InstallError(RuntimeError):
    """A relay could not be installed (the message names the command and the log)."""


@masked_repr("keys", "admin_token", "env", "extra_headers")
@dataclasses.dataclass(frozen=True)
class RelayPlan:
    """How to start one relay and how the harness talks to it once it is up.

    ``keys`` maps a :class:`relaygate.provision.KeyState` name (``"FUNDED"``, ``"DISABLED"``,
    ``"MODEL_RESTRICTED"``, ``"RATE_LIMITED"``, ``"TOKEN_EXHAUSTED"``, …) to a key the relay was
    configured with in that state; ``FUNDED`` is required. The suite receives them as
    ``RELAYGATE_KEY_<STATE>`` (static provisioning).
    """

    argv: Sequence[str]
    cwd: Path
    base_url: str
    health_url: str
    keys: Mapping[str, str]
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    admin_token: str | None = None
    extra_headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Locust arguments for the short load run (besides host/key/model), e.g. a known limit.
    load_args: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class RelayConfiguration:
    """One deployment of a relay that its own documentation presents as a normal one.

    Each configuration is a row of the matrix: ``litellm`` runs the driver's first
    configuration, ``litellm:quickstart`` the one named ``quickstart``.
    """

    #: short lowercase words joined by ``-``; the first configuration is ``"default"``
    name: str
    #: one line: what is configured (``"no database, master key only"``)
    description: str
    #: the relay's own documentation that shows this deployment (URL and section)
    docs: str
    #: the shipped profile of this configuration; None: the driver's :attr:`RelayDriver.profile`
    profile: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return dataclasses.asdict(self)


def parse_row(row: str) -> tuple[str, str]:
    """``"litellm"`` -> ``("litellm", "default")``; ``"litellm:quickstart"`` -> its parts."""
    name, _, configuration = row.partition(":")
    return name, configuration or DEFAULT_CONFIGURATION


class RelayDriver(ABC):
    """One third-party relay. Subclasses set the class variables and implement the methods."""

    name: ClassVar[str]
    #: the pinned version that the matrix runs (exactly this, never a range)
    version: ClassVar[str]
    #: shipped profile name in fixtures/profiles
    profile: ClassVar[str]
    description: ClassVar[str]
    #: where the relay comes from (PyPI/npm project and its docs), for reports
    homepage: ClassVar[str] = ""
    start_timeout_s: ClassVar[float] = 90.0
    #: every configuration the matrix runs, the default first (drivers override; the single
    #: default below stands for a driver that documents one deployment only)
    configurations: ClassVar[tuple[RelayConfiguration, ...]] = ()

    def all_configurations(self) -> tuple[RelayConfiguration, ...]:
        """:attr:`configurations`, or the one default configuration when none are declared."""
        if self.configurations:
            return self.configurations
        return (RelayConfiguration(DEFAULT_CONFIGURATION, self.description, self.homepage),)

    def configuration(self, name: str = DEFAULT_CONFIGURATION) -> RelayConfiguration:
        """The configuration called ``name``; ``KeyError`` naming the known ones otherwise."""
        known = self.all_configurations()
        for configuration in known:
            if configuration.name == name:
                return configuration
        names = ", ".join(c.name for c in known)
        raise KeyError(f"{self.name} has no configuration {name!r}; known: {names}")

    def rows(self) -> list[str]:
        """The matrix rows of this driver: ``name`` for the default, ``name:config`` else."""
        return [self.row(c.name) for c in self.all_configurations()]

    def row(self, configuration: str) -> str:
        first = self.all_configurations()[0].name
        return self.name if configuration == first else f"{self.name}:{configuration}"

    def profile_of(self, configuration: str = DEFAULT_CONFIGURATION) -> str:
        """The shipped profile a configuration is checked with."""
        return self.configuration(configuration).profile or self.profile

    @abstractmethod
    def is_installed(self, install_dir: Path) -> bool:
        """True when ``install_dir`` holds exactly :attr:`version`."""

    @abstractmethod
    def install(self, install_dir: Path, log: IO[str]) -> None:
        """Install :attr:`version` into ``install_dir``; raise :class:`InstallError`."""

    @abstractmethod
    def prepare(
        self,
        install_dir: Path,
        run_dir: Path,
        *,
        port: int,
        upstream_url: str,
        upstream_key: str,
        configuration: str = DEFAULT_CONFIGURATION,
    ) -> RelayPlan:
        """Render the relay's config into ``run_dir`` (from fixtures/relays/<name>/) and say how
        to start it on ``127.0.0.1:port`` with every channel pointing at ``upstream_url``
        (the mock upstream's root, no ``/v1``) authenticated by ``upstream_key``, deployed as
        ``configuration`` (one of :meth:`all_configurations`)."""

    def render_config(
        self, run_dir: Path, values: Mapping[str, str], templates: Mapping[str, str]
    ) -> list[Path]:
        """Render this relay's shipped templates into ``run_dir`` (``templates`` maps a file of
        ``fixtures/relays/<name>/`` to its name in ``run_dir``); the rendered paths, in order."""
        source = fixture_dir(self.name)
        return [
            render_template(source / template, run_dir / target, values)
            for template, target in templates.items()
        ]


class PipRelayDriver(RelayDriver):
    """A relay published on PyPI: installed with pip into ``install_dir/venv``.

    Subclasses set :attr:`distribution` (the dist-info name, e.g. ``"lm_proxy"``) and
    :attr:`requirements` (exact pins, the relay's own first).
    """

    distribution: ClassVar[str]
    requirements: ClassVar[tuple[str, ...]]
    pip_timeout_s: ClassVar[float] = 600.0

    def is_installed(self, install_dir: Path) -> bool:
        if not venv_python(install_dir).exists():
            return False
        dist_info = f"{self.distribution}-{self.version}.dist-info"
        site = install_dir / "venv" / "lib"
        return any(site.glob(f"python*/site-packages/{dist_info}"))

    def install(self, install_dir: Path, log: IO[str]) -> None:
        venv_install(install_dir, self.requirements, log, timeout_s=self.pip_timeout_s)
        if not self.is_installed(install_dir):
            raise InstallError(f"{self.name} {self.version} is not in {install_dir / 'venv'}")


def config_values(
    upstream_url: str, upstream_key: str, keys: Mapping[str, str], **extra: str
) -> dict[str, str]:
    """The placeholders the shipped relay configs share, then ``extra``: ``UPSTREAM_URL`` (the
    mock upstream's root, no trailing ``/``), ``UPSTREAM_KEY`` and ``KEY_<STATE>`` per key."""
    return {
        "UPSTREAM_URL": upstream_url.rstrip("/"),
        "UPSTREAM_KEY": upstream_key,
        **extra,
        **{f"KEY_{state}": key for state, key in keys.items()},
    }


def loopback_plan(
    argv: Sequence[str],
    run_dir: Path,
    *,
    port: int,
    health_path: str,
    keys: Mapping[str, str],
    env: Mapping[str, str] | None = None,
    extra_headers: Mapping[str, str] | None = None,
    load_args: Sequence[str] = (),
) -> RelayPlan:
    """The plan of a relay started in ``run_dir`` on ``127.0.0.1:port``: its API under ``/v1``,
    its readiness at ``health_path``."""
    root = f"http://{LOOPBACK}:{port}"
    return RelayPlan(
        argv=argv,
        cwd=run_dir,
        base_url=f"{root}/v1",
        health_url=f"{root}{health_path}",
        keys=dict(keys),
        env=dict(env or {}),
        extra_headers=dict(extra_headers or {}),
        load_args=load_args,
    )


# ---------------------------------------------------------------------------------------------
# Locations


def relays_home() -> Path:
    """Where relays are installed: ``$RELAYGATE_RELAYS_HOME`` or ``~/.cache/relaygate/relays``."""
    env = os.environ.get("RELAYGATE_RELAYS_HOME", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache) / "relaygate" / "relays"


def fixture_dir(name: str) -> Path:
    """The shipped config templates of relay ``name`` (``fixtures/relays/<name>``)."""
    from relaygate.shipped import shipped_dir

    return shipped_dir("fixtures/relays", "_relays", name) / name


def render_template(source: Path, target: Path, values: Mapping[str, str]) -> Path:
    """Copy ``source`` to ``target`` replacing each ``{{KEY}}`` with ``values[KEY]``.

    Unknown placeholders are an error (a config with a literal ``{{…}}`` left in it would start
    and misbehave instead of failing).
    """
    text = source.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise ValueError(f"{source}: unfilled placeholder {text[start : start + 40]!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_private(target, text)  # a rendered config holds the relay's keys
    return target


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (0600) from the first byte.

    The file is created 0600 under a temporary name and renamed into place, so there is never
    a moment when the keys in it are world-readable (whatever the umask) or half written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crashed run with the same pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Install helpers


def _run(argv: Sequence[str], log: IO[str], *, cwd: Path | None = None, timeout_s: float) -> None:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InstallError(f"{argv[0]} timed out after {timeout_s:.0f} s") from None
    except OSError as exc:
        raise InstallError(f"cannot run {argv[0]}: {exc}") from None
    if proc.returncode != 0:
        raise InstallError(f"{' '.join(argv[:4])} … exited with {proc.returncode}")


def venv_python(install_dir: Path) -> Path:
    return install_dir / "venv" / "bin" / "python"


def venv_install(
    install_dir: Path,
    requirements: Sequence[str],
    log: IO[str],
    *,
    timeout_s: float = 600.0,
) -> Path:
    """Create ``install_dir/venv`` (with this Python) and pip-install exact ``requirements``.

    Returns the venv's python. A stale venv is removed first.
    """
    venv = install_dir / "venv"
    if venv.exists():
        shutil.rmtree(venv)
    install_dir.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", str(venv)], log, timeout_s=120)
    python = venv_python(install_dir)
    _run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *requirements],
        log,
        timeout_s=timeout_s,
    )
    return python


def npm_install(
    install_dir: Path,
    packages: Sequence[str],
    log: IO[str],
    *,
    timeout_s: float = 600.0,
) -> None:
    """``npm install`` exact ``packages`` into ``install_dir/node_modules`` (no global state)."""
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError("npm is not on PATH (Node.js 20 is needed for this relay)")
    install_dir.mkdir(parents=True, exist_ok=True)
    package_json = install_dir / "package.json"
    if not package_json.exists():
        package_json.write_text('{"name": "relaygate-relay", "private": true}\n')
    _run(
        [npm, "install", "--no-audit", "--no-fund", "--save-exact", *packages],
        log,
        cwd=install_dir,
        timeout_s=timeout_s,
    )
