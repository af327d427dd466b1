"""Tracked-video outputs: overlay mp4, JSON with RLE masks, CSV; an interruption keeps finished frames."""

import csv
import json

import cv2
import numpy as np
import pytest

from medsam3.cli.infer import main
from medsam3.io.video import VideoSource
from medsam3.outputs import decode_rle
from medsam3.outputs.video import TrackWriter, object_color
from tests.conftest import video_cli_args, write_disc_video


def test_writer_round_trip(tmp_path):
    rgb = np.full((40, 60, 3), 50, np.uint8)
    mask = np.zeros((1, 40, 60), bool)
    mask[0, 10:20, 5:25] = True
    with TrackWriter(tmp_path, source="x.mp4", fps=10.0, size=(40, 60), prompts=["polyp"]) as writer:
        writer.write(0, rgb, [3], ["polyp"], [0.9], mask)
        writer.write(1, rgb, [], [], [], np.zeros((0, 40, 60), bool))
    data = json.loads((tmp_path / "tracks.json").read_text())
    assert data["complete"] and [len(f["objects"]) for f in data["frames"]] == [1, 0]
    obj = data["frames"][0]["objects"][0]
    assert obj["box_xyxy"] == [5.0, 10.0, 25.0, 20.0] and obj["area"] == 200
    np.testing.assert_array_equal(decode_rle(obj["segmentation"]), mask[0])
    assert data["objects"]["3"] == {"prompt": "polyp", "first_frame": 0, "last_frame": 0, "frames": 1}
    rows = list(csv.DictReader((tmp_path / "tracks.csv").open()))
    assert rows == [
        {"frame": "0", "time_s": "0.0000", "object_id": "3", "prompt": "polyp", "area_px": "200", "score": "0.900000"}
    ]
    cap = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    ok, bgr = cap.read()
    assert ok and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    inside, outside = bgr[15, 15, ::-1].astype(int), bgr[35, 50, ::-1].astype(int)
    colour = np.array(object_color(3))  # red for id 3; mp4 is lossy, so compare distances, not values
    assert colour.argmax() == 0 and inside[0] > inside[1] + 20 and inside[0] > outside[0] + 30
    assert np.abs(outside - 50).max() < 15  # outside the mask the frame is untouched


def test_ctrl_c_keeps_finished_frames_and_exits_130(tmp_path, tiny_video_checkpoint, monkeypatch):
    video = write_disc_video(tmp_path / "clip.mp4", n=6)
    real_frames = VideoSource.frames

    def interrupted(self):
        for i, frame in enumerate(real_frames(self)):
            if i == 3:
                raise KeyboardInterrupt  # what Ctrl-C raises while frame 3 is being read
            yield frame

    monkeypatch.setattr(VideoSource, "frames", interrupted)
    out = tmp_path / "out"
    assert main(["--video", str(video), "--prompt", "liver", *video_cli_args(tiny_video_checkpoint, out)]) == 130
    data = json.loads((out / "tracks.json").read_text())
    assert data["complete"] is False and data["n_frames"] == 3
    assert int(cv2.VideoCapture(str(out / "overlay.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert not list(out.glob(".tmp*"))


@pytest.mark.parametrize("oid", [0, 9, 10])
def test_colours_are_fixed_per_id(oid):
    assert object_color(oid) == object_color(oid + 10)
