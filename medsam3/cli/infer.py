"""``infer_sam.py``: text-prompted segmentation of an image, a volume or a batch with SAM3 (+ LoRA).

Argument parsing and dispatch only: volumes in :mod:`medsam3.inference.volume`, batches and the
per-input output layout in :mod:`medsam3.inference.batch`. Arguments, config and input files are
checked before torch and transformers are imported (see :mod:`medsam3.cli`), so a mistake is
reported in about a second, not after the model has loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from ..config import load_config
from ..console import (
    add_backend_flags,
    add_set_flag,
    check_backend_flags,
    quiet_weight_loading,
    run_command,
    setup_logging,
)
from ..errors import InputNotFoundError, UserError
from . import add_version_flag
from .dicom_flags import add_dicom_flags, dicom_export_from_args

logger = logging.getLogger("medsam3.infer")

EXAMPLES = """examples:
  python infer_sam.py --config configs/full_lora_config.yaml --image scan.png --prompt "liver"
  python infer_sam.py --config configs/full_lora_config.yaml --image cxr.png --prompt "lung" "heart" \\
      --weights lal-Joey/MedSAM3_v1 --json out.json --masks-dir masks/
  python infer_sam.py --image img.png --prompt "lesion" --weights none --box 10 20 120 160
  python infer_sam.py --weights demo --image ct.nii.gz --prompt liver     # offline demo model
  python infer_sam.py --weights demo --list-concepts
  python infer_sam.py --image ct.nii.gz --prompt "liver" "spleen" --window soft_tissue --output-dir ct_seg/ \\
      --binary-masks --largest-component --fill-holes
  python infer_sam.py --image dicom_series_dir/ --prompt "liver" --window 60 160 --slice-batch 16
  python infer_sam.py --weights demo --image dicom_series_dir/ --prompt liver "left kidney" --dicom-seg --rtstruct
  python infer_sam.py --input-dir scans/ --prompt "liver" --output-dir results/ --skip-existing
  torchrun --nproc_per_node 4 infer_sam.py --input-dir scans/ --prompt "liver" --output-dir results/
exit codes: 0 ok; 2 bad input (missing image, bad config, missing weights); 1 a batch input failed
or an unexpected failure."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infer_sam.py",
        description="Segment what a text prompt names, with SAM3 + a LoRA adapter.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config (upstream schema); default: built-in defaults")
    src = p.add_mutually_exclusive_group()  # one of them is required unless --list-concepts
    src.add_argument(
        "--image",
        help="input: a 2D image (PNG/JPEG/TIFF/BMP, DICOM) or a volume (NIfTI .nii/.nii.gz, "
        "DICOM series folder, multi-frame DICOM)",
    )
    src.add_argument(
        "--video",
        help="track objects through a video: mp4/avi/mov/mkv/GIF, a folder of frames or a multi-frame DICOM cine "
        "(outputs: overlay.mp4, tracks.json, tracks.csv under --output-dir); --image with a video file does the same",
    )
    src.add_argument(
        "--input-dir",
        metavar="DIR|GLOB|LIST",
        help="batch: every image/volume in a folder (DICOM series as sub-folders), a glob "
        "('scans/**/*.png'), or a text file with one path per line",
    )
    p.add_argument(
        "--prompt",
        nargs="+",
        metavar="TEXT",
        help='one or more text prompts, e.g. "liver" "liver tumor"',
    )
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="run prompts outside the concepts the model records (refused by default: a closed-vocabulary model "
        "answers them with its nearest concept); their results are marked 'unknown concept' in every output",
    )
    p.add_argument(
        "--list-concepts",
        action="store_true",
        help="print the concepts the selected model/adapter was trained on (from its training metadata) and exit; "
        "with --weights demo[:NAME], every weights value the demo ships and its concepts",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="keep detections with sigmoid(logit) x sigmoid(presence) above this (default: the operating "
        "threshold the model records in its training metadata, else 0.5)",
    )
    p.add_argument("--nms-iou", type=float, default=0.5, help="NMS IoU per prompt; 1 disables (default 0.5)")
    p.add_argument("--output", help="2D image: overlay PNG to write (default: <name>_medsam3.png beside the image)")
    p.add_argument(
        "--weights",
        help="adapter: path (.pt/.safetensors/PEFT dir), hub id owner/repo[:file][@rev], "
        "'none' for plain SAM3, 'demo' for the small offline demo model shipped with medsam3 (MR, CT), or "
        "'demo:hc18' / 'demo:ph2' for it with its fetal-ultrasound / dermoscopy LoRA adapter; "
        "default: model.lora_weights, else auto-detect in output.output_dir",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: hardware.device)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "int8"],
        help="autocast dtype: auto = bf16 on CUDA, fp32 on CPU; bf16 works on CPUs too (default: hardware.precision); "
        "int8: --backend onnxruntime's quantised vision encoder",
    )
    add_backend_flags(p)
    p.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        metavar=("X1", "Y1", "X2", "Y2"),
        help="exemplar box in pixels, positive, shared by all prompts (repeatable)",
    )
    p.add_argument(
        "--neg-box",
        nargs=4,
        type=float,
        action="append",
        metavar=("X1", "Y1", "X2", "Y2"),
        help="negative exemplar box: 'not this' (repeatable)",
    )
    p.add_argument("--json", help="2D image: write detections (score, box, COCO RLE mask) per prompt to this JSON")
    p.add_argument("--masks-dir", help="2D image: write one binary PNG mask per prompt into this directory")
    p.add_argument(
        "--output-dir",
        help="volumes and batches (and a 2D image, optionally): where outputs go; "
        "default for a volume: <name>_medsam3/ beside it",
    )
    p.add_argument(
        "--window",
        nargs="+",
        metavar="W",
        help="intensity: a CT preset (soft_tissue, lung, bone, brain, liver), LEVEL WIDTH (e.g. 40 400), "
        "percentile, dicom (the file's own window) or auto (default: chosen from the file and "
        "logged)",
    )
    v = p.add_argument_group("volumes")
    v.add_argument(
        "--axis",
        default="auto",
        choices=["auto", "axial", "coronal", "sagittal", "0", "1", "2"],
        help="slice along this axis: auto = the volume's own slice axis (last voxel axis; axial for "
        "axial scans), a plane (from the affine) or a voxel axis (default auto)",
    )
    v.add_argument(
        "--slice-batch",
        type=int,
        help="slices per vision-encoder pass (default: 8 on CUDA, 1 on CPU, where batching slices gains nothing)",
    )
    v.add_argument("--volume-index", type=int, help="which volume of a 4D NIfTI (0-based)")
    v.add_argument(
        "--binary-masks",
        action="store_true",
        help="also write one binary mask per prompt (masks/NN_prompt.nii.gz; PNG for 2D in a batch)",
    )
    v.add_argument(
        "--largest-component",
        nargs="*",
        metavar="CONCEPT",
        help="3D: keep only the largest connected component (26-connected) of each prompt's mask; "
        "name concepts to limit it to those, e.g. --largest-component liver spleen (organs are one "
        "object, a multifocal tumour is not). Default: the concepts the weights record (--list-concepts "
        "shows them; the demo records its organs)",
    )
    v.add_argument(
        "--no-largest-component",
        action="store_true",
        help="3D: no largest-component clean-up, not even for the concepts the weights record",
    )
    v.add_argument("--fill-holes", action="store_true", help="3D: fill enclosed holes in each prompt's mask")
    v.add_argument(
        "--montage", type=int, default=6, metavar="N", help="PNG montage of N slices with overlays (default 6; 0: none)"
    )
    b = p.add_argument_group("batches")
    b.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose outputs are already complete in --output-dir (resume a batch)",
    )
    t = p.add_argument_group("video and propagation (SAM3's tracker)")
    t.add_argument(
        "--propagate",
        action="store_true",
        help="with a volume --image: track each concept through the slices, both ways from the slice where it is "
        "detected most confidently, instead of segmenting every slice alone",
    )
    t.add_argument("--box-frame", type=int, default=0, metavar="N", help="video frame the --box exemplars are on")
    t.add_argument(
        "--memory-frames",
        type=int,
        default=16,
        metavar="N",
        help="tracker state kept per object, in frames (default 16: all SAM3 reads back); bounds memory on long videos",
    )
    add_dicom_flags(p)
    add_set_flag(p, "model.name=/models/sam3")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    add_version_flag(p)
    return p


def _window(values: list[str] | None):
    from ..io import parse_window

    if not values:
        return None
    if len(values) == 2:
        try:
            window = (float(values[0]), float(values[1]))
        except ValueError:
            raise UserError(f"--window LEVEL WIDTH needs two numbers, got {' '.join(values)}") from None
    elif len(values) == 1:
        window = values[0]
    else:
        raise UserError(f"--window takes a preset name or LEVEL WIDTH, got {len(values)} values")
    parse_window(window)  # a bad window fails before anything is read
    return window


def _check_arguments(args: argparse.Namespace) -> tuple[list[str], list, list[int]]:
    """Everything the arguments alone can get wrong; cheap, before torch is imported.

    Returns the prompts, the exemplar boxes (positive first) and their labels (1 / 0).
    """
    if not (args.image or args.input_dir or args.video):
        raise UserError("give --image, --video or --input-dir (or --list-concepts)")
    if not args.prompt:
        raise UserError('give --prompt, e.g. --prompt "liver" (--list-concepts shows what the model knows)')
    prompts = [p.strip() for p in args.prompt]
    if any(not p for p in prompts):
        raise UserError('empty --prompt; give text such as --prompt "liver"')
    _check_backend(args)
    if args.slice_batch is not None and args.slice_batch < 1:
        raise UserError("--slice-batch must be >= 1")
    if args.montage < 0:
        raise UserError("--montage must be >= 0")
    _window(args.window)
    if args.input_dir:
        if args.output or args.json or args.masks_dir:
            raise UserError(
                "--output, --json and --masks-dir are for one 2D image; a batch writes everything under --output-dir"
            )
        if not args.output_dir:
            raise UserError("--input-dir needs --output-dir (where the per-input outputs and summary go)")
    elif args.video and not Path(args.video).exists():
        raise InputNotFoundError(f"video not found: {args.video}")
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("torchrun splits --input-dir batches over its processes; run a single --image with python")
    elif args.image and not Path(args.image).exists():
        raise InputNotFoundError(f"image not found: {args.image}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {args.threshold:g}")
    if not 0.0 < args.nms_iou <= 1.0:
        raise UserError(f"--nms-iou must be in (0, 1], got {args.nms_iou:g}")
    for flag, boxes in (("--box", args.box), ("--neg-box", args.neg_box)):
        for x1, y1, x2, y2 in boxes or []:
            if x2 <= x1 or y2 <= y1:
                raise UserError(
                    f"{flag} {x1:g} {y1:g} {x2:g} {y2:g}: needs X1 < X2 and Y1 < Y2 (top-left, bottom-right)"
                )
            if min(x1, y1) < 0:
                raise UserError(f"{flag} {x1:g} {y1:g} {x2:g} {y2:g}: coordinates are pixels, >= 0")
    if args.image and not (args.video or _is_video(args.image)):
        from ..io.formats import detect_format

        detect_format(args.image)  # a .md or a corrupt name fails here, before torch loads
        if Path(args.image).is_dir():
            from ..inference.inputs import looks_like_dicom_folder

            if not looks_like_dicom_folder(Path(args.image)):
                raise UserError(
                    f"--image {args.image}: a folder is read as one DICOM series, and it holds no DICOM files; "
                    f"for a folder of images use --input-dir {args.image} --output-dir OUT"
                )
    from ..inference.postprocess3d import largest_component_flags, largest_component_option

    # names checked against the prompts (and the two flags against each other) before any model loads
    largest_component_flags(largest_component_option(args.largest_component, args.no_largest_component), prompts)
    boxes = [*(args.box or []), *(args.neg_box or [])]
    labels = [1] * len(args.box or []) + [0] * len(args.neg_box or [])
    return prompts, boxes, labels


def _check_backend(args: argparse.Namespace) -> None:
    from ..errors import UserError

    check_backend_flags(args)
    if args.backend == "onnxruntime" and (args.video or args.propagate):
        raise UserError("--video and --propagate run SAM3's video model, which has no ONNX export; use --backend torch")


def _options(args: argparse.Namespace, plan, prompts: list[str], boxes, labels, quiet: bool):
    from ..inference.batch import InferenceOptions
    from ..inference.postprocess3d import largest_component_option

    return InferenceOptions(
        prompts=prompts,
        threshold=plan.threshold,
        concept_thresholds=plan.concept_thresholds,
        nms_iou=args.nms_iou,
        window=_window(args.window),
        volume_index=args.volume_index,
        axis=args.axis,
        slice_batch=args.slice_batch,
        boxes=boxes or None,
        box_labels=labels or None,
        binary_masks=args.binary_masks,
        largest_component=largest_component_option(
            args.largest_component, args.no_largest_component, plan.largest_component
        ),
        fill_holes=args.fill_holes,
        montage_slices=args.montage,
        progress=not quiet and sys.stderr.isatty(),  # bars only for people: no escape codes in log files
    )


def _load_predictor(plan, args, opts, device=None):
    """The model the plan names, once per run; ``opts.adapter`` records where its adapter came from."""
    import dataclasses

    from ..inference.onnx_backend import load_predictor

    if device is not None:  # torchrun: this rank's device
        plan = dataclasses.replace(plan, device=str(device))
    quiet_weight_loading(args.verbose, args.quiet)
    t0 = time.perf_counter()
    predictor = load_predictor(plan, args.backend, args.onnx_dir, args.precision)
    logger.info("model ready on %s in %.1f s", predictor.device, time.perf_counter() - t0)
    opts.adapter = predictor.adapter_origin
    if opts.dicom is not None:  # DICOM outputs name the base model in their provenance
        opts.dicom.base_model = getattr(predictor.model, "name_or_path", None) or plan.cfg.model.name
    return predictor


def _list_concepts(plan) -> int:
    if not plan.concepts:
        sys.stdout.write("no recorded concepts (the model and adapter carry no medsam3 training metadata)\n")
        return 0
    for source, concepts in plan.concepts.items():
        sys.stdout.write(f"{source}:\n" + "".join(f"  {c}{_cleanup_note(plan, c)}\n" for c in concepts))
    return 0


def _cleanup_note(plan, concept: str) -> str:
    return "  (3D: largest component)" if plan.largest_component_for(concept) else ""


def _list_demo_concepts(cfg, values: list[str], plan_run) -> int:
    for value in values:
        plan = plan_run(cfg, value, check_hub=False)
        concepts = sorted({c for cs in plan.concepts.values() for c in cs})
        per = bool(plan.concept_thresholds)  # recorded one per concept: listed beside each (the rest: the one)
        own = " for other prompts; each concept's own beside it" if per else ""
        head = f"--weights {value} (threshold {plan.threshold:g}{own}):\n"
        rows = [
            f"  {c}" + (f"  {plan.threshold_for(c):g}" if per else "") + _cleanup_note(plan, c) + "\n" for c in concepts
        ]
        sys.stdout.write(head + "".join(rows))
    return 0


def _is_video(path: str) -> bool:
    from ..io.video import is_video_path

    return is_video_path(path)


def run(args: argparse.Namespace) -> int:
    from ..adapters.plan import plan_run  # after --help: the hub client takes a second to import

    cfg = load_config(args.config, args.set)
    if args.list_concepts:
        from ..adapters.concepts import demo_weights_values, is_demo

        if is_demo(args.weights):  # every weights value the demo ships, the selected one first
            values = [args.weights] + [v for v in demo_weights_values() if v != args.weights]
            return _list_demo_concepts(cfg, values, plan_run)
        return _list_concepts(plan_run(cfg, args.weights, check_hub=False))
    prompts, boxes, labels = _check_arguments(args)
    # The one place where model, adapter, threshold, concepts, device and hub state are decided.
    plan = plan_run(
        cfg, args.weights, threshold=args.threshold, device=args.device, precision=args.precision, check_hub=False
    )
    logger.debug("run plan: %s", plan.describe())
    for message in plan.check_prompts(prompts, allow_unknown=args.allow_unknown):  # unknown: refused unless allowed
        logger.warning("%s", message)
    dicom = dicom_export_from_args(args, plan.cfg)  # --dicom-seg / --rtstruct: input and code table checked now
    if dicom is not None and dicom.enabled and plan.unknown_prompts(prompts):
        raise UserError(
            f"--dicom-seg / --rtstruct code each segment as the concept its prompt names, and "
            f"{', '.join(map(repr, plan.unknown_prompts(prompts)))} is not a concept this model was trained on "
            f"(its mask would be coded as something the model cannot find); drop it or the DICOM flags"
        )
    if args.video or args.propagate or (args.image and _is_video(args.image)):
        from .track import run_tracking  # video / propagation: SAM3's video model

        return run_tracking(plan.with_hub_checked(), args, prompts, boxes, labels, window=_window(args.window))
    from ..inference.inputs import discover_inputs, input_name, load_input  # no torch: inputs are read first

    if args.input_dir:
        inputs = discover_inputs(args.input_dir, exclude=args.output_dir)
        logger.info("%d input(s) from %s", len(inputs), args.input_dir)
    else:
        image_path = Path(args.image)
        # Read first (cheap, no torch): a bad input fails before gigabytes of model are loaded.
        loaded = load_input(image_path, _window(args.window), args.volume_index)
        if loaded.kind == "volume" and (args.output or args.json or args.masks_dir):
            raise UserError(
                "--output, --json and --masks-dir are for 2D images; a volume's outputs go to "
                "--output-dir (labels.nii.gz, legend.json, montage.png, masks/)"
            )
    plan = plan.with_hub_checked()  # one probe, after the inputs: what the hub or cache lacks is said now
    # Only now the heavy imports (torch, transformers): every cheap mistake has been reported.
    from ..inference.batch import process_image, process_volume, run_batch
    from ..inference.distributed import cleanup, init_distributed
    from ..outputs.summary_csv import write_summary

    opts = _options(args, plan, prompts, boxes, labels, args.quiet)
    opts.dicom = dicom
    if args.input_dir:
        # Under torchrun: one device per rank, inputs split by size, files merged on rank 0.
        dist_info, device = init_distributed(args.device)
        try:
            predictor = _load_predictor(plan, args, opts, device)  # once for the whole batch
            report = run_batch(
                predictor, inputs, args.output_dir, opts, skip_existing=args.skip_existing, dist_info=dist_info
            )
        finally:
            cleanup()
        return report.exit_code

    if loaded.kind == "volume":
        out_dir = Path(args.output_dir) if args.output_dir else image_path.parent / f"{input_name(image_path)}_medsam3"
        predictor = _load_predictor(plan, args, opts)
        legend = process_volume(predictor, loaded, out_dir, opts)
        write_summary(out_dir / "summary.csv", legend["summary_rows"])
        logger.info("outputs -> %s/ (labels.nii.gz, legend.json, montage.png, summary.csv)", out_dir)
        return 0

    image = loaded.image.rgb
    predictor = _load_predictor(plan, args, opts)
    t0 = time.perf_counter()
    predictor.set_image(image)
    results = predictor.predict(
        prompts, boxes=boxes or None, box_labels=labels or None, threshold=opts.model_threshold, nms_iou=args.nms_iou
    )
    logger.info(
        "segmented %s (%dx%d) for %d prompt(s) in %.2f s",
        image_path,
        image.shape[1],
        image.shape[0],
        len(prompts),
        time.perf_counter() - t0,
    )
    for det in results:
        best = f" (best score {det.scores.max():.3f})" if len(det) else ""
        logger.info("  %r: %d detection(s)%s", det.prompt, len(det), best)
    if args.output_dir or dicom is not None:  # DICOM outputs of a 2D image go to its output folder
        out_dir = Path(args.output_dir) if args.output_dir else image_path.parent / f"{input_name(image_path)}_medsam3"
        process_image(predictor, loaded, out_dir, opts, results=results)
        logger.info("outputs -> %s/ (overlay.png, detections.json)", out_dir)
        if not (args.output or args.json or args.masks_dir):
            return 0
    _write_single_image(results, image, image_path, predictor, args)
    return 0


def _write_single_image(results, image, image_path: Path, predictor, args) -> None:
    """One 2D image, today's outputs: --output overlay, --json detections, --masks-dir PNGs."""
    from ..outputs import ImageOutputPaths, write_image_outputs

    output = Path(args.output) if args.output else image_path.parent / f"{image_path.stem}_medsam3.png"
    paths = ImageOutputPaths(
        overlay=output,
        detections_json=Path(args.json) if args.json else None,
        masks_dir=Path(args.masks_dir) if args.masks_dir else None,
    )
    write_image_outputs(
        results,
        image,
        str(image_path),
        paths,
        adapter=predictor.adapter_origin,
        threshold=predictor.plan.threshold,
        **({"concept_thresholds": predictor.plan.concept_thresholds} if predictor.plan.concept_thresholds else {}),
        nms_iou=args.nms_iou,
    )
    logger.info("overlay -> %s", output)
    if args.json:
        logger.info("detections -> %s", args.json)
    if args.masks_dir:
        logger.info("masks -> %s/", args.masks_dir)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    return run_command(
        "infer_sam.py",
        lambda: run(args),
        args.verbose,
        interrupted="finished outputs are kept (a batch resumes with --skip-existing)",
    )


if __name__ == "__main__":
    sys.exit(main())
