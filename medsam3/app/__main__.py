"""``python -m medsam3.app``: the same as ``medsam3-app``."""

import sys

from .main import main

sys.exit(main())
