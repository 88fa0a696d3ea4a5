"""Portkey AI Gateway (``@portkey-ai/gateway`` on npm), the open-source Node build.

What is configured, and why:

* **Install**: exactly :attr:`PortkeyDriver.version` from npm into ``<install>/node_modules``,
  with the runtime dependencies at the versions the release's own lockfile pins
  (``fixtures/relays/portkey/package.json``: npm ``overrides`` copied from Portkey-AI/gateway
  v1.15.2 ``package-lock.json``), which is what its Docker image and its NodeJS-server guide
  install. A bare ``npx @portkey-ai/gateway`` resolves the ranges afresh today
  (``@hono/node-server`` 1.19.x), and with that every stream and ``GET /v1/models`` is an
  HTTP 500 (upstream issue #1389; docs/relays/portkey.md). Node.js 20 runs the package's own
  ``build/start-server.js`` (its ``bin``).
* **Configurations** (:attr:`PortkeyDriver.configurations`): ``default``, the published
  default with its Gateway Console (``/public/``, fed by ``/log/stream``), and ``headless``
  (``--headless``: API only).
* **Port**: ``--port=P`` (the only form the server parses; ``--port P`` is ignored and it
  listens on 8787).
* **Loopback**: the server has no host option (``serve({fetch, port})`` without a hostname
  binds every interface). ``fixtures/relays/portkey/loopback.mjs``, preloaded with
  ``node --import``, pins its listening sockets to 127.0.0.1 and changes nothing else.
* **Routing**: the gateway keeps no configuration of its own; every request names its provider
  in headers. ``x-portkey-provider: openai`` and ``x-portkey-custom-host: <mock>/v1`` go on
  every request (:attr:`RelayPlan.extra_headers`, which the matrix passes to the suite and the
  load run as ``RELAYGATE_RELAY_HEADERS``; the provider header is also in the profile).
* **Keys**: the gateway has no keys, users, quotas or limits of its own (bring your own key):
  it forwards the client's ``Authorization`` to the provider. The only key is therefore the
  upstream key itself (``FUNDED``); no other key state can be expressed, so the cases that
  need one skip.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import IO

from relaygate.thirdparty.base import (
    DEFAULT_CONFIGURATION,
    LOOPBACK,
    InstallError,
    RelayConfiguration,
    RelayDriver,
    RelayPlan,
    fixture_dir,
    loopback_plan,
    npm_install,
)

__all__ = ["PortkeyDriver"]

PACKAGE = "@portkey-ai/gateway"
HOOK = "loopback.mjs"
#: the install's package.json: the gateway and the dependency versions its release pins
MANIFEST = "package.json"
README_V1152 = "https://github.com/Portkey-AI/gateway/blob/v1.15.2/README.md"


class PortkeyDriver(RelayDriver):
    """Portkey AI Gateway, provider ``openai`` with a custom host pointing at the mock."""

    name = "portkey"
    version = "1.15.2"
    profile = "portkey"
    description = "Portkey AI Gateway (open-source, Node), BYOK pass-through to one provider"
    homepage = "https://www.npmjs.com/package/@portkey-ai/gateway (github.com/Portkey-AI/gateway)"
    start_timeout_s = 60.0
    configurations = (
        RelayConfiguration(
            name=DEFAULT_CONFIGURATION,
            description=(
                "npx-style start (build/start-server.js --port=P), Gateway Console on /public/ "
                "with its /log/stream feed, provider openai with a custom host"
            ),
            docs=(
                f"{README_V1152}#1-setup-your-ai-gateway § Quickstart (2 mins), 1. Setup your "
                "AI Gateway (`npx @portkey-ai/gateway`: the Gateway on /v1, the Gateway Console "
                "on /public/)"
            ),
        ),
        RelayConfiguration(
            name="headless",
            description=(
                "build/start-server.js --headless --port=P: the API only, no console and no "
                "/log/stream; provider openai with a custom host"
            ),
            docs=(
                "https://github.com/Portkey-AI/gateway/blob/4afd1cd0811f72301a1e67cc37cc0c7ec12bbad1"
                "/README.md#quickstart-2-mins § Quickstart, Available CLI Options (`--headless`: "
                "Run in headless mode (no console UI)); the v1.15.2 README does not list the "
                "flag, its start-server reads it"
            ),
        ),
    )

    def package_dir(self, install_dir: Path) -> Path:
        return install_dir / "node_modules" / "@portkey-ai" / "gateway"

    def pins(self) -> dict[str, str]:
        """Package -> exact version the install must hold: the gateway and its pinned deps."""
        manifest = json.loads((fixture_dir(self.name) / MANIFEST).read_text())
        return {PACKAGE: self.version, **manifest["overrides"]}

    def is_installed(self, install_dir: Path) -> bool:
        for package, version in self.pins().items():
            meta_path = install_dir / "node_modules" / package / "package.json"
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                return False
            if not isinstance(meta, dict) or meta.get("version") != version:
                return False
        return True

    def install(self, install_dir: Path, log: IO[str]) -> None:
        install_dir.mkdir(parents=True, exist_ok=True)
        # Replaces a manifest left by an older install, so npm applies the overrides.
        shutil.copyfile(fixture_dir(self.name) / MANIFEST, install_dir / MANIFEST)
        npm_install(install_dir, [f"{PACKAGE}@{self.version}"], log)
        if not self.is_installed(install_dir):
            raise InstallError(
                f"npm finished but {install_dir} does not hold {PACKAGE}@{self.version} with "
                f"the pinned dependencies of fixtures/relays/{self.name}/{MANIFEST}"
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
        headless = self.configuration(configuration).name == "headless"
        node = shutil.which("node")
        if node is None:
            raise InstallError("node is not on PATH (Node.js 20 is needed for Portkey)")
        (hook,) = self.render_config(run_dir, {"BIND_HOST": LOOPBACK}, {HOOK: HOOK})
        server = self.package_dir(install_dir) / "build" / "start-server.js"
        return loopback_plan(
            [
                node,
                "--import",
                hook.resolve().as_uri(),
                str(server),
                *(["--headless"] if headless else []),
                f"--port={port}",
            ],
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
