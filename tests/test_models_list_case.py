"""``models.list-usable`` on a faithful relay in front of OpenAI: its list holds models the chat
endpoint does not serve by design (completions-only, Responses-only), which OpenAI refuses
with its own words. That refusal is the upstream's, not drift: no false failure. A relay's own
refusal of an id it lists still fails, and a list with no chat model gives no verdict."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from test_model_case_messages import _cases  # conformance/test_models.py, loaded by path

from relaygate.suite.client import Exchange
from relaygate.suite.failures import CaseFailure

NOT_CHAT = {
    "message": "This is not a chat model and thus not supported in the v1/chat/completions "
    "endpoint. Did you mean to use v1/completions?",
    "type": "invalid_request_error",
    "param": "model",
    "code": None,
}
RESPONSES_ONLY = {
    "message": "This model is only supported in v1/responses and not in v1/chat/completions.",
    "type": "invalid_request_error",
    "param": "model",
    "code": None,
}
UNKNOWN = {
    "message": "model gpt-4o-2024-05-13 not found",
    "type": "invalid_request_error",
    "param": "model",
    "code": "model_not_found",
}


def _exchange(status: int, body: dict[str, Any]) -> Exchange:
    return Exchange(
        method="POST",
        url="http://127.0.0.1:1/v1/chat/completions",
        status=status,
        headers=httpx.Headers({"Content-Type": "application/json"}),
        body=json.dumps(body).encode(),
        elapsed_s=0.01,
        curl="curl …",
    )


class _Relay:
    """Lists ``answers``' ids; answers each chat with the model's entry (an error or a chat)."""

    def __init__(self, answers: dict[str, tuple[int, dict[str, Any]] | None]) -> None:
        self.answers = answers
        self.tried: list[str] = []

    def request(self, method: str, path: str, **_: Any) -> Exchange:
        listing = {"object": "list", "data": [{"id": m, "object": "model"} for m in self.answers]}
        return _exchange(200, listing)

    def chat(self, body: dict[str, Any], **_: Any) -> Exchange:
        model = body["model"]
        self.tried.append(model)
        answer = self.answers[model]
        if answer is None:
            chat = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
            }
            return _exchange(200, chat)
        status, error = answer
        return _exchange(status, {"error": error})


def _run(answers: dict[str, tuple[int, dict[str, Any]] | None]) -> _Relay:
    relay = _Relay(answers)
    profile = SimpleNamespace(models=SimpleNamespace(list_shape="object_list"))
    target = SimpleNamespace(secrets=())
    _cases().test_models_list(relay, profile, "tag", target, None)
    return relay


def test_openai_s_own_refusal_of_a_non_chat_model_is_not_drift() -> None:
    relay = _run(
        {
            "gpt-4o": None,
            "gpt-3.5-turbo-instruct": (404, NOT_CHAT),
            "o1-pro": (404, RESPONSES_ONLY),
            "text-embedding-3-small": (404, NOT_CHAT),  # never tried: its name says it
        }
    )
    assert relay.tried == ["gpt-4o", "gpt-3.5-turbo-instruct", "o1-pro"]


def test_the_relay_s_own_refusal_of_a_listed_id_still_fails() -> None:
    with pytest.raises(CaseFailure, match="gpt-4o-2024-05-13"):
        _run({"gpt-4o": None, "gpt-4o-2024-05-13": (404, UNKNOWN)})


def test_a_list_without_any_chat_model_gives_no_verdict() -> None:
    with pytest.raises(pytest.skip.Exception, match="no listed id to try"):
        _run({"gpt-3.5-turbo-instruct": (404, NOT_CHAT), "text-embedding-3-small": None})
