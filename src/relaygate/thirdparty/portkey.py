"""Portkey AI Gateway (``@portkey-ai/gateway`` on npm), the open-source Node build.

What is configured, and why:

* **Install**: exactly :attr:`PortkeyDriver.version` from npm into ``<install>/node_modules``
  (``base.npm_install``); Node.js 20 runs the package's own ``build/start-server.js`` (its
  ``bin``), the way ``npx @portkey-ai/gateway`` does.
* **Port**: ``--port=P`` (the only form the server parses; ``--port P`` is ignored and it
  listens on 8787). No ``--headless``: the published default also serves the log console
  (``/public/``, ``/log/stream``), so that is what gets tested.
* **Loopback**: the server has no host option (``serve({fetch, port})`` without a hostname
  binds every interface). ``fixtures/relays/portkey/loopback.mjs``, preloaded with
  ``node --import``, pins its listening sockets to 127.0.0.1 and changes nothing else.
* **Routing**: the gateway keeps no configuration of its own; every request names its provider
  in headers. ``x-portkey-provider: openai`` and ``x-portkey-custom-host: <mock>/v1`` go on
  every request (:attr:`RelayPlan.extra_headers`, which the matrix passes to the suite and the
  load run as ``RELAYGATE_RELAY_HEADERS``; the provider header is also in the profile).
* **Keys**: the gateway has no keys, users, quotas or limits of its own: it forwards the
  client's ``Authorization`` to the provider. The only key is therefore the upstream key
  itself (``FUNDED``); no other key state exists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import IO

from relaygate.thirdparty.base import (
    LOOPBACK,
    InstallError,
    RelayDriver,
    RelayPlan,
    loopback_plan,
    npm_install,
)

__all__ = ["PortkeyDriver"]

PACKAGE = "@portkey-ai/gateway"
HOOK = "loopback.mjs"


class PortkeyDriver(RelayDriver):
    """Portkey AI Gateway, provider ``openai`` with a custom host pointing at the mock."""

    name = "portkey"
    version = "1.15.2"
    profile = "portkey"
    description = "Portkey AI Gateway (open-source, Node), BYOK pass-through to one provider"
    homepage = "https://www.npmjs.com/package/@portkey-ai/gateway (github.com/Portkey-AI/gateway)"
    start_timeout_s = 60.0

    def package_dir(self, install_dir: Path) -> Path:
        return install_dir / "node_modules" / "@portkey-ai" / "gateway"

    def is_installed(self, install_dir: Path) -> bool:
        try:
            meta = json.loads((self.package_dir(install_dir) / "package.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and meta.get("version") == self.version

    def install(self, install_dir: Path, log: IO[str]) -> None:
        npm_install(install_dir, [f"{PACKAGE}@{self.version}"], log)
        if not self.is_installed(install_dir):
            raise InstallError(f"npm finished but {PACKAGE}@{self.version} is not in {install_dir}")

    def prepare(
        self,
        install_dir: Path,
        run_dir: Path,
        *,
        port: int,
        upstream_url: str,
        upstream_key: str,
    ) -> RelayPlan:
        node = shutil.which("node")
        if node is None:
            raise InstallError("node is not on PATH (Node.js 20 is needed for Portkey)")
        (hook,) = self.render_config(run_dir, {"BIND_HOST": LOOPBACK}, {HOOK: HOOK})
        server = self.package_dir(install_dir) / "build" / "start-server.js"
        return loopback_plan(
            [node, "--import", hook.resolve().as_uri(), str(server), f"--port={port}"],
            run_dir,
            port=port,
            health_path="/",
            # BYOK: the client's key is what the gateway sends upstream.
            keys={"FUNDED": upstream_key},
            extra_headers={
                "x-portkey-provider": "openai",
                "x-portkey-custom-host": f"{upstream_url.rstrip('/')}/v1",
            },
        )
