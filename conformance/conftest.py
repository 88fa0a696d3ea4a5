"""The conformance suite. Options, fixtures and reports come from the relaygate pytest plugin
(``relaygate.pytest_plugin``, loaded through its ``pytest11`` entry point)."""
