"""Where data shipped with relaygate lives: the checkout's copy, else the wheel's.

In a checkout the canonical files sit beside ``src/`` (``conformance/``, ``loadtests/``,
``fixtures/profiles/``, ``fixtures/relays/``); the wheel carries copies inside the package
(``relaygate/_conformance`` …, see ``[tool.hatch.build.targets.wheel.force-include]``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["shipped_dir"]


def shipped_dir(checkout: str, bundled: str, marker: str = "") -> Path:
    """``<checkout root>/<checkout>`` if it exists (holding ``marker`` when given), else
    ``relaygate/<bundled>``; :class:`FileNotFoundError` naming both places otherwise."""
    package = Path(__file__).resolve().parent
    candidates = (package.parent.parent / checkout, package / bundled)
    for candidate in candidates:
        if (candidate / marker).exists() if marker else candidate.is_dir():
            return candidate
    what = f"{checkout}/{marker}" if marker else checkout
    raise FileNotFoundError(
        f"{what} is missing: looked in {candidates[0]} and {candidates[1]}; reinstall relaygate"
    )
