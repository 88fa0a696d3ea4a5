"""Adapter for the reference relay's admin API (``/api/admin/*``, Bearer admin token).

It can provision every :class:`KeyState`: the reference relay models users, tokens with quota,
expiry, status, model allow-list and per-token rate limit, and exposes balances and a per-request
log. Errors are JSON ``{"error":{message,type,code,param}}`` with a 4xx status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from relaygate.provision.base import (
    Balance,
    Charge,
    JSONAdminClient,
    KeyState,
    ProvisionedKey,
    ProvisioningError,
    name_sequence,
)

__all__ = ["ReferenceProvisioner"]

# A "funded" key can pay for any request the suite sends (a gpt-4 call with max_tokens 4096
# costs ~140k quota) many times over, without being unlimited.
DEFAULT_TOKEN_QUOTA = 50_000_000
DEFAULT_USER_QUOTA = 500_000_000
DEFAULT_RESTRICTED_MODELS = ("gpt-4o-mini",)
DEFAULT_RATE_LIMIT = "1/60s"


class ReferenceProvisioner:
    """Provisions keys on the reference relay; every call goes through its admin API."""

    name = "reference"

    def __init__(
        self,
        relay_url: str,
        admin_token: str,
        *,
        timeout_s: float = 10.0,
        run_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = JSONAdminClient(
            relay_url,
            timeout_s=timeout_s,
            headers={"Authorization": f"Bearer {admin_token}"},
            secrets_to_mask=(admin_token,),
        )
        self._names: Iterator[str] = name_sequence("rg", run_id)
        self._clock = clock

    def __repr__(self) -> str:
        return f"ReferenceProvisioner({str(self._api.http.base_url)!r})"

    # --- HTTP --------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, str | int] | None = None,
    ) -> Any:
        response = self._api.request(method, path, json=json, params=params)
        body = self._api.json_of(response) if response.content else None
        if response.is_error:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            detail = error.get("message", response.text[:200]) if isinstance(error, dict) else ""
            raise ProvisioningError(
                self._api.mask(f"{method} {path}: HTTP {response.status_code}: {detail}")
            )
        return body

    # --- building blocks ---------------------------------------------------------------------

    def create_user(
        self, *, quota: int = DEFAULT_USER_QUOTA, group: str = "default", status: str = "enabled"
    ) -> dict[str, Any]:
        """``POST /api/admin/users``; returns the user object."""
        body = {"username": next(self._names), "group": group, "quota": quota, "status": status}
        user: dict[str, Any] = self._call("POST", "/api/admin/users", body)
        return user

    def create_token(self, user_id: int, **fields: Any) -> dict[str, Any]:
        """``POST /api/admin/tokens``; returns the token object including its key."""
        body = {"user_id": user_id, "name": next(self._names), **fields}
        token: dict[str, Any] = self._call("POST", "/api/admin/tokens", body)
        self._api.add_secret(token.get("key"))
        return token

    def topup(self, user_id: int | str, quota: int) -> None:
        """``POST /api/admin/users/{id}/topup`` (adds ``quota``)."""
        self._call("POST", f"/api/admin/users/{user_id}/topup", {"quota": quota})

    def put_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """``PUT /api/admin/settings`` (rate_limit, retry_times, upstream_timeout_s, faults)."""
        result: dict[str, Any] = self._call("PUT", "/api/admin/settings", settings)
        return result

    def put_ratios(self, ratios: dict[str, Any]) -> dict[str, Any]:
        """``PUT /api/admin/ratios`` (group_ratio, model_ratio, completion_ratio)."""
        result: dict[str, Any] = self._call("PUT", "/api/admin/ratios", ratios)
        return result

    def add_channel(self, channel: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/admin/channels``; the channel key is masked in any later error."""
        self._api.add_secret(channel.get("key"))
        result: dict[str, Any] = self._call("POST", "/api/admin/channels", channel)
        return result

    # --- Provisioner -------------------------------------------------------------------------

    def funded_key(
        self, *, quota: int | None = None, models: list[str] | None = None, group: str = "default"
    ) -> ProvisionedKey:
        return self.key_with(KeyState.FUNDED, quota=quota, models=models, group=group)

    def key_with(self, state: KeyState, **kw: Any) -> ProvisionedKey:
        """Create a fresh user + token in ``state``.

        Keyword options: ``quota`` (token quota), ``user_quota``, ``models``, ``group``,
        ``rate_limit`` ("N/Ws", RATE_LIMITED). LOW_QUOTA requires ``quota``.
        """
        group: str = kw.get("group", "default")
        quota: int | None = kw.get("quota")
        models: list[str] | None = kw.get("models")
        user_quota: int = kw.get("user_quota", DEFAULT_USER_QUOTA)
        token_quota = DEFAULT_TOKEN_QUOTA if quota is None else quota
        token: dict[str, Any] = {
            "remain_quota": token_quota,
            "unlimited_quota": False,
            "expires_at": -1,
            "status": "enabled",
            "models": models,
        }
        user_status = "enabled"
        if state is KeyState.TOKEN_EXHAUSTED:
            token["remain_quota"] = 0
        elif state is KeyState.USER_EXHAUSTED:
            user_quota = 0
        elif state is KeyState.EXPIRED:
            token["expires_at"] = int(self._clock()) - 3600
        elif state is KeyState.DISABLED:
            token["status"] = "disabled"
        elif state is KeyState.USER_DISABLED:
            user_status = "disabled"
        elif state is KeyState.MODEL_RESTRICTED:
            token["models"] = list(models or DEFAULT_RESTRICTED_MODELS)
        elif state is KeyState.UNLIMITED:
            token["unlimited_quota"] = True
        elif state is KeyState.RATE_LIMITED:
            token["rate_limit"] = kw.get("rate_limit", DEFAULT_RATE_LIMIT)
        elif state is KeyState.LOW_QUOTA and quota is None:
            raise ValueError("KeyState.LOW_QUOTA needs quota=<units for the calls allowed>")
        user = self.create_user(quota=user_quota, group=group, status=user_status)
        created = self.create_token(int(user["id"]), **token)
        return ProvisionedKey(
            key=str(created["key"]),
            token_id=created["id"],
            user_id=user["id"],
            group=group,
            state=state,
            token_name=created.get("name"),
            granted_quota=None if token["unlimited_quota"] else int(token["remain_quota"]),
        )

    def balance(self, key: ProvisionedKey) -> Balance | None:
        token = self._call("GET", f"/api/admin/tokens/{key.token_id}")
        return Balance(
            remain_quota=int(token["remain_quota"]),
            used_quota=int(token["used_quota"]),
            unlimited=bool(token.get("unlimited_quota", False)),
        )

    def user_balance(self, user_id: int | str) -> Balance:
        """The owning user's (wallet) quota and usage."""
        user = self._call("GET", f"/api/admin/users/{user_id}")
        return Balance(remain_quota=int(user["quota"]), used_quota=int(user["used_quota"]))

    def charges(self, key: ProvisionedKey, *, limit: int = 100) -> list[Charge] | None:
        body = self._call(
            "GET", "/api/admin/logs", params={"token_id": str(key.token_id), "limit": limit}
        )
        return [
            Charge(
                model=str(e["model"]),
                prompt_tokens=int(e["prompt_tokens"]),
                completion_tokens=int(e["completion_tokens"]),
                quota=int(e["quota"]),
                request_id=e.get("request_id"),
                created_at=e.get("created_at"),
                stream=e.get("stream"),
            )
            for e in body.get("data", [])
        ]

    def set_user_quota(self, user_id: int | str, quota: int) -> None:
        self._call("PATCH", f"/api/admin/users/{user_id}", {"quota": quota})

    def set_token(self, key: ProvisionedKey, **fields: Any) -> None:
        self._call("PATCH", f"/api/admin/tokens/{key.token_id}", fields)

    def delete_token(self, key: ProvisionedKey) -> None:
        self._call("DELETE", f"/api/admin/tokens/{key.token_id}")

    def close(self) -> None:
        self._api.close()
