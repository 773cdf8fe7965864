"""``python -m simulations``."""

import sys

from simulations.cli import main

sys.exit(main())
