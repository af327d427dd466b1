"""``medsam3-app`` / ``python -m medsam3.app``: load the model once, serve the page on 127.0.0.1.

The model options are ``infer_sam.py``'s (``--config/--weights/--device/--precision/--set``,
``--backend onnxruntime --onnx-dir DIR`` for an exported folder).
A public Gradio share link is made only with ``--share``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from ..config import load_config
from ..console import add_backend_flags, add_set_flag, check_backend_flags, run_command, setup_logging
from ..errors import UserError
from .limits import add_limit_flags, limits_from_args, start_sweeper

__all__ = ["build_parser", "main"]

logger = logging.getLogger("medsam3.app")

PROG = "medsam3-app"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="A local web page for text-prompted segmentation with SAM3 + a LoRA adapter.",
        epilog="example: medsam3-app --config configs/full_lora_config.yaml --weights lal-Joey/MedSAM3_v1",
    )
    p.add_argument("--config", help="YAML config (upstream schema); default: built-in defaults")
    p.add_argument(
        "--weights",
        help="adapter: path (.pt/.safetensors/PEFT dir), hub id owner/repo[:file][@rev], 'none' for plain SAM3, "
        "or 'demo' for the offline demo model; default: model.lora_weights, else auto-detect in output.output_dir",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: hardware.device)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "int8"],
        help="autocast dtype (default: hardware.precision); int8: --backend onnxruntime's quantised vision encoder",
    )
    add_backend_flags(p)
    add_set_flag(p, "model.name=/models/sam3")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="run prompts outside the concepts the model records (refused by default, as by infer_sam.py); "
        "their results are marked 'unknown concept'",
    )
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.add_argument("--work-dir", help="where uploads are unpacked and downloads written (default: a temp folder)")
    add_limit_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _gradio_cache_sweep(demo, limits):
    """Gradio's own cache deletion (files it copied for the page), run by our sweeper; falls back to
    Gradio's ``delete_cache`` task if that function moves in a future Gradio."""
    try:
        from gradio.route_utils import delete_files_created_by_app
    except ImportError:
        demo.delete_cache = (max(1, int(min(limits.keep_seconds, 1200) // 2)), int(limits.keep_seconds))
        return None
    return lambda: delete_files_created_by_app(demo, int(limits.keep_seconds))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(
        args.verbose,
        args.quiet,
        libraries=("transformers", "huggingface_hub", "peft", "httpx", "gradio"),
        library_level=logging.WARNING,
    )
    return run_command(PROG, lambda: serve(args), args.verbose)


def _check_port_free(host: str, port: int) -> None:
    if port == 0:  # any free port
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): another program (another medsam3-app?) "
                f"uses it; pick another with --port, e.g. --port {port + 1}"
            ) from exc


def serve(args: argparse.Namespace) -> int:
    """Check the flags, load the model the run plan names, and serve the app until stopped."""
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    check_backend_flags(args)
    _check_port_free(args.host, args.port)  # before the model loads: a busy port is said in a second
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a clinic's machine
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise UserError("the web app needs Gradio: pip install -e '.[app]' (or pip install 'medsam3[app]')") from exc
    limits = limits_from_args(args)
    cfg = load_config(args.config, args.set)
    from ..adapters.plan import plan_run

    plan = plan_run(cfg, args.weights, device=args.device, precision=args.precision)  # decided once, before torch
    from ..inference.onnx_backend import load_predictor
    from .service import AppService
    from .ui import build_ui

    predictor = load_predictor(plan, args.backend, args.onnx_dir, args.precision)
    service = AppService(predictor, work_dir=args.work_dir, allow_unknown=args.allow_unknown, limits=limits)
    logger.info("model ready on %s (adapter: %s)", predictor.device, service.adapter)
    try:
        from gradio.utils import get_upload_folder

        demo = build_ui(service)
        # One event at a time per listener, and one model call at a time (the service's lock): users queue.
        demo.queue(default_concurrency_limit=1)
        # Uploads, results and Gradio's file cache are swept alike: files older than --keep-minutes.
        start_sweeper(
            service.work_dir, limits.keep_seconds, Path(get_upload_folder()), _gradio_cache_sweep(demo, limits)
        )
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            show_error=True,
            allowed_paths=[str(service.work_dir)],
            footer_links=[],
            max_file_size=limits.gradio_max_file_size(),  # refused by Gradio before it is stored
        )
    finally:
        service.close()  # the temporary folder it made (not a --work-dir the user gave)
    return 0
