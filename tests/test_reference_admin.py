"""Reference relay: the admin API, state files and the CLI."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from reference_helpers import ADMIN_TOKEN, UPSTREAM_KEY, async_test, relay_env

from relaygate.cli import reference_relay as cli
from relaygate.reference.app import build_state
from relaygate.reference.config import RelayConfig
from relaygate.reference.faults import FAULTS
from relaygate.reference.store import FieldError


@async_test
async def test_admin_auth() -> None:
    async with relay_env() as env:
        assert (await env.request("GET", "/api/admin/health")).status == 401
        assert (await env.admin("GET", "/health", token="wrong")).status == 403
        reply = await env.request("GET", "/api/admin/health", headers={"Authorization": "Basic x"})
        assert reply.status == 401 and reply.error["code"] == "malformed_admin_token"
        health = (await env.admin("GET", "/health")).json()
        assert health["status"] == "ok" and health["in_flight"] == 0


@async_test
async def test_provisioning_flow() -> None:
    async with relay_env() as env:
        user = await env.admin("POST", "/users", {"username": "alice", "quota": 1000})
        assert user.status == 201
        uid = user.json()["id"]
        assert user.json()["group"] == "default" and user.json()["status"] == "enabled"
        token = await env.admin(
            "POST", "/tokens", {"user_id": uid, "name": "t", "remain_quota": 500}
        )
        assert token.status == 201
        key = token.json()["key"]
        assert key.startswith("sk-") and len(key) == 51 and key[3:].isalnum()
        assert token.json()["expires_at"] == -1 and token.json()["models"] is None
        assert (await env.chat(key, max_tokens=20)).status == 200
        topped = await env.admin("POST", f"/users/{uid}/topup", {"quota": 5000})
        assert topped.json()["quota"] == 1000 - 225 + 5000
        patched = await env.admin("PATCH", f"/users/{uid}", {"status": "disabled"})
        assert patched.json()["status"] == "disabled"
        assert (await env.chat(key)).error["code"] == "user_disabled"
        await env.admin("PATCH", f"/users/{uid}", {"status": "enabled"})
        tid = token.json()["id"]
        await env.admin("PATCH", f"/tokens/{tid}", {"models": ["gpt-4"], "rate_limit": "1/60s"})
        assert (await env.chat(key)).error["code"] == "model_not_allowed"
        assert (await env.admin("GET", f"/tokens/{tid}")).json()["rate_limit"] == "1/60s"
        logs = (await env.admin("GET", f"/logs?token_id={tid}&limit=5")).json()["data"]
        assert len(logs) == 1 and logs[0]["quota"] == 225 and logs[0]["model"] == "gpt-4o"
        assert set(logs[0]) == {
            "request_id", "token_id", "user_id", "model", "prompt_tokens",
            "completion_tokens", "quota", "status", "stream", "created_at",
        }  # fmt: skip
        assert (await env.admin("DELETE", f"/tokens/{tid}")).status == 200
        assert (await env.chat(key)).error["code"] == "invalid_api_key"
        assert (await env.admin("GET", f"/tokens/{tid}")).status == 404


@async_test
async def test_channels_ratios_settings() -> None:
    async with relay_env() as env:
        listing = (await env.admin("GET", "/channels")).json()["data"]
        assert listing[0]["key"] != UPSTREAM_KEY and UPSTREAM_KEY not in json.dumps(listing)
        created = await env.admin(
            "POST",
            "/channels",
            {
                "name": "c2",
                "base_url": env.upstream_url + "/v1",
                "key": "sk-secretsecretsecret",
                "models": ["m-x"],
            },
        )
        assert created.status == 201 and created.json()["groups"] == ["default"]
        assert "sk-secretsecretsecret" not in created.body.decode()
        cid = created.json()["id"]
        patched = await env.admin("PATCH", f"/channels/{cid}", {"priority": 5, "groups": ["vip"]})
        assert patched.json()["priority"] == 5
        assert (await env.admin("GET", f"/channels/{cid}")).json()["groups"] == ["vip"]
        ratios = (
            await env.admin("PUT", "/ratios", {"model_ratio": {"m-x": "0.3", "gpt-4o": 1.25}})
        ).json()
        assert ratios["model_ratio"]["m-x"] == "0.3" and ratios["model_ratio"]["gpt-4o"] == "1.25"
        assert ratios["completion_ratio"]["gpt-3.5-turbo"] == "1.33"
        settings = (
            await env.admin("PUT", "/settings", {"rate_limit": "5/1s", "faults": ["drop_done"]})
        ).json()
        assert settings["rate_limit"] == "5/1s" and settings["faults"] == ["drop_done"]
        assert (await env.admin("GET", "/settings")).json()["retry_times"] == 0
        _, token = env.user_token(group="vip")
        assert (await env.chat(token.key, "m-x")).status == 200
        assert env.upstream.requests[-1]["path"] == "/v1/chat/completions"
        assert (await env.admin("DELETE", f"/channels/{cid}")).status == 200
        assert (await env.chat(token.key, "m-x")).status == 503


@async_test
async def test_admin_validation_errors() -> None:
    async with relay_env() as env:
        bad = [
            ("POST", "/users", {"username": ""}, "username"),
            ("POST", "/users", {"username": "x", "quota": "1"}, "quota"),
            ("POST", "/users", {"username": "x", "group": "nope"}, "group"),
            ("POST", "/users", {"username": "x", "colour": 1}, "colour"),
            ("POST", "/tokens", {"user_id": 999}, "user_id"),
            ("POST", "/tokens", {}, "user_id"),
            ("POST", "/channels", {"base_url": "ftp://x", "key": "k", "models": []}, "base_url"),
            ("POST", "/channels", {"base_url": "http://x", "key": "k", "models": "a,b"}, "models"),
            ("POST", "/channels", {"key": "k"}, "base_url"),
            ("PUT", "/ratios", {"model_ratio": {"x": "-1"}}, "model_ratio.x"),
            ("PUT", "/ratios", {"model_ratio": []}, "model_ratio"),
            ("PUT", "/settings", {"faults": ["no_such_fault"]}, "faults"),
            ("PUT", "/settings", {"rate_limit": "fast"}, "rate_limit"),
            ("PUT", "/settings", {"retry_times": -1}, "retry_times"),
            ("PUT", "/settings", {"upstream_timeout_s": 0}, "upstream_timeout_s"),
        ]
        for method, path, payload, field in bad:
            reply = await env.admin(method, path, payload)
            assert reply.status == 400, (path, payload, reply.body)
            assert reply.error["param"] == field and field in reply.error["message"]
        user = env.state.create_user({"username": "v"})
        token_bad = [
            {"user_id": user.id, "expires_at": 0},
            {"user_id": user.id, "unlimited_quota": "yes"},
            {"user_id": user.id, "models": "gpt-4o"},
            {"user_id": user.id, "key": "not-a-key"},
            {"user_id": user.id, "status": "paused"},
        ]
        for payload in token_bad:
            assert (await env.admin("POST", "/tokens", payload)).status == 400, payload
        for raw in (b"{", b"[]", b"\xff", b"null"):
            reply = await env.request(
                "POST",
                "/api/admin/users",
                data=raw,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert reply.status == 400 and reply.error["code"] == "invalid_json"
        assert (await env.admin("GET", "/users/abc")).status == 404
        assert (await env.admin("PATCH", "/users/77", {"quota": 1})).status == 404
        assert (await env.admin("GET", "/logs?limit=0")).status == 400
        assert (await env.admin("DELETE", "/users/1")).status == 405
        assert len(env.state.users) == 1  # nothing half-created


def test_state_file_and_upstream_flags(tmp_path: Path) -> None:
    state_file = tmp_path / "state.toml"
    state_file.write_text(
        """
[ratios.model_ratio]
"my-model" = "0.5"

[settings]
rate_limit = "10/1s"

[[users]]
id = 7
username = "bob"
quota = 100

[[tokens]]
user_id = 7
key = "sk-fixedkeyfixedkeyfixedkey"
remain_quota = 50
"""
    )
    config = RelayConfig(
        state_file=state_file,
        upstream="http://127.0.0.1:1",
        upstream_key="sk-up",
        models=("a", "b"),
    )
    state = build_state(config)
    assert state.users[7].quota == 100
    assert state.tokens_by_key["sk-fixedkeyfixedkeyfixedkey"].user_id == 7
    assert state.settings.rate_limit is not None and state.ratios.model_ratio["my-model"] == 0.5
    assert [c.models for c in state.channels.values()] == [["a", "b"]]
    assert state.create_user({"username": "next"}).id == 8
    json_file = tmp_path / "state.json"
    json_file.write_bytes(
        orjson.dumps({"users": [{"username": "x", "id": 1}, {"username": "y", "id": 1}]})
    )
    with pytest.raises(FieldError):
        build_state(RelayConfig(state_file=json_file))


def test_cli_arguments_and_bad_fault() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--fault", "nope"])
    assert cli.run(args) == 2
    args = parser.parse_args(["--rate-limit", "x"])
    assert cli.run(args) == 2


# The subcommand's own entry points, independent of the other subcommands' modules.
_CLI_MAIN = (
    "import argparse, sys; from relaygate.cli import reference_relay as cli; "
    "p = argparse.ArgumentParser(); cli.add_arguments(p); "
    "sys.exit(cli.run(p.parse_args(sys.argv[1:])))"
)


def test_cli_serves_and_prints_ready_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI_MAIN, "--port", "0", "--admin-token", "T",
         "--fault", "drop_done", "--upstream", "http://127.0.0.1:9", "--models", "gpt-4o"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] is True and ready["admin_token"] == "T"
        import urllib.request

        request = urllib.request.Request(
            ready["url"] + "/api/admin/settings", headers={"Authorization": "Bearer T"}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert json.loads(resp.read())["faults"] == ["drop_done"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_every_fault_has_a_description() -> None:
    assert len(FAULTS) >= 25
    assert all(isinstance(v, str) and v and "\n" not in v for v in FAULTS.values())
