"""medsam3-import on real nnU-Net datasets (small subsets) and on bad synthetic folders.

Ground truth is computed here, independently of medsam3: label files read with nibabel / Pillow,
display orientation from nibabel's canonical (RAS+) reorientation, masks compared pixel for pixel.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from medsam3.cli.import_dataset import main as import_main
from medsam3.data import CocoConceptDataset, load_rgb_image
from medsam3.io import load_volume

DATASETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason="../shared/datasets (nnU-Net raw datasets) is absent")


def _coco(out: Path, split: str) -> dict:
    return json.loads((out / split / "_annotations.coco.json").read_text())


def _masks_by_image(coco: dict) -> dict[int, dict[str, np.ndarray]]:
    """image id -> {concept name: union of its instance masks}."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out: dict[int, dict[str, np.ndarray]] = {im["id"]: {} for im in coco["images"]}
    for ann in coco["annotations"]:
        m = mask_utils.decode(ann["segmentation"]).astype(bool)
        name = names[ann["category_id"]]
        per = out[ann["image_id"]]
        per[name] = per.get(name, np.zeros_like(m)) | m
    return out


@functools.lru_cache(maxsize=4)
def _canonical(path: Path) -> tuple[np.ndarray, bool]:
    """(RAS+ array: i -> patient's right, j -> anterior; whether voxel axis 2 was reversed)."""
    img = nib.load(path)
    ornt = nib.io_orientation(img.affine)
    assert ornt[2, 0] == 2, "this check handles axial volumes"
    return np.asarray(nib.as_closest_canonical(img).dataobj), bool(ornt[2, 1] < 0)


def _display_label(path: Path, k: int) -> np.ndarray:
    """Axial slice k of a label NIfTI in radiological display: patient's right on the left, anterior up."""
    canon, reversed_k = _canonical(path)
    kk = canon.shape[2] - 1 - k if reversed_k else k
    return canon[:, :, kk].T[::-1, ::-1]


def _display_mismatches(out: Path, source: Path, concepts: dict[str, list[int]]) -> list[str]:
    """Cases where an imported mask differs from the label slice (in display orientation) it came from."""
    bad = []
    for split in ("train", "valid", "test"):
        if not (out / split).is_dir():
            continue
        coco = _coco(out, split)
        masks = _masks_by_image(coco)
        for im in coco["images"]:
            label = _display_label(source / im["source_label"], im["slice_index"])
            for name, values in concepts.items():
                expected = np.isin(label, values)
                got = masks[im["id"]].get(name, np.zeros_like(expected))
                if not np.array_equal(got, expected):
                    bad.append(im["source_case"])
                    break
    return sorted(set(bad))


@needs_datasets
def test_brats_regions_slices_and_display_orientation(tmp_path):
    src = DATASETS / "Dataset103_BraTS2013"
    out = tmp_path / "brats"
    rc = import_main([str(src), str(out), "--cases", "BRATS_001", "BRATS_002", "--valid-fraction", "0.5", "-q"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["licence"].startswith("CC BY-NC-SA 3.0")
    assert set(manifest["splits"]["train"]) | set(manifest["splits"]["valid"]) == {"BRATS_001", "BRATS_002"}
    assert not set(manifest["splits"]["train"]) & set(manifest["splits"]["valid"])
    regions = {"brain tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    for split in ("train", "valid"):
        coco = _coco(out, split)
        assert [c["name"] for c in coco["categories"]] == list(regions)  # background is no concept
        (case,) = {im["source_case"] for im in coco["images"]}
        labels = np.asarray(nib.load(src / "labelsTr" / f"{case}.nii.gz").dataobj)
        positive = {k for k in range(labels.shape[2]) if labels[:, :, k].any()}
        with_annotations = {
            im["slice_index"] for im in coco["images"] if im["id"] in {a["image_id"] for a in coco["annotations"]}
        }
        assert with_annotations == positive  # every slice holding a concept, and only those, has masks
        negatives = len(coco["images"]) - len(positive)
        assert negatives == manifest["counts"][split]["negatives"] and 0 < negatives < 0.3 * (
            labels.shape[2] - len(positive)
        )
        for im in coco["images"]:
            assert im["slice_axis"] == 2 and im["slice_spacing"] == pytest.approx(1.0)
            assert im["source_file"] == f"imagesTr/{case}_0000.nii.gz"
        counts = manifest["counts"][split]["concepts"]
        assert counts["tumor core"]["images"] == sum(
            np.isin(labels[:, :, k], [2, 3]).any() for k in range(labels.shape[2])
        )
    assert _display_mismatches(out, src, regions) == []

    # The check is sensitive: flip one case's masks left-right (an orientation bug) and it is caught.
    coco = _coco(out, "valid")
    for ann in coco["annotations"]:
        flipped = np.asfortranarray(mask_utils.decode(ann["segmentation"])[:, ::-1])
        rle = mask_utils.encode(flipped)
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    (out / "valid" / "_annotations.coco.json").write_text(json.dumps(coco))
    assert _display_mismatches(out, src, regions) == manifest["splits"]["valid"]

    # The image beside a mask is the slice as infer_sam.py shows it (display orientation, same window).
    im = _coco(out, "train")["images"][0]
    volume = load_volume(src / im["source_file"])
    raw = np.asarray(nib.as_closest_canonical(nib.load(src / im["source_file"])).dataobj, dtype=np.float32)
    kk = raw.shape[2] - 1 - im["slice_index"] if nib.io_orientation(volume.affine)[2, 1] < 0 else im["slice_index"]
    expected = volume.intensity.apply(raw[:, :, kk].T[::-1, ::-1])
    assert np.array_equal(np.asarray(load_rgb_image(out / "train" / im["file_name"]))[..., 0], expected)


@needs_datasets
def test_ph2_stays_rgb_and_trains(tmp_path):
    src = DATASETS / "Dataset105_PH2"
    out = tmp_path / "ph2"
    rc = import_main(
        [str(src), str(out), "--limit", "3", "--valid-fraction", "0.34", "--test-fraction", "0",
         "--concept", "skin lesion=melanocytic lesion", "--synonyms", "melanocytic lesion=mole,nevus", "-q"]
    )  # fmt: skip
    assert rc == 0
    coco = _coco(out, "train")
    assert [(c["name"], c["synonyms"]) for c in coco["categories"]] == [("melanocytic lesion", ["mole", "nevus"])]
    masks = _masks_by_image(coco)
    for im in coco["images"]:
        original = np.asarray(Image.open(src / im["source_file"]))
        rgb = np.asarray(load_rgb_image(out / "train" / im["file_name"]))
        assert original.ndim == 3 and np.array_equal(rgb, original)  # RGB kept RGB, unchanged
        assert not np.array_equal(rgb[..., 0], rgb[..., 1])
        label = np.asarray(Image.open(src / im["source_label"]))
        assert np.array_equal(masks[im["id"]]["melanocytic lesion"], label == 1)
    ds = CocoConceptDataset(out / "train" / "_annotations.coco.json", out / "train", resolution=28, mask_resolution=7)
    assert ds.prompts == ["melanocytic lesion"] and len(ds) == len(coco["images"])


@needs_datasets
def test_hc18_split_by_exam_with_group(tmp_path):
    src = DATASETS / "Dataset104_HC18"
    cases = ["HC18_010", "HC18_010_2", "HC18_017", "HC18_017_2", "HC18_000", "HC18_001", "HC18_003"]
    out = tmp_path / "hc18"
    args = [str(src), str(out), "--cases", *cases, "--group", r"HC18_\d+", "--valid-fraction", "0.2",
            "--test-fraction", "0.2", "--seed", "3", "-q"]  # fmt: skip
    assert import_main(args) == 0
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    where = {c: s for s, listed in splits.items() for c in listed}
    assert sorted(where) == sorted(cases)  # every case once, in one split
    assert where["HC18_010"] == where["HC18_010_2"] and where["HC18_017"] == where["HC18_017_2"]
    assert set(where.values()) == {"train", "valid", "test"}
    # Deterministic: the same seed gives the same split; --split-file reproduces it from the manifest.
    again = tmp_path / "again"
    assert import_main([str(src), str(again), "--split-file", str(out / "manifest.json"), "-q"]) == 0
    assert json.loads((again / "manifest.json").read_text())["splits"] == splits
    # A second run into an existing folder refuses unless --overwrite.
    assert import_main(args) == 2
    assert import_main([*args, "--overwrite"]) == 0


# --------------------------------------------------------------------------------------------- #
# Synthetic folders: formats and bad input
# --------------------------------------------------------------------------------------------- #
def _nnunet3d(root: Path, cases: dict[str, dict], channels=("MR",), labels=None) -> Path:
    """cases: name -> {"shape", "label_shape", "label_affine", "value", "skip_channels"}."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for name, spec in cases.items():
        shape = spec.get("shape", (16, 12, 5))
        affine = np.diag([1.0, 1.0, 3.0, 1.0])
        for c in range(len(channels)):
            if c not in spec.get("skip_channels", ()):
                nib.save(
                    nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), affine),
                    root / "imagesTr" / f"{name}_{c:04d}.nii.gz",
                )
        lab = np.zeros(spec.get("label_shape", shape), np.uint8)
        lab[3:7, 2:6, 1:3] = spec.get("value", 1)
        nib.save(nib.Nifti1Image(lab, spec.get("label_affine", affine)), root / "labelsTr" / f"{name}.nii.gz")
    meta = {
        "channel_names": {str(i): n for i, n in enumerate(channels)},
        "labels": labels or {"background": 0, "organ": 1},
        "file_ending": ".nii.gz",
        "name": "synthetic",
        "licence": "CC0",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


SHIFTED = np.diag([1.0, 1.0, 3.0, 1.0]) + np.array([[0, 0, 0, 2.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    ("bad", "channels", "expected"),
    [
        ({"label_shape": (16, 12, 6)}, ("MR",), "label map of shape (16, 12, 6) but image of shape (16, 12, 5)"),
        ({"label_affine": SHIFTED}, ("MR",), "different affines (up to 2 mm apart)"),
        ({"value": 7}, ("MR",), "label value(s) [7] are not named in dataset.json"),
        ({"skip_channels": (1,)}, ("T1", "T2"), "channel file imagesTr/B_0001.nii.gz is missing"),
    ],
    ids=["shape", "affine", "unknown-value", "missing-channel"],
)
def test_bad_case_is_one_line_exit_2_and_nothing_left(tmp_path, capsys, bad, channels, expected):
    src = _nnunet3d(tmp_path / "Dataset901_Bad", {"A": {}, "B": bad}, channels=channels)  # B fails after A is written
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "imported"
    assert import_main([str(src), str(out), "--valid-fraction", "0", "--test-fraction", "0", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medsam3-import: error: ")
    assert expected in err and "B" in err and "Fix:" in err
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []  # no partial folder either


def test_empty_dataset_and_existing_output(tmp_path, capsys):
    src = tmp_path / "Dataset902_Empty"
    (src / "imagesTr").mkdir(parents=True)
    (src / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"})
    )
    assert import_main([str(src), str(tmp_path / "o1"), "-q"]) == 2
    assert "holds no cases" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    unsuffixed = _nnunet3d(tmp_path / "Dataset904_NoSuffix", {"A": {}})
    (unsuffixed / "imagesTr" / "A_0000.nii.gz").rename(unsuffixed / "imagesTr" / "A.nii.gz")
    assert import_main([str(unsuffixed), str(tmp_path / "o3"), "-q"]) == 2
    assert "imagesTr/A.nii.gz has no channel suffix _0000" in capsys.readouterr().err
    good = _nnunet3d(tmp_path / "Dataset903_Ok", {"A": {}})
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "keep.txt").write_text("mine")
    assert import_main([str(good), str(tmp_path / "o2"), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "o2" / "keep.txt").read_text() == "mine"


def test_msd_4d_channel_by_name_and_semantic_masks(tmp_path):
    root = tmp_path / "Task01_Test"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    four_d = np.random.default_rng(1).normal(size=(10, 9, 4, 2)).astype(np.float32)
    four_d[..., 1] *= 50  # the second channel has another range: its own percentile window
    nib.save(nib.Nifti1Image(four_d, affine), root / "imagesTr" / "case_0.nii.gz")
    lab = np.zeros((10, 9, 4), np.uint8)
    lab[1:3, 1:3, 1] = 1
    lab[6:8, 6:8, 1] = 1  # two components on one slice
    nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / "case_0.nii.gz")
    meta = {
        "name": "Test",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema"},
        "training": [{"image": "./imagesTr/case_0.nii.gz", "label": "./labelsTr/case_0.nii.gz"}],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    for semantic, n_ann in ((False, 2), (True, 1)):
        out = tmp_path / f"out_{semantic}"
        args = [str(root), str(out), "--channel", "t1w", "--negative-share", "0", "-q"] + (
            ["--semantic"] if semantic else []
        )
        assert import_main(args) == 0
        coco = _coco(out, "train")
        (im,) = coco["images"]
        assert im["slice_index"] == 1 and len(coco["annotations"]) == n_ann
        expected = load_volume(root / "imagesTr" / "case_0.nii.gz", volume_index=1).slice_rgb(1)
        assert np.array_equal(np.asarray(load_rgb_image(out / "train" / im["file_name"])), expected)


def test_nrrd_dataset_imports_like_its_nifti_twin(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(4)
    image = rng.normal(size=(4, 14, 11)).astype(np.float32)  # (z, y, x)
    labels = np.zeros(image.shape, np.uint8)
    labels[1, 2:6, 3:9] = 1
    labels[2, 8:12, 1:4] = 2
    roots = {}
    for ending in (".nrrd", ".nii.gz"):
        root = tmp_path / f"Dataset92{len(roots)}_{ending.strip('.').replace('.', '')}"
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        for array, path in ((image, root / "imagesTr" / f"C_0000{ending}"), (labels, root / "labelsTr" / f"C{ending}")):
            img = sitk.GetImageFromArray(array)
            img.SetSpacing((0.8, 0.8, 3.0))
            img.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
            sitk.WriteImage(img, str(path))
        meta = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ending}
        (root / "dataset.json").write_text(json.dumps(meta))
        out = tmp_path / f"out{len(roots)}"
        assert import_main([str(root), str(out), "--negative-share", "0", "-q"]) == 0
        roots[ending] = _coco(out, "train"), out
    (nrrd, nrrd_out), (nifti, nifti_out) = roots[".nrrd"], roots[".nii.gz"]
    assert [im["slice_index"] for im in nrrd["images"]] == [1, 2]

    def exact(items: list[dict]) -> list[dict]:
        return [{k: v for k, v in d.items() if not k.startswith("source") and "spacing" not in k} for d in items]

    for key in ("images", "annotations"):
        assert exact(nrrd[key]) == exact(nifti[key])
    for a, b in zip(nrrd["images"], nifti["images"]):  # NIfTI stores spacing as float32
        assert a["pixel_spacing"] == pytest.approx(b["pixel_spacing"]) and a["slice_spacing"] == pytest.approx(
            b["slice_spacing"]
        )
    for im in nrrd["images"]:
        assert np.array_equal(
            np.asarray(Image.open(nrrd_out / "train" / im["file_name"])),
            np.asarray(Image.open(nifti_out / "train" / im["file_name"])),
        )
