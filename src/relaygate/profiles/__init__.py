"""Relay profiles: what a particular relay is expected to answer, loaded from TOML.

A profile is a relay's *dialect*. The conformance suite asks it what to expect per condition
(``profile.expect("missing_key")``), what a request should cost
(``profile.quota_for("gpt-4o", "default", 10, 20)``) and how to read balances, streams, model
lists and rate limits. Shipped profiles live in ``fixtures/profiles/<name>.toml``:

* ``faq`` - the FAQ's promises (the reference relay); the baseline for every relay profile.
* ``strict-openai`` - what api.openai.com itself does (a baseline too; no quota semantics).
* ``one-api``, ``new-api`` - documented behaviour of those relays (docs/spec/RELAY_SPEC.md).
* ``litellm``, ``openai-forward``, ``lm-proxy``, ``portkey`` - the third-party relay matrix.

The package's rooms:

* :mod:`~relaygate.profiles.rules` - the typed, frozen view (``Profile``, ``ErrorExpectation``
  and one rules class per area); the field annotations are the file format;
* :mod:`~relaygate.profiles.quota` - the quota arithmetic (``BillingRules``, rounding);
* :mod:`~relaygate.profiles.schema` - TOML value → typed field, with errors that name the file,
  the key path and what was expected;
* :mod:`~relaygate.profiles.loader` - finding, reading, merging ``extends`` and building;
* :mod:`~relaygate.profiles.deviations` - differences from ``faq`` must carry reasons.

Exceptions: :class:`ProfileError` (a profile is invalid or missing) and :class:`NotApplicable`
(the profile says a whole area does not apply; the suite turns it into a skip with the reason).
"""

from relaygate.profiles.loader import list_profiles, load_profile, profiles_dir
from relaygate.profiles.quota import ROUNDINGS, BillingRules
from relaygate.profiles.rules import (
    BODY_KINDS,
    CONDITIONS,
    SECURITY_RULES,
    AdminRules,
    AuthRules,
    ErrorExpectation,
    HttpRules,
    ModelRules,
    Profile,
    RateLimitRules,
    ResponseRules,
    StreamRules,
)
from relaygate.profiles.schema import NotApplicable, ProfileError

__all__ = [
    "BODY_KINDS",
    "CONDITIONS",
    "ROUNDINGS",
    "SECURITY_RULES",
    "AdminRules",
    "AuthRules",
    "BillingRules",
    "ErrorExpectation",
    "HttpRules",
    "ModelRules",
    "NotApplicable",
    "Profile",
    "ProfileError",
    "RateLimitRules",
    "ResponseRules",
    "StreamRules",
    "list_profiles",
    "load_profile",
    "profiles_dir",
]
