"""Adapter for new-api 0.6's management API, exactly as RELAY_SPEC.md §7 describes it ("N").

Where it differs from one-api (and so from :class:`OneAPIProvisioner`, which it extends):

* every management call needs ``New-Api-User: <id>`` next to ``Authorization: <access_token>``
  (the admin's id comes from the ``admin_user_id`` setting, or from :meth:`bootstrap`);
* a fresh install has no root: ``POST /api/setup`` creates it (idempotent here);
* there is no ``/api/topup`` in 0.6: quota is *set* with ``PUT /api/user/`` and the full user
  object (a partial object blanks the username); quota 0 works, so USER_EXHAUSTED is easy;
* ``POST /api/token/`` does not return the key: it is read back with ``/api/token/search``;
* model allow-lists are ``model_limits_enabled`` + comma-separated ``model_limits``;
* after adding a channel, ``POST /api/channel/fix`` rebuilds abilities and the channel cache;
* the per-user model rate limit is a global option, so RATE_LIMITED is not provisioned per key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar, Unpack

import httpx

from relaygate.provision.base import JSONAdminClient, ProvisionedKey, ProvisioningError
from relaygate.provision.oneapi import AdapterOptions, OneAPIProvisioner, _User

__all__ = ["NewAPIProvisioner"]


class NewAPIProvisioner(OneAPIProvisioner):
    """Provisions keys on new-api 0.6 through its management API."""

    name: str = "new-api"
    status_only_value: ClassVar[str] = "true"

    channel_defaults: ClassVar[Mapping[str, Any]] = {
        "model_mapping": "{}",
        "status_code_mapping": "{}",
        "priority": 0,
        "weight": 0,
        "auto_ban": 1,
    }

    def __init__(
        self,
        relay_url: str,
        admin_token: str,
        *,
        admin_user_id: int = 1,
        **options: Unpack[AdapterOptions],
    ) -> None:
        super().__init__(relay_url, admin_token, **options)
        self._admin_user_id = admin_user_id

    @classmethod
    def bootstrap(
        cls,
        relay_url: str,
        username: str,
        password: str,
        *,
        timeout_s: float = 10.0,
        **kw: Any,
    ) -> NewAPIProvisioner:
        """Set up a fresh new-api (root = ``username``) or log in to a set-up one.

        ``POST /api/setup`` with SelfUseModeEnabled (unpriced mock models then bill at a ratio
        instead of failing with 500 model_price_error); "already initialised" is fine. Then one
        login and ``GET /api/user/token`` give the admin access token and id.
        """
        api = JSONAdminClient(relay_url, timeout_s=timeout_s, secrets_to_mask=(password,))

        def fail(what: str, response: httpx.Response) -> ProvisioningError:
            return ProvisioningError(
                api.mask(f"{what}: HTTP {response.status_code}: {response.text[:200]}")
            )

        with contextlib.closing(api):
            setup = api.request(
                "POST",
                "/api/setup",
                json={
                    "username": username,
                    "password": password,
                    "confirmPassword": password,
                    "SelfUseModeEnabled": True,
                    "DemoSiteEnabled": False,
                },
            )
            body = _json(setup)
            if setup.is_error or body is None:
                raise fail("POST /api/setup", setup)
            if body.get("success") is not True and "初始化" not in str(body.get("message", "")):
                raise fail("POST /api/setup", setup)
            login = api.request(
                "POST", "/api/user/login", json={"username": username, "password": password}
            )
            login_body = _json(login)
            if login_body is None or login_body.get("success") is not True:
                raise fail("POST /api/user/login", login)
            admin_id = int(login_body["data"]["id"])
            token = api.request("GET", "/api/user/token", headers={"New-Api-User": str(admin_id)})
            token_body = _json(token)
            if token_body is None or token_body.get("success") is not True:
                raise fail("GET /api/user/token", token)
        return cls(
            relay_url, str(token_body["data"]), admin_user_id=admin_id, timeout_s=timeout_s, **kw
        )

    # --- auth headers ------------------------------------------------------------------------

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": self._admin_token, "New-Api-User": str(self._admin_user_id)}

    def user_headers(self, user: _User) -> dict[str, str]:
        token = user.access_token or self._login(user)
        return {"Authorization": token, "New-Api-User": str(user.id)}

    def session_headers(self, user: _User, login_data: Any) -> dict[str, str]:
        user_id = login_data.get("id", user.id) if isinstance(login_data, dict) else user.id
        return {"New-Api-User": str(user_id)}

    # --- users: quota is set, never topped up ------------------------------------------------

    def fund_user(self, user: _User, quota: int) -> None:
        self.set_user_quota(user.id, quota)

    def set_user_quota(self, user_id: int | str, quota: int) -> None:
        """``PUT /api/user/`` with the full object; quota 0 works in new-api (RELAY_SPEC §7)."""
        full = self.get_user(user_id)
        full["quota"] = quota
        self._call("PUT", "/api/user/", headers=self.admin_headers(), json_body=full)

    def empty_user(self, user: _User) -> None:
        self.set_user_quota(user.id, 0)

    def manage_body(self, user: _User, action: str) -> dict[str, Any]:
        # 0.6 identifies the user by id, one-api by username; Go ignores the extra field.
        return {"id": user.id, "username": user.username, "action": action}

    # --- tokens ------------------------------------------------------------------------------

    def token_model_fields(self, models: list[str] | None) -> dict[str, Any]:
        return {
            "model_limits_enabled": bool(models),
            "model_limits": ",".join(models or []),
            "allow_ips": "",
            "group": "",
        }

    def rate_limit_reason(self) -> str:
        return (
            "new-api's model rate limit is a global per-user option (ModelRequestRateLimit*, "
            "RELAY_SPEC §6), not a per-key setting; enable it on the relay and pass a key via "
            "RELAYGATE_KEY_RATE_LIMITED"
        )

    def log_params(self, key: ProvisionedKey) -> dict[str, str | int]:
        return {"p": 0, "page_size": 100, "type": 2, "token_name": key.token_name or ""}

    # --- channels ----------------------------------------------------------------------------

    def after_channel_change(self) -> None:
        """``POST /api/channel/fix``: rebuild abilities and the channel cache (0.6)."""
        self._call("POST", "/api/channel/fix", headers=self.admin_headers())


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
