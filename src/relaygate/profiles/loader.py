"""Finding, reading, merging and validating profile files: read → merge ``extends`` → build.

Rules the loader enforces, so a profile cannot quietly turn a failure into a pass: unknown keys,
wrong types, missing fields and unknown enum values are errors that name the file, the key path
and what was expected; security rules cannot be waived; a relay profile's differences from the
``faq`` baseline must carry reasons (:mod:`relaygate.profiles.deviations`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from relaygate.profiles.citations import citation_problem
from relaygate.profiles.deviations import check_citations, check_deviations
from relaygate.profiles.rules import (
    CONDITIONS,
    OPTIONAL_SECTIONS,
    SECTIONS,
    SECURITY_RULES,
    ErrorExpectation,
    Profile,
)
from relaygate.profiles.schema import ProfileError, build, check_keys, error, toml_fields

__all__ = ["list_profiles", "load_profile", "profiles_dir"]

_PROFILE_SUFFIX = ".toml"
_BASELINE = "faq"
_TOP_LEVEL: Final = frozenset(
    {"name", "description", "role", "extends", "errors", "security", *SECTIONS}
)
# When a relay has no quota semantics ([billing] applicable = false) its required billing
# fields are meaningless; these placeholders keep BillingRules total.
_INAPPLICABLE_BILLING: Final[Mapping[str, Any]] = {
    "rounding": "ceil",
    "group_ratio": {},
    "model_ratio": {},
    "completion_ratio": {},
    "balance_source": "none",
}


def profiles_dir() -> Path:
    """The directory holding the shipped profiles.

    The canonical copies are ``fixtures/profiles`` of the checkout; a wheel carries copies in
    ``relaygate/_profiles``.
    """
    from relaygate.shipped import shipped_dir

    try:
        return shipped_dir("fixtures/profiles", "_profiles")
    except FileNotFoundError as exc:
        raise ProfileError(f"{exc}; or pass a path to a profile .toml") from None


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(p.stem for p in profiles_dir().glob(f"*{_PROFILE_SUFFIX}"))


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name (``"one-api"``) or any profile by path.

    Raises :class:`ProfileError` with the file, the key path and what is expected.
    """
    path = _resolve(name_or_path)
    profile = _build(_read_merged(path, chain=()), path)
    if profile.role == "relay" and profile.name != _BASELINE:
        check_deviations(profile, load_profile(_BASELINE), path)
        check_citations(profile, path)
    return profile


def _resolve(name_or_path: str, relative_to: Path | None = None) -> Path:
    if name_or_path.endswith(_PROFILE_SUFFIX) or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.is_file():
            raise ProfileError(f"profile file not found: {path}")
        return path
    path = profiles_dir() / f"{name_or_path}{_PROFILE_SUFFIX}"
    if not path.is_file():
        raise ProfileError(
            f"unknown profile {name_or_path!r}; available: {', '.join(list_profiles())} "
            "(or give a path to a .toml file)"
        )
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc


def _read_merged(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p.name) for p in (*chain, resolved))
        raise ProfileError(f"{path}: `extends` forms a cycle: {cycle}")
    data = _read_toml(path)
    parent = data.get("extends")
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ProfileError(f"{path}: key `extends` must be a profile name or path (a string)")
    base = _read_merged(_resolve(parent, relative_to=path.parent), (*chain, resolved))
    # A child never inherits identity: name/description/role are its own.
    for own in ("name", "description", "role"):
        base.pop(own, None)
    merged = _deep_merge(base, data)
    # A condition the child answers with the upstream's own status (a pass-through) does not
    # inherit the parent's relay-made answer (its status, code, type, message patterns).
    for condition, table in (data.get("errors") or {}).items():
        if isinstance(table, dict) and table.get("status_from_upstream") is True:
            merged["errors"][condition] = dict(table)
    return merged


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(raw: Mapping[str, Any], path: Path) -> Profile:
    check_keys(raw, _TOP_LEVEL, path, "")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise error(path, "name", "expected a non-empty string")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise error(path, "description", "expected a string")
    role = raw.get("role", "relay")
    if role not in ("relay", "baseline"):
        raise error(path, "role", f'expected "relay" or "baseline", got {role!r}')

    deviations: dict[str, str] = {}
    docs: dict[str, str] = {}
    sections: dict[str, Any] = {}
    for section, rules in SECTIONS.items():
        if section not in raw and section not in OPTIONAL_SECTIONS:
            raise error(path, section, f"required table [{section}] is missing")
        sections[section], declared, cited = _section(section, rules, raw.get(section, {}), path)
        deviations.update({f"{section}.{k}": v for k, v in declared.items()})
        docs.update({f"{section}.{k}": v for k, v in cited.items()})

    errors = _build_errors(raw.get("errors"), path)
    deviations.update({f"errors.{c}": e.deviation for c, e in errors.items() if e.deviation})
    docs.update({f"errors.{c}": e.doc for c, e in errors.items() if e.deviation and e.doc})
    return Profile(
        name=name,
        description=description,
        role=role,
        source_path=path,
        extends=raw.get("extends"),
        errors=MappingProxyType(errors),
        security=_build_security(raw, path),
        deviations=MappingProxyType(deviations),
        deviation_docs=MappingProxyType(docs),
        **sections,
    )


def _section(
    section: str, rules: type, data: Any, path: Path
) -> tuple[Any, dict[str, str], dict[str, str]]:
    """One area's table -> (its rules object, the deviations it declares, their citations)."""
    if not isinstance(data, dict):
        raise error(path, section, "expected a table")
    if section == "billing" and data.get("applicable") is False:
        if not data.get("skip_reason"):
            raise error(path, "billing.skip_reason", "required when applicable = false")
        data = {**_INAPPLICABLE_BILLING, **data}
    names = frozenset(f.name for f in toml_fields(rules))
    check_keys(data, names | {"deviations"}, path, f"{section}.")
    declared = data.get("deviations", {})
    if not isinstance(declared, dict):
        raise error(path, f"{section}.deviations", _DEVIATION_FORM)
    reasons: dict[str, str] = {}
    docs: dict[str, str] = {}
    for name, value in declared.items():
        key = f"{section}.deviations.{name}"
        if name not in names:
            raise error(path, key, f"names no field of [{section}]")
        reason = value
        if isinstance(value, dict):
            check_keys(value, frozenset({"reason", "doc", "ref"}), path, f"{key}.")
            reason = value.get("reason")
            if value.get("doc") is not None:
                docs[name] = _citation(value["doc"], path, f"{key}.doc")
        if not isinstance(reason, str) or not reason:
            raise error(path, key, _DEVIATION_FORM)
        reasons[name] = reason
    return build(rules, data, path, f"{section}."), reasons, docs


_DEVIATION_FORM = (
    'expected field = { reason = "why this relay differs", doc = "<its documentation>" } '
    '(or field = "reason")'
)


def _citation(value: Any, path: Path, key: str) -> str:
    problem = citation_problem(value) if isinstance(value, str) else "expected a string"
    if problem:
        raise error(path, key, f"not a documentation citation: {problem}")
    return str(value).strip()


def _build_errors(table: Any, path: Path) -> dict[str, ErrorExpectation]:
    if not isinstance(table, dict):
        raise error(path, "errors", "required table [errors] with one sub-table per condition")
    check_keys(table, frozenset(CONDITIONS), path, "errors.")
    names = frozenset(f.name for f in toml_fields(ErrorExpectation))
    errors: dict[str, ErrorExpectation] = {}
    for condition in CONDITIONS:
        where = f"errors.{condition}"
        if condition not in table:
            raise error(path, where, "required but missing (every condition)")
        entry = table[condition]
        if not isinstance(entry, dict):
            raise error(path, where, "expected a table")
        check_keys(entry, names, path, f"{where}.")
        expectation: ErrorExpectation = build(
            ErrorExpectation, entry, path, f"{where}.", condition=condition
        )
        if expectation.doc is not None:
            _citation(expectation.doc, path, f"{where}.doc")
        if expectation.message_regex is not None:
            try:
                re.compile(expectation.message_regex)
            except re.error as exc:
                raise error(path, f"{where}.message_regex", f"not a valid regex: {exc}") from None
        if expectation.applicable:
            if expectation.status is None and not expectation.status_from_upstream:
                raise error(
                    path,
                    f"{where}.status",
                    "an applicable condition needs a status (or status_from_upstream = true)",
                )
        elif not expectation.skip_reason:
            raise error(path, f"{where}.skip_reason", "required when applicable = false")
        errors[condition] = expectation
    return errors


def _build_security(raw: Mapping[str, Any], path: Path) -> Mapping[str, bool]:
    table = raw.get("security", {})
    if not isinstance(table, dict):
        raise error(path, "security", "expected a table")
    for key, value in table.items():
        if key not in SECURITY_RULES:
            raise ProfileError(
                f"{path}: unknown key `security.{key}`; security rules are: "
                f"{', '.join(SECURITY_RULES)} (and none of them can be waived)"
            )
        if value is not True:
            raise ProfileError(
                f"{path}: key `security.{key}`: security rules cannot be waived "
                f"({SECURITY_RULES[key]}); remove the key or set it to true"
            )
    return MappingProxyType(dict.fromkeys(SECURITY_RULES, True))
