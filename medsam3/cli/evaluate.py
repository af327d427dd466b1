"""``scripts/evaluate.py``: Dice/IoU/NSD/HD95 per concept and modality on labelled 2D and 3D sets.

The data set description and the config are checked before torch and transformers are imported
and before the model loads (see :mod:`medsam3.cli`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
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
from . import add_version_flag

logger = logging.getLogger("medsam3.evaluate")

EXAMPLES = """examples:
  # 2D, Roboflow layout (data/test/_annotations.coco.json), text and text+box columns
  python scripts/evaluate.py --config configs/full_lora_config.yaml --weights lal-Joey/MedSAM3_v1 \\
      --data-dir data --split test --protocol text text+box --output-dir eval/
  # 3D: NIfTI volumes + label maps matched by file name, labels named by a mapping file
  python scripts/evaluate.py --image-dir imagesTs --label-dir labelsTs --label-prompts labels.json \\
      --thresholds 0.3 0.5 0.8 --output-dir eval_ct/
  # an nnU-Net / MSD folder, on the test cases of an import (medsam3-import wrote the manifest)
  medsam3-evaluate --dataset Dataset103_BraTS2013 --cases data/brats/manifest.json:test --output-dir eval_brats/
exit codes: 0 all cases evaluated, 1 some cases failed (listed in summary.json), 2 bad arguments,
config, weights or data set description."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate text-prompted segmentation on labelled 2D (COCO) and 3D "
        "(NIfTI) sets: Dice, IoU, NSD, HD95 per concept and modality.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--config", help="YAML config (upstream schema); default: built-in defaults")
    m.add_argument(
        "--weights",
        help="adapter: path, hub id owner/repo[:file][@rev], or 'none' for plain SAM3; "
        "default: model.lora_weights, else auto-detect in output.output_dir",
    )
    m.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: hardware.device)")
    add_backend_flags(m)
    m.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        help="with --backend onnxruntime: fp32 (default) or the int8 vision encoder",
    )
    add_set_flag(m, "model.name=/models/sam3")

    d2 = p.add_argument_group("2D set (COCO)")
    d2.add_argument("--data-dir", help="Roboflow layout: DATA_DIR/SPLIT/_annotations.coco.json, images beside it")
    d2.add_argument("--split", default="test", help="split folder under --data-dir (default test)")
    d2.add_argument("--coco", metavar="ANN_JSON", help="plain COCO annotation file (instead of --data-dir)")
    d2.add_argument(
        "--image-root", help="folder the COCO file_name entries are relative to (default: the annotation file's folder)"
    )
    d2.add_argument(
        "--include-absent",
        action="store_true",
        help="also ask for categories/labels absent from an image or volume (empty ground truth: "
        "scores 1 if nothing is predicted, else 0); default: only present ones",
    )
    d2.add_argument(
        "--coco-map", action="store_true", help="COCO instance metrics (segm AP, AP50) of the detections, 2D sets only"
    )

    dn = p.add_argument_group("nnU-Net / MSD dataset folder (3D metrics per case on the volumes)")
    dn.add_argument("--dataset", metavar="DIR", help="folder holding dataset.json (also accepted as --data-dir)")
    dn.add_argument(
        "--cases", metavar="FILE", help="only these cases: one name per line, or OUT_DIR/manifest.json:test"
    )
    dn.add_argument("--channel", help="channel index or name (default: the manifest's, else the first)")

    d3 = p.add_argument_group("3D set (volumes + label maps)")
    d3.add_argument(
        "--volumes",
        metavar="PAIRS_CSV",
        help="CSV with columns image,label (optional case_id, modality); relative paths from the CSV's folder",
    )
    d3.add_argument("--image-dir", help="folder of volumes (.nii/.nii.gz, DICOM series folders)")
    d3.add_argument("--label-dir", help="folder of label maps named like the volumes (nnU-Net _0000 suffix ok)")
    d3.add_argument(
        "--label-prompts",
        metavar="FILE",
        help='JSON/YAML mapping label value -> prompt, e.g. {"1": "liver", "2": "spleen"}',
    )
    d3.add_argument("--slice-batch", type=int, help="slices per batched vision pass (default: 8 on CUDA, 1 on CPU)")
    d3.add_argument(
        "--axis",
        default="auto",
        choices=["auto", "axial", "coronal", "sagittal", "0", "1", "2"],
        help="slice along this axis, as in infer_sam.py: auto = the volume's own slice axis (last voxel axis; "
        "axial for axial scans), a plane (from the affine) or a voxel axis (default auto)",
    )
    d3.add_argument(
        "--largest-component",
        nargs="*",
        metavar="CONCEPT",
        help="keep only the largest connected component of each predicted volume, as infer_sam.py "
        "--largest-component does; name concepts to limit it to those (default: the concepts the weights "
        "record, as infer_sam.py applies them)",
    )
    d3.add_argument(
        "--no-largest-component",
        action="store_true",
        help="no largest-component clean-up, not even for the concepts the weights record",
    )
    d3.add_argument("--fill-holes", action="store_true", help="fill enclosed holes in each predicted volume")

    e = p.add_argument_group("protocol and metrics")
    e.add_argument(
        "--protocol",
        nargs="+",
        default=["text"],
        choices=["text", "text+box"],
        help="text: prompt only; text+box: prompt + box of the ground truth's largest connected "
        "component (default text; give both for the paper's two columns)",
    )
    e.add_argument(
        "--thresholds",
        "--threshold",
        nargs="+",
        type=float,
        default=None,
        metavar="T",
        help="score threshold(s); several = a sweep from one model run per case (default: the threshold the "
        "weights record, each concept at its own where they record one per concept, else 0.5; the same rule "
        "as infer_sam.py and the app)",
    )
    e.add_argument(
        "--concept-threshold",
        action="append",
        default=[],
        metavar="CONCEPT=T",
        help="score CONCEPT at threshold T only (repeatable, e.g. --concept-threshold 'left kidney=0.1'), as "
        "weights that record one threshold per concept are scored; the other concepts at the one --thresholds "
        "value (default: the weights' own)",
    )
    e.add_argument("--nms-iou", type=float, default=0.5, help="NMS IoU per prompt; 1 disables (default 0.5)")
    e.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2.0)")
    e.add_argument(
        "--window",
        help="intensity window for CT/MR inputs: auto (default), a preset (e.g. "
        "soft_tissue, lung), 'level,width' or percentile",
    )
    e.add_argument(
        "--modality",
        help="modality name for the report when the data does not say (default: DICOM/NIfTI metadata, else 2D or 3D)",
    )

    o = p.add_argument_group("output")
    o.add_argument("--output-dir", default="evaluation", help="report folder (default ./evaluation)")
    o.add_argument("--figure", action="store_true", help="also write dice_per_concept.png (needs matplotlib)")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    o.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    add_version_flag(p)
    return p


def _datasets(args: argparse.Namespace):
    """The COCO set and/or volume set the arguments describe; bad descriptions raise (exit 2)."""
    from ..data.layout import resolve_split
    from ..evaluation import (
        EvaluationError,
        VolumeSet,
        load_coco_set,
        load_label_prompts,
        match_volume_dirs,
        read_volume_pairs,
    )

    coco = volumes = None
    if args.data_dir or args.coco:
        paths = resolve_split(args.data_dir, args.split, annotation_file=args.coco, image_root=args.image_root)
        coco = load_coco_set(
            paths.annotation_file, paths.image_root, include_absent=args.include_absent, modality=args.modality
        )
    elif args.image_root:
        raise EvaluationError("--image-root needs --coco (or --data-dir)")
    if args.volumes and (args.image_dir or args.label_dir):
        raise EvaluationError("give volumes either as --volumes PAIRS_CSV or as --image-dir/--label-dir, not both")
    if bool(args.image_dir) != bool(args.label_dir):
        raise EvaluationError("--image-dir and --label-dir go together")
    if args.volumes or args.image_dir:
        if not args.label_prompts:
            raise EvaluationError(
                '3D evaluation needs --label-prompts FILE mapping label values to prompts, e.g. {"1": "liver"}'
            )
        cases = (
            read_volume_pairs(args.volumes, args.modality)
            if args.volumes
            else match_volume_dirs(args.image_dir, args.label_dir, args.modality)
        )
        volumes = VolumeSet(cases, load_label_prompts(args.label_prompts))
    elif args.label_prompts:
        raise EvaluationError("--label-prompts needs volumes (--volumes or --image-dir/--label-dir)")
    if coco is None and volumes is None:
        raise EvaluationError(
            "nothing to evaluate: give a 2D set (--data-dir or --coco) and/or volumes "
            "(--volumes, or --image-dir with --label-dir)"
        )
    if args.coco_map and coco is None:
        raise EvaluationError("--coco-map needs a COCO set (--data-dir or --coco)")
    return coco, volumes


def concept_threshold_option(values: list[str], thresholds: list[float] | None) -> dict[str, float]:
    """``--concept-threshold CONCEPT=T`` entries as {concept: T}; a malformed one raises, naming the fix."""
    from ..evaluation import EvaluationError

    out: dict[str, float] = {}
    for value in values:
        concept, sep, number = value.rpartition("=")
        try:
            t = float(number) if sep and concept.strip() else None
        except ValueError:
            t = None
        if t is None or not 0.0 <= t <= 1.0:
            raise EvaluationError(
                f"--concept-threshold {value!r}: expected CONCEPT=T with T in [0, 1], e.g. 'left kidney=0.1'"
            )
        out[concept.strip()] = t
    if out and thresholds and len(thresholds) > 1:
        raise EvaluationError(
            "--concept-threshold scores each named concept at its own threshold; give at most one --thresholds "
            "value (the threshold of the other concepts), not a sweep"
        )
    return out


def _dataset_folder(args: argparse.Namespace):
    """The nnU-Net / MSD folder to evaluate (``--dataset``, or a ``--data-dir`` holding dataset.json), or None."""
    from ..evaluation import EvaluationError
    from ..evaluation.dataset_folder import is_dataset_folder, load_folder_cases

    root = args.dataset or (args.data_dir if is_dataset_folder(args.data_dir) else None)
    if root is None:
        if args.cases or args.channel:
            raise EvaluationError("--cases and --channel need a dataset folder (--dataset DIR)")
        return None
    if args.coco or args.volumes or args.image_dir or (args.dataset and args.data_dir):
        raise EvaluationError("evaluate a dataset folder on its own (no --coco, --data-dir, --volumes, --image-dir)")
    return load_folder_cases(root, args.cases, args.channel)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import EvalOptions, EvaluationError
    from ..inference.postprocess3d import largest_component_option

    check_backend_flags(args, EvaluationError)
    overrides = concept_threshold_option(args.concept_threshold, args.thresholds)
    cfg = load_config(args.config, args.set)
    folder = _dataset_folder(args)
    # fail on a bad data description before loading gigabytes of model
    coco, volumes = _datasets(args) if folder is None else (None, None)
    from ..adapters.plan import plan_run

    # Model, adapter, device and hub state decided once (adapter refused? something not cached? said before torch).
    plan = plan_run(cfg, args.weights, device=args.device)
    if overrides:  # named concepts at their own, the rest at the one --thresholds value (or the weights' own)
        plan = plan.with_concept_thresholds(overrides, args.thresholds[0] if args.thresholds else None)
    # Without --thresholds: the weights' own, one per concept where they record several (as infer_sam.py)
    per_concept = bool(overrides) or (not args.thresholds and bool(plan.concept_thresholds))
    recorded = (plan.threshold, *plan.concept_thresholds.values()) if per_concept else (plan.threshold,)
    options = EvalOptions(
        protocols=tuple(args.protocol),
        thresholds=recorded if per_concept or not args.thresholds else tuple(args.thresholds),
        nms_iou=None if args.nms_iou >= 1.0 else args.nms_iou,
        nsd_tolerance=args.nsd_tolerance,
        include_absent=args.include_absent,
        slice_batch=args.slice_batch,
        axis=args.axis,
        window=args.window,
        coco_map=args.coco_map,
        largest_component=largest_component_option(
            args.largest_component, args.no_largest_component, plan.largest_component
        ),
        fill_holes=args.fill_holes,
        per_concept_thresholds=per_concept,
    )
    # Only now the heavy imports (torch, transformers): every cheap mistake has been reported.
    from ..evaluation import Evaluator, best_thresholds, concept_means, format_table, summarize_rows, write_report
    from ..inference.onnx_backend import load_predictor

    quiet_weight_loading(args.verbose, args.quiet)
    from ..inference.distributed import barrier, init_distributed

    # Under torchrun: one device per rank, cases split by size, rows gathered and reported on rank 0.
    dist_info, device = init_distributed(args.device)
    t0 = time.perf_counter()
    plan = dataclasses.replace(plan, device=str(device))
    predictor = load_predictor(plan, args.backend, args.onnx_dir, args.precision)
    logger.info("model ready on %s in %.1f s", predictor.device, time.perf_counter() - t0)
    out_dir = Path(args.output_dir)
    t0 = time.perf_counter()
    if folder is not None:
        from ..evaluation import EvaluationError
        from ..evaluation.folder_protocol import DatasetFolderEvaluator

        if dist_info.enabled:
            raise EvaluationError("a dataset folder (--dataset) is evaluated in one process; run it without torchrun")
        report = DatasetFolderEvaluator(predictor, options, out_dir).run_folder(folder)
    else:
        report = Evaluator(predictor, options, out_dir).run(coco=coco, volumes=volumes, dist_info=dist_info)
    if not report.is_main:
        barrier()  # exit only after rank 0 has written the report (torchrun stops ranks when one exits)
        return 0
    meta = {
        "argv": list(args.argv if args.argv is not None else sys.argv[1:]),
        "config": args.config,
        "model": cfg.model.name,
        "adapter": getattr(predictor, "adapter_origin", None),
        "coco": str(coco.annotation_file) if coco else None,
        "dataset": str(folder.dataset.root) if folder else None,
        "cases": args.cases,
        "label_prompts": {str(k): v for k, v in volumes.label_prompts.items()} if volumes else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    paths = write_report(report, out_dir, meta=meta, figure=args.figure)
    barrier()
    logger.info(
        "%d/%d case(s) evaluated in %.1f s; report -> %s",
        report.n_cases - len(report.failures),
        report.n_cases,
        time.perf_counter() - t0,
        ", ".join(str(p) for p in paths.values()),
    )

    lines = [format_table(summarize_rows(report.rows))] if report.rows else ["no results"]
    for m in concept_means(report.rows, options.per_concept_thresholds) if report.rows else []:
        at = "each concept at its own threshold" if m["threshold"] is None else f"threshold {m['threshold']:g}"
        lines.append(
            f"mean Dice over concepts [{m['protocol']}, {at}]: {m['dice']:.4f} "
            f"({len(m['per_concept'])} concepts)"
            + (f"; false positives on absent: {m['false_positive_rate']:.3f}" if m["n_absent"] else "")
        )
    if len(options.thresholds) > 1 and not options.per_concept_thresholds:  # a sweep, not one threshold each
        lines.append("\nbest threshold per concept (mean Dice):")
        lines += [
            f"  {b['concept']} [{b['protocol']}]: {b['threshold']:g} (Dice {b['dice_mean']:.4f})"
            if b["threshold"] is not None
            else f"  {b['concept']} [{b['protocol']}]: -"
            for b in best_thresholds(report.rows)
        ]
    if report.coco_map:
        lines.append("\nCOCO segm (detections above the lowest threshold):")
        for protocol, res in report.coco_map.items():
            fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            lines.append(f"  {protocol}: AP {fmt(res['AP'])}  AP50 {fmt(res['AP50'])}")
    if report.failures:
        lines.append(f"\n{len(report.failures)} case(s) failed (see summary.json 'failures'):")
        lines += [f"  {f['case']}: {f['reason']}" for f in report.failures]
    sys.stdout.write("\n".join(lines) + "\n")
    return 1 if report.failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    setup_logging(args.verbose, args.quiet)
    io_logger = logging.getLogger("medsam3.io")
    io_level = io_logger.level
    if not args.verbose:  # one INFO line per image read / mask written drowns the report
        io_logger.setLevel(logging.WARNING)
    try:
        return run_command("evaluate.py", lambda: run(args), args.verbose)
    finally:
        io_logger.setLevel(io_level)
        distributed = sys.modules.get("medsam3.inference.distributed")  # loaded only if a model was
        if distributed is not None:
            distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
