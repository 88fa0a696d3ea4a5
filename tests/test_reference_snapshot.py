"""Reference relay: ``POST /api/admin/snapshot`` and ``/restore`` make one relay serve many
independent runs (the detection matrix switches faults between runs on one stack)."""

from __future__ import annotations

from reference_helpers import async_test, relay_env


@async_test
async def test_restore_brings_back_balances_keys_settings_log_and_rate_windows() -> None:
    async with relay_env() as env:
        user, token = env.user_token(quota=10**6, remain_quota=10**6, rate_limit="1/60s")
        assert (await env.admin("POST", "/snapshot")).status == 200

        assert (await env.chat(token.key)).status == 200
        assert (await env.chat(token.key)).status == 429  # the window is full
        extra = (await env.admin("POST", "/users", {"username": "x", "quota": 5})).json()
        await env.admin("PUT", "/settings", {"faults": ["html_404"]})
        assert env.state.users[user.id].quota < 10**6 and env.state.logs

        restored = await env.admin("POST", "/restore")
        assert restored.status == 200 and restored.json()["faults"] == []
        state = env.state
        assert state.users[user.id].quota == 10**6 and state.users[user.id].used_quota == 0
        assert extra["id"] not in state.users and not state.logs
        assert state.settings.faults == frozenset()
        # The key still works, its rate-limit window is empty again, and new ids do not clash.
        assert (await env.chat(token.key)).status == 200
        again = (await env.admin("POST", "/users", {"username": "y", "quota": 5})).json()
        assert again["id"] == extra["id"]


@async_test
async def test_restore_without_snapshot_is_a_400() -> None:
    async with relay_env() as env:
        reply = await env.admin("POST", "/restore")
        assert reply.status == 400 and reply.error["code"] == "invalid_field"
        assert "snapshot" in reply.error["message"]
