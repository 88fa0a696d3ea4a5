"""Keys handed to the harness (options, a dict or ``RELAYGATE_KEY_<STATE>`` variables).

For relays whose admin API the harness cannot (or must not) use. It provisions nothing: it hands
out the key given for a state, or raises :class:`ProvisioningUnavailable` naming the variable to
set. Balances and charges are unknown (the billing endpoints may still be readable by the suite).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from relaygate.keys import mask_key
from relaygate.provision.base import (
    Balance,
    Charge,
    KeyState,
    ProvisionedKey,
    ProvisioningUnavailable,
)

__all__ = ["StaticProvisioner"]


def _state_of(name: str | KeyState) -> KeyState:
    if isinstance(name, KeyState):
        return name
    try:
        return KeyState[name.upper()]
    except KeyError:
        raise ValueError(
            f"unknown key state {name!r}; known: {', '.join(s.name.lower() for s in KeyState)}"
        ) from None


class StaticProvisioner:
    """Hands out pre-made keys per state; explicit keys win over environment variables."""

    name = "static"

    def __init__(
        self,
        keys: Mapping[str | KeyState, str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        group: str = "default",
    ) -> None:
        env = os.environ if environ is None else environ
        self._keys: dict[KeyState, str] = {}
        for state in KeyState:
            value = env.get(state.env_var, "").strip()
            if value:
                self._keys[state] = value
        for name, key in (keys or {}).items():
            if key:
                self._keys[_state_of(name)] = key
        self._group = group

    def __repr__(self) -> str:
        shown = ", ".join(f"{s.name}={mask_key(k)}" for s, k in self._keys.items())
        return f"StaticProvisioner({shown})"

    @property
    def states(self) -> frozenset[KeyState]:
        """The states this provisioner has a key for."""
        return frozenset(self._keys)

    def funded_key(
        self,
        *,
        quota: int | None = None,
        models: list[str] | None = None,
        group: str | None = None,
    ) -> ProvisionedKey:
        """The funded key; ``group`` None: whatever group the keys are in (``--relay-key-group``),
        a named group: only that one."""
        if quota is not None or models is not None:
            raise ProvisioningUnavailable(
                "static keys have fixed quota and models; a case that needs a particular quota "
                "or allow-list needs an admin API (pass --relay-admin-token)"
            )
        return self.key_with(KeyState.FUNDED, group=group or self._group)

    def key_with(self, state: KeyState, **kw: Any) -> ProvisionedKey:
        key = self._keys.get(state)
        if key is None:
            raise ProvisioningUnavailable(
                f"no key for state {state.name}: set {state.env_var} (or pass it in the static "
                "keys), or give an admin token so the harness can create one"
            )
        if state is KeyState.LOW_QUOTA:
            raise ProvisioningUnavailable(
                "LOW_QUOTA needs a key funded for an exact quota, which only an admin API can make"
            )
        group = kw.get("group", self._group)
        if group != self._group:
            raise ProvisioningUnavailable(
                f"static keys belong to group {self._group!r}, not {group!r}"
            )
        return ProvisionedKey(key=key, token_id=None, user_id=None, group=group, state=state)

    def balance(self, key: ProvisionedKey) -> Balance | None:
        return None

    def charges(self, key: ProvisionedKey) -> list[Charge] | None:
        return None

    def set_user_quota(self, user_id: int | str, quota: int) -> None:
        raise ProvisioningUnavailable("static keys: no admin API to change a user's quota")

    def set_token(self, key: ProvisionedKey, **fields: Any) -> None:
        raise ProvisioningUnavailable("static keys: no admin API to change a token")

    def close(self) -> None:
        """Nothing to release."""
