"""LM-Proxy 3.3.2 (PyPI ``lm-proxy``): an OpenAI-compatible proxy with virtual keys and groups.

Two configurations, each rendered to ``config.toml`` in the run dir:

``default`` (``fixtures/relays/lm-proxy/config.toml``): exact model names in ``[routing]``, the
form README "Models List Endpoint" asks for ("all supported models must be explicitly defined in
the routing configuration"), with no catch-all (a catch-all would remap unknown names).
``wildcard`` (``fixtures/relays/lm-proxy/wildcard.toml``): the pattern routes of README "Quick
Start" and "Dynamic Model Routing": ``"gpt*" = "mock.*"`` and the fallback
``"*" = "mock.gpt-3.5-turbo"``.

Both have two OpenAI-compatible connections to the mock upstream (``{upstream}/v1`` with the
mock's key): ``mock`` and ``mock_mini`` (gpt-4o-mini). Groups restrict *connections*, not models
(README "User Groups Configuration"), so the second connection is what lets a key be limited to
gpt-4o-mini: ``FUNDED`` (group ``default``, all connections) and ``MODEL_RESTRICTED`` (group
``mini_only``, ``mock_mini`` only).

No ``RATE_LIMITED`` key: LM-Proxy's documented ``RateLimiter`` (README "Rate Limiter") applies one
limit to every key (``per = "api_key"`` gives each key its own window of the same size), so one
key cannot be limited while the funded key stays unlimited without a handler of our own, which
LM-Proxy does not ship. LM-Proxy has no quota, expiry or disabled keys either.

The server is started as ``python -m lm_proxy --config config.toml --env ""`` in the run dir; it
binds the config's ``host``, set to ``127.0.0.1`` (the default is ``0.0.0.0``). ``--env ""`` and
``USE_DOT_ENV=false`` keep LM-Proxy and its LLM client library (microcore) from loading any
``.env`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from relaygate.thirdparty.base import (
    DEFAULT_CONFIGURATION,
    PipRelayDriver,
    RelayConfiguration,
    RelayPlan,
    config_values,
    loopback_plan,
    venv_python,
)

__all__ = ["KEYS", "LMProxyDriver"]

#: Virtual keys per relaygate key state (LM-Proxy accepts any string; these look like OpenAI's).
KEYS: dict[str, str] = {
    "FUNDED": "sk-lmproxy-relaygate-funded-00000000000000000000",
    "MODEL_RESTRICTED": "sk-lmproxy-relaygate-mini-only-000000000000000",
}

_CONFIG = "config.toml"
_TEMPLATES = {"default": "config.toml", "wildcard": "wildcard.toml"}
_README = "package:lm-proxy/lm_proxy-3.3.2.dist-info/METADATA"


class LMProxyDriver(PipRelayDriver):
    """LM-Proxy, configured by a rendered ``config.toml``, on loopback."""

    name: ClassVar[str] = "lm-proxy"
    version: ClassVar[str] = "3.3.2"
    distribution: ClassVar[str] = "lm_proxy"
    requirements: ClassVar[tuple[str, ...]] = ("lm-proxy==3.3.2",)
    profile: ClassVar[str] = "lm-proxy"
    description: ClassVar[str] = (
        "LM-Proxy: OpenAI-compatible proxy (FastAPI + microcore) with virtual keys, "
        "groups restricted to connections and routing by model-name pattern"
    )
    homepage: ClassVar[str] = "https://pypi.org/project/lm-proxy/"
    start_timeout_s: ClassVar[float] = 60.0
    configurations: ClassVar[tuple[RelayConfiguration, ...]] = (
        RelayConfiguration(
            name="default",
            description=(
                "exact model names in [routing], no catch-all; groups: all connections, "
                "gpt-4o-mini's connection only"
            ),
            docs=(
                f"{_README} § Models List Endpoint, § User Groups Configuration "
                "(https://github.com/Nayjest/lm-proxy#models-list-endpoint)"
            ),
        ),
        RelayConfiguration(
            name="wildcard",
            description=(
                'pattern routes "gpt-4o-mini", "gpt*" and the fallback "*" = gpt-3.5-turbo; '
                "same groups"
            ),
            docs=(
                f"{_README} § Quick Start, § Dynamic Model Routing "
                "(https://github.com/Nayjest/lm-proxy#dynamic-model-routing)"
            ),
        ),
    )

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
        self.configuration(configuration)  # an unknown name fails here, before anything is written
        values = config_values(upstream_url, upstream_key, KEYS, PORT=str(port))
        [config] = self.render_config(run_dir, values, {_TEMPLATES[configuration]: _CONFIG})
        argv = [
            str(venv_python(install_dir)),
            "-m",
            "lm_proxy",
            "--config",
            str(config),
            "--env",
            "",
        ]
        return loopback_plan(
            argv,
            run_dir,
            port=port,
            # No health route, and /v1/models needs a key: FastAPI's schema answers once it is up.
            health_path="/openapi.json",
            keys=KEYS,
            env={"USE_DOT_ENV": "false"},
        )
