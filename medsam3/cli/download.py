"""``medsam3-download`` (also ``python -m medsam3 download``): warm the Hugging Face cache for a config.

Fetches what a run of the config needs from the hub (the base model of ``model.name`` and a hub
adapter from ``--weights`` / ``model.lora_weights``) into the cache (``model.cache_dir``, else
huggingface_hub's), and prints where each one lies. Afterwards the same config runs offline
(``HF_HUB_OFFLINE=1``, or no network at all). Local paths are left alone.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import load_config
from ..console import add_set_flag, run_command, setup_logging
from . import add_version_flag

logger = logging.getLogger("medsam3.download")

PROG = "medsam3-download"
EXAMPLES = f"""examples:
  {PROG} --config configs/full_lora_config.yaml                 # base model (+ the config's hub adapter)
  {PROG} --weights lal-Joey/MedSAM3_v1                          # facebook/sam3 and the MedSAM3-v1 adapter
  {PROG} --weights lal-Joey/MedSAM3_v1 --cache-dir /data/hf     # into another cache (set model.cache_dir too)
then, offline:  HF_HUB_OFFLINE=1 python infer_sam.py --weights lal-Joey/MedSAM3_v1 --image scan.png --prompt liver
facebook/sam3 is gated: request access on https://huggingface.co/facebook/sam3, then `hf auth login`.
exit codes: 0 ok (everything cached), 2 bad input or the hub unusable."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Download the base model and adapter a config uses, so that later runs work offline.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config (upstream schema); default: built-in defaults (facebook/sam3)")
    p.add_argument("--weights", help="adapter hub reference owner/repo[:file][@rev]; default: model.lora_weights")
    p.add_argument("--cache-dir", help="cache folder (overrides model.cache_dir); runs must use the same one")
    add_set_flag(p, "model.name=facebook/sam3")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="print the paths only")
    add_version_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..adapters.hub import download_for_config

    overrides = list(args.set) + ([f"model.cache_dir={args.cache_dir}"] if args.cache_dir else [])
    cfg = load_config(args.config, overrides)
    fetched = download_for_config(cfg, args.weights)
    if not fetched:
        logger.info("nothing to download: model.name=%s and the adapter are local (or none)", cfg.model.name)
        return 0
    for item, path in fetched:
        sys.stdout.write(f"{item} -> {path}\n")
    logger.info(
        "cached; runs with this config and --cache-dir/model.cache_dir now work offline (HF_HUB_OFFLINE=1 skips the "
        "network check)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    return run_command(
        PROG, lambda: run(args), args.verbose, interrupted="run it again to finish (finished files are kept)"
    )


if __name__ == "__main__":
    sys.exit(main())
