"""``train_sam3_lora_native.py``: LoRA fine-tuning of SAM3 on COCO concept data.

Single process: ``python train_sam3_lora_native.py --config CFG``. Several GPUs: run it under
``torchrun --nproc_per_node N``, or pass upstream's ``--device 0 1``, which relaunches this command
under torchrun with ``CUDA_VISIBLE_DEVICES=0,1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from ..config import load_config
from ..console import add_set_flag, quiet_weight_loading, run_command, setup_logging
from ..errors import UserError
from ..train.data_paths import train_split
from . import add_version_flag

logger = logging.getLogger("medsam3.train")

PROG = "train_sam3_lora_native.py"
EXAMPLES = f"""examples:
  python {PROG} --config configs/full_lora_config.yaml
  python {PROG} --config configs/full_lora_config.yaml --resume              # newest checkpoint in output_dir
  python {PROG} --config configs/full_lora_config.yaml --resume outputs/x/checkpoint-2000
  python {PROG} --config configs/full_lora_config.yaml --device 0 1          # 2 GPUs (launches torchrun)
  torchrun --nproc_per_node 4 {PROG} --config configs/full_lora_config.yaml
  python {PROG} --config cfg.yaml --set training.data_dir=/data/busi --set training.num_epochs=20
Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint and exits 130; a second Ctrl-C stops at once.
exit codes: 0 ok, 2 bad input (config, data, checkpoint), 130 stopped by Ctrl-C/SIGTERM, 1 unexpected failure."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune SAM3 with LoRA on COCO data (text prompts = category names).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config (upstream schema); default: built-in defaults")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue a run: the newest checkpoint in output.output_dir, or the given checkpoint dir",
    )
    p.add_argument(
        "--device",
        nargs="+",
        metavar="DEV",
        help="auto, cpu, cuda, cuda:N, or GPU indices: one index trains on that GPU, several "
        "(e.g. --device 0 1) launch torchrun with one process per GPU",
    )
    add_set_flag(p, "training.learning_rate=1e-4")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    add_version_flag(p)
    return p


def _device_override(devices: list[str] | None) -> tuple[str | None, list[str]]:
    """(hardware.device value, GPU indices to launch on when several are given)."""
    if not devices:
        return None, []
    if len(devices) == 1:
        d = devices[0]
        return (f"cuda:{d}" if d.isdigit() else d), []
    if not all(d.isdigit() for d in devices):
        raise UserError(f"--device {' '.join(devices)}: several devices must be GPU indices, e.g. --device 0 1")
    if len(set(devices)) != len(devices):
        raise UserError(f"--device {' '.join(devices)}: an index is repeated")
    return "cuda", devices


def _launch_torchrun(argv: list[str], gpus: list[str]) -> int:
    """Re-run this command under torchrun, one process per listed GPU."""
    rest, skip = [], False
    for arg in argv:
        if arg == "--device":
            skip = True
            continue
        if skip and not arg.startswith("-"):
            continue
        skip = False
        rest.append(arg)
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else None
    target = [script] if script else ["-m", "medsam3.cli.train"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={len(gpus)}",
        *target,
        *rest,
        "--device",
        "cuda",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
    logger.info("launching: CUDA_VISIBLE_DEVICES=%s %s", env["CUDA_VISIBLE_DEVICES"], " ".join(cmd))
    return subprocess.call(cmd, env=env)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    device, gpus = _device_override(args.device)
    if gpus and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return _launch_torchrun(argv, gpus)
    overrides = list(args.set) + ([f"hardware.device={device}"] if device else [])
    cfg = load_config(args.config, overrides)
    train_split(cfg)  # the data layout, checked before torch, transformers and the model load
    from ..adapters.hub import prepare_hub

    prepare_hub(cfg, "none")  # hub unusable and the base model not cached? one line, before torch loads
    from ..train.trainer import train  # torch and transformers: after the cheap checks

    quiet_weight_loading(args.verbose, args.quiet)  # weight-loading bars; our own tqdm shows training progress
    result = train(cfg, resume=args.resume, show_progress=not args.no_progress and not args.quiet)
    if result.interrupted:
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        best = f", best {cfg.evaluation.metric} {result.best_metric:.4f}" if result.best_metric is not None else ""
        logger.info("done: %d steps%s; adapters in %s", result.global_step, best, result.output_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        return run_command(
            PROG,
            lambda: run(args, argv),
            args.verbose,
            interrupted="steps after the newest checkpoint are lost, continue with --resume",
        )
    finally:
        if "torch.distributed" in sys.modules:  # no process group without torch: an early error stays fast
            from ..train.distributed import cleanup

            cleanup()


if __name__ == "__main__":
    sys.exit(main())
