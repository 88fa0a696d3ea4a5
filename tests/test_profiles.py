"""Profiles: the shipped TOMLs load, say what RELAY_SPEC says, and bad profiles are refused."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaygate.profiles import (
    CONDITIONS,
    SECURITY_RULES,
    NotApplicable,
    Profile,
    ProfileError,
    list_profiles,
    load_profile,
    profiles_dir,
)

SHIPPED = ("faq", "new-api", "one-api", "strict-openai")


@pytest.fixture(scope="module")
def faq() -> Profile:
    return load_profile("faq")


@pytest.fixture(scope="module")
def oneapi() -> Profile:
    return load_profile("one-api")


@pytest.fixture(scope="module")
def newapi() -> Profile:
    return load_profile("new-api")


def test_shipped_profiles_are_listed() -> None:
    assert set(SHIPPED) <= set(list_profiles())


@pytest.mark.parametrize("name", sorted({*SHIPPED, *list_profiles()}))
def test_every_shipped_profile_loads_with_every_condition(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert set(profile.errors) == set(CONDITIONS)
    assert dict(profile.security) == dict.fromkeys(SECURITY_RULES, True)
    for condition in CONDITIONS:
        assert profile.expect(condition).condition == condition


def test_load_by_path_equals_load_by_name() -> None:
    by_path = load_profile(str(profiles_dir() / "one-api.toml"))
    assert by_path.errors == load_profile("one-api").errors


def test_unknown_profile_lists_available_names() -> None:
    with pytest.raises(ProfileError, match=r"unknown profile 'nope'; available: .*faq.*one-api"):
        load_profile("nope")


def test_unknown_condition_names_the_known_ones(faq: Profile) -> None:
    with pytest.raises(KeyError, match="missing_key"):
        faq.expect("bogus")


# --- faq: the FAQ's exact answers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "status", "code"),
    [
        ("missing_key", 401, "missing_api_key"),
        ("malformed_key", 401, "malformed_api_key"),
        ("invalid_key", 401, "invalid_api_key"),
        ("expired_key", 401, "token_expired"),
        ("disabled_key", 401, "token_disabled"),
        ("user_disabled", 403, "user_disabled"),
        ("token_quota_exhausted", 403, "token_quota_exhausted"),
        ("token_quota_insufficient", 403, "token_quota_insufficient"),
        ("user_quota_exhausted", 403, "insufficient_user_quota"),
        ("model_not_allowed", 403, "model_not_allowed"),
        ("no_channel", 503, "model_not_found"),
        ("invalid_json", 400, "invalid_json"),
        ("body_too_large", 413, "request_too_large"),
        ("rate_limited", 429, "rate_limit_exceeded"),
        ("upstream_auth", 502, "upstream_auth_failed"),
        ("upstream_unreachable", 502, "upstream_unreachable"),
        ("upstream_timeout", 504, "upstream_timeout"),
    ],
)
def test_faq_expectations(faq: Profile, condition: str, status: int, code: str) -> None:
    expectation = faq.expect(condition)
    assert (expectation.status, expectation.code) == (status, code)
    assert expectation.deviation is None


def test_faq_has_no_deviations_and_relay_error_type(faq: Profile) -> None:
    assert faq.deviations == {}
    assert faq.expect("missing_key").type == "relay_error"
    assert faq.expect("upstream_5xx_html").type == "upstream_error"
    assert faq.expect("upstream_4xx").status_from_upstream
    assert faq.expect("upstream_4xx").error_passthrough


def test_message_patterns_fill_model_and_group(faq: Profile) -> None:
    no_channel = faq.expect("no_channel")
    message = "当前分组 default 下对于模型 GPT-4o 无可用渠道"
    assert no_channel.message_matches(message, model="GPT-4o", group="default")
    assert not no_channel.message_matches(message, model="gpt-4o", group="default")
    assert faq.expect("token_quota_exhausted").message_matches("该令牌额度已用尽 (request id: 1)")


def test_message_regex_for_unknown_path(faq: Profile) -> None:
    unknown = faq.expect("unknown_path")
    assert unknown.message_matches("Invalid URL (POST /v1/foo)")
    assert not unknown.message_matches("Not Found")


# --- one-api / new-api: RELAY_SPEC.md ------------------------------------------------------


def test_oneapi_exhausted_token_401_is_a_finding_not_a_waiver(oneapi: Profile) -> None:
    # one-api answers 401 (model/token.go:92-101 @v0.6.11-preview.7) but no documentation
    # promises it: the profile keeps the baseline's 403, so the case fails (a finding).
    exhausted = oneapi.expect("token_quota_exhausted")
    assert exhausted.status == 403 and exhausted.deviation is None
    assert exhausted.type == "one_api_error"
    assert exhausted.message_matches("令牌 relaygate（#3）额度已用尽")
    assert oneapi.deviation("errors.token_quota_exhausted") is None


@pytest.mark.parametrize("name", ["one-api", "new-api"])
def test_family_findings_keep_the_baseline(name: str) -> None:
    """Undocumented differences (tests/thirdparty/test_one_api_recorded.py has the answers)."""
    profile, faq = load_profile(name), load_profile("faq")
    for condition in ("models_unknown_id", "wrong_method", "model_missing", "upstream_200_error"):
        assert profile.expect(condition).status == faq.expect(condition).status, condition
    assert profile.expect("upstream_429").message_matches("当前分组上游负载已饱和，请稍后再试")
    assert profile.expect("body_too_large").applicable
    assert profile.http.body_limit_status == 413
    assert profile.auth.bearer_case_insensitive and profile.auth.bare_key_accepted
    assert profile.billing.settle == "async"
    assert profile.admin.adapter == name
    assert profile.deviation("models.unknown_id_status") is None


def test_oneapi_specifics(oneapi: Profile) -> None:
    assert oneapi.billing.rounding == "ceil"
    assert oneapi.billing.model_ratio["gpt-4o"] == Fraction(5, 2)
    assert oneapi.billing.unknown_model_ratio == 30
    assert oneapi.stream.usage_chunk == "iff_requested"
    assert not oneapi.rate_limit.relay_limiter
    assert not oneapi.expect("rate_limited").applicable
    assert oneapi.models.list_shape == "object_list"
    # documented waivers only (README at the tag)
    assert sorted(oneapi.deviations) == [
        "errors.rate_limited",
        "errors.upstream_timeout",
        "http.non_api_paths",
        "rate_limit.relay_limiter",
        "rate_limit.upstream_429_message_rewritten",
    ]


def test_newapi_specifics(newapi: Profile) -> None:
    assert newapi.billing.rounding == "round_half_away"
    assert newapi.billing.model_ratio["gpt-4o"] == Fraction(5, 4)
    assert newapi.billing.unknown_model_ratio is None
    assert newapi.expect("token_quota_exhausted").message_matches(
        "[sk-abc***xyz] 该令牌额度已用尽 !token.UnlimitedQuota && token.RemainQuota = 0"
    )
    # its documentation at the tag promises one of its differences: the web UI outside the API
    assert sorted(newapi.deviations) == ["http.non_api_paths"]


def test_strict_openai_billing_not_applicable() -> None:
    strict = load_profile("strict-openai")
    with pytest.raises(NotApplicable, match="no quota units"):
        strict.quota_for("gpt-4o", "default", 10, 20)
    assert strict.expect("models_unknown_id").status == 404
    assert not strict.expect("upstream_5xx_html").applicable


# --- billing arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile_name", "model", "expected"),
    [
        # RELAY_SPEC §2 worked example: 10 prompt + 20 completion tokens, group ratio 1.
        ("one-api", "gpt-4o", 225),
        ("new-api", "gpt-4o", 113),  # 112.5 rounds half away
        ("one-api", "gpt-3.5-turbo", 18),  # ceil(17.5)
        ("new-api", "gpt-3.5-turbo", 18),  # round(17.5)
        ("one-api", "gpt-4", 750),
        ("new-api", "gpt-4", 750),
        ("faq", "gpt-3.5-turbo", 28),  # ceil(0.75 × (10 + 20 × 1.33)) = ceil(27.45)
        ("faq", "gpt-4o-mini", 7),  # ceil(0.075 × 90) = ceil(6.75)
        ("one-api", "never-heard-of", 900),  # unknown model ratio 30, completion 1
    ],
)
def test_quota_for_worked_examples(profile_name: str, model: str, expected: int) -> None:
    assert load_profile(profile_name).quota_for(model, "default", 10, 20) == expected


def test_minimum_charge_and_zero_usage(faq: Profile) -> None:
    assert faq.quota_for("gpt-4o-mini", "default", 1, 0) == 1  # 0.075 → min 1
    assert faq.quota_for("gpt-4o-mini", "default", 0, 0) == 0  # refunded


def test_unknown_model_or_group_without_fallback(newapi: Profile) -> None:
    with pytest.raises(LookupError, match="no model ratio"):
        newapi.quota_for("mystery", "default", 1, 1)
    with pytest.raises(LookupError, match="group 'gold'"):
        newapi.quota_for("gpt-4o", "gold", 1, 1)


def test_half_even_rounding(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "even.toml", 'extends = "faq"\n[billing]\nrounding = "round_half_even"\n'
    )
    even = load_profile(str(path))
    # gpt-4o-mini: 0.075 × (10 + 20 × 4) = 6.75 → 7; gpt-4o: 2.5 × (1 + 0) = 2.5 → 2 (even)
    assert even.quota_for("gpt-4o", "default", 1, 0) == 2
    assert even.quota_for("gpt-4o", "default", 3, 0) == 8  # 7.5 → 8


@given(
    prompt=st.integers(min_value=0, max_value=200_000),
    completion=st.integers(min_value=0, max_value=200_000),
    model=st.sampled_from(["gpt-3.5-turbo", "gpt-4", "gpt-4o", "gpt-4o-mini"]),
)
def test_quota_matches_decimal_formula(
    oneapi: Profile, prompt: int, completion: int, model: str
) -> None:
    profile = oneapi  # module-scoped: hypothesis re-runs this body ~100 times
    rules = profile.billing
    raw = rules.model_ratio[model] * (prompt + completion * rules.completion_ratio[model])
    expected = 0 if prompt + completion == 0 else max(1, math.ceil(raw))
    assert profile.quota_for(model, "default", prompt, completion) == expected


# --- validation: every refusal names the file, the key path and what is expected ----------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _load_error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, "bad.toml", text)
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert str(path) in message
    return message


def test_extends_overrides_and_inherits(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "portkey.toml",
        'extends = "faq"\nname = "portkey"\n'
        '[http.extra_headers]\n"x-portkey-provider" = "openai"\n',
    )
    profile = load_profile(str(path))
    assert profile.name == "portkey"
    assert profile.extends == "faq"
    assert profile.http.extra_headers == {"x-portkey-provider": "openai"}
    assert profile.expect("missing_key").code == "missing_api_key"  # inherited


def test_pass_through_condition_does_not_inherit_the_parents_answer(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "forwarder.toml",
        'extends = "faq"\nname = "forwarder"\n'
        "[errors.no_channel]\nstatus_from_upstream = true\n"
        'deviation = "forwards every model name as given"\n'
        'doc = "https://docs.example.invalid/routing#model-names"\n'
        '[errors.model_missing]\nmessage_patterns = ["model"]\n',
    )
    profile = load_profile(str(path))
    forwarded = profile.expect("no_channel")
    assert forwarded.status is None and forwarded.status_from_upstream
    assert forwarded.code is None and forwarded.type is None and not forwarded.message_patterns
    # an ordinary override still merges with what it inherits
    assert (
        profile.expect("model_missing").status == load_profile("faq").expect("model_missing").status
    )


def test_extends_from_relay_profile_keeps_its_deviations(tmp_path: Path) -> None:
    path = _write(tmp_path, "o-plus.toml", 'extends = "one-api"\n[errors.upstream_timeout]\n')
    assert load_profile(str(path)).deviation("errors.upstream_timeout")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\nbogus = 1\n')
    assert "`bogus`" in message and "allowed here" in message


def test_unknown_key_in_section(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n[stream]\nusage = "always"\n')
    assert "`stream.usage`" in message


def test_unknown_key_in_condition(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n[errors.missing_key]\nwaive = true\n')
    assert "`errors.missing_key.waive`" in message


def test_unknown_condition(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n[errors.teapot]\nstatus = 418\n')
    assert "`errors.teapot`" in message


def test_wrong_type(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n[errors.missing_key]\nstatus = "401"\n')
    assert "key `errors.missing_key.status`" in message and "integer" in message


def test_wrong_type_bool_for_int(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n[models]\nunknown_id_status = true\n')
    assert "key `models.unknown_id_status`" in message and "expected int" in message


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("models", "unknown_id_status", "4040", "expected an HTTP status (100-599), got 4040"),
        ("models", "unknown_id_status", "99", "expected an HTTP status (100-599), got 99"),
        ("models", "usage_tolerance_tokens", "-1", "cannot be negative, got -1"),
        ("stream", "gap_tolerance_ms", "-0.5", "cannot be negative, got -0.5"),
    ],
)
def test_numbers_out_of_range(
    tmp_path: Path, section: str, key: str, value: str, expected: str
) -> None:
    message = _load_error(tmp_path, f'extends = "faq"\n[{section}]\n{key} = {value}\n')
    assert f"key `{section}.{key}`: {expected}" in message


def test_unknown_rounding(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n[billing]\nrounding = "floor"\n')
    assert "key `billing.rounding`" in message and "ceil, round_half_away" in message


def test_bad_ratio(tmp_path: Path) -> None:
    message = _load_error(
        tmp_path, 'extends = "faq"\n[billing.model_ratio]\n"gpt-4o" = "two and a half"\n'
    )
    assert "key `billing.model_ratio.gpt-4o`" in message and "decimal ratio" in message


def test_missing_required_field(tmp_path: Path) -> None:
    text = (profiles_dir() / "faq.toml").read_text(encoding="utf-8")
    text = text.replace('rounding = "ceil"', "", 1)
    message = _load_error(tmp_path, text)
    assert "key `billing.rounding`: required but missing" in message


def test_missing_condition(tmp_path: Path) -> None:
    text = (profiles_dir() / "faq.toml").read_text(encoding="utf-8")
    text = re.sub(r"\[errors\.wrong_method\][^\[]*", "", text)
    message = _load_error(tmp_path, text)
    assert "key `errors.wrong_method`: required but missing" in message


def test_missing_section(tmp_path: Path) -> None:
    text = (profiles_dir() / "faq.toml").read_text(encoding="utf-8")
    text = re.sub(r"\[auth\][^\[]*", "", text)
    message = _load_error(tmp_path, text)
    assert "[auth] is missing" in message


def test_inapplicable_needs_skip_reason(tmp_path: Path) -> None:
    message = _load_error(
        tmp_path,
        'extends = "faq"\nrole = "baseline"\n[errors.rate_limited]\napplicable = false\n',
    )
    assert "errors.rate_limited.skip_reason" in message


def test_bad_regex(tmp_path: Path) -> None:
    message = _load_error(
        tmp_path, 'extends = "faq"\n[errors.unknown_path]\nmessage_regex = "(unclosed"\n'
    )
    assert "errors.unknown_path.message_regex" in message and "regex" in message


def test_invalid_toml(tmp_path: Path) -> None:
    assert "not valid TOML" in _load_error(tmp_path, "name = \n")


def test_extends_cycle(tmp_path: Path) -> None:
    _write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    path = _write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(ProfileError, match="cycle"):
        load_profile(str(path))


# --- deviations and security --------------------------------------------------------------


def test_difference_without_deviation_is_refused(tmp_path: Path) -> None:
    message = _load_error(
        tmp_path, 'extends = "faq"\n[errors.token_quota_exhausted]\nstatus = 401\n'
    )
    assert "errors.token_quota_exhausted.deviation" in message
    assert "status 401 vs 403" in message


def test_difference_with_deviation_is_accepted(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "ok.toml",
        'extends = "faq"\n[errors.token_quota_exhausted]\nstatus = 401\n'
        'deviation = "returns 401 (F20)"\ndoc = "https://docs.example.invalid/quota#errors"\n',
    )
    assert load_profile(str(path)).deviation("errors.token_quota_exhausted") == (
        "returns 401 (F20) (docs: https://docs.example.invalid/quota#errors)"
    )


@pytest.mark.parametrize(
    "text",
    [
        '[errors.token_quota_exhausted]\nstatus = 401\ndeviation = "returns 401"\n'
        'ref = "controller/quota.go:120"\n',
        '[stream]\nusage_chunk = "always"\n[stream.deviations]\nusage_chunk = "always sent"\n',
    ],
    ids=["error-with-source-ref-only", "section-reason-only"],
)
def test_a_deviation_without_documentation_is_refused(tmp_path: Path, text: str) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n' + text)
    assert "must cite the relay's documentation" in message
    assert "a finding, not a waiver" in message


def test_an_upstream_message_replaced_is_a_deviation_a_suffix_is_not(tmp_path: Path) -> None:
    message = _load_error(
        tmp_path, 'extends = "faq"\n[errors.upstream_4xx]\nupstream_message = "replaced"\n'
    )
    assert "errors.upstream_4xx.deviation" in message and "upstream_message" in message
    text = 'extends = "faq"\n[errors.upstream_4xx]\nupstream_message = "contains"\n'
    path = _write(tmp_path, "ok.toml", text)
    assert load_profile(str(path)).expect("upstream_4xx").upstream_message == "contains"


def test_section_difference_without_deviation_is_refused(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n[stream]\nusage_chunk = "always"\n')
    assert "stream.deviations.usage_chunk" in message


def test_section_deviation_must_name_a_field(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n[stream.deviations]\nnonsense = "x"\n')
    assert "stream.deviations.nonsense" in message


DOC = "https://docs.example.invalid/proxy/keys#quota-errors"


def test_a_deviation_shows_the_documentation_it_cites(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "ok.toml",
        'extends = "faq"\n[errors.token_quota_exhausted]\nstatus = 401\n'
        f'deviation = "returns 401"\ndoc = "{DOC}"\n'
        '[stream]\nusage_chunk = "always"\n'
        f'[stream.deviations]\nusage_chunk = {{ reason = "always sent", doc = "{DOC}" }}\n',
    )
    profile = load_profile(str(path))
    assert profile.deviation("errors.token_quota_exhausted") == f"returns 401 (docs: {DOC})"
    assert profile.expect("token_quota_exhausted").waiver() == f"returns 401 (docs: {DOC})"
    assert profile.deviation("stream.usage_chunk") == f"always sent (docs: {DOC})"
    assert profile.deviation_docs == {
        "errors.token_quota_exhausted": DOC,
        "stream.usage_chunk": DOC,
    }


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ("https://github.com/x/y/blob/v1/proxy/auth.py#L10", "source code, not documentation"),
        ("https://docs.example.invalid/proxy/keys", "name the section"),
        ("auth.py line 10", "expected an https:// URL"),
        ("package:litellm/README.md", "names its section"),
    ],
)
def test_a_citation_must_be_documentation(tmp_path: Path, doc: str, problem: str) -> None:
    message = _load_error(
        tmp_path,
        'extends = "faq"\n[errors.token_quota_exhausted]\nstatus = 401\n'
        f'deviation = "returns 401"\ndoc = "{doc}"\n',
    )
    assert "errors.token_quota_exhausted.doc" in message and problem in message
    message = _load_error(
        tmp_path,
        'extends = "faq"\n[stream]\nusage_chunk = "always"\n'
        f'[stream.deviations]\nusage_chunk = {{ reason = "x", doc = "{doc}" }}\n',
    )
    assert "stream.deviations.usage_chunk.doc" in message and problem in message


def test_a_shipped_package_doc_is_a_citation(tmp_path: Path) -> None:
    doc = "package:openai_forward/README.md § Rate limits"
    path = _write(
        tmp_path,
        "ok.toml",
        'extends = "faq"\n[stream]\nusage_chunk = "always"\n'
        f'[stream.deviations]\nusage_chunk = {{ reason = "always", doc = "{doc}" }}\n',
    )
    assert load_profile(str(path)).deviation_docs["stream.usage_chunk"] == doc


def test_configuration_may_differ_without_deviation(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "prices.toml",
        'extends = "faq"\n[billing]\nrounding = "round_half_away"\nsettle_timeout_s = 30\n'
        '[billing.model_ratio]\n"gpt-4o" = "1.25"\n',
    )
    profile = load_profile(str(path))
    assert profile.billing.model_ratio["gpt-4o"] == Fraction(5, 4)
    assert profile.deviations == {}


@pytest.mark.parametrize("rule", sorted(SECURITY_RULES))
def test_security_rules_cannot_be_waived(tmp_path: Path, rule: str) -> None:
    message = _load_error(tmp_path, f'extends = "faq"\n[security]\n{rule} = false\n')
    assert f"`security.{rule}`" in message and "cannot be waived" in message


def test_security_rules_cannot_be_waived_even_by_a_baseline(tmp_path: Path) -> None:
    message = _load_error(
        tmp_path, 'extends = "faq"\nrole = "baseline"\n[security]\nnever_leak_channel_key = "no"\n'
    )
    assert "cannot be waived" in message


def test_security_deviation_table_is_refused(tmp_path: Path) -> None:
    message = _load_error(
        tmp_path, 'extends = "faq"\n[security.deviations]\nreject_query_string_key = "legacy"\n'
    )
    assert "security.deviations" in message


def test_case_variant_rebilling_cannot_be_configured(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n[models]\ncase_variant = "bill_as_unknown"\n')
    assert "models.case_variant" in message and "reject, bill_as_canonical" in message


def test_restating_security_rules_is_fine(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "sec.toml", 'extends = "faq"\n[security]\nnever_forward_client_key = true\n'
    )
    assert load_profile(str(path)).security["never_forward_client_key"] is True


def test_profile_is_immutable(faq: Profile) -> None:
    with pytest.raises(AttributeError):
        faq.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        faq.billing.model_ratio["gpt-4o"] = Fraction(0)  # type: ignore[index]


# --- the schema is the field annotations ----------------------------------------------------


def test_every_rules_field_has_a_supported_annotation(tmp_path: Path) -> None:
    """A wrong value for any field is a ProfileError naming its key, never a TypeError."""
    import typing

    from relaygate.profiles.rules import SECTIONS, ErrorExpectation
    from relaygate.profiles.schema import convert, toml_fields

    classes = {**SECTIONS, "errors.x": ErrorExpectation}
    for where, rules in classes.items():
        hints = typing.get_type_hints(rules)
        for field in toml_fields(rules):
            key = f"{where}.{field.name}"
            with pytest.raises(ProfileError, match=rf"key `{re.escape(key)}`"):
                convert(hints[field.name], object(), tmp_path / "p.toml", key)


def test_literal_fields_list_their_choices(tmp_path: Path) -> None:
    message = _load_error(tmp_path, 'extends = "faq"\n[stream]\nusage_chunk = "sometimes"\n')
    assert "key `stream.usage_chunk`" in message
    assert "iff_requested, always, never, upstream" in message
