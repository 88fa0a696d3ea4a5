"""LM-Proxy 3.3.2 (PyPI ``lm-proxy``): an OpenAI-compatible proxy with virtual keys and groups.

What is configured, and why (``fixtures/relays/lm-proxy/config.toml``, rendered to
``config.toml`` in the run dir):

* two OpenAI-compatible connections to the mock upstream (``{upstream}/v1`` with the mock's
  key): ``mock`` for gpt-4o, gpt-4 and gpt-3.5-turbo, ``mock_mini`` for gpt-4o-mini. Groups
  restrict *connections*, not models, so the second connection is what lets a key be limited to
  gpt-4o-mini. Routing lists the exact model names, with no catch-all (a catch-all would remap
  unknown names);
* three key groups with one virtual key each: ``FUNDED`` (all connections),
  ``MODEL_RESTRICTED`` (``mock_mini`` only) and ``RATE_LIMITED`` (all connections, plus LM-Proxy's
  own ``RateLimiter`` at :data:`RATE_LIMIT` per key). The built-in limiter applies to every key,
  so a small hook (``relaygate_lm_proxy_hooks.GroupRateLimiter``, a subclass of it registered
  through the documented ``[[before]]`` handler list) applies it to that group only.

LM-Proxy has no quota, expiry or disabled keys, so only those three states exist. The server is
started as ``python -m lm_proxy --config config.toml --env ""`` in the run dir (the hook is
importable from there); it binds the config's ``host``, set to ``127.0.0.1`` (the default is
``0.0.0.0``). ``--env ""`` and ``USE_DOT_ENV=false`` keep LM-Proxy and its LLM client library
(microcore) from loading any ``.env`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from relaygate.thirdparty.base import (
    PipRelayDriver,
    RelayPlan,
    config_values,
    loopback_plan,
    venv_python,
)

__all__ = ["KEYS", "RATE_LIMIT", "LMProxyDriver"]

#: Virtual keys per relaygate key state (LM-Proxy accepts any string; these look like OpenAI's).
KEYS: dict[str, str] = {
    "FUNDED": "sk-lmproxy-relaygate-funded-00000000000000000000",
    "MODEL_RESTRICTED": "sk-lmproxy-relaygate-mini-only-000000000000000",
    "RATE_LIMITED": "sk-lmproxy-relaygate-rate-limited-000000000000",
}
#: The RATE_LIMITED key's limit, in relaygate's ``N/Ws`` notation.
RATE_LIMIT = "2/1s"
_RATE_LIMIT_REQUESTS, _RATE_LIMIT_WINDOW_S = "2", "1"

_CONFIG = "config.toml"
_HOOK = "relaygate_lm_proxy_hooks.py"


class LMProxyDriver(PipRelayDriver):
    """LM-Proxy, configured by a rendered ``config.toml``, on loopback."""

    name: ClassVar[str] = "lm-proxy"
    version: ClassVar[str] = "3.3.2"
    distribution: ClassVar[str] = "lm_proxy"
    requirements: ClassVar[tuple[str, ...]] = ("lm-proxy==3.3.2",)
    profile: ClassVar[str] = "lm-proxy"
    description: ClassVar[str] = (
        "LM-Proxy: OpenAI-compatible proxy (FastAPI + microcore) with virtual keys, "
        "groups restricted to connections and a per-key rate limiter"
    )
    homepage: ClassVar[str] = "https://pypi.org/project/lm-proxy/"
    start_timeout_s: ClassVar[float] = 60.0

    def prepare(
        self,
        install_dir: Path,
        run_dir: Path,
        *,
        port: int,
        upstream_url: str,
        upstream_key: str,
    ) -> RelayPlan:
        values = config_values(
            upstream_url,
            upstream_key,
            KEYS,
            PORT=str(port),
            RATE_LIMIT_REQUESTS=_RATE_LIMIT_REQUESTS,
            RATE_LIMIT_WINDOW_S=_RATE_LIMIT_WINDOW_S,
        )
        config, _ = self.render_config(run_dir, values, {_CONFIG: _CONFIG, _HOOK: _HOOK})
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
            env={"USE_DOT_ENV": "false", "PYTHONPATH": str(run_dir)},
            # For the 429 prober (RateLimitUser): its own key and that key's limit. The funded
            # key, which the streaming users load, has no limit.
            load_args=("--rl-key", KEYS["RATE_LIMITED"], "--rate-limit", RATE_LIMIT),
        )
