#!/usr/bin/env python3
"""LoRA fine-tuning of SAM3 on COCO data (MedSAM3). Not available yet in this release."""

import sys

if __name__ == "__main__":
    sys.stderr.write(
        "train_sam3_lora_native.py: training is not implemented in this release yet "
        "(tracked as the training issue); inference and adapter conversion work.\n"
    )
    sys.exit(2)
