"""Video readers: files, GIF, frame folders and DICOM cine give the frames, size and fps they hold."""

import cv2
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsam3.io.video import VideoReadError, is_video_path, open_video


def frames_rgb(n, h=48, w=64):
    out = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[..., 0] = 200  # red: catches BGR/RGB swaps
        f[: 4 + 4 * i, :, 1] = 255  # a green band that grows with the frame index
        out.append(f)
    return out


def test_mp4_frames_size_fps_and_channel_order(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (64, 48))
    for f in frames_rgb(7):
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    src = open_video(path)
    assert (src.kind, src.fps, src.n_frames, src.height, src.width) == ("video", 15.0, 7, 48, 64)
    frames = list(src.frames())
    assert len(frames) == 7 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert frames[0][30, 5, 0] > 150 and frames[0][30, 5, 2] < 60  # red stays red
    assert frames[6][20, 5, 1] > 150 and frames[0][20, 5, 1] < 100  # frames come in order
    assert is_video_path(path)


def test_animated_gif(tmp_path):
    path = tmp_path / "loop.gif"
    imgs = [Image.fromarray(f) for f in frames_rgb(5)]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=50, loop=0)
    src = open_video(path)
    assert src.kind == "gif" and src.fps == pytest.approx(20.0) and len(list(src.frames())) == 5


def test_frame_folder_in_natural_order(tmp_path):
    for i, f in enumerate(frames_rgb(11)):
        Image.fromarray(f).save(tmp_path / f"frame{i}.png")  # frame10 must come after frame9
    src = open_video(tmp_path)
    frames = list(src.frames())
    assert src.kind == "frames" and src.n_frames == 11 and len(frames) == 11
    bands = [int((f[:, 5, 1] > 150).sum()) for f in frames]
    assert bands == sorted(bands) and bands[-1] == 44
    assert is_video_path(tmp_path)


def write_cine(path, frames, photometric="MONOCHROME2", frame_time="40"):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.NumberOfFrames = len(frames)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    if frame_time is not None:
        ds.FrameTime = frame_time
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_cine_gray_and_rgb_with_frame_time(tmp_path):
    rgb = np.stack(frames_rgb(4))
    src = open_video(write_cine(tmp_path / "us_rgb.dcm", rgb, "RGB"))
    got = list(src.frames())
    assert (src.kind, src.fps, src.n_frames) == ("dicom", pytest.approx(25.0), 4)
    np.testing.assert_array_equal(np.stack(got), rgb)
    gray = rgb[..., 1]
    src = open_video(write_cine(tmp_path / "us_gray.dcm", gray, frame_time=None))
    got = list(src.frames())
    assert src.fps == 25.0 and len(got) == 4 and got[0].shape == (48, 64, 3)
    np.testing.assert_array_equal(got[2][..., 0], gray[2])  # 8-bit gray passes unchanged


def test_bad_inputs_say_what_and_how(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    with pytest.raises(VideoReadError, match="notes.mp4.*Fix:"):
        open_video(fake)
    with pytest.raises(VideoReadError, match="not a video format"):
        open_video(_touch(tmp_path / "x.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="no image frames"):
        open_video(empty)
    with pytest.raises(FileNotFoundError):
        open_video(tmp_path / "missing.mp4")


def _touch(path):
    path.write_text("x")
    return path
