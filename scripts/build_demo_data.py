#!/usr/bin/env python
"""Build the demo COCO dataset (real CT and MR slices with organ labels) from registry packages.

Sources (fetched with the ordinary package clients, cached under ``--cache-dir``; nothing comes
from a model hub or a web site):

* ``pip download --no-deps --no-binary :all: totalsegmentator==2.18.0`` -- the sdist's
  ``tests/reference_files``: an abdominal CT volume (``example_ct.nii.gz``, 3 mm) with its
  TotalSegmentator label map (``example_seg_fast_force_split.nii.gz``), a 20-slice CT DICOM series
  (``example_ct_dicom/``) with its label map (``example_seg_dicom.nii.gz``), an abdominal MR volume
  (``example_mr_sm.nii.gz``) with its label map (``example_seg_mr.nii.gz``); label names from
  ``totalsegmentator/map_to_binary.py`` (read with ``ast``, never executed).
* ``pip download --no-deps nilearn==0.14.1`` -- the MNI ICBM152 2009 T1 template and its grey and
  white matter probability maps (``nilearn/datasets/data/``).

Images are read with ``medsam3.io`` (intensity window chosen from the metadata, radiological
display orientation), the path users follow at inference. See ``scripts/DATA.md`` for the split
rule and counts (the table printed at the end).

Output (``--out``, default ``runs/demo_data``), two roots in the upstream Roboflow layout:

* ``all/``    every concept (the evaluation table uses ``all/test``)
* ``stage1/`` the concepts the base model is trained on (CT organs, brain; no MR abdomen)

Stage 2 (LoRA / full fine-tuning) trains on ``all/``: the held-out concepts (grey/white matter)
and modality (MR abdomen) plus the stage-1 data replayed, so absent held-out concepts are also
learned as negatives on CT and the adapted model keeps its CT organs.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medsam3.io import load_volume  # noqa: E402

logger = logging.getLogger("build_demo_data")

TOTALSEG = "totalsegmentator==2.18.0"
NILEARN = "nilearn==0.14.1"
TS_PREFIX = "totalsegmentator-2.18.0/"
TS_REF = TS_PREFIX + "tests/reference_files/"
MNI = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

# TotalSegmentator label name -> the prompt a clinician types.
ORGANS = {
    "liver": "liver",
    "spleen": "spleen",
    "kidney_left": "left kidney",
    "kidney_right": "right kidney",
    "stomach": "stomach",
    "aorta": "aorta",
}
STAGE1 = ["liver", "spleen", "left kidney", "right kidney", "stomach", "aorta", "brain"]
STAGE2 = ["grey matter", "white matter"]  # + every organ on MR (held-out modality)
MIN_PIXELS = 12  # smaller label islands in a slice are not annotated (partial-volume slivers)
GAP_MM = 15.0


# --------------------------------------------------------------------------- fetching
def pip_download(spec: str, cache: Path, sdist: bool) -> Path:
    name, version = spec.split("==")
    pattern = f"{name}-{version}.tar.gz" if sdist else f"{name}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(cache)]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    else:
        cmd += ["--only-binary", ":all:"]
    logger.info("fetching %s: %s", spec, " ".join(cmd[2:]))
    subprocess.run(cmd + [spec], check=True)
    found = sorted(cache.glob(pattern))
    if not found:
        raise SystemExit(f"pip download {spec} did not leave {pattern} in {cache}")
    return found[0]


def extract_totalseg(tar_path: Path, cache: Path) -> Path:
    out = cache / "totalsegmentator_ref"
    if (out / ".complete").exists():
        return out / TS_PREFIX
    wanted = (
        TS_REF + "example_ct.nii.gz",
        TS_REF + "example_seg_fast_force_split.nii.gz",
        TS_REF + "example_ct_dicom/",
        TS_REF + "example_seg_dicom.nii.gz",
        TS_REF + "example_mr_sm.nii.gz",
        TS_REF + "example_seg_mr.nii.gz",
        TS_PREFIX + "totalsegmentator/map_to_binary.py",
        TS_PREFIX + "LICENSE",
    )
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(wanted)]
        tar.extractall(out, members=members, filter="data")
    (out / ".complete").touch()
    return out / TS_PREFIX


def totalseg_class_map(path: Path, task: str) -> dict[int, str]:
    """``class_map[task]`` from map_to_binary.py, parsed (literal dicts), not executed."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and key.value == task:
                    return ast.literal_eval(value)
    raise SystemExit(f"no class_map[{task!r}] in {path}")


def nilearn_files(wheel: Path, cache: Path) -> dict[str, Path]:
    out = cache / "nilearn_mni"
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    with zipfile.ZipFile(wheel) as z:
        for kind in ("t1", "gm", "wm"):
            target = out / Path(MNI.format(kind)).name
            if not target.exists():
                target.write_bytes(z.read(MNI.format(kind)))
            paths[kind] = target
    return paths


# --------------------------------------------------------------------------- slicing
def load_labels(path: Path, volume) -> np.ndarray:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    # Bring the label voxels into the image's voxel order (a DICOM series read by medsam3.io and the
    # NIfTI written from it by another converter may differ by axis flips); then check exact overlay.
    ornt = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.io_orientation(volume.affine))
    data = nib.orientations.apply_orientation(data, ornt)
    affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, img.shape)
    if data.shape != volume.shape or not np.allclose(affine, volume.affine, atol=1e-2):
        raise SystemExit(f"{path}: label map does not match the image ({data.shape} vs {volume.shape})")
    return data


def display_slices(volume, labels: dict[str, np.ndarray], indices):
    """(index, rgb, {concept: mask}) in display orientation for the slices ``indices``."""
    geo = volume.slice_geometry(-1)
    for k in indices:
        rgb = volume.slice_rgb(k, -1)
        masks = {c: geo.to_display(m[..., k]) for c, m in labels.items()}
        yield k, rgb, {c: m for c, m in masks.items() if m.sum() >= MIN_PIXELS}


def slab_split(z_mm: np.ndarray, test: list[int], valid_from_gap: bool = True) -> dict[int, str]:
    """Slices in ``test`` are test; training slices are >= GAP_MM from every test slice; the gap goes to valid."""
    test_z = z_mm[test]
    split = {}
    for k, z in enumerate(z_mm):
        if k in test:
            split[k] = "test"
        elif np.min(np.abs(test_z - z)) >= GAP_MM - 1e-6:
            split[k] = "train"
        else:
            split[k] = "valid" if valid_from_gap else "skip"
    return split


# --------------------------------------------------------------------------- writing
class Coco:
    def __init__(self, concepts: list[str]):
        self.concepts = concepts
        self.images, self.anns = [], []

    def add(self, image_id: int, file_name: str, hw, masks: dict[str, np.ndarray], meta: dict) -> None:
        from pycocotools import mask as mask_utils

        self.images.append({"id": image_id, "file_name": file_name, "height": hw[0], "width": hw[1], **meta})
        for concept, mask in masks.items():
            if concept not in self.concepts:
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            self.anns.append(
                {
                    "id": len(self.anns) + 1,
                    "image_id": image_id,
                    "category_id": self.concepts.index(concept) + 1,
                    "segmentation": rle,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                }
            )

    def dump(self, path: Path) -> None:
        cats = [{"id": i + 1, "name": c, "supercategory": "anatomy"} for i, c in enumerate(self.concepts)]
        path.write_text(json.dumps({"images": self.images, "annotations": self.anns, "categories": cats}))


def build(out: Path, cache: Path) -> dict:
    from PIL import Image

    cache.mkdir(parents=True, exist_ok=True)
    ts = extract_totalseg(pip_download(TOTALSEG, cache, sdist=True), cache)
    ref = ts / "tests/reference_files"
    total = totalseg_class_map(ts / "totalsegmentator/map_to_binary.py", "total")
    total_mr = totalseg_class_map(ts / "totalsegmentator/map_to_binary.py", "total_mr")
    mni = nilearn_files(pip_download(NILEARN, cache, sdist=False), cache)

    def organ_masks(seg: np.ndarray, names: dict[int, str]) -> dict[str, np.ndarray]:
        inv = {v: k for k, v in names.items()}
        return {prompt: seg == inv[name] for name, prompt in ORGANS.items()}

    # (name, modality, volume, labels, split per slice index)
    sources = []

    ct = load_volume(ref / "example_ct.nii.gz")
    ct_lab = organ_masks(load_labels(ref / "example_seg_fast_force_split.nii.gz", ct), total)
    z = np.arange(ct.shape[2]) * ct.spacing[2]
    # Kidneys and spleen have one volume each: hold out a 4-slice slab through both kidneys
    # (slices 84-87, 12 mm), 15 mm from any training slice.
    sources.append(("ct_abdomen", "CT", ct, ct_lab, slab_split(z, [84, 85, 86, 87])))

    dcm = load_volume(ref / "example_ct_dicom")
    dcm_lab = organ_masks(load_labels(ref / "example_seg_dicom.nii.gz", dcm), total)
    # Liver, spleen, stomach and aorta have two CT volumes: the DICOM series is a held-out volume.
    sources.append(("ct_dicom", "CT", dcm, dcm_lab, {k: "test" for k in range(dcm.shape[2])}))

    mr = load_volume(ref / "example_mr_sm.nii.gz")
    mr_lab = organ_masks(load_labels(ref / "example_seg_mr.nii.gz", mr), total_mr)
    zm = np.arange(mr.shape[2]) * mr.spacing[2]
    sources.append(("mr_abdomen", "MR", mr, mr_lab, slab_split(zm, [0, 1, 2])))

    t1 = load_volume(mni["t1"])
    import nibabel as nib

    gm = np.asanyarray(nib.load(str(mni["gm"])).dataobj).astype(np.float32) / 255.0
    wm = np.asanyarray(nib.load(str(mni["wm"])).dataobj).astype(np.float32) / 255.0
    brain_lab = {"brain": gm + wm > 0.5, "grey matter": (gm > 0.5) & (gm >= wm), "white matter": (wm > 0.5) & (wm > gm)}
    # 1 mm template: every 3rd axial slice over the brain; a 5-slice test slab at the level of the ventricles.
    keep = list(range(6, 154, 3))
    zb = np.arange(t1.shape[2], dtype=float)
    split_b = slab_split(zb, [69, 72, 75, 78, 81])
    sources.append(("mni_brain", "MR", t1, brain_lab, {k: split_b[k] for k in keep}))

    all_concepts = STAGE1 + STAGE2
    roots = {"all": all_concepts, "stage1": STAGE1}
    cocos = {(r, s): Coco(c) for r, c in roots.items() for s in ("train", "valid", "test")}
    counts = defaultdict(Counter)
    image_id = 0
    for name, modality, vol, labels, split in sources:
        for k, rgb, masks in display_slices(vol, labels, sorted(split)):
            s = split[k]
            if s == "skip":
                continue
            image_id += 1
            file_name = f"{name}_{k:03d}.png"
            meta = {"source": name, "modality": modality, "slice_index": int(k), "window": vol.intensity_description}
            for root in roots:
                # stage 1 never sees the MR abdomen (held-out modality)
                if root == "stage1" and name == "mr_abdomen":
                    continue
                folder = out / root / s
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb[..., 0]).save(folder / file_name)
                cocos[(root, s)].add(image_id, file_name, rgb.shape[:2], masks, meta)
            counts[(s, name)]["images"] += 1
            for c in masks:
                counts[(s, name)][c] += 1
    for (root, s), coco in cocos.items():
        (out / root / s).mkdir(parents=True, exist_ok=True)
        coco.dump(out / root / s / "_annotations.coco.json")
    summary = {
        "sources": {
            n: {
                "modality": m,
                "shape": list(v.shape),
                "spacing_mm": [round(x, 3) for x in v.spacing],
                "window": v.intensity_description,
            }
            for n, m, v, _, _ in sources
        },
        "counts": {f"{s}/{n}": dict(c) for (s, n), c in sorted(counts.items())},
        "concepts": {"stage1": STAGE1, "all": all_concepts},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


EXAMPLE_CONCEPTS = ["liver", "spleen", "left kidney", "right kidney", "stomach", "aorta"]


def write_examples(target: Path, cache: Path) -> None:
    """Small held-out examples for ``medsam3/demo/examples`` (from the test split only).

    * ``ct_abdomen_slab.nii.gz``: the 4 held-out test slices (84-87) of the abdominal CT, int16 HU,
      with ``ct_abdomen_slab_labels.nii.gz`` (values = position in ``labels.json``'s list, 1-based);
    * ``ct_dicom_slice.dcm``: one slice of the held-out CT DICOM series (as shipped, JPEG 2000),
      with ``ct_dicom_slice_labels.png`` (same values, display orientation = what infer_sam.py shows).
    """
    import shutil

    import nibabel as nib
    from PIL import Image

    ts = extract_totalseg(pip_download(TOTALSEG, cache, sdist=True), cache)
    ref = ts / "tests/reference_files"
    total = totalseg_class_map(ts / "totalsegmentator/map_to_binary.py", "total")
    inv = {v: k for k, v in total.items()}
    prompt_to_ts = {v: k for k, v in ORGANS.items()}
    target.mkdir(parents=True, exist_ok=True)

    img = nib.load(str(ref / "example_ct.nii.gz"))
    seg = np.asanyarray(nib.load(str(ref / "example_seg_fast_force_split.nii.gz")).dataobj)
    slab = slice(84, 88)
    data = np.asanyarray(img.dataobj)[..., slab].astype(np.int16)
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array([0, 0, slab.start]) + img.affine[:3, 3]
    nib.save(nib.Nifti1Image(data, affine), target / "ct_abdomen_slab.nii.gz")
    labels = np.zeros(data.shape, np.uint8)
    for value, concept in enumerate(EXAMPLE_CONCEPTS, start=1):
        labels[seg[..., slab] == inv[prompt_to_ts[concept]]] = value
    nib.save(nib.Nifti1Image(labels, affine), target / "ct_abdomen_slab_labels.nii.gz")

    dcm_dir = ref / "example_ct_dicom"
    vol = load_volume(dcm_dir)
    dcm_lab = load_labels(ref / "example_seg_dicom.nii.gz", vol)
    k = 10
    # the file at sorted position k (medsam3.io sorts the series by position along the slice normal)
    files = [dcm_dir / name for name in vol.meta["files"]]
    shutil.copyfile(files[k], target / "ct_dicom_slice.dcm")
    geo = vol.slice_geometry(-1)
    lab2d = np.zeros(geo.display_shape, np.uint8)
    for value, concept in enumerate(EXAMPLE_CONCEPTS, start=1):
        lab2d[geo.to_display(dcm_lab[..., k] == inv[prompt_to_ts[concept]])] = value
    Image.fromarray(lab2d).save(target / "ct_dicom_slice_labels.png")
    (target / "labels.json").write_text(json.dumps({"labels": EXAMPLE_CONCEPTS, "values": "1-based index"}, indent=1))
    print(f"examples written to {target}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "demo_data")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "medsam3" / "demo_sources")
    p.add_argument("--examples", type=Path, help="also write the held-out demo examples into this folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.examples:
        write_examples(args.examples, args.cache_dir)
    summary = build(args.out, args.cache_dir)
    concepts = STAGE1 + STAGE2
    print(f"{'split/source':24s} {'images':>6s} " + " ".join(f"{c[:12]:>12s}" for c in concepts))
    for key, c in summary["counts"].items():
        print(f"{key:24s} {c.get('images', 0):6d} " + " ".join(f"{c.get(x, 0):12d}" for x in concepts))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
