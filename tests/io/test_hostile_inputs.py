"""Inputs the fuzzer (scripts/fuzz_inputs.py) found or that attack the readers' sizes: each is refused
with an ImageReadError (a UserError) naming the file, before any large allocation."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsam3.errors import UserError
from medsam3.io import ImageReadError, load_image2d, load_volume, read_rgb
from medsam3.io.errors import printable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fuzz"


def _testfile(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


def _dicom(tmp_path: Path, name: str = "CT_small.dcm", **changes) -> Path:
    import pydicom

    ds = pydicom.dcmread(_testfile(name))
    meta = changes.pop("file_meta", {})
    for key, value in changes.items():
        setattr(ds, key, value)
    for key, value in meta.items():
        setattr(ds.file_meta, key, value)
    out = tmp_path / f"edited_{name}"
    ds.save_as(out)
    return out


def test_unknown_value_representation_found_by_the_fuzzer():
    """pydicom parses elements lazily and raised NotImplementedError deep in our reader."""
    with pytest.raises(ImageReadError, match="corrupt DICOM data .*Unknown Value Representation"):
        load_image2d(FIXTURES / "unknown_vr.dcm")


def test_transfer_syntax_that_is_not_one(tmp_path):
    """A corrupt TransferSyntaxUID made pydicom raise 'UID is not a transfer syntax' (ValueError)."""
    import pydicom

    src = _testfile("CT_small.dcm")
    data = bytearray(src.read_bytes())
    uid = b"1.2.840.10008.1.2.1"
    at = data.find(uid)
    data[at : at + len(uid)] = b"1.2.840.10008.5.1.4"[: len(uid)].ljust(len(uid), b"9")
    path = tmp_path / "bad_ts.dcm"
    path.write_bytes(bytes(data))
    assert not pydicom.dcmread(path).file_meta.TransferSyntaxUID.is_transfer_syntax
    with pytest.raises(ImageReadError, match="not a DICOM transfer syntax UID"):
        read_rgb(path)


def test_rle_decoder_panic_is_a_user_error(tmp_path):
    """pylibjpeg-rle (Rust) panics on a bad segment offset; pyo3's PanicException is a BaseException,
    so it went through `except Exception` and killed the process (found by the fuzzer)."""
    pytest.importorskip("rle")
    raw = bytearray(_testfile("MR_small_RLE.dcm").read_bytes())
    import pydicom

    pixel_data = bytes(pydicom.dcmread(io.BytesIO(bytes(raw))).PixelData)
    start = raw.find(pixel_data[:16])
    rle_header = start + 8 + struct.unpack_from("<I", pixel_data, 4)[0] + 8  # after the offset table item
    struct.pack_into("<I", raw, rle_header + 8, 65)  # the 2nd segment starts inside the 64-byte header
    path = tmp_path / "rle_panic.dcm"
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match="decoder failed"):
        read_rgb(path)


def test_dicom_declaring_a_huge_image_is_refused_before_decoding(tmp_path):
    path = _dicom(tmp_path, Rows=65535, Columns=65535, NumberOfFrames=1000)
    with pytest.raises(ImageReadError, match="over the 2.0 GiB limit"):
        load_volume(path)


def _nifti_header(shape, dtype=np.float32) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\0" * 4


def test_nifti_declaring_a_huge_volume_is_refused(tmp_path):
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(_nifti_header((4096, 4096, 4096)) + b"\0" * 1024))
    with pytest.raises(ImageReadError, match="over the 2.0 GiB limit") as info:
        load_volume(path)
    assert str(path) in str(info.value)


def test_nifti_shorter_than_its_header_says_is_refused_before_reading(tmp_path):
    for name, pack in (("short.nii", lambda b: b), ("short.nii.gz", gzip.compress)):
        path = tmp_path / name
        path.write_bytes(pack(_nifti_header((256, 256, 256)) + b"\0" * 4096))  # 64 MiB declared, 4 KiB there
        with pytest.raises(ImageReadError, match="file holds"):
            load_volume(path)


def _png_declaring(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("depth, colour", [(8, 0), (16, 2)], ids=["gray8_pillow", "rgb16_opencv"])
def test_png_declaring_a_huge_image_is_refused(tmp_path, depth, colour):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_declaring(60000, 60000, depth, colour))
    with pytest.raises(ImageReadError) as info:
        read_rgb(path)
    assert "limit" in str(info.value)


def test_tiff_declaring_a_huge_image_is_refused(tmp_path):
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8), np.uint16))
    data = bytearray(buf.getvalue())
    path = tmp_path / "huge.tif"
    # ImageWidth / ImageLength tags (256, 257) of the first IFD: declare 200000 x 200000
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            if kind == 3:
                struct.pack_into("<HHIH", data, entry, tag, 4, 1, 0)
            struct.pack_into("<HHII", data, entry, tag, 4, 1, 200000)
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError):
        read_rgb(path)


def test_messages_from_corrupt_files_are_one_readable_line():
    text = printable("it is a THER\x00\x08\x00DA\x08\x0020040826\n" + "x" * 1000)
    assert "\n" not in text and "\x00" not in text and len(text) <= 400 and text.endswith("...")
    err = ImageReadError("scan.dcm", "bad tag\x00\x01 value\nnext line")
    assert isinstance(err, UserError) and str(err) == "Cannot read 'scan.dcm': bad tag value next line"


def test_tiff_whose_page_chain_loops_is_refused_at_once():
    """Found by the long fuzz run: the next-page offset points back at the first page, and tifffile
    walked the same page forever (231,000 pages in 5 s, logging a warning for each)."""
    import time

    t0 = time.perf_counter()
    with pytest.raises(ImageReadError, match="page chain loops back"):
        read_rgb(FIXTURES / "looping_pages.tif")
    assert time.perf_counter() - t0 < 5


def test_multi_page_and_big_tiffs_still_read(tmp_path):
    import tifffile

    from medsam3.io.images import check_tiff_page_chain

    with tifffile.TiffWriter(tmp_path / "pages.tif") as writer:
        for k in range(3):
            writer.write(np.full((8, 8), k, np.uint8))
    tifffile.imwrite(tmp_path / "big.tif", np.arange(64, dtype=np.uint16).reshape(8, 8), bigtiff=True)
    assert check_tiff_page_chain(tmp_path / "pages.tif") == 3
    assert check_tiff_page_chain(tmp_path / "big.tif") == 1
    assert read_rgb(tmp_path / "big.tif").shape == (8, 8, 3)


def test_tiff_declaring_millions_of_strips_in_a_few_bytes_is_refused_at_once():
    """Found by the long fuzz run: 466 bytes declaring 3 x 8388608 x 8 one-bit pixels; tifffile then
    decoded 3 million strips in Python (25 s of CPU) before failing."""
    import time

    t0 = time.process_time()
    with pytest.raises(ImageReadError, match="values in a 466-byte file"):
        read_rgb(FIXTURES / "strip_bomb.tif")
    assert time.process_time() - t0 < 2


def test_series_slice_with_a_value_of_impossible_length(tmp_path):
    """Found by the long fuzz run: Rows stored with 3 bytes (US needs 2) raised pydicom's
    BytesLengthException while the series reader compared slice sizes."""
    import pydicom
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(_testfile("CT_small.dcm"))
    folder = tmp_path / "series"
    folder.mkdir()
    for k in range(2):
        src.SOPInstanceUID = generate_uid()
        src.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        src.save_as(folder / f"IM{k}.dcm")
    data = bytearray((folder / "IM1.dcm").read_bytes())
    at = data.find(b"\x28\x00\x10\x00US\x02\x00")  # (0028,0010) Rows, explicit VR little endian
    assert at > 0
    data[at + 6 : at + 10] = b"\x03\x00\x80\x00"  # length 3, then one byte too many
    data.insert(at + 10, 0)
    (folder / "IM1.dcm").write_bytes(bytes(data))
    with pytest.raises(ImageReadError):
        load_volume(folder)


def test_nnunet_label_value_infinity_is_a_user_error(tmp_path):
    """Found by scripts/fuzz_inputs.py (nnunet_json): JSON's Infinity as a label value crashed int()."""
    from medsam3.errors import UserError
    from medsam3.io.nnunet import read_dataset

    (tmp_path / "dataset.json").write_text(
        '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": Infinity}, "file_ending": ".nii.gz"}'
    )
    with pytest.raises(UserError, match="label 'liver' has value inf"):
        read_dataset(tmp_path)
