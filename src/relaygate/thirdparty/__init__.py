"""Third-party relays run against the mock upstream: drivers, launcher, matrix.

``relaygate relay list|install|start|stop|run|matrix``. Each driver lives in its own module and
is imported only when used (registry below: name -> "module:Class").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relaygate.thirdparty.base import RelayDriver

__all__ = ["DRIVERS", "get_driver"]

DRIVERS: dict[str, str] = {
    "litellm": "relaygate.thirdparty.litellm:LiteLLMDriver",
    "openai-forward": "relaygate.thirdparty.openai_forward:OpenAIForwardDriver",
    "lm-proxy": "relaygate.thirdparty.lm_proxy:LMProxyDriver",
    "portkey": "relaygate.thirdparty.portkey:PortkeyDriver",
}


def get_driver(name: str) -> RelayDriver:
    """The driver for relay ``name``; ``KeyError`` with the known names otherwise."""
    try:
        target = DRIVERS[name]
    except KeyError:
        raise KeyError(f"unknown relay {name!r}; known: {', '.join(DRIVERS)}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    driver: RelayDriver = cls()
    return driver
