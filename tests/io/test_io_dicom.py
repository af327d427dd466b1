"""DICOM: HU via pydicom's own LUT, MONOCHROME1, codecs, multi-frame files, series folders."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from medsam3.io import ImageReadError, MissingCodecError, is_volume_path, load_image2d, load_volume, read_rgb

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _ras(lps) -> np.ndarray:
    return LPS_TO_RAS @ np.asarray(lps, dtype=float)


# --- single images ---------------------------------------------------------------------------


def test_ct_small_hu_matches_pydicom(dicom_file):
    path = dicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    img = load_image2d(path)
    assert img.raw.dtype == np.float32
    np.testing.assert_array_equal(img.raw, expected)
    assert img.raw.min() < 0 < img.raw.max()  # really HU, not stored values
    assert img.spacing == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    assert img.intensity == "CT window soft_tissue (L40 W400)"
    assert img.meta["modality"] == "CT"


def test_mr_small_uses_percentiles(dicom_file):
    path = dicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    img = load_image2d(path)
    np.testing.assert_array_equal(img.raw, apply_modality_lut(ds.pixel_array, ds))
    assert img.intensity.startswith("MR percentile scaling p0.5-p99.5")
    assert img.rgb.min() == 0 and img.rgb.max() == 255


@pytest.mark.parametrize(
    ("name", "uid"),
    [
        ("MR_small_RLE.dcm", RLELossless),
        ("MR_small_jp2klossless.dcm", JPEG2000Lossless),
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
    ],
)
def test_lossless_compressed_variants_decode_identically(dicom_file, need_decoder, name, uid):
    need_decoder(uid)
    reference = load_image2d(dicom_file("MR_small.dcm"))
    img = load_image2d(dicom_file(name))
    assert pydicom.dcmread(dicom_file(name), stop_before_pixels=True).file_meta.TransferSyntaxUID == uid
    np.testing.assert_array_equal(img.raw, reference.raw)
    np.testing.assert_array_equal(img.rgb, reference.rgb)


def test_lossy_jpeg2000_single_frame(dicom_file, need_decoder):
    need_decoder(pydicom.uid.JPEG2000)
    img = load_image2d(dicom_file("JPEG2000.dcm"))
    assert img.rgb.shape == (1024, 256, 3) and img.meta["modality"] == "NM"


def test_missing_codec_names_the_package(dicom_file, monkeypatch):
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})  # as if no JPEG 2000 plugin were installed
    path = dicom_file("MR_small_jp2klossless.dcm")
    with pytest.raises(MissingCodecError) as info:
        read_rgb(path)
    message = str(info.value)
    assert str(path) in message
    assert "JPEG 2000" in message
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in message
    assert isinstance(info.value, ImageReadError) and isinstance(info.value, ValueError)


def test_jpeg_lossless_process14_decodes_or_names_the_package(dicom_file):
    """SC_rgb_jpeg_gdcm.dcm is JPEG Lossless SV1; its decoder (gdcm / pylibjpeg-libjpeg) is optional."""
    path = dicom_file("SC_rgb_jpeg_gdcm.dcm")
    if get_decoder(JPEGLosslessSV1).is_available:
        assert read_rgb(path).shape == (100, 100, 3)
    else:
        with pytest.raises(MissingCodecError, match="pip install python-gdcm"):
            read_rgb(path)


def test_monochrome1_synthetic_copy_is_inverted(dicom_file, tmp_path):
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    normal = load_image2d(dicom_file("CT_small.dcm"))
    inverted = load_image2d(path)
    np.testing.assert_array_equal(inverted.raw, normal.raw)  # raw intensities unchanged
    np.testing.assert_array_equal(inverted.rgb, 255 - normal.rgb)
    assert inverted.intensity == "CT window soft_tissue (L40 W400), MONOCHROME1 inverted"


def test_monochrome1_real_radiograph(dicom_file, need_decoder):
    need_decoder(JPEG2000Lossless)
    path = dicom_file("RG3_J2KR.dcm")  # CR, MONOCHROME1, JPEG 2000 lossless (pydicom-data)
    img = load_image2d(path)
    assert img.meta["photometric"] == "MONOCHROME1"
    assert img.intensity.endswith("MONOCHROME1 inverted")
    lo, hi = np.percentile(img.raw, [0.5, 99.5])
    darkest_raw = img.raw >= hi  # highest stored values display as black
    assert img.rgb[darkest_raw].max() == 0
    assert img.rgb[img.raw <= lo].min() == 255


def test_colour_and_palette_dicom(dicom_file):
    pal = load_image2d(dicom_file("examples_palette.dcm"))
    assert pal.rgb.shape == (350, 800, 3) and pal.intensity == "8-bit RGB unchanged"
    ybr = load_image2d(dicom_file("SC_rgb_dcmtk_+eb+cy+np.dcm"))  # YBR_FULL_422 JPEG -> RGB
    rgb = load_image2d(dicom_file("SC_rgb.dcm")) if _has("SC_rgb.dcm") else None
    assert ybr.rgb.shape == (100, 100, 3)
    if rgb is not None:
        assert np.abs(ybr.rgb.astype(int) - rgb.rgb.astype(int)).mean() < 5  # lossy JPEG of the same picture


def _has(name: str) -> bool:
    from pydicom.data import get_testdata_file

    return get_testdata_file(name, download=False) is not None


def test_multiframe_is_a_volume_not_a_2d_image(dicom_file):
    path = dicom_file("emri_small.dcm")
    assert is_volume_path(path)
    assert not is_volume_path(dicom_file("CT_small.dcm"))
    with pytest.raises(ImageReadError, match="load_volume"):
        read_rgb(path)


def test_truncated_and_non_image_dicom(dicom_file):
    with pytest.raises(ImageReadError, match="truncated") as info:
        read_rgb(dicom_file("MR_truncated.dcm"))
    assert info.value.__cause__ is not None  # chained, not swallowed
    with pytest.raises(ImageReadError, match="RT Structure Set"):
        read_rgb(dicom_file("rtstruct.dcm"))


# --- multi-frame files -------------------------------------------------------------------------


def test_multiframe_mr_volume(dicom_file):
    path = dicom_file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    vol = load_volume(path)
    frames = apply_modality_lut(ds.pixel_array, ds)
    assert vol.shape == (64, 64, 10) and vol.data.dtype == np.float32
    for k in range(10):
        np.testing.assert_array_equal(vol.data[:, :, k], frames[k].T)
        np.testing.assert_array_equal(vol.slice_raw(k), frames[k])  # display = stored frame
    assert vol.modality == "MR" and vol.meta["sorted_by"] == "stored frame order"
    assert vol.spacing[2] == pytest.approx(1.2)  # SpacingBetweenSlices; no positions in this file
    assert vol.intensity.kind == "percentile"


def test_multiframe_compressed_matches_uncompressed(dicom_file, need_decoder):
    need_decoder(JPEG2000Lossless)
    a = load_volume(dicom_file("emri_small.dcm"))
    b = load_volume(dicom_file("emri_small_jpeg_2k_lossless.dcm"))
    np.testing.assert_array_equal(a.data, b.data)


def test_enhanced_ct_functional_groups(dicom_file):
    """eCT_Supplemental.dcm: 2 frames, per-frame positions, shared orientation and rescale."""
    path = dicom_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    vol = load_volume(path)
    assert vol.modality == "CT" and vol.shape == (512, 512, 2)
    positions = [
        np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in ds.PerFrameFunctionalGroupsSequence
    ]
    iop = np.array(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort([p @ normal for p in positions])
    assert list(order) == vol.meta["frame_order"] == [1, 0]  # frames are stored against the normal
    pvt = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    lut = pydicom.Dataset()
    lut.RescaleSlope, lut.RescaleIntercept = pvt.RescaleSlope, pvt.RescaleIntercept
    for k, frame_index in enumerate(order):
        np.testing.assert_array_equal(vol.data[:, :, k], apply_modality_lut(ds.pixel_array[frame_index], lut).T)
        np.testing.assert_allclose(vol.affine @ [0, 0, k, 1], [*_ras(positions[frame_index]), 1])
    ps = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert vol.spacing == pytest.approx((float(ps[1]), float(ps[0]), 10.0))
    assert vol.intensity.description == "CT window soft_tissue (L40 W400)"


def test_rtdose_grid_frame_offsets(dicom_file):
    path = dicom_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    vol = load_volume(path)
    assert vol.shape == (10, 10, 15)
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    ipp = np.array(ds.ImagePositionPatient, float)
    for k in (0, 7, 14):
        np.testing.assert_allclose(vol.affine @ [0, 0, k, 1], [*_ras(ipp + [0, 0, offsets[k]]), 1])


# --- series folders ----------------------------------------------------------------------------


def test_series_sorted_by_position_not_name_or_instance(make_ct_series):
    folder, hus, positions = make_ct_series(n=6, spacing=2.5)
    vol = load_volume(folder)
    assert is_volume_path(folder)
    assert vol.shape == (100, 128, 6)  # (columns, rows, slices)
    assert vol.meta["sorted_by"] == "ImagePositionPatient"
    ds = pydicom.dcmread(next(folder.iterdir()))
    dr, dc = (float(v) for v in ds.PixelSpacing)
    assert vol.spacing == pytest.approx((dc, dr, 2.5))
    for k in range(6):
        np.testing.assert_array_equal(vol.data[:, :, k], hus[k].T)
        np.testing.assert_array_equal(vol.slice_raw(k), hus[k])  # axial display = the DICOM image
        np.testing.assert_allclose(vol.affine @ [0, 0, k, 1], [*_ras(positions[k]), 1])
    # Voxel (i=column, j=row) of slice 0 lands where DICOM says pixel (row j, column i) is.
    i, j = 7, 11
    expected = positions[0] + i * dc * np.array([1, 0, 0]) + j * dr * np.array([0, 1, 0])
    np.testing.assert_allclose(vol.affine @ [i, j, 0, 1], [*_ras(expected), 1])
    assert vol.modality == "CT" and vol.intensity.description == "CT window soft_tissue (L40 W400)"


def test_oblique_coronal_series_sorted_along_normal(make_ct_series):
    iop = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # coronal: normal is +y (posterior)
    folder, hus, positions = make_ct_series(n=4, iop=iop, spacing=3.0)
    vol = load_volume(folder)
    for k in range(4):
        np.testing.assert_array_equal(vol.data[:, :, k], hus[k].T)
        np.testing.assert_allclose(vol.affine @ [0, 0, k, 1], [*_ras(positions[k]), 1])
    geo = vol.slice_geometry()
    assert geo.plane == "coronal"
    np.testing.assert_array_equal(vol.slice_raw(2), hus[2])  # superior at top, as stored


def test_series_without_positions_falls_back_to_instance_number(make_ct_series, caplog):
    folder, hus, _ = make_ct_series(n=4, drop_position=True)
    with caplog.at_level(logging.WARNING, logger="medsam3.io"):
        vol = load_volume(folder)
    assert "InstanceNumber" in caplog.text
    assert vol.meta["sorted_by"] == "InstanceNumber"
    # InstanceNumber runs backwards in the fixture, so slice 0 is the last written.
    np.testing.assert_array_equal(vol.data[:, :, 0], hus[3].T)


def test_series_gap_warns_about_uneven_spacing(make_ct_series, caplog):
    folder, _, _ = make_ct_series(n=6, skip=(3,))
    with caplog.at_level(logging.WARNING, logger="medsam3.io"):
        vol = load_volume(folder)
    assert vol.shape[2] == 5
    assert "not uniform" in caplog.text


def test_series_duplicate_positions_is_an_error(make_ct_series, tmp_path):
    folder, _, _ = make_ct_series(n=3)
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "duplicate.dcm")
    with pytest.raises(ImageReadError, match="same position"):
        load_volume(folder)


def test_folder_with_two_series_and_junk(make_ct_series, tmp_path):
    folder, _, _ = make_ct_series(n=3, series_uid="1.2.3.4.1")
    make_ct_series(n=2, series_uid="1.2.3.4.2", origin=(0.0, 0.0, 500.0), prefix="B")  # same folder, second series
    (folder / "README.txt").write_text("not an image")
    with pytest.raises(ImageReadError, match="2 DICOM series") as info:
        load_volume(folder)
    assert "1.2.3.4.1" in str(info.value) and "series_uid" in str(info.value)
    assert load_volume(folder, series_uid="1.2.3.4.2").shape[2] == 2
    assert load_volume(folder, series_uid="1.2.3.4.1").shape[2] == 3


def test_empty_or_non_dicom_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="no DICOM image files"):
        load_volume(tmp_path)


def test_single_file_folder_and_single_slice_volume(dicom_file, tmp_path):
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    (tmp_path / "one").mkdir()
    ds.save_as(tmp_path / "one" / "slice.dcm")
    vol = load_volume(tmp_path / "one")
    assert vol.shape == (128, 128, 1)
    assert vol.spacing[2] == pytest.approx(5.0)  # SpacingBetweenSlices / SliceThickness
    np.testing.assert_array_equal(vol.slice_rgb(0), read_rgb(dicom_file("CT_small.dcm")))


def test_colour_multiframe_is_not_a_volume(dicom_file):
    with pytest.raises(ImageReadError, match="colour DICOM"):
        load_volume(dicom_file("SC_rgb_rle_2frame.dcm"))


def test_file_window_option(dicom_file, tmp_path):
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds = copy.deepcopy(ds)
    ds.WindowCenter, ds.WindowWidth = 50, 350
    ds.save_as(tmp_path / "w.dcm")
    img = load_image2d(tmp_path / "w.dcm", window="dicom")
    assert "L50 W350" in img.intensity
