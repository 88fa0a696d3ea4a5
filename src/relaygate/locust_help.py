"""Lists our Locust options in ``locust -f loadtests --help`` (docs/load.md).

Locust 2.47 prints its ``--help`` before it imports a locustfile (locust#2917), so the parser
listener ``loadtests/`` registers comes too late, and the one module Locust imports earlier,
``locust_plugins``, belongs to another package; Locust has no plugin entry point. So the wheel
ships ``relaygate_locust_help.pth``: at interpreter start-up, and only when ``-h``/``--help``
is in ``sys.argv``, it calls :func:`install`, which registers the listener when the program
is Locust. Every other interpreter pays one membership test in ``sys.argv``; another
program's ``--help`` also imports this module (``os`` and ``sys`` only). It lives outside
:mod:`relaygate.load` because that package's import is not cheap.
"""

from __future__ import annotations

import os
import sys

__all__ = ["install"]


def install() -> None:
    """Register our Locust arguments when this interpreter runs Locust (the ``.pth`` calls
    this; again from the locustfile's import, the registration is idempotent)."""
    if not _running_locust(sys.argv, sys.orig_argv):
        return
    try:
        from locust import events
    except ModuleNotFoundError as exc:
        # Locust in a site dir site.py has not added yet (a venv with system site packages):
        # its help stays as it was rather than print a traceback.
        if exc.name != "locust":
            raise
        return

    from relaygate.load.locust_options import listen

    listen(events)


def _running_locust(argv: list[str], orig_argv: list[str]) -> bool:
    """``locust ...`` (the console script) or ``python -m locust ...``."""
    if argv[:1] == ["-m"]:  # -m: the module's name is only in orig_argv, just before argv[1:]
        return orig_argv[-len(argv)].removeprefix("-m") == "locust"
    return bool(argv) and os.path.splitext(os.path.basename(argv[0]))[0] == "locust"
