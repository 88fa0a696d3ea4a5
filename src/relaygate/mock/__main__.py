"""``python -m relaygate.mock``: the same as ``relaygate mock-upstream``."""

from __future__ import annotations

import argparse
import sys

from relaygate.cli import mock_upstream as cli


def main() -> int:
    """Parse the ``mock-upstream`` flags and serve."""
    parser = argparse.ArgumentParser(prog="python -m relaygate.mock", description=cli.__doc__)
    cli.add_arguments(parser)
    return cli.run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
