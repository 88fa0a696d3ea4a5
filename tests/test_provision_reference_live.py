"""The reference adapter against the real reference relay on loopback (contract check).

The recorded pairs in test_provision_admin.py pin the requests; this proves the relay being
built accepts them and that every KeyState comes out as asked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from relaygate.provision import KeyState
from relaygate.provision.reference import ReferenceProvisioner
from relaygate.reference.app import build_state, create_app
from relaygate.reference.config import RelayConfig

ADMIN = "admin-token-live-test"


@pytest.fixture(scope="module")
def relay_url() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    config = RelayConfig(admin_token=ADMIN)
    runner = web.AppRunner(create_app(config, build_state(config)))
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


@pytest.mark.parametrize("state", list(KeyState))
def test_every_state_is_provisioned(relay_url: str, state: KeyState) -> None:
    prov = ReferenceProvisioner(relay_url, ADMIN, timeout_s=5.0)
    try:
        key = prov.key_with(state, **({"quota": 100} if state is KeyState.LOW_QUOTA else {}))
        assert key.key.startswith("sk-") and key.state is state
        balance = prov.balance(key)
        assert balance is not None
        assert balance.unlimited is (state is KeyState.UNLIMITED)
        expected_remain = {KeyState.TOKEN_EXHAUSTED: 0, KeyState.LOW_QUOTA: 100}
        assert balance.remain_quota == expected_remain.get(state, 50_000_000)
        user = prov.user_balance(key.user_id or 0)
        assert user.remain_quota == (0 if state is KeyState.USER_EXHAUSTED else 500_000_000)
        assert prov.charges(key) == []
    finally:
        prov.close()


def test_updates_round_trip(relay_url: str) -> None:
    prov = ReferenceProvisioner(relay_url, ADMIN, timeout_s=5.0)
    try:
        key = prov.funded_key(group="vip", models=["gpt-4o"])
        prov.set_user_quota(key.user_id or 0, 0)
        prov.set_token(key, status="disabled", remain_quota=5)
        balance = prov.balance(key)
        assert balance is not None and balance.remain_quota == 5
        assert prov.user_balance(key.user_id or 0).remain_quota == 0
    finally:
        prov.close()
