"""Benchmark the mock upstream: ``python benchmarks/bench_mock.py [relaygate bench flags]``.

A thin wrapper around ``relaygate bench`` (see :mod:`relaygate.cli.bench` for what it measures).
"""

from __future__ import annotations

import sys

from relaygate.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
