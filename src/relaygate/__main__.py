import sys

from relaygate.cli import main

sys.exit(main())
