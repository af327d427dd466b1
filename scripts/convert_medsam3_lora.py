#!/usr/bin/env python3
"""Convert MedSAM3 LoRA adapters between upstream's .pt and PEFT, or merge one into SAM3.

IN.pt   OUT_DIR            upstream best_lora_weights.pt -> PEFT adapter directory
IN_DIR  OUT.pt             PEFT adapter directory -> upstream .pt (q/k/v lora_A must be tied)
IN      OUT_DIR --merge    adapter (.pt, .safetensors, PEFT dir or hub id) merged into the base
                           model of --config: a transformers checkpoint for Sam3Model.from_pretrained
"""

import argparse
import logging
import sys
from pathlib import Path

from medsam3.config import load_config
from medsam3.console import add_set_flag, run_command, setup_logging
from medsam3.errors import UserError

PROG = "convert_medsam3_lora.py"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="upstream .pt, PEFT adapter directory, or (with --merge) any adapter source")
    p.add_argument("dst", help="output directory, or .pt file for export to upstream format")
    p.add_argument("--config", help="YAML config: base model (model.name) and lora.alpha (default: built-in)")
    add_set_flag(p, "model.name=/models/sam3")
    p.add_argument("--merge", action="store_true", help="write a full checkpoint with the adapter merged in")
    p.add_argument("--concepts", nargs="*", help="text prompts the adapter was trained on (stored as metadata)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    return run_command(PROG, lambda: convert_or_say_why(args), args.verbose)


def convert_or_say_why(args: argparse.Namespace) -> int:
    """:func:`convert`, with a file that cannot be read or written said in one line, not as a bug."""
    try:
        return convert(args)
    except OSError as exc:
        raise UserError(
            f"{exc.filename or args.dst}: {exc.strerror or exc}; check the path and its permissions"
        ) from exc


def convert(args: argparse.Namespace) -> int:
    """torch, transformers and PEFT load here, after the arguments parsed (``--help`` stays fast)."""
    log = logging.getLogger("medsam3.convert")
    cfg = load_config(args.config, args.set)
    src, dst = Path(args.src), Path(args.dst)
    if args.merge:
        from medsam3.adapters.merge import merge_adapter

        out = merge_adapter(cfg, args.src, dst)
    elif src.suffix == ".pt":
        from medsam3.adapters.upstream import convert_upstream_file

        out = convert_upstream_file(src, dst, alpha=cfg.lora.alpha, base_model=cfg.model.name, concepts=args.concepts)
    elif src.is_dir() and dst.suffix == ".pt":
        from medsam3.adapters.upstream import export_upstream_file

        out = export_upstream_file(src, dst)
    else:
        raise UserError("give IN.pt OUT_DIR, IN_DIR OUT.pt, or --merge")
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
