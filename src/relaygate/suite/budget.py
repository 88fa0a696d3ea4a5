"""Cost control for the live audit: every request the suite sends to a live relay is counted
and priced with the profile's table, a spend cap (``--live-budget``) is never passed, and the
spend goes into ``conformance.json`` (``live_cost``).

Tokens are counted locally and exactly (:mod:`relaygate.tokens`): the prompt by OpenAI's chat
rule, the completion from the text the relay returned. Before a request is sent its worst
case is priced (prompt + ``max_tokens``, or :data:`UNCAPPED_COMPLETION_TOKENS` without one);
a request whose worst case would pass the cap is not sent: the case skips with
``live budget spent``, and so does every case after it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from relaygate import tokens

if TYPE_CHECKING:
    from relaygate.profiles.quota import BillingRules
    from relaygate.suite.client import Exchange

__all__ = [
    "BUDGET_SPENT",
    "UNCAPPED_COMPLETION_TOKENS",
    "BudgetError",
    "LiveMeter",
    "answer_text",
    "count_usage",
    "parse_budget",
]

# What a request without max_tokens is assumed to cost at most, in completion tokens.
UNCAPPED_COMPLETION_TOKENS = 512
#: Bodies longer than this are priced by their length (an upper bound on their tokens), not
#: tokenised: counting an 8 MB body took a minute a run (errors.body-too-large).
EXACT_COUNT_MAX_BYTES = 256 * 1024
# The skip reason of every live case the cap stopped (its prefix is what reports match).
BUDGET_SPENT = "live budget spent"
_METERED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_BUDGET = re.compile(r"^\s*\$?\s*(\d+(?:\.\d+)?)\s*(usd|\$|q|quota)?\s*$", re.IGNORECASE)


class BudgetError(ValueError):
    """A ``--live-budget`` value that is not an amount."""


def parse_budget(text: str, quota_per_usd: int) -> int:
    """``--live-budget`` in quota units: ``0.50`` / ``0.5usd`` / ``$0.5`` are US dollars,
    ``250000q`` / ``250000quota`` quota units (500000 quota = 1 USD in the one-api family)."""
    match = _BUDGET.match(text)
    if match is None:
        raise BudgetError(
            f"--live-budget {text!r}: give US dollars (0.50, 0.5usd, $0.5) or quota units "
            "(250000q, 250000quota)"
        )
    amount, unit = Fraction(match.group(1)), (match.group(2) or "usd").lower()
    if unit in ("q", "quota"):
        return int(amount)
    return int(amount * quota_per_usd)


def answer_text(exchange: Exchange) -> str:
    """Every choice's generated text (message content, or streamed deltas), concatenated."""
    from relaygate.suite.client import StreamExchange

    parts: list[str] = []
    if isinstance(exchange, StreamExchange):
        for chunk in exchange.chunks():
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") if isinstance(choice, Mapping) else None
                if isinstance(delta, Mapping) and isinstance(delta.get("content"), str):
                    parts.append(delta["content"])
                elif isinstance(choice, Mapping) and isinstance(choice.get("text"), str):
                    parts.append(choice["text"])
        return "".join(parts)
    data = exchange.json()
    for choice in (data.get("choices") if isinstance(data, dict) else None) or []:
        if not isinstance(choice, Mapping):
            continue
        message = choice.get("message")
        if isinstance(message, Mapping) and isinstance(message.get("content"), str):
            parts.append(message["content"])
        elif isinstance(choice.get("text"), str):
            parts.append(choice["text"])
    return "".join(parts)


def _prompt_tokens(body: Mapping[str, Any], model: str) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        return tokens.count_chat_prompt(
            [m for m in messages if isinstance(m, Mapping)], model, body.get("tools")
        )
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str):
            return tokens.count_text(value, model)
        if isinstance(value, list):
            return sum(tokens.count_text(v, model) for v in value if isinstance(v, str))
    return 0


def count_usage(body: Mapping[str, Any], exchange: Exchange | None) -> tuple[int, int]:
    """(prompt, completion) tokens of a request and its answer, counted locally: what a
    correct relay bills for it (a refused or failed answer: nothing)."""
    model = str(body.get("model") or "gpt-4o")
    prompt = _prompt_tokens(body, model)
    if exchange is None:
        return prompt, 0
    return prompt, tokens.count_text(answer_text(exchange), model)


@dataclasses.dataclass
class _Spend:
    requests: int = 0
    refused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    quota: int = 0
    worst_case_quota: int = 0
    max_tokens: int = 0


class LiveMeter:
    """Counts and prices every request the suite's client sends (the client's ``meter``).

    ``cap_quota`` None: count only. ``dry_run``: the requests go to a local stand-in (the
    embedded stack) and the spend is the plan's estimate, nothing reaches the relay.
    """

    def __init__(
        self, rules: BillingRules, *, cap_quota: int | None, group: str = "default"
    ) -> None:
        self._rules = rules
        self.cap_quota = cap_quota
        self._group = group
        self.spend = _Spend()
        self.spent_reason: str | None = None  # set once a request was held back by the cap

    def _price(self, model: str, prompt: int, completion: int) -> int:
        try:
            return self._rules.quota_for(model, self._group, prompt, completion)
        except LookupError:
            # An unpriced model: price it like the dearest one (the worst case).
            rules = self._rules
            ratio = max(rules.model_ratio.values(), default=Fraction(1))
            completion_ratio = max(
                rules.completion_ratio.values(), default=rules.default_completion_ratio
            )
            group = rules.group_ratio.get(self._group, Fraction(1))
            return math.ceil(group * ratio * (prompt + completion * completion_ratio))

    @staticmethod
    def _body(path: str, content: bytes | None) -> dict[str, Any] | None:
        if not content or not path.split("?")[0].endswith(_METERED_PATHS):
            return None
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None

    def _worst_case(self, body: Mapping[str, Any], size: int = 0) -> tuple[int, int]:
        """(quota, completion tokens) a request can cost at most: prompt + its cap.

        A body over :data:`EXACT_COUNT_MAX_BYTES` (``size``: its JSON length) is not tokenised:
        its length in bytes bounds its prompt tokens (a token is at least one byte of text, and
        the chat framing costs fewer tokens than the JSON bytes around each message)."""
        model = str(body.get("model") or "gpt-4o")
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        completion = cap if isinstance(cap, int) and cap >= 0 else UNCAPPED_COMPLETION_TOKENS
        n = body.get("n")
        completion *= n if isinstance(n, int) and n > 0 else 1
        prompt = size if size > EXACT_COUNT_MAX_BYTES else count_usage(body, None)[0]
        return self._price(model, prompt, completion), completion

    def before(self, method: str, path: str, content: bytes | None) -> None:
        """Called before a request is sent: skips the case (and the rest of the run) when its
        worst case would pass the cap."""
        body = self._body(path, content)
        if self.spent_reason is not None and body is not None:
            pytest.skip(self.spent_reason)
        if body is None:
            return
        worst, completion = self._worst_case(body, len(content or b""))
        if self.cap_quota is not None and self.spend.quota + worst > self.cap_quota:
            self.spent_reason = (
                f"{BUDGET_SPENT}: {self.spend.quota} of {self.cap_quota} quota used; the next "
                f"request could cost up to {worst} (--live-budget)"
            )
            pytest.skip(self.spent_reason)
        self.spend.worst_case_quota += worst
        self.spend.max_tokens += completion

    def after(self, method: str, path: str, content: bytes | None, exchange: Exchange) -> None:
        """Called with every answer: count its tokens and price them."""
        from relaygate.suite.client import StreamExchange

        body = self._body(path, content)
        if body is None:
            return
        self.spend.requests += 1
        if not 200 <= exchange.status < 300:
            self.spend.refused += 1
            return
        size = len(content or b"")
        if size > EXACT_COUNT_MAX_BYTES:
            # Served although huge (a relay without a body limit): its bound, not a count.
            prompt, completion = size, count_usage({**body, "messages": []}, exchange)[1]
        else:
            prompt, completion = count_usage(body, exchange)
        self.spend.prompt_tokens += prompt
        self.spend.completion_tokens += completion
        if isinstance(exchange, StreamExchange) and not exchange.done_count:
            # A stream the client left (or that was cut): the relay may bill what the upstream
            # went on generating, so count its worst case.
            self.spend.quota += self._worst_case(body, size)[0]
            return
        self.spend.quota += self._price(str(body.get("model") or "gpt-4o"), prompt, completion)

    def usd(self, quota: int) -> float:
        return quota / self._rules.quota_per_usd

    def to_json(self) -> dict[str, Any]:
        """The ``live_cost`` object of ``conformance.json``."""
        s = self.spend
        return {
            "requests": s.requests,
            "refused_requests": s.refused,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "quota": s.quota,
            "usd": round(self.usd(s.quota), 6),
            "worst_case_quota": s.worst_case_quota,
            "worst_case_usd": round(self.usd(s.worst_case_quota), 6),
            "max_tokens": s.max_tokens,
            "budget_quota": self.cap_quota,
            "budget_usd": None if self.cap_quota is None else round(self.usd(self.cap_quota), 6),
            "stopped_by_budget": self.spent_reason is not None,
            "priced_with": "the profile's ratios, tokens counted locally (relaygate.tokens)",
        }

    def summary(self) -> str:
        """One line for the terminal."""
        s = self.spend
        cap = "" if self.cap_quota is None else f" of a {self.usd(self.cap_quota):.6f} USD budget"
        stopped = "; stopped at the cap" if self.spent_reason else ""
        return (
            f"{s.requests} requests ({s.refused} refused), {s.prompt_tokens} prompt + "
            f"{s.completion_tokens} completion tokens: {s.quota} quota = "
            f"{self.usd(s.quota):.6f} USD{cap} (worst case {self.usd(s.worst_case_quota):.6f} USD, "
            f"max_tokens {s.max_tokens}){stopped}"
        )
