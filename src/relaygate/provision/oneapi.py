"""Adapter for one-api's management API, exactly as RELAY_SPEC.md §7 describes it ("O").

What shapes this code (RELAY_SPEC §7):

* Responses are ``{"success":bool,"message":str,"data":…}`` and most failures are HTTP **200**
  with ``success:false``: the envelope, not the status, decides.
* Management auth is ``Authorization: <access_token>`` (root's, from ``INITIAL_ROOT_ACCESS_TOKEN``).
* ``POST /api/user/`` returns no id: look the user up with ``/api/user/search?keyword=``.
* Quota goes up with ``POST /api/topup``; a user's quota can never be *set* to 0 (GORM skips
  zero values), so USER_EXHAUSTED needs a new user whose ``QuotaForNewUser`` is 0.
* Tokens are created for the *calling* user: log in as the test user once (the login limiter
  allows 20 per 20 min per IP), fetch that user's access token with ``GET /api/user/token``
  and cache it; every later token call uses it instead of a session.
* ``expired_time`` must be ``-1`` (0 is already in the past); the client key is ``sk-`` + key.
* Disabling: ``PUT /api/token/?status_only=1 {"id","status":2}``.
* one-api has no relay-side rate limiter (§6): RATE_LIMITED is unavailable.
"""

from __future__ import annotations

import collections
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict

import httpx

from relaygate.keys import masked_repr
from relaygate.provision.base import (
    Balance,
    Charge,
    JSONAdminClient,
    KeyState,
    ProvisionedKey,
    ProvisioningError,
    ProvisioningUnavailable,
    name_sequence,
)

__all__ = ["AdapterOptions", "OneAPIProvisioner"]

DEFAULT_TOKEN_QUOTA = 50_000_000
DEFAULT_USER_QUOTA = 500_000_000
DEFAULT_RESTRICTED_MODELS = ("gpt-4o-mini",)
LOGIN_WINDOW_S = 20 * 60
TOKEN_STATUS = {"enabled": 1, "disabled": 2, "expired": 3, "exhausted": 4}


class AdapterOptions(TypedDict, total=False):
    """The keyword options of :class:`OneAPIProvisioner` (new-api passes them through)."""

    timeout_s: float
    run_id: str | None
    password: str | None
    channel_type: int
    login_budget: int
    clock: Callable[[], float]


@masked_repr("password", "access_token")
@dataclass
class _User:
    """A test user the adapter created and can act as (its access token is cached)."""

    id: int
    username: str
    password: str
    access_token: str | None = None


class OneAPIProvisioner:
    """Provisions keys on one-api through its management API."""

    name: str = "one-api"
    # new-api overrides these where its API differs (see relaygate.provision.newapi).
    status_only_value: ClassVar[str] = "1"
    channel_defaults: ClassVar[Mapping[str, Any]] = {"model_mapping": "", "priority": 0}

    def __init__(
        self,
        relay_url: str,
        admin_token: str,
        *,
        timeout_s: float = 10.0,
        run_id: str | None = None,
        password: str | None = None,
        channel_type: int = 1,
        login_budget: int = 18,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = JSONAdminClient(
            relay_url,
            timeout_s=timeout_s,
            secrets_to_mask=(admin_token,),
        )
        self._admin_token = admin_token
        self._names: Iterator[str] = name_sequence("rg", run_id)
        self._password = password
        self._channel_type = channel_type
        self._login_budget = login_budget
        self._logins: collections.deque[float] = collections.deque()
        self._clock = clock
        # group -> the funded test user that owns token-level states; "zero" users separately.
        self._funded_users: dict[str, _User] = {}
        self._zero_quota_user: _User | None = None
        self._users_by_id: dict[int, _User] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._api.http.base_url)!r})"

    # --- HTTP and the success envelope -------------------------------------------------------

    def admin_headers(self) -> dict[str, str]:
        """Headers that authenticate as the admin (root) for management calls."""
        return {"Authorization": self._admin_token}

    def user_headers(self, user: _User) -> dict[str, str]:
        """Headers that authenticate as ``user`` (its cached access token)."""
        token = user.access_token or self._login(user)
        return {"Authorization": token}

    def _call(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        response = self._api.request(method, path, json=json_body, params=params, headers=headers)
        return self._data(method, path, response)

    def _data(self, method: str, path: str, response: httpx.Response) -> Any:
        body = self._api.json_of(response)
        if response.is_error or not isinstance(body, dict) or body.get("success") is not True:
            message = body.get("message") if isinstance(body, dict) else None
            raise ProvisioningError(
                self._api.mask(
                    f"{method} {path}: HTTP {response.status_code}, success=false: "
                    f"{message or response.text[:200]}"
                )
            )
        return body.get("data")

    # --- users ---------------------------------------------------------------------------

    def _new_password(self) -> str:
        # one-api requires 8-20 characters (RELAY_SPEC §7).
        return self._password or secrets.token_urlsafe(12)[:16]

    def create_user(self) -> _User:
        """``POST /api/user/`` (no id returned), then ``/api/user/search`` for the id."""
        username, password = next(self._names), self._new_password()
        self._call(
            "POST",
            "/api/user/",
            headers=self.admin_headers(),
            json_body={"username": username, "password": password, "display_name": username},
        )
        found = self.find_user(username)
        user = _User(id=int(found["id"]), username=username, password=password)
        self._users_by_id[user.id] = user
        return user

    def find_user(self, username: str) -> dict[str, Any]:
        """The user object for ``username`` (exact match among the search results)."""
        data = self._call(
            "GET", "/api/user/search", headers=self.admin_headers(), params={"keyword": username}
        )
        for entry in _items(data):
            if entry.get("username") == username:
                return entry
        raise ProvisioningError(
            f"user {username!r} was created but /api/user/search cannot find it"
        )

    def get_user(self, user_id: int | str) -> dict[str, Any]:
        data: dict[str, Any] = self._call(
            "GET", f"/api/user/{user_id}", headers=self.admin_headers()
        )
        return data

    def topup(self, user_id: int | str, quota: int) -> None:
        """``POST /api/topup`` adds ``quota`` to the user's wallet."""
        self._call(
            "POST",
            "/api/topup",
            headers=self.admin_headers(),
            json_body={"user_id": int(user_id), "quota": quota, "remark": "relaygate"},
        )

    def fund_user(self, user: _User, quota: int) -> None:
        """Give a freshly created user ``quota`` (it starts at QuotaForNewUser)."""
        self.topup(user.id, quota)

    def set_group(self, user: _User, group: str) -> None:
        """``PUT /api/user/`` with the full user object (partial objects lose fields)."""
        full = self.get_user(user.id)
        full["group"] = group
        self._call("PUT", "/api/user/", headers=self.admin_headers(), json_body=full)

    def set_user_quota(self, user_id: int | str, quota: int) -> None:
        if quota == 0:
            raise ProvisioningUnavailable(
                "one-api cannot set a user's quota to 0: PUT /api/user/ skips zero values "
                "(RELAY_SPEC §7); create a user with QuotaForNewUser=0 instead"
            )
        full = self.get_user(user_id)
        full["quota"] = quota
        self._call("PUT", "/api/user/", headers=self.admin_headers(), json_body=full)

    def disable_user(self, user: _User) -> None:
        """``POST /api/user/manage {"username","action":"disable"}``."""
        self._call(
            "POST",
            "/api/user/manage",
            headers=self.admin_headers(),
            json_body=self.manage_body(user, "disable"),
        )

    def manage_body(self, user: _User, action: str) -> dict[str, Any]:
        return {"username": user.username, "action": action}

    def _login(self, user: _User) -> str:
        """Log in as ``user`` once and fetch its access token (cached on the user).

        The session cookie is taken off the shared client at once: one-api prefers a session
        over ``Authorization``, so a lingering cookie would turn admin calls into user calls.
        """
        now = self._clock()
        while self._logins and now - self._logins[0] > LOGIN_WINDOW_S:
            self._logins.popleft()
        if len(self._logins) >= self._login_budget:
            raise ProvisioningUnavailable(
                f"login budget spent: {len(self._logins)} logins in 20 min (the relay allows 20 "
                "per 20 min per IP, RELAY_SPEC §6); wait, or run the relay with DEBUG=true"
            )
        self._logins.append(now)
        response = self._api.request(
            "POST",
            "/api/user/login",
            json={"username": user.username, "password": user.password},
        )
        data = self._data("POST", "/api/user/login", response)
        cookie = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
        self._api.http.cookies.clear()
        if not cookie:
            raise ProvisioningError("POST /api/user/login: success but no session cookie")
        self._api.add_secret(cookie)
        headers = {"Cookie": cookie, **self.session_headers(user, data)}
        token = self._call("GET", "/api/user/token", headers=headers)
        if not isinstance(token, str) or not token:
            raise ProvisioningError("GET /api/user/token: no access token in data")
        self._api.add_secret(token)
        user.access_token = token
        return token

    def session_headers(self, user: _User, login_data: Any) -> dict[str, str]:
        """Extra headers for session calls (new-api adds New-Api-User)."""
        return {}

    def _funded_user(self, group: str) -> _User:
        user = self._funded_users.get(group)
        if user is None:
            user = self.create_user()
            self.fund_user(user, DEFAULT_USER_QUOTA)
            if group != "default":
                self.set_group(user, group)
            self._funded_users[group] = user
        return user

    def _broke_user(self) -> _User:
        if self._zero_quota_user is None:
            user = self.create_user()
            self.empty_user(user)
            self._zero_quota_user = user
        return self._zero_quota_user

    def empty_user(self, user: _User) -> None:
        """Make sure ``user`` has quota 0 (one-api: only if QuotaForNewUser is 0)."""
        quota = int(self.find_user(user.username).get("quota", 0))
        if quota != 0:
            raise ProvisioningUnavailable(
                f"a new one-api user starts with {quota} quota (QuotaForNewUser) and one-api "
                "cannot set quota to 0 (RELAY_SPEC §7); set the option QuotaForNewUser to 0"
            )

    # --- tokens --------------------------------------------------------------------------

    def token_body(
        self,
        name: str,
        *,
        remain_quota: int,
        unlimited: bool,
        expired_time: int,
        models: list[str] | None,
    ) -> dict[str, Any]:
        return {
            "name": name,
            "remain_quota": remain_quota,
            "unlimited_quota": unlimited,
            "expired_time": expired_time,
            **self.token_model_fields(models),
        }

    def token_model_fields(self, models: list[str] | None) -> dict[str, Any]:
        """The token body's model allow-list (and the fields that travel with it)."""
        return {"models": ",".join(models or []), "subnet": ""}

    def create_token(self, user: _User, body: dict[str, Any]) -> tuple[str, int]:
        """Create a token as ``user``; returns (client key ``sk-…``, token id)."""
        data = self._call("POST", "/api/token/", headers=self.user_headers(user), json_body=body)
        if isinstance(data, dict) and data.get("key") and data.get("id"):
            key, token_id = str(data["key"]), int(data["id"])
        else:
            # The key is not always returned (new-api never does): read it back by name.
            found = self.find_token(user, str(body["name"]))
            key, token_id = str(found["key"]), int(found["id"])
        key = key if key.startswith("sk-") else f"sk-{key}"
        self._api.add_secret(key)
        return key, token_id

    def find_token(self, user: _User, name: str) -> dict[str, Any]:
        data = self._call(
            "GET", "/api/token/search", headers=self.user_headers(user), params={"keyword": name}
        )
        for entry in _items(data):
            if entry.get("name") == name:
                return entry
        raise ProvisioningError(f"token {name!r} was created but /api/token/search cannot find it")

    def set_token_status(self, user: _User, token_id: int, status: int) -> None:
        self._call(
            "PUT",
            "/api/token/",
            headers=self.user_headers(user),
            params={"status_only": self.status_only_value},
            json_body={"id": token_id, "status": status},
        )

    # --- Provisioner -------------------------------------------------------------------------

    def funded_key(
        self, *, quota: int | None = None, models: list[str] | None = None, group: str = "default"
    ) -> ProvisionedKey:
        return self.key_with(KeyState.FUNDED, quota=quota, models=models, group=group)

    def key_with(self, state: KeyState, **kw: Any) -> ProvisionedKey:
        """A token in ``state``; keywords: ``quota``, ``models``, ``group``."""
        group: str = kw.get("group", "default")
        quota: int | None = kw.get("quota")
        models: list[str] | None = kw.get("models")
        if state is KeyState.RATE_LIMITED:
            raise ProvisioningUnavailable(self.rate_limit_reason())
        if state is KeyState.LOW_QUOTA and quota is None:
            raise ValueError("KeyState.LOW_QUOTA needs quota=<units for the calls allowed>")
        remain = DEFAULT_TOKEN_QUOTA if quota is None else quota
        expired_time = -1
        unlimited = False
        if state is KeyState.TOKEN_EXHAUSTED:
            remain = 0
        elif state is KeyState.EXPIRED:
            expired_time = int(self._clock()) - 3600
        elif state is KeyState.MODEL_RESTRICTED:
            models = list(models or DEFAULT_RESTRICTED_MODELS)
        elif state is KeyState.UNLIMITED:
            unlimited = True

        if state is KeyState.USER_EXHAUSTED:
            if group != "default":
                raise ProvisioningUnavailable("USER_EXHAUSTED is provisioned in group default only")
            user = self._broke_user()
        elif state is KeyState.USER_DISABLED:
            user = self.create_user()
            self.fund_user(user, DEFAULT_USER_QUOTA)
            if group != "default":
                self.set_group(user, group)
        else:
            user = self._funded_user(group)

        name = next(self._names)
        body = self.token_body(
            name, remain_quota=remain, unlimited=unlimited, expired_time=expired_time, models=models
        )
        key, token_id = self.create_token(user, body)
        if state is KeyState.DISABLED:
            self.set_token_status(user, token_id, TOKEN_STATUS["disabled"])
        elif state is KeyState.USER_DISABLED:
            self.disable_user(user)
        return ProvisionedKey(
            key=key,
            token_id=token_id,
            user_id=user.id,
            group=group,
            state=state,
            token_name=name,
            granted_quota=None if unlimited else remain,
        )

    def rate_limit_reason(self) -> str:
        return (
            "one-api has no relay-side rate limiter on /v1/chat/completions (RELAY_SPEC §6); "
            "pass a rate-limited key via RELAYGATE_KEY_RATE_LIMITED if a proxy in front adds one"
        )

    def _owner(self, key: ProvisionedKey) -> _User:
        user = self._users_by_id.get(int(key.user_id)) if key.user_id is not None else None
        if user is None or key.token_id is None:
            raise ProvisioningUnavailable(
                f"{key.masked} was not created by this adapter: its owner's session is unknown"
            )
        return user

    def get_token(self, key: ProvisionedKey) -> dict[str, Any]:
        user = self._owner(key)
        data: dict[str, Any] = self._call(
            "GET", f"/api/token/{key.token_id}", headers=self.user_headers(user)
        )
        return data

    def balance(self, key: ProvisionedKey) -> Balance | None:
        token = self.get_token(key)
        return Balance(
            remain_quota=int(token["remain_quota"]),
            used_quota=int(token["used_quota"]),
            unlimited=bool(token.get("unlimited_quota", False)),
        )

    def log_params(self, key: ProvisionedKey) -> dict[str, str | int]:
        # Log type 2 = consumption.
        return {"p": 0, "type": 2, "token_name": key.token_name or ""}

    def charges(self, key: ProvisionedKey) -> list[Charge] | None:
        """Consumption log entries of this token (admin ``GET /api/log/``, newest first)."""
        if not key.token_name:
            return None
        data = self._call(
            "GET", "/api/log/", headers=self.admin_headers(), params=self.log_params(key)
        )
        return [
            Charge(
                model=str(e.get("model_name", "")),
                prompt_tokens=int(e.get("prompt_tokens", 0)),
                completion_tokens=int(e.get("completion_tokens", 0)),
                quota=int(e.get("quota", 0)),
                request_id=e.get("request_id"),
                created_at=e.get("created_at"),
                stream=e.get("is_stream"),
            )
            for e in _items(data)
            if e.get("token_name") == key.token_name
        ]

    def set_token(self, key: ProvisionedKey, **fields: Any) -> None:
        """Change token fields (one-api names: remain_quota, expired_time, models, status).

        ``status`` alone uses the status-only update; anything else sends the full object,
        because ``PUT /api/token/`` writes every field it is given (RELAY_SPEC §7).
        """
        user = self._owner(key)
        status = fields.get("status")
        if isinstance(status, str):
            fields["status"] = TOKEN_STATUS[status]
        if set(fields) == {"status"}:
            self.set_token_status(user, int(key.token_id or 0), int(fields["status"]))
            return
        full = self.get_token(key)
        full.update(fields)
        self._call("PUT", "/api/token/", headers=self.user_headers(user), json_body=full)

    # --- relay configuration (root) ----------------------------------------------------------

    def set_option(self, key: str, value: Any) -> None:
        """``PUT /api/option/``; the value is always sent as a string (JSON for tables)."""
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, dict | list):
            text = json.dumps(value, separators=(",", ":"))
        else:
            text = str(value)
        self._call(
            "PUT",
            "/api/option/",
            headers=self.admin_headers(),
            json_body={"key": key, "value": text},
        )

    def channel_body(
        self, name: str, base_url: str, key: str, models: list[str], group: str
    ) -> dict[str, Any]:
        return {
            "type": self._channel_type,
            "name": name,
            "key": key,
            "base_url": base_url,
            "models": ",".join(models),  # no spaces: one-api does not trim (RELAY_SPEC §3)
            "group": group,
            **self.channel_defaults,
        }

    def add_channel(
        self, *, base_url: str, key: str, models: list[str], group: str = "default"
    ) -> int:
        """Create a channel to ``base_url`` and return its id (found by name; none is returned)."""
        self._api.add_secret(key)
        name = next(self._names)
        self._call(
            "POST",
            "/api/channel/",
            headers=self.admin_headers(),
            json_body=self.channel_body(name, base_url, key, models, group),
        )
        self.after_channel_change()
        data = self._call(
            "GET", "/api/channel/search", headers=self.admin_headers(), params={"keyword": name}
        )
        for entry in _items(data):
            if entry.get("name") == name:
                return int(entry["id"])
        raise ProvisioningError(
            f"channel {name!r} was created but /api/channel/search cannot find it"
        )

    def after_channel_change(self) -> None:
        """one-api needs nothing (run it without the memory cache, RELAY_SPEC §7)."""

    def close(self) -> None:
        self._api.close()


def _items(data: Any) -> list[dict[str, Any]]:
    """List payloads come as a bare list or, in newer versions, ``{"items":[…]}``."""
    if isinstance(data, dict):
        data = data.get("items", data.get("data", []))
    if not isinstance(data, list):
        return []
    return [e for e in data if isinstance(e, dict)]
