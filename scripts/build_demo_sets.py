#!/usr/bin/env python
"""Build the demo's training sets from the shared nnU-Net datasets (issue 25), by subject, seeded.

Each dataset is imported with ``medsam3-import`` (the path users follow; its split is by subject and
recorded in ``manifest.json``), then merged into the sets the two stages train on:

* ``OUT/import/<name>/``   one import per dataset (``manifest.json:test`` is what MODEL.md's tables use)
* ``OUT/base/{train,valid}`` stage 1: CHAOS abdominal MR, MS-CMRSeg cardiac MR, BraTS FLAIR
  ("brain tumor" only), and the CT organs + brain of ``scripts/build_demo_data.py`` (``--ct-data``).
  One category per concept across datasets, so every concept is asked for as a negative on every
  other dataset's images ("liver" on a heart MR learns "not here").
* ``OUT/crosstest/test`` every dataset's test images, for the false-detection table
  (``scripts/demo_tables.py``), with ``labelled.json``: the concepts each dataset labels.
* ``OUT/<adapter>_<n>/{train,valid}`` stage 2 (``hc18``: fetal head, ``ph2``: skin lesion): ``n`` of
  the new modality's training images (``all``, or a seeded subset for the learning curve) plus a fixed
  replay of ``--replay`` base training images, so the adapter learns "fetal head" is absent from CT
  and MR and keeps the base's concepts. Valid: the new modality's valid split + ``--valid-replay`` base valid images.

The held-out test subjects are never copied here: evaluation reads them from the nnU-Net folders
through ``medsam3-evaluate --dataset DIR --cases OUT/import/<name>/manifest.json:test``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

IMPORTS = {
    # name: (dataset folder, extra medsam3-import options)
    "chaos": ("Dataset101_CHAOS_T2SPIR", ["--negative-share", "0.5"]),
    "mscmr": ("Dataset102_MSCMR_bSSFP", ["--negative-share", "0.5"]),
    "brats": ("Dataset103_BraTS2013", ["--channel", "FLAIR", "--negative-share", "0.5"]),
    "hc18": ("Dataset104_HC18", ["--group", r"HC18_\d+"]),
    "ph2": ("Dataset105_PH2", []),
}
BASE_SOURCES = ("chaos", "mscmr", "brats")
# The concepts each source contributes to the base (others, like BraTS' sub-regions, are left out).
KEEP = {"brats": {"brain tumor"}}
ADAPTERS = {"hc18": "fetal head", "ph2": "skin lesion"}


def run_import(datasets: Path, out: Path, name: str) -> Path:
    folder, options = IMPORTS[name]
    target = out / "import" / name
    cmd = [sys.executable, "-m", "medsam3", "import", str(datasets / folder), str(target), "--semantic", "-q"]
    subprocess.run(cmd + ["--overwrite", "--seed", "0"] + options, check=True)
    return target


def read_coco(split_dir: Path) -> dict:
    return json.loads((split_dir / "_annotations.coco.json").read_text())


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def merge(parts: list[tuple[str, Path, list[int] | None]], out_dir: Path, info: dict) -> dict:
    """Merge COCO splits into one (categories by name); ``parts``: (prefix, split folder, image ids or None)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    categories: dict[str, dict] = {}
    images, annotations = [], []
    for prefix, split_dir, keep_ids in parts:
        coco = read_coco(split_dir)
        keep = KEEP.get(prefix)
        cat_map = {}
        for cat in coco["categories"]:
            if keep is not None and cat["name"] not in keep:
                continue
            entry = categories.setdefault(
                cat["name"], {"id": len(categories) + 1, "name": cat["name"], "supercategory": "concept"}
            )
            cat_map[cat["id"]] = entry["id"]
        wanted = None if keep_ids is None else set(keep_ids)
        id_map = {}
        for img in coco["images"]:
            if wanted is not None and img["id"] not in wanted:
                continue
            new = dict(img, id=len(images) + 1, file_name=f"{prefix}_{img['file_name']}", source_set=prefix)
            link_or_copy(split_dir / img["file_name"], out_dir / new["file_name"])
            id_map[img["id"]] = new["id"]
            images.append(new)
        for ann in coco["annotations"]:
            if ann["image_id"] in id_map and ann["category_id"] in cat_map:
                annotations.append(
                    dict(
                        ann,
                        id=len(annotations) + 1,
                        image_id=id_map[ann["image_id"]],
                        category_id=cat_map[ann["category_id"]],
                    )
                )
    coco = {"info": info, "images": images, "annotations": annotations, "categories": list(categories.values())}
    (out_dir / "_annotations.coco.json").write_text(json.dumps(coco))
    return coco


def subset_ids(split_dir: Path, n: int | None, seed: int) -> list[int] | None:
    if n is None:
        return None
    ids = sorted(img["id"] for img in read_coco(split_dir)["images"])
    random.Random(seed).shuffle(ids)
    return sorted(ids[:n])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", type=Path, default=Path("../shared/datasets"), help="nnU-Net raw datasets folder")
    p.add_argument("--ct-data", type=Path, default=Path("runs/demo_data"), help="scripts/build_demo_data.py output")
    p.add_argument("--out", type=Path, default=Path("runs/demo_sets"))
    p.add_argument("--replay", type=int, default=200, help="base training images replayed in stage 2")
    p.add_argument("--valid-replay", type=int, default=60, help="base valid images in the adapters' valid sets")
    p.add_argument("--curve", type=int, nargs="*", default=[10, 50], help="learning-curve sizes besides all")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    for name in IMPORTS:
        run_import(args.datasets, args.out, name)
    imp = args.out / "import"

    def source(name: str, split: str) -> Path:
        """A base source's split folder: an import, or the CT set of build_demo_data.py."""
        return (args.ct_data / "stage1" if name == "ct" else imp / name) / split

    info = {"description": "medsam3 demo base set (scripts/build_demo_sets.py)", "licence": "see MODEL.md"}
    for split in ("train", "valid"):
        parts = [(name, source(name, split), None) for name in (*BASE_SOURCES, "ct")]
        target = args.out / "base" / split
        shutil.rmtree(target, ignore_errors=True)
        coco = merge(parts, target, info)
        print(
            f"base/{split}: {len(coco['images'])} images, concepts: {', '.join(c['name'] for c in coco['categories'])}"
        )

    def seeded_share(split: str, wanted: int) -> list[tuple[str, Path, list[int] | None]]:
        """A seeded subset of each base source's split, ``wanted`` images in all, in proportion to its size."""
        total = len(read_coco(args.out / "base" / split)["images"])  # the merged split: every source's images
        parts = []
        for name in (*BASE_SOURCES, "ct"):
            split_dir = source(name, split)
            share = round(wanted * len(read_coco(split_dir)["images"]) / total)
            parts.append((name, split_dir, subset_ids(split_dir, share, args.seed)))
        return parts

    # The replayed base images: the same seeded subset for every adapter and curve size.
    replay_parts = seeded_share("train", args.replay)
    valid_replay = seeded_share("valid", args.valid_replay)
    for adapter in ADAPTERS:
        for n in [None, *args.curve]:
            tag = f"{adapter}_{'all' if n is None else n}"
            target = args.out / tag
            shutil.rmtree(target, ignore_errors=True)
            train_dir = imp / adapter / "train"
            coco = merge(
                [(adapter, train_dir, subset_ids(train_dir, n, args.seed)), *replay_parts], target / "train", info
            )
            print(f"{tag}/train: {len(coco['images'])} images")
            if n is None:
                merge([(adapter, imp / adapter / "valid", None), *valid_replay], target / "valid", info)
            else:  # the curve's runs share the all-data valid set
                (target / "valid").symlink_to(Path("..") / f"{adapter}_all" / "valid")
    # Every dataset's test images in one set (the false-detection table asks each for every concept).
    parts = [(name, imp / name / "test", None) for name in IMPORTS] + [("ct", source("ct", "test"), None)]
    target = args.out / "crosstest"
    shutil.rmtree(target, ignore_errors=True)
    coco = merge(parts, target / "test", info)
    labelled = defaultdict(set)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for prefix, split_dir, _ in parts:
        labelled[prefix] |= {c["name"] for c in read_coco(split_dir)["categories"]} & set(names.values())
    (target / "labelled.json").write_text(json.dumps({k: sorted(v) for k, v in labelled.items()}, indent=1))
    print(f"crosstest/test: {len(coco['images'])} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
