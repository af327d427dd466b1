#!/usr/bin/env python3
"""Evaluate text-prompted segmentation on labelled sets. See `python scripts/evaluate.py --help`."""

import sys

from medsam3.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
