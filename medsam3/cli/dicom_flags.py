"""``--dicom-seg``, ``--rtstruct`` and ``--codes``: DICOM outputs of ``infer_sam.py``.

The flags and their checks only (cheap, before torch is imported); writing is
:mod:`medsam3.inference.dicom_export`'s job, called once per input after the label map is written.
"""

from __future__ import annotations

import argparse

from ..errors import UserError

__all__ = ["add_dicom_flags", "dicom_export_from_args"]


def add_dicom_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("DICOM outputs (DICOM input only; see docs/dicom_output.md)")
    g.add_argument(
        "--dicom-seg",
        action="store_true",
        help="also write seg.dcm: a DICOM Segmentation (one coded segment per prompt) referencing the source images",
    )
    g.add_argument(
        "--rtstruct",
        action="store_true",
        help="also write rtstruct.dcm: an RT Structure Set (one ROI per prompt, planar contours)",
    )
    g.add_argument(
        "--codes",
        metavar="FILE",
        help="YAML table prompt -> {category, type[, modifier]} codes for prompts SNOMED CT does not cover "
        "(default: output.codes in the config)",
    )


def dicom_export_from_args(args: argparse.Namespace, cfg):
    """The :class:`~medsam3.inference.dicom_export.DicomExport` the flags ask for (None: none), checked now."""
    from ..inference.dicom_export import dicom_export

    wanted = args.dicom_seg or args.rtstruct
    if wanted and (args.video or getattr(args, "propagate", False)):
        raise UserError("--dicom-seg/--rtstruct are written for slice-by-slice segmentation, not --video/--propagate")
    if wanted and args.image:
        from ..io.formats import detect_format

        if detect_format(args.image) not in ("dicom", "dicom_dir"):
            raise UserError(
                f"--dicom-seg/--rtstruct reference the DICOM images they were computed on, and {args.image} is not "
                "DICOM; give a DICOM series folder, a multi-frame DICOM or a DICOM image"
            )
        from ..io.dicom_source import read_dicom_source

        source = read_dicom_source(args.image)  # one geometry, UIDs present: said before the model loads
        if args.rtstruct and not source.has_geometry:
            raise UserError(
                f"--rtstruct: {args.image} has no patient geometry (ImagePositionPatient/ImageOrientationPatient), "
                "which contours need; use --dicom-seg alone for it"
            )
    codes = args.codes or cfg.output.codes
    if args.codes and not wanted:
        raise UserError("--codes is used by --dicom-seg / --rtstruct; add one of them, or drop --codes")
    return dicom_export(args.dicom_seg, args.rtstruct, codes)
