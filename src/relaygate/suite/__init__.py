"""The conformance suite's library: the target relay, HTTP helpers, results and reports.

The pytest plugin (:mod:`relaygate.pytest_plugin`) wires these into fixtures; the cases live
in the top-level ``conformance/`` folder.
"""
