"""Provisioning: relay keys in the states the conformance suite needs.

``make_provisioner(profile, relay_url, admin_token, static_keys, timeout_s)`` picks the adapter
named by the profile's ``[admin] adapter`` when an admin token is given, and the static adapter
(keys from options or ``RELAYGATE_KEY_<STATE>``) otherwise. A state an adapter cannot produce
raises :class:`ProvisioningUnavailable`; the suite turns it into a skip with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from relaygate.provision.base import (
    Balance,
    Charge,
    KeyState,
    ProvisionedKey,
    Provisioner,
    ProvisioningError,
    ProvisioningUnavailable,
    wait_for_settled_balance,
)

if TYPE_CHECKING:
    from relaygate.profiles import Profile

__all__ = [
    "Balance",
    "Charge",
    "KeyState",
    "ProvisionedKey",
    "Provisioner",
    "ProvisioningError",
    "ProvisioningUnavailable",
    "make_provisioner",
    "wait_for_settled_balance",
]


def _int_setting(settings: Mapping[str, object], name: str, default: int) -> int:
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProvisioningError(f"[admin.settings] {name} must be an integer, got {value!r}")
    return value


def make_provisioner(
    profile: Profile,
    relay_url: str,
    admin_token: str | None = None,
    static_keys: Mapping[str | KeyState, str] | None = None,
    timeout_s: float = 10.0,
    static_group: str = "default",
) -> Provisioner:
    """The provisioner for ``profile``'s relay at ``relay_url``.

    Without an admin token only static keys exist (``static_keys`` such as
    ``{"funded": "sk-…"}``, then ``RELAYGATE_KEY_<STATE>``), all of one user's group
    ``static_group``. Imports are local so that choosing one adapter never imports the others.
    """
    adapter = profile.admin.adapter
    settings = profile.admin.settings
    if not admin_token or adapter == "static":
        from relaygate.provision.static import StaticProvisioner

        return StaticProvisioner(static_keys, group=static_group)
    if adapter == "reference":
        from relaygate.provision.reference import ReferenceProvisioner

        return ReferenceProvisioner(relay_url, admin_token, timeout_s=timeout_s)
    if adapter == "one-api":
        from relaygate.provision.oneapi import OneAPIProvisioner

        return OneAPIProvisioner(
            relay_url,
            admin_token,
            timeout_s=timeout_s,
            channel_type=_int_setting(settings, "channel_type", 1),
            login_budget=_int_setting(settings, "login_budget", 18),
        )
    if adapter == "new-api":
        from relaygate.provision.newapi import NewAPIProvisioner

        return NewAPIProvisioner(
            relay_url,
            admin_token,
            admin_user_id=_int_setting(settings, "admin_user_id", 1),
            timeout_s=timeout_s,
            channel_type=_int_setting(settings, "channel_type", 1),
            login_budget=_int_setting(settings, "login_budget", 18),
        )
    raise ProvisioningError(f"unknown provisioning adapter {adapter!r} in profile {profile.name!r}")
