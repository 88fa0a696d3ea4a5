"""relaygate: conformance and load-testing harness for OpenAI-compatible API relays.

The package is import-safe: importing it (or any submodule) starts no server, opens no
socket and loads no tokenizer. Public entry points:

* ``relaygate`` console script (:mod:`relaygate.cli`)
* the pytest plugin (:mod:`relaygate.pytest_plugin`)
* :class:`relaygate.stack.EmbeddedStack` - mock upstream + reference relay on loopback
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
