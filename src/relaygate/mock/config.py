"""Configuration of the mock upstream: channel keys, per-model limits, journal and body bounds."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from relaygate.keys import masked_repr

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_MODELS",
    "TIMERS",
    "MockConfig",
    "ModelLimits",
    "load_models_file",
]

DEFAULT_KEY = "sk-relaygate-upstream"
TIMERS = ("precise", "coarse")


@dataclasses.dataclass(frozen=True, slots=True)
class ModelLimits:
    """What a provider enforces for one model: prompt + completion window, completion cap."""

    context_window: int
    max_output: int
    owned_by: str = "system"
    created: int = 1_715_367_049


DEFAULT_MODELS: Mapping[str, ModelLimits] = {
    "gpt-4o": ModelLimits(128_000, 16_384),
    "gpt-4o-mini": ModelLimits(128_000, 16_384),
    "gpt-4": ModelLimits(8_192, 8_192),
    "gpt-3.5-turbo": ModelLimits(16_385, 4_096),
    "text-embedding-3-small": ModelLimits(8_191, 8_191),
}


@masked_repr("keys")
@dataclasses.dataclass(frozen=True, slots=True)
class MockConfig:
    """Everything the mock upstream needs; the CLI flags map onto these fields.

    ``keys``: channel keys accepted in ``Authorization: Bearer``. ``models``: the model ids
    served (case-sensitive) and their limits. ``journal_size``: requests kept in the journal
    ring. ``max_body_bytes``: larger request bodies are answered 413. ``journal_body_bytes``:
    bodies are kept in the journal up to this size (longer JSON strings are shortened, other
    bodies cut). ``preload_tokenizers``: load the tiktoken vocabularies at startup instead of on
    the first request (0.3-0.5 s each). ``default_ttft_ms`` / ``default_itl_ms``: pacing of a
    plain (directive-free) answer: arrival -> first content event, and the gap between
    content events (a non-stream answer comes when the stream would end); a directive's own
    ``ttft_ms`` / ``itl_ms`` (default 0) apply to directed requests. ``ignore_directives``:
    behave like a real model: ``[[relaygate ...]]`` text is plain prompt text, never obeyed
    (to judge live-mode cases, which must not depend on the mock obeying). ``timer``:
    ``"precise"`` (events within about 0.1 ms of their schedule; spins near each deadline) or
    ``"coarse"`` (deadlines round up to ``tick_ms``; one timer per tick, no spinning: less CPU,
    events up to a tick plus about 1 ms late, never early).
    """

    keys: tuple[str, ...] = (DEFAULT_KEY,)
    models: Mapping[str, ModelLimits] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_MODELS)
    )
    journal_size: int = 10_000
    max_body_bytes: int = 32 * 1024 * 1024
    journal_body_bytes: int = 64 * 1024
    preload_tokenizers: bool = False
    default_ttft_ms: float = 0.0
    default_itl_ms: float = 0.0
    ignore_directives: bool = False
    timer: str = "precise"
    tick_ms: float = 1.0

    def __post_init__(self) -> None:
        if self.timer not in TIMERS:
            raise ValueError(f"timer must be one of {', '.join(TIMERS)}, got {self.timer!r}")
        if not 0.01 <= self.tick_ms <= 1000.0:
            raise ValueError(f"tick_ms must be within 0.01..1000 ms, got {self.tick_ms}")
        if not self.keys:
            raise ValueError("MockConfig.keys must hold at least one key")
        if self.journal_size < 1:
            raise ValueError(f"journal_size must be >= 1, got {self.journal_size}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        for name in ("default_ttft_ms", "default_itl_ms"):
            value = getattr(self, name)
            if not 0.0 <= value <= 600_000.0:
                raise ValueError(f"{name} must be within 0..600000 ms, got {value}")


def _limits_from(model: str, raw: Any) -> ModelLimits:
    if not isinstance(raw, Mapping):
        raise ValueError(f"model {model!r}: expected a table/object, got {type(raw).__name__}")
    unknown = set(raw) - {"context_window", "max_output", "owned_by", "created"}
    if unknown:
        raise ValueError(f"model {model!r}: unknown keys {sorted(unknown)}")
    try:
        context_window = int(raw["context_window"])
        max_output = int(raw["max_output"])
    except KeyError as exc:
        raise ValueError(f"model {model!r}: missing {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise ValueError(f"model {model!r}: limits must be integers") from None
    if context_window < 1 or max_output < 1:
        raise ValueError(f"model {model!r}: limits must be >= 1")
    return ModelLimits(
        context_window,
        max_output,
        owned_by=str(raw.get("owned_by", "system")),
        created=int(raw.get("created", 1_715_367_049)),
    )


def load_models_file(path: str | Path) -> dict[str, ModelLimits]:
    """Read ``{"model-id": {"context_window": N, "max_output": M}, ...}`` from JSON or TOML.

    The file replaces the default model list. TOML is chosen by a ``.toml`` suffix.
    """
    path = Path(path)
    data = path.read_bytes()
    raw: Any = tomllib.loads(data.decode()) if path.suffix == ".toml" else orjson.loads(data)
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{path}: expected a non-empty object of model id -> limits")
    return {str(model): _limits_from(str(model), limits) for model, limits in raw.items()}
