#!/usr/bin/env python3
"""Time writing DICOM SEG and RTSTRUCT for a real CT series, and read both back with independent tools.

The label map is deliberately hard for contours: 1 = body (HU > -300, with the lungs' holes and
speckle), 2 = bone (HU > 300). Default series: TotalSegmentator 2.18.0's 20-slice JPEG 2000 CT
(``tests/reference_files/example_ct_dicom`` in its sdist, which the io tests cache); its UIDs were
emptied by an anonymiser, so a copy with restored UIDs is written first (as a PACS export has them).
When dcmqi (``segimage2itkimage``) and plastimatch are installed, the outputs are read back and
compared with the label map voxel for voxel.

  python scripts/bench_dicom_outputs.py [SERIES_DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medsam3.inference.dicom_export import DicomExport, write_dicom_outputs
from medsam3.io import label_map_image, load_volume

DEFAULT = Path.home() / ".cache/medsam3/demo_sources/totalsegmentator_ref/totalsegmentator-2.18.0"
DEFAULT /= "tests/reference_files/example_ct_dicom"


def with_uids(series: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    study, uid = generate_uid(), generate_uid()
    for p in sorted(series.iterdir()):
        ds = pydicom.dcmread(p)
        if not ds.get("SOPInstanceUID"):
            ds.SOPClassUID, ds.SOPInstanceUID = (
                ds.file_meta.MediaStorageSOPClassUID,
                ds.file_meta.MediaStorageSOPInstanceUID,
            )
        if not ds.get("StudyInstanceUID"):
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid
        ds.save_as(dest / p.name)
    return dest


def read_back(tool_args: list[str], out: Path) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    subprocess.run(tool_args, check=True, capture_output=True)
    ref = sitk.ReadImage(str(out.parent / "labels.nii.gz"))
    return {
        p.name[: -len(".nii.gz")]: sitk.GetArrayFromImage(
            sitk.Resample(sitk.ReadImage(str(p)), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        ).transpose(2, 1, 0)
        > 0
        for p in sorted(out.glob("*.nii.gz"))
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("series", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not args.series.is_dir():
        sys.exit(f"{args.series}: no such series folder (run tests/io once to cache TotalSegmentator's, or pass one)")
    work = Path(tempfile.mkdtemp(prefix="bench_dicom_"))
    out = args.out or work / "out"
    out.mkdir(parents=True, exist_ok=True)
    series = with_uids(args.series, work / "series")
    volume = load_volume(series)
    labels = np.zeros(volume.shape, np.uint8)
    labels[volume.data > -300] = 1
    labels[volume.data > 300] = 2
    label_map_image(labels, volume).to_filename(out / "labels.nii.gz")
    prompts = ["body", "bone"]
    for kind in ("seg", "rtstruct"):
        t0 = time.perf_counter()
        write_dicom_outputs(
            series,
            labels,
            prompts,
            out,
            DicomExport(seg=kind == "seg", rtstruct=kind == "rtstruct"),
            affine=volume.affine,
        )
        seconds, size = time.perf_counter() - t0, (out / f"{kind}.dcm").stat().st_size / 1e6
        print(f"{kind:9s} {seconds:6.2f} s  {volume.shape}  {size:.1f} MB")
    checks = {
        "dcmqi": [
            "segimage2itkimage",
            "--inputDICOM",
            str(out / "seg.dcm"),
            "--outputType",
            "nifti",
            "--outputDirectory",
        ],
        "plastimatch": [
            "plastimatch",
            "convert",
            "--input",
            str(out / "rtstruct.dcm"),
            "--fixed",
            str(out / "labels.nii.gz"),
            "--prefix-format",
            "nii.gz",
            "--output-prefix",
        ],
    }
    names = {"1": 1, "2": 2, "body": 1, "bone": 2}
    for name, cmd in checks.items():
        exe = shutil.which(cmd[0]) or shutil.which(cmd[0], path=str(Path(sys.executable).parent))
        if exe is None:
            print(f"{name}: not installed, not checked")
            continue
        target = out / name
        target.mkdir(exist_ok=True)
        masks = read_back([exe, *cmd[1:], str(target)], target)
        for key, mask in masks.items():
            expected = labels == names[key]
            differ = int((mask ^ expected).sum())
            print(f"{name:11s} {key:5s} voxels {int(mask.sum()):8d} expected {int(expected.sum()):8d} differ {differ}")
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
