"""``medsam3-export --onnx OUT/``: SAM3 with its adapter merged, as ONNX graphs for ONNX Runtime.

The model a run of the same ``--config`` / ``--weights`` / ``--set`` would load is merged and
exported (see :mod:`medsam3.inference.onnx_export`); ``infer_sam.py --backend onnxruntime
--onnx-dir OUT/`` then runs it, after checking that OUT/ holds what that run asks for.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..config import load_config
from ..console import add_set_flag, quiet_weight_loading, run_command, setup_logging
from ..errors import UserError
from . import add_version_flag

logger = logging.getLogger("medsam3.export")

PROG = "medsam3-export"
EXAMPLES = f"""examples:
  {PROG} --weights demo --onnx demo_onnx/ --int8        # the shipped demo model, fp32 + int8 vision encoder
  {PROG} --weights lal-Joey/MedSAM3_v1 --set model.resolution=504 --onnx medsam3_504/ --int8
  then:  python infer_sam.py --weights demo --backend onnxruntime --onnx-dir demo_onnx/ --precision int8 \\
             --image scan.png --prompt liver
needs the onnx extra: pip install 'medsam3[onnx]'. The full-size model exports in minutes and needs
~3x its size (about 10 GB) of RAM at 1008 px; model.resolution=504 is a quarter of the vision work.
exit codes: 0 ok; 2 bad input (missing weights, a folder that is not an export, no onnx packages)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export SAM3 + adapter (merged) as ONNX graphs: vision encoder, text encoder, prompt path.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--onnx", required=True, metavar="OUT", help="folder to write the graphs and medsam3_onnx.json to")
    p.add_argument("--config", help="YAML config (upstream schema); default: built-in defaults")
    p.add_argument(
        "--weights",
        help="adapter as for infer_sam.py: path (.pt/.safetensors/PEFT dir), hub id, 'none' or 'demo' "
        "(default: model.lora_weights, else auto-detect)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write the int8 vision encoder (ONNX Runtime dynamic quantisation) for --precision int8",
    )
    p.add_argument(
        "--int8-scope",
        choices=["mlp", "linear"],
        default="mlp",
        help="with --int8: quantise the vision encoder's MLP layers (default: held-out Dice of the demo within 0.01 "
        "of fp32) or every linear layer (faster, moved the demo's Dice by up to 0.03); docs/onnx.md",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in OUT")
    add_set_flag(p, "model.resolution=504")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    add_version_flag(p)
    return p


def _check_out_dir(out: Path, overwrite: bool) -> None:
    from ..inference.onnx_manifest import MANIFEST_NAME

    if out.exists() and not out.is_dir():
        raise UserError(f"--onnx {out}: exists and is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST_NAME).exists():
            raise UserError(
                f"--onnx {out}: folder is not empty and holds no medsam3 export; give a new or empty folder"
            )
        if not overwrite:
            raise UserError(f"--onnx {out}: holds an export already; pass --overwrite to replace it")


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"ONNX export needs the onnx extra ({exc.name} is missing): pip install 'medsam3[onnx]'"
        ) from exc


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    out = Path(args.onnx).expanduser()
    _check_out_dir(out, args.overwrite)
    from ..adapters.plan import plan_run

    plan = plan_run(cfg, args.weights)  # what is merged and exported, decided as for a run (before torch)
    _require_onnx()
    from ..adapters.loading import load_model
    from ..inference.onnx_export import export_onnx
    from ..inference.onnx_manifest import sources_identity

    identity = sources_identity(plan.sources)
    quiet_weight_loading(args.verbose, args.quiet)
    model, processor, origin = load_model(plan=plan)
    t0 = time.perf_counter()
    export_onnx(model, processor, out, identity, origin=origin, int8=args.int8, int8_scope=args.int8_scope)
    logger.info("exported %s in %.0f s -> %s", origin, time.perf_counter() - t0, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    return run_command(
        PROG, lambda: run(args), args.verbose, interrupted="the folder is incomplete, export again with --overwrite"
    )


if __name__ == "__main__":
    sys.exit(main())
