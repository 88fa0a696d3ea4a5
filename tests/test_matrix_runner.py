"""The detection matrix counts only a case's own assertion failure as a detection."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from matrix_runner import CONFORMANCE_DIR, own_assertion, session_args, share_default_tls_context

from relaygate.stack import StackInfo
from relaygate.suite.failures import CaseFailure, require


def _raised(code: str, filename: str) -> BaseException:
    try:
        exec(compile(code, filename, "exec"), {"CaseFailure": CaseFailure})
    except BaseException as exc:  # the exception is the result
        return exc
    raise AssertionError("the code did not raise")


def test_require_failure_is_a_detection() -> None:
    with pytest.raises(CaseFailure) as excinfo:
        require(False, "rule", "expected", "actual")
    assert own_assertion(excinfo.value)


def test_assert_in_a_case_body_is_a_detection_elsewhere_not() -> None:
    in_case = _raised("assert 1 == 2", str(CONFORMANCE_DIR / "test_example.py"))
    assert own_assertion(in_case)
    in_helper = _raised("assert 1 == 2", "/somewhere/else/helper.py")
    assert not own_assertion(in_helper)


@pytest.mark.parametrize("code", ["{}['missing']", "1 / 0", "raise TimeoutError('slow')"])
def test_other_exceptions_are_not_detections(code: str) -> None:
    assert not own_assertion(_raised(code, str(CONFORMANCE_DIR / "test_example.py")))


def test_grouped_failures_count_only_when_all_are_the_cases_own() -> None:
    own = CaseFailure("-> rule")
    assert own_assertion(ExceptionGroup("hypothesis", [own, CaseFailure("-> other")]))
    assert not own_assertion(ExceptionGroup("hypothesis", [own, KeyError("x")]))


def test_clients_share_one_default_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    share_default_tls_context(monkeypatch.setattr)
    with httpx.Client() as one, httpx.Client() as two, httpx.Client(verify=False) as other:
        contexts = [c._transport._pool._ssl_context for c in (one, two, other)]  # type: ignore[attr-defined]
    assert contexts[0] is contexts[1] and contexts[2] is not contexts[0]


def test_a_live_session_gives_the_suite_only_the_url_and_the_key(tmp_path: Path) -> None:
    info = StackInfo(
        relay_url="http://127.0.0.1:1/v1",
        relay_key="sk-customer",
        admin_token="rg-admin-secret",
        upstream_url="http://127.0.0.1:2/v1",
        upstream_key="sk-upstream",
        user_id=1,
        token_id=1,
    )
    full = session_args(info, ["baseline"], tmp_path / "m.jsonl", live=False)
    assert {"--relay-admin-token", "--upstream-url"} <= set(full)
    live = session_args(info, ["baseline", "drop_n"], tmp_path / "m.jsonl", live=True)
    assert not {"--relay-admin-token", "--upstream-url"} & set(live)
    assert "http://127.0.0.1:2/v1" not in live
    # The admin token reaches the runner's own option only, to switch faults between runs.
    assert live[live.index("--matrix-admin-token") + 1] == "rg-admin-secret"
    assert live[live.index("--relay-key") + 1] == "sk-customer"
    runs = [live[i + 1] for i, arg in enumerate(live) if arg == "--matrix-run"]
    assert runs == ["baseline", "drop_n"]
