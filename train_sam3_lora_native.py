#!/usr/bin/env python3
"""LoRA fine-tuning of SAM3 on COCO data (MedSAM3's entry point). See medsam3/cli/train.py."""

import sys

from medsam3.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
