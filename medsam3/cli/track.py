"""``infer_sam.py --video`` / ``--propagate``: tracking with SAM3's video model (argument handling only).

The input is opened (and its errors reported) before the model loads; the work is in
:mod:`medsam3.inference.video.run`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..console import quiet_weight_loading
from ..errors import UserError

__all__ = ["run_tracking"]

logger = logging.getLogger(__name__)


def _default_out_dir(path: Path) -> Path:
    name = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    return path.parent / f"{name}_medsam3"


def run_tracking(
    plan, args: argparse.Namespace, prompts: list[str], boxes: list, labels: list[int], window=None
) -> int:
    from ..io import is_volume_path, load_volume
    from ..io.video import open_video

    if args.output or args.json or args.masks_dir:
        raise UserError(
            "--output, --json and --masks-dir are for one 2D image; tracking writes overlay.mp4, tracks.json and "
            "tracks.csv (volumes: labels.nii.gz, legend.json) under --output-dir"
        )
    if args.memory_frames < 1 or args.box_frame < 0:
        raise UserError("--memory-frames must be >= 1 and --box-frame >= 0")
    path = Path(args.video or args.image)
    out_dir = Path(args.output_dir) if args.output_dir else _default_out_dir(path)
    if args.propagate:
        if args.video or not is_volume_path(path):
            raise UserError(
                f"--propagate tracks through the slices of a volume (NIfTI, DICOM series); {path} is not one"
            )
        if boxes:
            raise UserError("--box is not supported with --propagate (boxes are per slice); use text prompts")
        volume = load_volume(path, window=window, volume_index=args.volume_index)  # read first: bad files fail fast
        source = None
    else:
        source = open_video(path, window=window)
        logger.info(
            "%s: %s, %dx%d, %.2f fps, %s frames",
            path,
            source.kind,
            source.width,
            source.height,
            source.fps,
            source.n_frames if source.n_frames is not None else "unknown number of",
        )

    from ..inference.video import VideoPredictor
    from ..inference.video.run import run_video, run_volume
    from ..inference.volume import resolve_axis

    quiet_weight_loading(args.verbose)
    t0 = time.perf_counter()
    vp = VideoPredictor.from_plan(plan, memory_frames=args.memory_frames)
    logger.info(
        "video model ready on %s in %.1f s (post-processing: %s)",
        vp.device,
        time.perf_counter() - t0,
        vp.postprocess_kernels,
    )
    if source is not None:
        run_video(
            vp,
            source,
            prompts,
            out_dir,
            boxes=boxes or None,
            box_labels=labels or None,
            box_frame=args.box_frame,
            progress=not args.quiet and sys.stderr.isatty(),
        )
        logger.info("outputs -> %s/ (overlay.mp4, tracks.json, tracks.csv)", out_dir)
    else:
        run_volume(
            vp,
            volume,
            prompts,
            out_dir,
            axis=resolve_axis(volume, args.axis),
            progress=not args.quiet and sys.stderr.isatty(),
        )
        logger.info("outputs -> %s/ (labels.nii.gz, legend.json, tracks.json, tracks.csv)", out_dir)
    return 0
