"""``python -m weshare``."""

import sys

from weshare.cli import main

sys.exit(main())
