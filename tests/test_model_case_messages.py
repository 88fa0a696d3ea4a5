"""The failure text of ``models.exact-name-forwarded`` names the real cause (issue #13 item 4d):
LM-Proxy's answers carry no ``model`` field at all, which the case used to report as a wrong
model ``None``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx
import pytest

from relaygate.suite.client import Exchange
from relaygate.suite.failures import CaseFailure

CASES = Path(__file__).resolve().parent.parent / "conformance" / "test_models.py"


def _cases() -> ModuleType:
    spec = importlib.util.spec_from_file_location("relaygate_models_cases", CASES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Client:
    """Answers every chat with one fixed body."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self._body = json.dumps(answer).encode()

    def chat(self, body: dict[str, Any], **_: Any) -> Exchange:
        return Exchange(
            method="POST",
            url="http://127.0.0.1:1/v1/chat/completions",
            status=200,
            headers=httpx.Headers({"Content-Type": "application/json"}),
            body=self._body,
            elapsed_s=0.01,
            curl="curl …",
        )


class _Journal:
    """The upstream received exactly the model asked for."""

    def __init__(self, model: str) -> None:
        self._model = model

    def wait_entries(self, tag: str, **_: Any) -> list[dict[str, Any]]:
        return [{"body": {"model": self._model, "messages": []}}]


def _run(answer: dict[str, Any], model: str = "gpt-4o") -> str:
    relay = SimpleNamespace(secrets=())
    baseline = SimpleNamespace(require_forwarding_seen=lambda: None)
    with pytest.raises(CaseFailure) as failure:
        _cases().test_exact_name_forwarded(
            model, _Client(answer), _Journal(model), "tag", relay, baseline
        )
    return str(failure.value)


def test_an_answer_without_a_model_field_is_named_as_such() -> None:
    choices = [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]
    text = _run({"choices": choices})
    assert "no `model` field in the answer (its fields: ['choices'])" in text
    assert "Actual: None" not in text


def test_a_wrong_model_is_still_named() -> None:
    text = _run({"model": "gpt-4o-mini", "choices": []})
    assert "Actual: 'gpt-4o-mini'" in text
