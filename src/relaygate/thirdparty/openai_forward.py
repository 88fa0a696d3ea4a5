"""openai-forward 0.8.1 (PyPI ``openai-forward``): a transparent forwarding proxy with forward keys.

What is configured, and why (``fixtures/relays/openai-forward/openai-forward.env``, rendered to
``.env`` in the run dir, which openai-forward reads from its working directory):

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

openai-forward has no quota, expiry or disabled keys, so only those three states exist.

``aifd run`` hard-codes ``host="0.0.0.0"`` (``openai_forward/__main__.py``); the driver starts the
same ASGI app (``openai_forward.app:app``) with uvicorn on ``127.0.0.1`` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from relaygate.thirdparty.base import (
    LOOPBACK,
    PipRelayDriver,
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

_TEMPLATE = "openai-forward.env"
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

    def prepare(
        self,
        install_dir: Path,
        run_dir: Path,
        *,
        port: int,
        upstream_url: str,
        upstream_key: str,
    ) -> RelayPlan:
        values = config_values(upstream_url, upstream_key, KEYS, RATE_LIMIT=RATE_LIMIT)
        self.render_config(run_dir, values, {_TEMPLATE: ".env"})
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
            keys=KEYS,
            # For the 429 prober (RateLimitUser): its own key and the limit configured for it
            # (level 2; 0.8.1 does not enforce it, see docs/relays/openai-forward.md). The funded
            # key, which the streaming users load, has no limit.
            load_args=("--rl-key", KEYS["RATE_LIMITED"], "--rate-limit", RATE_LIMIT_RELAYGATE),
        )
