#!/usr/bin/env python
"""Copy the trained demo into the package: base, adapters, thresholds, held-out examples (issue 25).

    python scripts/ship_demo.py            # after scripts/demo_tables.py thresholds

* ``medsam3/demo/model/``            the stage-1 base (``runs/demo/base/best_model``), ``--weights demo``
* ``medsam3/demo/adapters/NAME/``    the LoRA adapter trained on all NAME images (the checkpoint
  ``scripts/demo_tables.py`` measured: best valid Dice on the new concept), ``--weights demo:NAME``
* the operating thresholds chosen on the valid split (``runs/demo/tables/thresholds.json``), one per
  concept and one for any other prompt, and the base's 3D clean-up (the concepts that keep their
  largest connected component), recorded in ``medsam3_model.json`` / ``medsam3_adapter.json``, where
  every command reads them
* ``medsam3/demo/examples/``         one held-out test image per dataset and its label map
  (``NAME_labels.png``: value = position in ``examples.json``'s ``labels`` list, 1-based). The image is
  chosen by its label alone (the test image holding the most labelled pixels of the dataset's concepts,
  all of them present where one has them all), never by the model's result on it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_tables import ADAPTERS, checkpoint  # noqa: E402  (the checkpoint the tables measured)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "medsam3" / "demo"
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "medsam3_model.json",
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "medsam3_adapter.json")
THRESHOLD_RULE = (
    "per concept: the highest Dice on the valid split among thresholds 0.1..0.7 where it fires on <= 5% of"
    " other datasets' images (the base's 3D concepts: per-subject 3D Dice); other prompts: the highest mean Dice"
    " over the concepts with <= 5% false detections (scripts/demo_tables.py)"
)
CLEANUP_RULE = (
    "3D: keep the largest 26-connected component where it raised the concept's per-subject valid Dice by > 0.005"
    " at its chosen threshold (scripts/demo_tables.py)"
)
# dataset -> (weights value, concepts, licence line)
EXAMPLES = {
    "chaos": ("demo", ["liver", "right kidney", "left kidney", "spleen"], "CHAOS, CC BY-NC-SA 4.0"),
    "mscmr": (
        "demo",
        ["myocardium", "left ventricle", "right ventricle"],
        "MS-CMRSeg 2019, research use",
    ),
    "brats": ("demo", ["brain tumor"], "BraTS 2013, CC BY-NC-SA 3.0 CH"),
    "hc18": ("demo:hc18", ["fetal head"], "HC18, CC BY 4.0"),
    "ph2": ("demo:ph2", ["skin lesion"], "PH2, free for research and benchmarking"),
}


def record_choices(path: Path, chosen: dict) -> None:
    """Write what was chosen on valid into the weights' metadata: thresholds, and the 3D clean-up where chosen."""
    meta = json.loads(path.read_text())
    table = {c: t for c, t in chosen.get("concept_thresholds", {}).items() if c in meta["concepts"]}
    meta.update(threshold=chosen["threshold"], concept_thresholds=table, threshold_rule=THRESHOLD_RULE, card="MODEL.md")
    if "largest_component" in chosen:  # the base's organs: infer_sam.py, the app and the evaluator apply it
        meta.update(
            largest_component=[c for c in chosen["largest_component"] if c in meta["concepts"]],
            largest_component_rule=CLEANUP_RULE,
        )
    path.write_text(json.dumps(meta, indent=1) + "\n")


def pick_example(split_dir: Path, concepts: list[str]) -> tuple[dict, np.ndarray]:
    """The test image with the most labelled pixels (all concepts present if any image has them all)."""
    coco = json.loads((split_dir / "_annotations.coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if names[ann["category_id"]] in concepts:
            per_image.setdefault(ann["image_id"], []).append(ann)

    def key(img: dict) -> tuple:
        anns = per_image.get(img["id"], [])
        return (len({a["category_id"] for a in anns}), sum(a["area"] for a in anns), -img["id"])

    image = max(coco["images"], key=key)
    labels = np.zeros((image["height"], image["width"]), np.uint8)
    for ann in per_image[image["id"]]:
        labels[mask_utils.decode(ann["segmentation"]) > 0] = concepts.index(names[ann["category_id"]]) + 1
    return image, labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "demo")
    p.add_argument("--sets", type=Path, default=REPO / "runs" / "demo_sets")
    args = p.parse_args(argv)
    thresholds = json.loads((args.runs / "tables" / "thresholds.json").read_text())

    shutil.rmtree(DEMO / "model", ignore_errors=True)
    shutil.rmtree(DEMO / "adapters", ignore_errors=True)
    (DEMO / "model").mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copyfile(args.runs / "base" / "best_model" / name, DEMO / "model" / name)
    record_choices(DEMO / "model" / "medsam3_model.json", thresholds["base"])
    for adapter in ("hc18", "ph2"):
        target = DEMO / "adapters" / adapter
        target.mkdir(parents=True)
        chosen = checkpoint(args.runs / f"{adapter}_lora_all", ADAPTERS[adapter], "lora_weights")
        for name in ADAPTER_FILES:
            shutil.copyfile(chosen / name, target / name)
        record_choices(target / "medsam3_adapter.json", thresholds[f"{adapter}_lora_all"])

    examples = DEMO / "examples"
    for old in examples.glob("*"):
        if old.name.split("_")[0] in EXAMPLES:
            old.unlink()
    manifest = {}
    for dataset, (weights, concepts, licence) in EXAMPLES.items():
        image, labels = pick_example(args.sets / "import" / dataset / "test", concepts)
        stem = f"{dataset}_{Path(image['file_name']).stem}"
        shutil.copyfile(args.sets / "import" / dataset / "test" / image["file_name"], examples / f"{stem}.png")
        Image.fromarray(labels).save(examples / f"{stem}_labels.png")
        manifest[f"{stem}.png"] = {
            "labels_file": f"{stem}_labels.png",
            "labels": concepts,
            "weights": weights,
            "case": image.get("source_case"),
            "source": licence,
        }
        print(f"{stem}.png ({weights}): {', '.join(concepts)}")
    (examples / "examples.json").write_text(json.dumps(manifest, indent=1) + "\n")
    sizes = sum(f.stat().st_size for f in DEMO.rglob("*.safetensors"))
    print(f"weights shipped: {sizes / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
