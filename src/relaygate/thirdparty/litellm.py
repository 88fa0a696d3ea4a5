"""LiteLLM proxy (``litellm[proxy]`` on PyPI), pinned to 1.82.6.

What is configured, and why:

* **Version**: exactly ``1.82.6``. 1.82.7 and 1.82.8 were compromised releases on PyPI; the pin
  must never move to them. Installed into its own venv under the relays home.
* **Models**: ``gpt-4o``, ``gpt-4o-mini``, ``gpt-4``, ``gpt-3.5-turbo`` and
  ``text-embedding-3-small``, each an ``openai/<model>`` deployment whose ``api_base`` is the mock
  upstream's ``/v1`` and whose ``api_key`` is the mock's channel key (``config.yaml``).
  ``num_retries: 0`` and ``disable_cooldowns`` so that one client request is one upstream
  request and an injected upstream fault does not take a deployment out of rotation for the
  cases that follow.
* **Keys**: LiteLLM's virtual keys need its Postgres database through Prisma, whose engine
  binaries cannot be downloaded here. So keys are config-level: a ``master_key`` and the
  documented ``general_settings.custom_auth`` hook (``custom_auth.py``) that maps fixed keys to
  ``UserAPIKeyAuth`` objects with LiteLLM's own documented fields: funded, ``blocked``,
  ``expires`` in the past, ``models`` = [gpt-4o-mini] and ``rpm_limit`` (a tight per-key limit).
  What LiteLLM does with each field is what the suite reports; the hook itself refuses only
  unknown keys. No budget-exhausted key: LiteLLM documents that a key's scalar ``max_budget`` is
  not enforced for custom auth (docs/proxy/access_management/custom_auth_permissions.md).
* **No outbound traffic**: ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (else the cost map is fetched
  from the Internet at start), ``--telemetry False``, no logging callbacks, no admin UI.
* **Binding**: ``--host 127.0.0.1``; health is ``GET /health/liveliness`` (no auth).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

from relaygate.thirdparty.base import (
    LOOPBACK,
    PipRelayDriver,
    RelayPlan,
    config_values,
    loopback_plan,
)

__all__ = ["KEYS", "MASTER_KEY", "RATE_LIMIT_RPM", "LiteLLMDriver"]

VERSION = "1.82.6"

#: the proxy admin key (general_settings.master_key); LiteLLM wants it to start with "sk-"
MASTER_KEY = "sk-relaygate-litellm-master-0c5e2b7d9a41"

#: requests per minute allowed to the RATE_LIMITED key (UserAPIKeyAuth.rpm_limit)
RATE_LIMIT_RPM = 2

#: one fixed key per relaygate KeyState the custom_auth hook describes
KEYS: dict[str, str] = {
    "FUNDED": "sk-relaygate-litellm-funded-4b1d8e6f0a23",
    "DISABLED": "sk-relaygate-litellm-disabled-9e2c4a7b1f58",
    "EXPIRED": "sk-relaygate-litellm-expired-2a6f0d3c8e94",
    "MODEL_RESTRICTED": "sk-relaygate-litellm-restricted-7c3e9b5d2a16",
    "RATE_LIMITED": "sk-relaygate-litellm-ratelimited-1f7b3d9c5e42",
}

_TEMPLATES = ("config.yaml", "custom_auth.py")


class LiteLLMDriver(PipRelayDriver):
    """LiteLLM proxy with config-level keys (master key + custom_auth), no database."""

    name = "litellm"
    version = VERSION
    distribution = "litellm"
    requirements = (f"litellm[proxy]=={VERSION}",)
    pip_timeout_s = 1200.0
    profile = "litellm"
    description = "LiteLLM proxy (BerriAI), OpenAI-compatible gateway, config + custom_auth keys"
    homepage = "https://pypi.org/project/litellm/ (docs: https://docs.litellm.ai/docs/simple_proxy)"
    start_timeout_s: ClassVar[float] = 120.0

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
            MASTER_KEY=MASTER_KEY,
            RATE_LIMIT_RPM=str(RATE_LIMIT_RPM),
        )
        self.render_config(run_dir, values, {name: name for name in _TEMPLATES})
        # custom_auth is imported relative to the config file; a stale bytecode cache of an
        # older rendering must not shadow the new one.
        shutil.rmtree(run_dir / "__pycache__", ignore_errors=True)
        argv = [
            str(install_dir / "venv" / "bin" / "litellm"),
            "--config",
            str(run_dir / "config.yaml"),
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--num_workers",
            "1",
            "--telemetry",
            "False",
        ]
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "DISABLE_ADMIN_UI": "True",
            "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
            "LITELLM_LOG": "INFO",
        }
        return loopback_plan(
            argv, run_dir, port=port, health_path="/health/liveliness", keys=KEYS, env=env
        )
