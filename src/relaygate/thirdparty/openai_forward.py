"""openai-forward 0.8.1 (PyPI ``openai-forward``): a transparent forwarding proxy with forward keys.

Two configurations, each rendered to ``.env`` in the run dir (openai-forward reads it from its
working directory):

``quickstart`` (``fixtures/relays/openai-forward/quickstart.env``): what ``aifd run`` does with
no keys configured (README "Quick Start", "Proxy OpenAI Model"): one forward to the upstream,
the client keeps the upstream's own ``sk-`` key, nothing is limited. The only key is the
upstream's (``FUNDED``).

``default`` (``fixtures/relays/openai-forward/openai-forward.env``), the forward-key deployment
of README "Custom Api Keys" with the level settings of ``.env.example`` and the per-level
``REQ_RATE_LIMIT`` form of the repository's ``.env``:

* one ``openai``-type forward at the root route, so ``/v1/...`` goes to the mock upstream;
* the mock's channel key as the only real key (``OPENAI_API_KEY_CONFIG``), serving levels 0-2;
* three forward keys (``fk-…``, the relay's own key format, swapped for the real key):
  ``FUNDED`` at level 0 (full access), ``MODEL_RESTRICTED`` at level 1 (``LEVEL_MODELS``:
  gpt-4o-mini only) and ``RATE_LIMITED`` at level 2 (every model, ``REQ_RATE_LIMIT``
  :data:`RATE_LIMIT` on chat completions);
* the chat log on (``LOG_OPENAI``), because 0.8.1 checks a level's model list only on payloads
  its chat logger parsed; the log goes to ``Log/`` inside the run dir;
* no response cache, no benchmark route, no web UI (nothing answers from memory or listens
  elsewhere).

Level 0 is the unlimited one (every model, no request limit: ``GLOBAL_RATE_LIMIT=inf``).
openai-forward has no quota, expiry or disabled keys, so only those three states exist.

``aifd run`` hard-codes ``host="0.0.0.0"`` (``openai_forward/__main__.py``); the driver starts the
same ASGI app (``openai_forward.app:app``) with uvicorn on ``127.0.0.1`` instead.
"""

from __future__ import annotations

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
    venv_python,
)

__all__ = ["KEYS", "RATE_LIMIT", "RATE_LIMIT_RELAYGATE", "OpenAIForwardDriver"]

#: Forward keys per relaygate key state (fixed strings in openai-forward's ``fk-`` format).
KEYS: dict[str, str] = {
    "FUNDED": "fk-relaygateFunded0000000000000000000000000000",
    "MODEL_RESTRICTED": "fk-relaygateMiniOnly000000000000000000000000000",
    "RATE_LIMITED": "fk-relaygateRateLimited0000000000000000000000",
}
#: The level-2 request limit (``limits`` notation) and the same limit in relaygate's ``N/Ws``.
RATE_LIMIT = "2/second"
RATE_LIMIT_RELAYGATE = "2/1s"

_TEMPLATES = {"default": "openai-forward.env", "quickstart": "quickstart.env"}
_README = "https://github.com/KenyonY/openai-forward/blob/v0.8.1/README_EN.md"
# openai-forward imports PyYAML (``openai_forward/__init__.py``) without declaring it.
_PYYAML = "pyyaml==6.0.4"


class OpenAIForwardDriver(PipRelayDriver):
    """openai-forward, configured by a rendered ``.env``, served by uvicorn on loopback."""

    name: ClassVar[str] = "openai-forward"
    version: ClassVar[str] = "0.8.1"
    distribution: ClassVar[str] = "openai_forward"
    requirements: ClassVar[tuple[str, ...]] = ("openai-forward==0.8.1", _PYYAML)
    profile: ClassVar[str] = "openai-forward"
    description: ClassVar[str] = (
        "openai-forward: transparent OpenAI forwarding proxy with forward keys, "
        "per-level model lists and per-route request limits"
    )
    homepage: ClassVar[str] = "https://pypi.org/project/openai-forward/"
    start_timeout_s: ClassVar[float] = 60.0
    configurations: ClassVar[tuple[RelayConfiguration, ...]] = (
        RelayConfiguration(
            name="default",
            description=(
                "fk- forward keys at levels 0 (every model, unlimited), 1 (gpt-4o-mini only) and "
                "2 (REQ_RATE_LIMIT 2/second on chat completions); chat log on, cache off"
            ),
            docs=(
                f"{_README}#custom-api-keys § Custom Api Keys; "
                "https://github.com/KenyonY/openai-forward/blob/v0.8.1/.env.example "
                "§ LEVEL_MODELS, OPENAI_API_KEY_CONFIG, FORWARD_KEY_CONFIG, REQ_RATE_LIMIT"
            ),
        ),
        RelayConfiguration(
            name="quickstart",
            description=(
                "`aifd run` without keys: one forward to the upstream, clients send the "
                "upstream's own key, no limits, no chat log"
            ),
            docs=f"{_README}#quick-start § Quick Start, § Proxy OpenAI Model",
            profile="openai-forward-quickstart",
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
        quickstart = configuration == "quickstart"
        # Quick start: no forward keys; the client's key is the upstream's own.
        keys = {"FUNDED": upstream_key} if quickstart else KEYS
        values = config_values(upstream_url, upstream_key, keys, RATE_LIMIT=RATE_LIMIT)
        self.render_config(run_dir, values, {_TEMPLATES[configuration]: ".env"})
        argv = [
            str(venv_python(install_dir)),
            "-m",
            "uvicorn",
            "openai_forward.app:app",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        return loopback_plan(
            argv,
            run_dir,
            port=port,
            health_path="/healthz",
            keys=keys,
            # For the 429 prober (RateLimitUser): its own key and the limit configured for it
            # (level 2; 0.8.1 does not enforce it, see docs/relays/openai-forward.md). The funded
            # key, which the streaming users load, has no limit. Quick start limits nothing.
            load_args=()
            if quickstart
            else ("--rl-key", KEYS["RATE_LIMITED"], "--rate-limit", RATE_LIMIT_RELAYGATE),
        )
