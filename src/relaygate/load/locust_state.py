"""Per-run state of the Locust plugin: one :class:`RunState` per Locust ``Environment``, the
requests in flight, and the small runner questions every other part asks (which runner is
this, which user classes run, end the run soon)."""

from __future__ import annotations

import dataclasses
import itertools
import time
import weakref
from typing import Any

import gevent
from locust.env import Environment
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from relaygate.load import slo
from relaygate.load.metrics import Registry
from relaygate.load.pacer import Pacer

__all__ = [
    "InFlight",
    "RunState",
    "Started",
    "controls_run",
    "is_worker",
    "quit_soon",
    "selected",
    "state_of",
    "states",
]

CHAT_PATH = "/v1/chat/completions"
NS_PER_MS = 1_000_000.0
NS_PER_S = 1_000_000_000


class RunState:
    """Per-Environment state: the registry, the pacer, the embedded stack, timings."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.pacer: Pacer | None = None
        self.rules: list[slo.SLORule] = []
        self.stack: Any = None
        self.started_wall: float | None = None
        self.stopped_wall: float | None = None
        self.selfcheck_started = False
        self.running = True
        self.written = False
        self.in_flight = InFlight()


@dataclasses.dataclass(frozen=True, slots=True)
class Started:
    """A request that was started and has no outcome yet."""

    name: str
    scope: str
    t_intended_ns: int
    t_start_ns: int


class InFlight:
    """Requests started and not yet reported, so that the ones a run's end cuts off are
    counted (``incomplete``) instead of vanishing. Each ends exactly once: whoever calls
    :meth:`end` or :meth:`drain` first reports it."""

    def __init__(self) -> None:
        self._open: dict[int, Started] = {}
        self._tokens = itertools.count()

    def begin(self, name: str, scope: str, t_intended_ns: int | None = None) -> int:
        now = time.monotonic_ns()
        token = next(self._tokens)
        self._open[token] = Started(name, scope, t_intended_ns or now, now)
        return token

    def end(self, token: int) -> Started | None:
        """The request, if it was still open (then the caller reports its outcome)."""
        return self._open.pop(token, None)

    def drain(self) -> list[Started]:
        """Every open request, now closed."""
        started = list(self._open.values())
        self._open.clear()
        return started

    def __len__(self) -> int:
        return len(self._open)


_STATES: weakref.WeakKeyDictionary[Environment, RunState] = weakref.WeakKeyDictionary()


def state_of(environment: Environment) -> RunState:
    state = _STATES.get(environment)
    if state is None:
        state = _STATES[environment] = RunState()
    return state


def states() -> list[tuple[Environment, RunState]]:
    """Every environment of this process with its state (Locust's report events name none)."""
    return list(_STATES.items())


def is_worker(environment: Environment) -> bool:
    return isinstance(environment.runner, WorkerRunner)


def controls_run(environment: Environment) -> bool:
    """The master or the local runner: the one that starts the stack and writes the reports."""
    return isinstance(environment.runner, (MasterRunner, LocalRunner))


def selected(environment: Environment) -> set[str]:
    """The names of the user classes this run runs."""
    return {u.__name__ for u in environment.user_classes}


def quit_soon(environment: Environment) -> None:
    runner = environment.runner
    if runner is not None:
        gevent.spawn_later(0.2, runner.quit)
