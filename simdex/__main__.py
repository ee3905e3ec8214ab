"""``python -m simdex``: the command line (see simdex.cli)."""

import sys

from .cli import main

sys.exit(main())
