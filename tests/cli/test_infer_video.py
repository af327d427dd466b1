"""``infer_sam.py --video`` and ``--propagate`` end to end on the tiny random SAM3 video model."""

import csv
import json

import cv2
import nibabel as nib
import numpy as np
import pytest

from medsam3.cli.infer import main
from medsam3.outputs import decode_rle
from tests.conftest import video_cli_args, write_disc_video


def test_video_end_to_end(tmp_path, tiny_video_checkpoint):
    video = write_disc_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    assert main(["--video", str(video), "--prompt", "liver", "tumor", *video_cli_args(tiny_video_checkpoint, out)]) == 0
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (96, 72)
    data = json.loads((out / "tracks.json").read_text())
    assert data["complete"] is True and data["n_frames"] == 6 and data["fps"] == pytest.approx(12.0)
    assert [f["frame_index"] for f in data["frames"]] == list(range(6))  # every frame has an entry
    prompt_of = {}
    for frame in data["frames"]:
        for obj in frame["objects"]:
            assert prompt_of.setdefault(obj["object_id"], obj["prompt"]) == obj["prompt"]
            mask = decode_rle(obj["segmentation"])
            assert mask.shape == (72, 96) and int(mask.sum()) == obj["area"]
    assert prompt_of and set(data["objects"]) == {str(k) for k in prompt_of}
    rows = list(csv.DictReader((out / "tracks.csv").open()))
    assert len(rows) == sum(len(f["objects"]) for f in data["frames"])
    assert {r["object_id"] for r in rows} == {str(k) for k in prompt_of}


def test_image_flag_with_a_video_file_tracks_too(tmp_path, tiny_video_checkpoint):
    video = write_disc_video(tmp_path / "clip.mp4", n=3)
    out = tmp_path / "out"
    assert main(["--image", str(video), "--prompt", "liver", *video_cli_args(tiny_video_checkpoint, out)]) == 0
    assert json.loads((out / "tracks.json").read_text())["n_frames"] == 3


def test_nothing_found_is_an_empty_result_not_an_error(tmp_path, tiny_video_checkpoint, caplog):
    video = write_disc_video(tmp_path / "clip.mp4", n=3)
    out = tmp_path / "out"
    assert main(["--video", str(video), "--prompt", "liver", *video_cli_args(tiny_video_checkpoint, out, "1.0")]) == 0
    data = json.loads((out / "tracks.json").read_text())
    assert data["n_frames"] == 3 and all(f["objects"] == [] for f in data["frames"]) and data["objects"] == {}
    assert "no object found for 'liver'" in caplog.text
    assert int(cv2.VideoCapture(str(out / "overlay.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_bad_video_is_one_line_and_exit_2(tmp_path, tiny_video_checkpoint, capsys):
    fake = tmp_path / "clip.mp4"
    fake.write_text("not a video")
    assert (
        main(["--video", str(fake), "--prompt", "liver", *video_cli_args(tiny_video_checkpoint, tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("infer_sam.py: error: Cannot read") and "clip.mp4" in err[0]
    image_only = tmp_path / "image_only"
    from medsam3.testing import build_tiny_checkpoint

    build_tiny_checkpoint(image_only)
    video = write_disc_video(tmp_path / "ok.mp4", n=2)
    assert main(["--video", str(video), "--prompt", "liver", *video_cli_args(image_only, tmp_path / "o2")]) == 2
    assert "without SAM3's tracker" in capsys.readouterr().err


def test_propagate_writes_label_map_aligned_with_the_input(tmp_path, tiny_video_checkpoint):
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    data = np.zeros((40, 30, 5), np.float32)
    data[10:25, 8:20, 1:4] = 800
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    out = tmp_path / "seg"
    args = ["--image", str(path), "--propagate", "--prompt", "liver", *video_cli_args(tiny_video_checkpoint, out)]
    assert main(args) == 0
    labels = nib.load(out / "labels.nii.gz")
    assert labels.shape == data.shape
    np.testing.assert_allclose(labels.affine, affine)
    tracks = json.loads((out / "tracks.json").read_text())
    assert sorted(f["frame_index"] for f in tracks["frames"]) == list(range(5))
    legend = json.loads((out / "legend.json").read_text())
    assert legend["labels"][0]["prompt"] == "liver"
    assert legend["labels"][0]["voxels"] == int((np.asarray(labels.dataobj) == 1).sum())


def test_propagate_needs_a_volume(tmp_path, tiny_video_checkpoint, capsys):
    video = write_disc_video(tmp_path / "clip.mp4", n=2)
    assert (
        main(
            [
                "--video",
                str(video),
                "--propagate",
                "--prompt",
                "liver",
                *video_cli_args(tiny_video_checkpoint, tmp_path),
            ]
        )
        == 2
    )
    assert "--propagate tracks through the slices of a volume" in capsys.readouterr().err
