"""Admin-API adapters (reference, one-api, new-api) against recorded request/response pairs.

Each JSON file under ``tests/data/provision/`` is an ordered list of exchanges written from the
admin API's documented shapes (RELAY_SPEC.md §7, the reference relay's contract). The replay
asserts every request the adapter sends - method, path, query, headers, JSON body - and that
nothing is left over or sent extra.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from relaygate.provision import (
    KeyState,
    ProvisionedKey,
    ProvisioningError,
    ProvisioningUnavailable,
)
from relaygate.provision.newapi import NewAPIProvisioner
from relaygate.provision.oneapi import OneAPIProvisioner
from relaygate.provision.reference import ReferenceProvisioner

DATA = Path(__file__).parent / "data" / "provision"
URL = "http://127.0.0.1:3000"
NOW = 1_700_000_000.0
PASSWORD = "pw-relaygate-1"


class Replay:
    """A respx side effect that plays one recorded admin conversation, in order."""

    def __init__(self, name: str) -> None:
        recording = json.loads((DATA / name).read_text(encoding="utf-8"))
        self.exchanges: list[dict[str, Any]] = recording["exchanges"]
        self.index = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        where = f"{request.method} {request.url.path}"
        assert self.index < len(self.exchanges), f"unexpected extra request {where}"
        want, answer = (
            self.exchanges[self.index]["request"],
            self.exchanges[self.index]["response"],
        )
        self.index += 1
        assert (request.method, request.url.path) == (want["method"], want["path"]), (
            f"exchange {self.index}: got {where}"
        )
        assert dict(request.url.params) == want.get("params", {}), where
        for header, value in want.get("headers", {}).items():
            assert request.headers.get(header) == value, f"{where}: header {header}"
        for header in want.get("absent_headers", []):
            assert header not in request.headers, f"{where}: header {header} must not be sent"
        if "json" in want:
            assert json.loads(request.content) == want["json"], where
        else:
            assert request.content == b"", f"{where}: unexpected body"
        return httpx.Response(
            answer["status"], json=answer.get("json"), headers=answer.get("headers", {})
        )

    def assert_done(self) -> None:
        assert self.index == len(self.exchanges), (
            f"only {self.index} of {len(self.exchanges)} recorded requests were sent"
        )


@pytest.fixture
def replay() -> Iterator[Any]:
    """``replay("file.json")`` routes every request to that recording."""
    with respx.mock(assert_all_called=False) as router:
        current: list[Replay] = []

        def start(name: str) -> Replay:
            playing = Replay(name)
            router.route().mock(side_effect=playing)
            current.append(playing)
            return playing

        yield start
        for playing in current:
            playing.assert_done()


def _reference() -> ReferenceProvisioner:
    return ReferenceProvisioner(URL, "admin-secret-token", run_id="t1", clock=lambda: NOW)


def _oneapi() -> OneAPIProvisioner:
    return OneAPIProvisioner(
        URL, "root-access-token", run_id="t1", password=PASSWORD, clock=lambda: NOW
    )


def _newapi() -> NewAPIProvisioner:
    return NewAPIProvisioner(
        URL, "root-access-token", run_id="t1", password=PASSWORD, clock=lambda: NOW
    )


# --- reference ------------------------------------------------------------------------------


def test_reference_funded_key_balance_and_charges(replay: Any) -> None:
    replay("reference_funded_key.json")
    prov = _reference()
    key = prov.funded_key()
    assert key.key == "sk-refKEY0123456789abcdefghijklmnopqrstuvwxyzABCD"
    assert (key.token_id, key.user_id, key.group, key.state) == (11, 7, "default", KeyState.FUNDED)
    assert key.granted_quota == 50_000_000
    balance = prov.balance(key)
    assert balance is not None
    assert (balance.remain_quota, balance.used_quota, balance.unlimited) == (49_999_775, 225, False)
    charges = prov.charges(key)
    assert charges is not None and len(charges) == 1
    charge = charges[0]
    assert (charge.model, charge.prompt_tokens, charge.completion_tokens, charge.quota) == (
        "gpt-4o",
        10,
        20,
        225,
    )
    assert charge.request_id == "req-1" and charge.stream is False
    prov.close()


def test_reference_error_raises_with_message(replay: Any) -> None:
    replay("reference_error.json")
    with pytest.raises(ProvisioningError, match=r"HTTP 400: group: unknown group 'gold'"):
        _reference().funded_key(group="gold")


@pytest.mark.parametrize(
    ("state", "kw", "user_fields", "token_fields"),
    [
        (KeyState.TOKEN_EXHAUSTED, {}, {}, {"remain_quota": 0}),
        (KeyState.USER_EXHAUSTED, {}, {"quota": 0}, {}),
        (KeyState.EXPIRED, {}, {}, {"expires_at": int(NOW) - 3600}),
        (KeyState.DISABLED, {}, {}, {"status": "disabled"}),
        (KeyState.USER_DISABLED, {}, {"status": "disabled"}, {}),
        (KeyState.MODEL_RESTRICTED, {}, {}, {"models": ["gpt-4o-mini"]}),
        (KeyState.MODEL_RESTRICTED, {"models": ["gpt-4"]}, {}, {"models": ["gpt-4"]}),
        (KeyState.UNLIMITED, {}, {}, {"unlimited_quota": True}),
        (KeyState.RATE_LIMITED, {}, {}, {"rate_limit": "1/60s"}),
        (KeyState.RATE_LIMITED, {"rate_limit": "3/1s"}, {}, {"rate_limit": "3/1s"}),
        (KeyState.LOW_QUOTA, {"quota": 300}, {}, {"remain_quota": 300}),
        (KeyState.FUNDED, {"group": "vip", "quota": 9}, {"group": "vip"}, {"remain_quota": 9}),
    ],
)
def test_reference_states(
    state: KeyState, kw: dict[str, Any], user_fields: dict[str, Any], token_fields: dict[str, Any]
) -> None:
    sent: dict[str, Any] = {}

    def user(request: httpx.Request) -> httpx.Response:
        sent["user"] = json.loads(request.content)
        return httpx.Response(201, json={"id": 3, **sent["user"]})

    def token(request: httpx.Request) -> httpx.Response:
        sent["token"] = json.loads(request.content)
        return httpx.Response(201, json={"id": 5, "key": "sk-" + "k" * 48, **sent["token"]})

    with respx.mock(base_url=URL) as router:
        router.post("/api/admin/users").mock(side_effect=user)
        router.post("/api/admin/tokens").mock(side_effect=token)
        key = _reference().key_with(state, **kw)
    expected_user = {"username": "rgt11", "group": "default", "quota": 500_000_000}
    expected_user |= {"status": "enabled"} | user_fields
    assert sent["user"] == expected_user
    expected_token: dict[str, Any] = {
        "user_id": 3,
        "name": "rgt12",
        "remain_quota": 50_000_000,
        "unlimited_quota": False,
        "expires_at": -1,
        "status": "enabled",
        "models": None,
    }
    assert sent["token"] == expected_token | token_fields
    assert key.state is state


def test_reference_low_quota_needs_quota() -> None:
    with pytest.raises(ValueError, match="LOW_QUOTA needs quota"):
        _reference().key_with(KeyState.LOW_QUOTA)


def test_reference_updates_use_patch() -> None:
    key = ProvisionedKey("sk-" + "a" * 48, 5, 3, "default", KeyState.FUNDED)
    with respx.mock(base_url=URL) as router:
        user = router.patch("/api/admin/users/3").respond(200, json={"id": 3})
        token = router.patch("/api/admin/tokens/5").respond(200, json={"id": 5})
        prov = _reference()
        prov.set_user_quota(3, 0)
        prov.set_token(key, status="disabled", remain_quota=1)
    assert json.loads(user.calls.last.request.content) == {"quota": 0}
    assert json.loads(token.calls.last.request.content) == {"status": "disabled", "remain_quota": 1}


def test_reference_masks_keys_in_errors() -> None:
    leaked = "sk-" + "L" * 48
    with respx.mock(base_url=URL) as router:
        router.get("/api/admin/tokens/5").respond(
            404, json={"error": {"message": f"no token {leaked} (admin-secret-token)"}}
        )
        with pytest.raises(ProvisioningError) as info:
            _reference().balance(ProvisionedKey(leaked, 5, 3, "default", KeyState.FUNDED))
    assert leaked not in str(info.value)
    assert "admin-secret-token" not in str(info.value)


def test_reference_unreachable_is_a_provisioning_error() -> None:
    with respx.mock(base_url=URL) as router:
        router.post("/api/admin/users").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(ProvisioningError, match="admin API unreachable"):
            _reference().funded_key()


# --- one-api --------------------------------------------------------------------------------


def test_oneapi_funded_then_disabled_balance_and_charges(replay: Any) -> None:
    replay("oneapi_funded_then_disabled.json")
    prov = _oneapi()
    funded = prov.funded_key()
    assert funded.key == "sk-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL"
    assert (funded.token_id, funded.user_id, funded.token_name) == (101, 42, "rgt12")
    disabled = prov.key_with(KeyState.DISABLED)  # same user: no second login
    assert disabled.key == "sk-LKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba9876543210"
    assert disabled.state is KeyState.DISABLED and disabled.user_id == 42
    balance = prov.balance(funded)
    assert balance is not None and (balance.remain_quota, balance.used_quota) == (49_999_775, 225)
    charges = prov.charges(funded)
    assert charges is not None
    assert [(c.model, c.prompt_tokens, c.completion_tokens, c.quota) for c in charges] == [
        ("gpt-4o", 10, 20, 225)
    ]  # the other token's entry (name rgt120) is filtered out


def test_oneapi_success_false_is_an_error_and_masks_the_token(replay: Any) -> None:
    replay("oneapi_success_false.json")
    with pytest.raises(ProvisioningError, match="success=false: 无权进行此操作") as info:
        _oneapi().funded_key()
    assert "root-access-token" not in str(info.value)


def test_oneapi_user_exhausted_needs_zero_new_user_quota(replay: Any) -> None:
    replay("oneapi_user_exhausted_new_user_quota.json")
    with pytest.raises(ProvisioningUnavailable, match="QuotaForNewUser"):
        _oneapi().key_with(KeyState.USER_EXHAUSTED)


def test_oneapi_cannot_rate_limit_or_zero_a_quota() -> None:
    prov = _oneapi()
    with pytest.raises(ProvisioningUnavailable, match="no relay-side rate limiter"):
        prov.key_with(KeyState.RATE_LIMITED)
    with pytest.raises(ProvisioningUnavailable, match="cannot set a user's quota to 0"):
        prov.set_user_quota(42, 0)


def test_oneapi_expired_token_body() -> None:
    prov = _oneapi()
    user = prov._funded_users.setdefault("default", _user(42, "rgt1x", access_token="user-access"))
    prov._users_by_id[42] = user
    with respx.mock(base_url=URL) as router:
        route = router.post("/api/token/").respond(
            200, json={"success": True, "data": {"id": 7, "key": "e" * 48}}
        )
        key = prov.key_with(KeyState.EXPIRED)
    body = json.loads(route.calls.last.request.content)
    assert body["expired_time"] == int(NOW) - 3600
    assert route.calls.last.request.headers["authorization"] == "user-access"
    assert key.key == "sk-" + "e" * 48


def test_oneapi_login_budget_is_enforced() -> None:
    prov = OneAPIProvisioner(
        URL, "root-access-token", run_id="t1", password=PASSWORD, login_budget=0
    )
    with pytest.raises(ProvisioningUnavailable, match="login budget spent"):
        prov.user_headers(_user(1, "u"))


def test_oneapi_set_option_sends_strings() -> None:
    with respx.mock(base_url=URL) as router:
        route = router.put("/api/option/").respond(200, json={"success": True, "message": ""})
        prov = _oneapi()
        prov.set_option("ModelRatio", {"gpt-4o": 2.5})
        prov.set_option("AutomaticDisableChannelEnabled", False)
        prov.set_option("RetryTimes", 1)
    bodies = [json.loads(c.request.content) for c in route.calls]
    assert bodies == [
        {"key": "ModelRatio", "value": '{"gpt-4o":2.5}'},
        {"key": "AutomaticDisableChannelEnabled", "value": "false"},
        {"key": "RetryTimes", "value": "1"},
    ]


def test_oneapi_foreign_key_has_no_session() -> None:
    with pytest.raises(ProvisioningUnavailable, match="not created by this adapter"):
        _oneapi().balance(ProvisionedKey("sk-" + "x" * 48, 1, 99, "default", KeyState.FUNDED))


# --- new-api --------------------------------------------------------------------------------


def test_newapi_model_restricted_key_read_back_by_search_then_disabled(replay: Any) -> None:
    replay("newapi_funded_key.json")
    prov = _newapi()
    key = prov.key_with(KeyState.MODEL_RESTRICTED)
    assert key.key == "sk-NnNnNnNnNnNnNnNnNnNnNnNnNnNnNnNnNnNnNnNnNnNnNnNn"
    assert (key.token_id, key.user_id) == (31, 9)
    prov.set_token(key, status="disabled")


def test_newapi_user_exhausted_sets_quota_zero(replay: Any) -> None:
    replay("newapi_user_exhausted.json")
    key = _newapi().key_with(KeyState.USER_EXHAUSTED)
    assert key.key == "sk-ExhaustedUserKey0000000000000000000000000000000"  # no double sk-
    assert key.user_id == 12 and key.state is KeyState.USER_EXHAUSTED


def test_newapi_bootstrap_then_channel(replay: Any) -> None:
    replay("newapi_bootstrap_and_channel.json")
    prov = NewAPIProvisioner.bootstrap(URL, "root", "root-password-1", run_id="t1")
    channel_id = prov.add_channel(
        base_url="http://127.0.0.1:9000",
        key="sk-upstream-mock-key",
        models=["gpt-4o", "gpt-3.5-turbo"],
    )
    assert channel_id == 5


def test_newapi_bootstrap_failure_masks_password() -> None:
    with respx.mock(base_url=URL) as router:
        router.post("/api/setup").respond(
            200, json={"success": False, "message": "密码 root-password-1 长度不合法"}
        )
        with pytest.raises(ProvisioningError, match="POST /api/setup") as info:
            NewAPIProvisioner.bootstrap(URL, "root", "root-password-1")
    assert "root-password-1" not in str(info.value)


def test_newapi_rate_limit_is_global_so_unavailable() -> None:
    with pytest.raises(ProvisioningUnavailable, match="ModelRequestRateLimit"):
        _newapi().key_with(KeyState.RATE_LIMITED)


def test_newapi_missing_new_api_user_answer_is_an_error() -> None:
    with respx.mock(base_url=URL) as router:
        router.post("/api/user/").respond(
            401, json={"success": False, "message": "无权进行此操作，未提供 New-Api-User"}
        )
        with pytest.raises(ProvisioningError, match=r"HTTP 401.*New-Api-User"):
            _newapi().funded_key()


def test_key_repr_is_masked() -> None:
    key = ProvisionedKey("sk-" + "s" * 48, 1, 2, "default", KeyState.FUNDED)
    assert "s" * 20 not in repr(key) and "s" * 20 not in str(key)
    assert "sk-sss…sss" in repr(key)


def _user(user_id: int, name: str, access_token: str | None = None) -> Any:
    from relaygate.provision.oneapi import _User

    return _User(id=user_id, username=name, password=PASSWORD, access_token=access_token)
