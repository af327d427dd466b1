"""``infer_sam.py``: text-prompted segmentation of one image with SAM3 (+ LoRA)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..adapters import AdapterError
from ..config import ConfigError, load_config
from ..model import ModelLoadError
from . import setup_logging

logger = logging.getLogger("medsam3.infer")

EXAMPLES = """examples:
  python infer_sam.py --config configs/full_lora_config.yaml --image scan.png --prompt "liver"
  python infer_sam.py --config configs/full_lora_config.yaml --image cxr.png --prompt "lung" "heart" \\
      --weights lal-Joey/MedSAM3_v1 --json out.json --masks-dir masks/
  python infer_sam.py --image img.png --prompt "lesion" --weights none --box 10 20 120 160
exit codes: 0 ok, 2 bad input (missing image, bad config, missing weights), 1 unexpected failure."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infer_sam.py", description="Segment what a text prompt names, with SAM3 + a LoRA adapter.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (upstream schema); default: built-in defaults")
    p.add_argument("--image", required=True, help="input image (PNG/JPEG/TIFF/BMP, DICOM)")
    p.add_argument("--prompt", nargs="+", required=True, metavar="TEXT",
                   help='one or more text prompts, e.g. "liver" "liver tumor"')
    p.add_argument("--threshold", type=float, default=0.5,
                   help="keep detections with sigmoid(logit) x sigmoid(presence) above this (default 0.5)")
    p.add_argument("--nms-iou", type=float, default=0.5, help="NMS IoU per prompt; 1 disables (default 0.5)")
    p.add_argument("--output", default="output.png", help="overlay PNG to write (default output.png)")
    p.add_argument("--weights", help="adapter: path (.pt/.safetensors/PEFT dir), hub id owner/repo[:file][@rev], "
                                     "or 'none' for plain SAM3; default: model.lora_weights, else auto-detect "
                                     "in output.output_dir")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: hardware.device)")
    p.add_argument("--box", nargs=4, type=float, action="append", metavar=("X1", "Y1", "X2", "Y2"),
                   help="exemplar box in pixels, positive, shared by all prompts (repeatable)")
    p.add_argument("--neg-box", nargs=4, type=float, action="append", metavar=("X1", "Y1", "X2", "Y2"),
                   help="negative exemplar box: 'not this' (repeatable)")
    p.add_argument("--json", help="write detections (score, box, COCO RLE mask) per prompt to this JSON")
    p.add_argument("--masks-dir", help="write one binary PNG mask per prompt into this directory")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key, e.g. --set model.name=/models/sam3 (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def run(args: argparse.Namespace) -> int:
    from ..export import results_to_json, write_json, write_prompt_masks
    from ..predictor import Predictor, to_rgb_array
    from ..visualize import overlay_detections

    prompts = [p.strip() for p in args.prompt]
    if any(not p for p in prompts):
        raise ValueError("empty --prompt; give text such as --prompt \"liver\"")
    if not 0.0 <= args.threshold <= 1.0 or not 0.0 < args.nms_iou <= 1.0:
        raise ValueError("--threshold must be in [0, 1] and --nms-iou in (0, 1]")
    cfg = load_config(args.config, args.set)
    image_path = Path(args.image)
    if not image_path.is_file():
        raise FileNotFoundError(f"image not found: {image_path}")
    image = to_rgb_array(image_path)  # fail on a bad image before loading gigabytes of model
    boxes = [*(args.box or []), *(args.neg_box or [])]
    labels = [1] * len(args.box or []) + [0] * len(args.neg_box or [])

    t0 = time.perf_counter()
    predictor = Predictor.from_config(cfg, weights=args.weights, device=args.device)
    logger.info("model ready on %s in %.1f s", predictor.device, time.perf_counter() - t0)
    t0 = time.perf_counter()
    predictor.set_image(image)
    results = predictor.predict(prompts, boxes=boxes or None, box_labels=labels or None,
                                threshold=args.threshold, nms_iou=args.nms_iou)
    logger.info("segmented %s (%dx%d) for %d prompt(s) in %.2f s", image_path, image.shape[1], image.shape[0],
                len(prompts), time.perf_counter() - t0)
    for det in results:
        best = f" (best score {det.scores.max():.3f})" if len(det) else ""
        logger.info("  %r: %d detection(s)%s", det.prompt, len(det), best)

    overlay_detections(image, results).save(args.output)
    logger.info("overlay -> %s", args.output)
    if args.json:
        write_json(results_to_json(results, str(image_path), image.shape[:2], adapter=predictor.adapter_origin,
                                   threshold=args.threshold, nms_iou=args.nms_iou), args.json)
        logger.info("detections -> %s", args.json)
    if args.masks_dir:
        write_prompt_masks(results, args.masks_dir)
        logger.info("masks -> %s/", args.masks_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        return run(args)
    except (ConfigError, AdapterError, ModelLoadError, FileNotFoundError, ValueError) as exc:
        if args.verbose:
            logger.exception("failed")
        sys.stderr.write(f"infer_sam.py: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
