"""Static keys and the provisioner factory."""

from __future__ import annotations

import pytest

from relaygate.profiles import load_profile
from relaygate.provision import (
    KeyState,
    Provisioner,
    ProvisioningUnavailable,
    make_provisioner,
    wait_for_settled_balance,
)
from relaygate.provision.base import Balance
from relaygate.provision.newapi import NewAPIProvisioner
from relaygate.provision.oneapi import OneAPIProvisioner
from relaygate.provision.reference import ReferenceProvisioner
from relaygate.provision.static import StaticProvisioner

FUNDED = "sk-" + "f" * 48
EXPIRED = "sk-" + "e" * 48


def test_env_vars_name_each_state() -> None:
    assert KeyState.FUNDED.env_var == "RELAYGATE_KEY_FUNDED"
    assert KeyState.TOKEN_EXHAUSTED.env_var == "RELAYGATE_KEY_TOKEN_EXHAUSTED"
    assert KeyState.MODEL_RESTRICTED.env_var == "RELAYGATE_KEY_MODEL_RESTRICTED"


def test_static_keys_from_env_and_dict() -> None:
    prov = StaticProvisioner({"expired": EXPIRED}, environ={"RELAYGATE_KEY_FUNDED": f" {FUNDED} "})
    assert prov.funded_key().key == FUNDED
    assert prov.key_with(KeyState.EXPIRED).key == EXPIRED
    assert prov.states == {KeyState.FUNDED, KeyState.EXPIRED}
    assert prov.balance(prov.funded_key()) is None
    assert prov.charges(prov.funded_key()) is None


def test_dict_wins_over_env() -> None:
    prov = StaticProvisioner({KeyState.FUNDED: EXPIRED}, environ={"RELAYGATE_KEY_FUNDED": FUNDED})
    assert prov.funded_key().key == EXPIRED


def test_missing_state_names_the_env_var() -> None:
    prov = StaticProvisioner(environ={})
    with pytest.raises(ProvisioningUnavailable, match="set RELAYGATE_KEY_DISABLED"):
        prov.key_with(KeyState.DISABLED)


def test_static_cannot_shape_quota_or_edit() -> None:
    prov = StaticProvisioner({"funded": FUNDED, "low_quota": FUNDED}, environ={})
    with pytest.raises(ProvisioningUnavailable, match="admin API"):
        prov.funded_key(quota=10)
    with pytest.raises(ProvisioningUnavailable, match="LOW_QUOTA"):
        prov.key_with(KeyState.LOW_QUOTA)
    with pytest.raises(ProvisioningUnavailable, match="group 'default', not 'vip'"):
        prov.funded_key(group="vip")
    with pytest.raises(ProvisioningUnavailable):
        prov.set_user_quota(1, 0)
    with pytest.raises(ProvisioningUnavailable):
        prov.set_token(prov.funded_key(), status="disabled")


def test_unknown_state_name() -> None:
    with pytest.raises(ValueError, match="unknown key state 'rich'"):
        StaticProvisioner({"rich": FUNDED}, environ={})


def test_reprs_are_masked() -> None:
    prov = StaticProvisioner({"funded": FUNDED}, environ={})
    assert FUNDED not in repr(prov)
    assert FUNDED not in repr(prov.funded_key())


@pytest.mark.parametrize(
    ("profile", "admin_token", "expected"),
    [
        ("faq", "admin", ReferenceProvisioner),
        ("one-api", "root-token", OneAPIProvisioner),
        ("new-api", "root-token", NewAPIProvisioner),
        ("strict-openai", "anything", StaticProvisioner),
        ("faq", None, StaticProvisioner),
        ("one-api", "", StaticProvisioner),
    ],
)
def test_factory_picks_the_adapter(profile: str, admin_token: str | None, expected: type) -> None:
    prov = make_provisioner(
        load_profile(profile), "http://127.0.0.1:3000", admin_token, {"funded": FUNDED}, 5.0
    )
    try:
        assert type(prov) is expected
        assert isinstance(prov, Provisioner)
        if expected is StaticProvisioner:
            assert prov.funded_key().key == FUNDED
        if admin_token:
            assert admin_token not in repr(prov) or len(admin_token) < 6
    finally:
        prov.close()


def test_settle_waits_for_two_equal_reads() -> None:
    reads = iter([Balance(10, 0), Balance(5, 5), Balance(5, 5), Balance(1, 9)])
    clock = iter(range(100))
    settled = wait_for_settled_balance(
        lambda: next(reads),
        timeout_s=50,
        poll_interval_s=0.0,
        clock=lambda: float(next(clock)),
        sleep=lambda _s: None,
    )
    assert settled == Balance(5, 5)


def test_settle_until_predicate_and_timeout() -> None:
    seen = [Balance(10, 0), Balance(10, 0), Balance(4, 6)]
    reads = iter(seen)
    settled = wait_for_settled_balance(
        lambda: next(reads),
        timeout_s=50,
        poll_interval_s=0.0,
        until=lambda b: b.used_quota == 6,
        sleep=lambda _s: None,
    )
    assert settled == Balance(4, 6)
    times = iter([0.0, 0.5, 2.0])
    last = wait_for_settled_balance(
        lambda: Balance(10, 0),
        timeout_s=1.0,
        poll_interval_s=0.0,
        until=lambda b: b.used_quota > 0,
        clock=lambda: next(times),
        sleep=lambda _s: None,
    )
    assert last == Balance(10, 0)  # timed out: the caller judges the last reading
