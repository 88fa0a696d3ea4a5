"""LiteLLM proxy (``litellm[proxy]`` on PyPI), pinned to 1.82.6, in three configurations.

Each configuration is a deployment LiteLLM's own docs present as normal, run as its own matrix
row (``litellm``, ``litellm:quickstart``, ``litellm:limits``); none has a database.

* ``default`` (custom auth): ``general_settings.custom_auth`` (``custom_auth.py``) maps fixed keys
  to ``UserAPIKeyAuth`` objects carrying only the fields whose enforcement LiteLLM documents for
  custom auth: ``rpm_limit``, ``expires`` and ``models``, with the two flags the docs name for
  the last two. No blocked key (the docs promise no enforcement of ``blocked`` for custom auth)
  and no budget-exhausted key (a key's ``max_budget`` is "not supported" there).
* ``quickstart``: a model list and ``general_settings.master_key``; every client uses the
  master key.
* ``limits``: the quick start plus per-deployment ``rpm``/``tpm`` and per-deployment budgets
  (``max_budget``/``budget_duration``), as the load-balancing and budget-routing docs show.

Shared by all three:

* **Version**: exactly ``1.82.6``. 1.82.7 and 1.82.8 were compromised releases on PyPI; the pin
  must never move to them. Installed into its own venv under the relays home.
* **Models**: ``gpt-4o``, ``gpt-4o-mini``, ``gpt-4``, ``gpt-3.5-turbo`` and
  ``text-embedding-3-small``, each an ``openai/<model>`` deployment whose ``api_base`` is the mock
  upstream's ``/v1`` and whose ``api_key`` is the mock's channel key. ``num_retries: 0`` and
  ``disable_cooldowns`` so that one client request is one upstream request and an injected
  upstream fault does not take a deployment out of rotation for the cases that follow.
* **Keys**: LiteLLM's virtual keys need its Postgres database through Prisma, whose engine
  binaries cannot be downloaded here: a key state no configuration can express without it is
  left out, and the profile says why.
* **No outbound traffic**: ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (else the cost map is fetched
  from the Internet at start), ``--telemetry False``, no logging callbacks, no admin UI.
* **Binding**: ``--host 127.0.0.1``; health is ``GET /health/liveliness`` (no auth).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import ClassVar

from relaygate.thirdparty.base import (
    DEFAULT_CONFIGURATION,
    LOOPBACK,
    PipRelayDriver,
    RelayConfiguration,
    RelayPlan,
    config_values,
    loopback_plan,
)

__all__ = [
    "CONFIGURATIONS",
    "KEYS",
    "MASTER_KEY",
    "RATE_LIMIT_RPM",
    "LiteLLMDriver",
    "Setup",
]

VERSION = "1.82.6"

#: the proxy admin key (general_settings.master_key); LiteLLM wants it to start with "sk-"
MASTER_KEY = "sk-relaygate-litellm-master-0c5e2b7d9a41"

#: requests per minute allowed to the RATE_LIMITED key (UserAPIKeyAuth.rpm_limit)
RATE_LIMIT_RPM = 2

#: one fixed key per relaygate KeyState the custom_auth hook describes (default configuration)
KEYS: dict[str, str] = {
    "FUNDED": "sk-relaygate-litellm-funded-4b1d8e6f0a23",
    "EXPIRED": "sk-relaygate-litellm-expired-2a6f0d3c8e94",
    "MODEL_RESTRICTED": "sk-relaygate-litellm-restricted-7c3e9b5d2a16",
    "RATE_LIMITED": "sk-relaygate-litellm-ratelimited-1f7b3d9c5e42",
}

#: the per-deployment limits of the ``limits`` configuration: what a small deployment sets,
#: far above the suite's and the load run's traffic (they are routing weights, see limits.yaml)
DEPLOYMENT_RPM = 600
DEPLOYMENT_TPM = 1_000_000
#: USD per deployment per day (LiteLLM's cost map prices the mock's usage)
DEPLOYMENT_MAX_BUDGET = 10.0


@dataclasses.dataclass(frozen=True)
class Setup:
    """What one configuration renders (templates in fixtures/relays/litellm) and its keys."""

    templates: dict[str, str]
    keys: dict[str, str]


CONFIGURATIONS: tuple[RelayConfiguration, ...] = (
    RelayConfiguration(
        name="default",
        description=(
            "custom auth: config-file keys (general_settings.custom_auth) with rpm_limit, "
            "expires and models, master key, no database"
        ),
        docs=(
            "https://docs.litellm.ai/docs/proxy/custom_auth#usage; "
            "https://docs.litellm.ai/docs/proxy/access_management/custom_auth_permissions"
            "#what-gets-enforced"
        ),
    ),
    RelayConfiguration(
        name="quickstart",
        description="quick start: model list and master key only, no database",
        docs="https://docs.litellm.ai/docs/proxy/configs#quick-start",
        profile="litellm-quickstart",
    ),
    RelayConfiguration(
        name="limits",
        description=(
            "per-deployment rpm/tpm and per-deployment budgets (max_budget, budget_duration), "
            "master key only, no database"
        ),
        docs=(
            "https://docs.litellm.ai/docs/proxy/load_balancing#quick-start---load-balancing; "
            "https://docs.litellm.ai/docs/proxy/provider_budget_routing#model-budgets"
        ),
        profile="litellm-limits",
    ),
)

_SETUPS: dict[str, Setup] = {
    "default": Setup(
        templates={"config.yaml": "config.yaml", "custom_auth.py": "custom_auth.py"},
        keys=KEYS,
    ),
    "quickstart": Setup(templates={"quickstart.yaml": "config.yaml"}, keys={"FUNDED": MASTER_KEY}),
    "limits": Setup(templates={"limits.yaml": "config.yaml"}, keys={"FUNDED": MASTER_KEY}),
}


class LiteLLMDriver(PipRelayDriver):
    """LiteLLM proxy without a database: custom auth, quick start, deployment limits."""

    name = "litellm"
    version = VERSION
    distribution = "litellm"
    requirements = (f"litellm[proxy]=={VERSION}",)
    pip_timeout_s = 1200.0
    profile = "litellm"
    description = "LiteLLM proxy (BerriAI), OpenAI-compatible gateway, config-level keys"
    homepage = "https://pypi.org/project/litellm/ (docs: https://docs.litellm.ai/docs/simple_proxy)"
    start_timeout_s: ClassVar[float] = 120.0
    configurations: ClassVar[tuple[RelayConfiguration, ...]] = CONFIGURATIONS

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
        self.configuration(configuration)  # an unknown name is a clear error
        setup = _SETUPS[configuration]
        values = config_values(
            upstream_url,
            upstream_key,
            setup.keys,
            MASTER_KEY=MASTER_KEY,
            RATE_LIMIT_RPM=str(RATE_LIMIT_RPM),
            DEPLOYMENT_RPM=str(DEPLOYMENT_RPM),
            DEPLOYMENT_TPM=str(DEPLOYMENT_TPM),
            DEPLOYMENT_MAX_BUDGET=str(DEPLOYMENT_MAX_BUDGET),
        )
        # A run dir reused across configurations must not keep another one's hook.
        (run_dir / "custom_auth.py").unlink(missing_ok=True)
        self.render_config(run_dir, values, setup.templates)
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
            argv, run_dir, port=port, health_path="/health/liveliness", keys=setup.keys, env=env
        )
