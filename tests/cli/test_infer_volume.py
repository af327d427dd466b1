"""Volume inference end to end: the real tiny SAM3 forward, the real slice/axis/orientation path.

The tiny model's masks are noise, so to check that a structure at known voxels comes back at the
same voxels, the masks are replaced *after* the model, at the post-processing boundary
(``medsam3.inference.predictor.postprocess_query_outputs``): the real function runs on the real model
outputs, then its masks are swapped for masks derived from the very slice image the vision
encoder was given. Everything between the volume on disk and that boundary, and from there back
to the NIfTI on disk, is the production code.
"""

from __future__ import annotations

import copy
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import medsam3.inference.predictor as predictor_module
from medsam3.inference.postprocess import Detections
from medsam3.inference.predictor import Predictor, to_rgb_array
from tests.conftest import run_cli

PROMPTS = ["liver", "tumor"]
SHAPE = (24, 18, 7)
# Display-intensity rules per prompt, for the window (level 500, width 1000): 0..1000 -> 0..255.
RULES = {"liver": lambda g: (g >= 100) & (g <= 160), "tumor": lambda g: g >= 200}


def structures():
    """Voxel masks of the synthetic 'liver' (value 500) and 'tumor' (value 900)."""
    liver = np.zeros(SHAPE, bool)
    liver[4:13, 3:10, 1:5] = True  # a block over slices 1..4
    liver[12:17, 3:6, 1:5] = True  # an arm: the shape is not symmetric under any flip/transpose
    hole = np.zeros(SHAPE, bool)
    hole[7:9, 5:7, 2:4] = True  # a cavity enclosed in 3D
    liver &= ~hole
    stray = np.zeros(SHAPE, bool)
    stray[20:23, 14:17, 6] = True  # a second, smaller 'liver' component
    tumor = np.zeros(SHAPE, bool)
    tumor[16:22, 10:16, 2:6] = True
    return liver, hole, stray, tumor


def oblique_affine():
    """Voxel axes permuted and flipped w.r.t. RAS, anisotropic, slightly rotated, off-origin."""
    perm = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # i -> left, j -> anterior
    angle = np.deg2rad(8)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [31.5, -12.25, -40.0]
    return affine


@pytest.fixture
def volume_file(tmp_path):
    liver, _, stray, tumor = structures()
    data = np.random.default_rng(0).uniform(0, 100, SHAPE).astype(np.float32)
    data[liver | stray] = 500
    data[tumor] = 900
    img = nib.Nifti1Image(data, oblique_affine())
    img.set_qform(oblique_affine(), code=1)
    img.set_sform(oblique_affine(), code=2)
    path = tmp_path / "ct.nii.gz"
    img.to_filename(path)
    return path


@pytest.fixture
def injected(monkeypatch):
    """Run the real model and post-processing, then swap in masks derived from the slice content."""
    state = {"images": [], "calls": 0, "seen": []}
    real_encode, real_post = Predictor.encode_images, predictor_module.postprocess_query_outputs

    def encode(self, images):
        state["images"] = [to_rgb_array(im) for im in images]
        state["calls"] = 0
        state["seen"].extend(state["images"])
        return real_encode(self, images)

    def post(prompt, scores, boxes, masks, image_size, threshold=0.5, nms_iou=0.5):
        real = real_post(prompt, scores, boxes, masks, image_size, threshold, nms_iou)
        row = state["calls"]
        state["calls"] += 1
        assert prompt == PROMPTS[row % len(PROMPTS)], "rows are (image, prompt) in order"
        gray = state["images"][row // len(PROMPTS)][..., 0]
        mask = RULES[prompt](gray)
        assert real.masks.shape[1:] == mask.shape == tuple(image_size)
        if not mask.any():
            return Detections(
                prompt, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, *mask.shape), bool)
            )
        ys, xs = np.nonzero(mask)
        box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        return Detections(prompt, box, np.array([0.9], np.float32), mask[None])

    monkeypatch.setattr(Predictor, "encode_images", encode)
    monkeypatch.setattr(predictor_module, "postprocess_query_outputs", post)
    return state


@pytest.mark.parametrize(
    "axis, voxel_axis, plane", [("auto", 2, "axial"), ("coronal", 1, "coronal"), ("0", 0, "sagittal")]
)
def test_volume_round_trip_lands_on_the_same_voxels(
    tmp_path, tiny_config, volume_file, injected, axis, voxel_axis, plane
):
    out = tmp_path / "seg"
    assert (
        run_cli(
            "--config",
            tiny_config,
            "--image",
            volume_file,
            "--prompt",
            *PROMPTS,
            "--weights",
            "none",
            "--window",
            500,
            1000,
            "--slice-batch",
            3,
            "--output-dir",
            out,
            "--binary-masks",
            "--axis",
            axis,
            "-q",
        )
        == 0
    )
    src = nib.load(volume_file)
    lab = nib.load(out / "labels.nii.gz")
    assert lab.shape == src.shape
    np.testing.assert_array_equal(lab.affine, src.affine)
    assert lab.header.get_zooms() == src.header.get_zooms()
    np.testing.assert_array_equal(lab.header.get_sform(), src.header.get_sform())
    assert int(lab.header["sform_code"]) == 2 and int(lab.header["qform_code"]) == 1
    assert lab.get_data_dtype() == np.uint8
    liver, _, stray, tumor = structures()
    expected = np.zeros(SHAPE, np.uint8)
    expected[liver | stray] = 1
    expected[tumor] = 2
    np.testing.assert_array_equal(np.asarray(lab.dataobj), expected)

    # e.g. 7 axial slices in passes of 3, 3, 1: every slice went through the vision encoder once.
    assert len(injected["seen"]) == SHAPE[voxel_axis]

    legend = json.loads((out / "legend.json").read_text())
    assert [(e["value"], e["prompt"]) for e in legend["labels"]] == [(0, "background"), (1, "liver"), (2, "tumor")]
    voxel_ml = 0.7 * 0.9 * 2.5 / 1000
    assert legend["labels"][1]["voxels"] == int((liver | stray).sum())
    assert legend["labels"][2]["volume_ml"] == pytest.approx(tumor.sum() * voxel_ml, rel=1e-5)
    assert legend["labels"][2]["slices_with_detections"] == {2: 4, 1: 6, 0: 6}[voxel_axis]
    assert "L500 W1000" in legend["intensity"]
    assert legend["slice_axis"] == voxel_axis and legend["plane"] == plane
    for k, prompt, mask in ((0, "liver", liver | stray), (1, "tumor", tumor)):
        binary = nib.load(out / "masks" / f"{k:02d}_{prompt}.nii.gz")
        np.testing.assert_array_equal(binary.affine, src.affine)
        np.testing.assert_array_equal(np.asarray(binary.dataobj).astype(bool), mask)
    montage = np.asarray(Image.open(out / "montage.png"))
    assert montage.ndim == 3 and montage.shape[2] == 3


def test_slices_reach_the_model_in_display_orientation(tiny_config, volume_file, injected):
    """Independently of SliceGeometry: along the image's columns world x (RAS) decreases (patient's
    right on the left) and along its rows world y decreases (anterior at the top)."""
    from medsam3.config import load_config
    from medsam3.inference.inputs import load_input
    from medsam3.inference.volume import segment_volume

    vol = load_input(volume_file, window=(500, 1000)).volume
    predictor = Predictor.from_config(load_config(tiny_config), weights="none")
    seg = segment_volume(predictor, vol, PROMPTS, slice_batch=4)
    geo = seg.geometry
    assert geo.transpose and (geo.flip_rows or geo.flip_cols), "the test must exercise transpose and a flip"
    # voxel index of every display pixel, via an index image pushed through the inverse transform
    k = 3
    idx = np.stack(np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij"), -1)
    disp = geo.to_display(idx)  # (rows, cols, 2): voxel (i, j) shown at each display pixel
    world = np.einsum(
        "ab,rcb->rca",
        oblique_affine()[:3, :3],
        np.concatenate([disp, np.full(disp.shape[:2] + (1,), k)], -1).astype(float),
    )
    assert (np.diff(world[..., 0], axis=1) < 0).all() and (np.diff(world[..., 1], axis=0) < 0).all()
    shown = injected["seen"][k][..., 0]
    np.testing.assert_array_equal(shown, vol.intensity.apply(vol.data[disp[..., 0], disp[..., 1], k]))


def test_volume_3d_postprocessing_flags(tmp_path, tiny_config, volume_file, injected):
    out = tmp_path / "seg"
    assert (
        run_cli(
            "--config",
            tiny_config,
            "--image",
            volume_file,
            "--prompt",
            *PROMPTS,
            "--weights",
            "none",
            "--window",
            "500,1000",
            "--output-dir",
            out,
            "--largest-component",
            "--fill-holes",
            "--montage",
            0,
            "-q",
        )
        == 0
    )
    liver, hole, _, tumor = structures()
    expected = np.zeros(SHAPE, np.uint8)
    expected[liver | hole] = 1  # stray component removed, enclosed cavity filled
    expected[tumor] = 2
    np.testing.assert_array_equal(np.asarray(nib.load(out / "labels.nii.gz").dataobj), expected)
    assert not (out / "montage.png").exists() and not (out / "masks").exists()
    legend = json.loads((out / "legend.json").read_text())
    assert legend["largest_component"] and legend["fill_holes"]
    assert legend["labels"][1]["voxels"] == int((liver | hole).sum())


def test_real_model_volume_equals_slice_by_slice_predictions(tiny_config, volume_file):
    """No injection: batched slices give what one slice at a time through set_image/predict gives,
    put back with the io layer's own inverse (Volume.labels_from_slices)."""
    from medsam3.config import load_config
    from medsam3.inference.inputs import load_input
    from medsam3.inference.volume import segment_volume

    vol = load_input(volume_file).volume
    predictor = Predictor.from_config(load_config(tiny_config), weights="none")
    seg = segment_volume(predictor, vol, ["liver"], slice_batch=3, threshold=0.1)
    per_slice = []
    for k in range(vol.num_slices()):
        predictor.set_image(vol.slice_rgb(k))
        (det,) = predictor.predict(["liver"], threshold=0.1)
        per_slice.append(det.semantic_mask())
    expected = vol.labels_from_slices(per_slice)
    assert 0.01 < expected.mean() < 0.99, f"the test needs partial masks, got {expected.mean()}"
    assert (seg.labels == expected).mean() > 0.995
    assert seg.labels.shape == vol.shape


def test_dicom_series_in_nifti_out(tmp_path, tiny_config, injected):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src_path = get_testdata_file("CT_small.dcm", download=False)
    if src_path is None:
        pytest.skip("pydicom's CT_small.dcm is not installed")
    src = pydicom.dcmread(src_path)
    folder = tmp_path / "series"
    folder.mkdir()
    uid = generate_uid()
    base = src.pixel_array[:64, :48].astype(np.int16)
    for k in range(4):
        ds = copy.deepcopy(src)
        arr = base.copy()
        arr[10:20, 5:15] = 3000 if k in (1, 2) else arr[10:20, 5:15]  # bright 'tumor' on 2 slices
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = arr.tobytes()
        ds.ImagePositionPatient = [-100.0, -50.0, 20.0 + 3.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), 4 - k
        ds.save_as(folder / f"IM{(k * 7) % 4}", enforce_file_format=True)
    out = tmp_path / "out"
    assert (
        run_cli(
            "--config",
            tiny_config,
            "--image",
            folder,
            "--prompt",
            *PROMPTS,
            "--weights",
            "none",
            "--window",
            "bone",
            "--output-dir",
            out,
            "-q",
        )
        == 0
    )
    lab = nib.load(out / "labels.nii.gz")
    image = nib.load(out / "image.nii.gz")
    assert lab.shape == image.shape == (48, 64, 4)  # (columns, rows, slices)
    np.testing.assert_array_equal(lab.affine, image.affine)
    np.testing.assert_allclose(lab.header.get_zooms(), (*[float(v) for v in src.PixelSpacing][::-1], 3.0), rtol=1e-6)
    labels = np.asarray(lab.dataobj)
    hu = np.asarray(image.dataobj)
    assert set(np.unique(labels[hu > 1500])) == {2}  # the bright block is 'tumor' on both slices
    assert (labels[..., [0, 3]] != 2).all()


def test_legend_counts_what_the_label_map_holds_when_prompts_overlap(
    tmp_path, tiny_config, volume_file, injected, monkeypatch, caplog
):
    """'body' covers liver, stray and tumor; where it overlaps 'tumor' (equal scores) the first prompt
    wins, so value 2 is absent from labels.nii.gz: the legend must say 0 voxels there, and report the
    tumor's own mask separately, named as such."""
    import sys

    monkeypatch.setattr(sys.modules[__name__], "PROMPTS", ["body", "tumor"])
    monkeypatch.setitem(RULES, "body", lambda g: g >= 100)
    out = tmp_path / "seg"
    caplog.set_level("INFO")
    argv = ["--config", tiny_config, "--image", volume_file, "--prompt", "body", "tumor", "--weights", "none"]
    argv += ["--window", "500,1000", "--output-dir", out, "--binary-masks", "--montage", 0]
    assert run_cli(*argv) == 0
    labels = np.asarray(nib.load(out / "labels.nii.gz").dataobj)
    legend = json.loads((out / "legend.json").read_text())
    counts = np.bincount(labels.ravel(), minlength=3)
    voxel_ml = 0.7 * 0.9 * 2.5 / 1000
    liver, _, stray, tumor = structures()
    assert counts[2] == 0 and counts[1] == int((liver | stray | tumor).sum()), "the test needs a lost overlap"
    for entry in legend["labels"][1:]:
        assert entry["voxels"] == counts[entry["value"]]
        assert entry["volume_ml"] == pytest.approx(counts[entry["value"]] * voxel_ml, rel=1e-5)
        own = np.asarray(nib.load(out / "masks" / f"{entry['value'] - 1:02d}_{entry['prompt']}.nii.gz").dataobj)
        assert entry["prompt_mask_voxels"] == int(own.sum())
        assert entry["prompt_mask_volume_ml"] == pytest.approx(own.sum() * voxel_ml, rel=1e-5)
    assert legend["labels"][2]["prompt_mask_voxels"] == int(tumor.sum())
    summary = [r for r in legend["summary_rows"] if r["prompt"] == "tumor"]
    assert summary[0]["voxels"] == 0 and summary[0]["prompt_mask_voxels"] == int(tumor.sum())
    line = next(m for m in caplog.messages if "'tumor'" in m and "voxels" in m)
    assert line.startswith("  2 = 'tumor': 0 voxels, 0.00 ml in the label map") and f"{tumor.sum()} voxels" in line


@pytest.mark.parametrize(("named", "cleaned"), [(["Liver"], ["liver"]), (["TUMOR"], ["tumor"])])
def test_largest_component_for_named_concepts_only(tmp_path, tiny_config, volume_file, injected, named, cleaned):
    """--largest-component CONCEPT: only the named prompt loses its stray component; the legend says which."""
    out = tmp_path / "seg"
    args = ["--config", tiny_config, "--image", volume_file, "--prompt", *PROMPTS, "--weights", "none"]
    args += ["--window", "500,1000", "--montage", 0, "-q"]
    assert run_cli(*args, "--output-dir", out, "--largest-component", *named) == 0
    liver, _, stray, tumor = structures()
    expected = np.zeros(SHAPE, np.uint8)
    expected[liver if "liver" in cleaned else liver | stray] = 1  # the stray 'liver' component goes if named
    expected[tumor] = 2
    np.testing.assert_array_equal(np.asarray(nib.load(out / "labels.nii.gz").dataobj), expected)
    assert json.loads((out / "legend.json").read_text())["largest_component"] == cleaned


def test_largest_component_typo_is_refused_before_the_model_loads(tmp_path, tiny_config, volume_file, capsys):
    out = tmp_path / "seg"
    rc = run_cli("--config", tiny_config, "--image", volume_file, "--prompt", *PROMPTS, "--weights", "none",
                 "--output-dir", out, "--largest-component", "livr")  # fmt: skip
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "'livr'" in err and "liver, tumor" in err


def test_weights_recording_the_clean_up_apply_it_unless_told_not_to(tmp_path, tiny_config, volume_file, injected):
    """Weights that record ``largest_component`` (the demo: its organs) get it by default, for the recorded
    concepts among the prompts only; --no-largest-component turns it off; the two flags together are refused."""
    from tests.conftest import save_tiny_adapter

    adapter = save_tiny_adapter(tiny_config, tmp_path / "adapter", {"largest_component": ["Liver", "spleen"]})
    args = ["--config", tiny_config, "--image", volume_file, "--prompt", *PROMPTS, "--weights", adapter]
    args += ["--window", "500,1000", "--montage", 0, "-q"]
    liver, _, stray, tumor = structures()
    for flags, cleaned in (([], ["liver"]), (["--no-largest-component"], False)):
        out = tmp_path / f"seg{len(flags)}"
        assert run_cli(*args, "--output-dir", out, *flags) == 0
        expected = np.zeros(SHAPE, np.uint8)
        expected[liver if cleaned else liver | stray] = 1
        expected[tumor] = 2
        np.testing.assert_array_equal(np.asarray(nib.load(out / "labels.nii.gz").dataobj), expected)
        assert json.loads((out / "legend.json").read_text())["largest_component"] == cleaned
    both = tmp_path / "both"
    assert run_cli(*args, "--output-dir", both, "--largest-component", "--no-largest-component") == 2
    assert not both.exists()
