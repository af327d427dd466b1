"""Command-line entry points; the root scripts (infer_sam.py, ...) call these.

The top layer: argument parsing and dispatch only, may import anything in medsam3; nothing imports it.
"""

import logging


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
    # transformers/huggingface_hub chatter (load bars, config notes) only when asked for.
    for name in ("transformers", "huggingface_hub", "peft"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
