"""Our Locust arguments, from the one option table (:mod:`relaygate.options`).

Each is in Locust's parser under "relaygate" with its env var (Locust prints ``--help`` before
it loads a locustfile, locust#2917: :mod:`relaygate.locust_help` registers them for it), and in
the web UI's start form unless it is secret or a list: a key is never offered there
(pre-filled, the page would carry it; masked, the form would send the mask back as the key).
Values the form sends back as text are typed again by :func:`values_from_web_ui` as the test
starts.
"""

from __future__ import annotations

import contextlib
from typing import Any

from relaygate.options import LOCUST, Option, options_for, parse_text

__all__ = [
    "DEFAULT_STOP_TIMEOUT_S",
    "add_arguments",
    "listen",
    "run_secrets",
    "values_from_web_ui",
]

# Locust kills users at the end of -t by default, cutting every stream in flight; they would
# all count as `incomplete`. This long, a stream may finish first (`--stop-timeout`).
DEFAULT_STOP_TIMEOUT_S = 10


def _locust_default(option: Option) -> Any:
    if option.repeatable:
        return []
    if option.default is None and option.type is str:
        return ""  # Locust's convention for an unset text option (its form shows text)
    return option.default


def add_arguments(parser: Any) -> None:
    """``init_command_line_parser`` listener: our arguments and two Locust defaults."""
    # Locust's web UI listens on every interface by default and shows the run (host, failure
    # texts) to anyone who can reach it: loopback unless --web-host (or LOCUST_WEB_HOST) says
    # otherwise. Streams in flight at the end of -t get time to finish (see the constant).
    parser.set_defaults(web_host="127.0.0.1", stop_timeout=DEFAULT_STOP_TIMEOUT_S)
    group = parser.add_argument_group("relaygate", "relaygate load scenarios (docs/load.md)")
    for option in options_for(LOCUST):
        kwargs: dict[str, Any] = {
            "env_var": option.env,
            "default": _locust_default(option),
            "help": option.help_with_env,
        }
        if option.repeatable:
            kwargs["action"] = "append"
        elif option.switch:
            kwargs["action"] = "store_true"
        else:
            if option.type is not str:
                kwargs["type"] = option.type
            if option.choices is not None:
                kwargs["choices"] = option.choices
        action = group.add_argument(option.flag, **kwargs)
        # Locust's web-UI flags, set by hand: its parser's add_argument takes them as keywords,
        # a group's does not (and without them the web UI leaves the argument out). Not a
        # list either: Locust 2.47 reads a list field whose default is [] as a list of ints,
        # so any text in it (even none) made the start request fail with a 500.
        action.include_in_web_ui = not (option.secret or option.repeatable)
        action.is_secret = option.secret


def listen(events: Any) -> None:
    """Add :func:`add_arguments` to ``events.init_command_line_parser`` once, however often
    called: both the ``--help`` hook (:mod:`relaygate.locust_help`) and the locustfile's import
    call it, and a second listener would add every flag twice (argparse refuses that)."""
    hook = events.init_command_line_parser
    with contextlib.suppress(ValueError):  # not added yet
        hook.remove_listener(add_arguments)
    hook.add_listener(add_arguments)


def values_from_web_ui(options: Any) -> list[str]:
    """Type again what Locust's start form sent as text (an option whose default is ``None``
    gets the field's text as it is); returns one line per value that is not valid (that option
    is back at its default)."""
    problems = []
    for option in options_for(LOCUST):
        value = getattr(options, option.name, None)
        if option.secret or option.type is str or not isinstance(value, str):
            continue
        try:
            setattr(options, option.name, parse_text(option, value))
        except ValueError as exc:
            setattr(options, option.name, option.default)  # no user ever sees the text
            problems.append(f"web UI: {exc}")
    return problems


def run_secrets(options: Any) -> tuple[str, ...]:
    """Every key and key-carrying header value of the run: masked wherever text leaves."""
    values: list[str] = []
    for option in options_for(LOCUST):
        value = getattr(options, option.name, None)
        if option.secret and isinstance(value, str) and value:
            values += [value, *value.split(",")]  # --fairness-keys is a comma list
    values += getattr(options, "relaygate_headers", {}).values()
    return tuple(v.strip() for v in values if v and v.strip())
