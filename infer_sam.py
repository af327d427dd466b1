#!/usr/bin/env python3
"""Text-prompted segmentation with SAM3 + LoRA (MedSAM3). See `python infer_sam.py --help`."""

import sys

from medsam3.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
