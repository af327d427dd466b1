"""2D raster files: bit depths, colour modes, alpha, palettes, orientation."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from medsam3.io import ImageReadError, load_image2d, read_rgb
from medsam3.io.images import orient_array

GRADIENT16 = np.linspace(0, 4000, 64 * 48).reshape(64, 48).astype(np.uint16)


def _assert_scaled_not_clipped(img):
    rgb = img.rgb
    assert rgb.dtype == np.uint8 and rgb.shape == (*GRADIENT16.shape, 3)
    gray = rgb[..., 0].astype(int)
    assert gray.min() == 0 and gray.max() == 255
    assert np.all(np.diff(gray.ravel()) >= 0)  # monotonic in the stored values
    assert (gray == 255).mean() < 0.02  # values > 255 are scaled, not clipped to white
    assert "percentile scaling" in img.intensity
    np.testing.assert_array_equal(img.raw, GRADIENT16)  # raw keeps the 16-bit values


def test_16bit_png(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(GRADIENT16).save(path)
    _assert_scaled_not_clipped(load_image2d(path))


def test_16bit_tiff(tmp_path):
    path = tmp_path / "g16.tif"
    tifffile.imwrite(path, GRADIENT16)
    _assert_scaled_not_clipped(load_image2d(path))


def test_16bit_rgb_png_keeps_16_bits(tmp_path):
    import cv2

    rgb16 = np.stack([GRADIENT16, GRADIENT16 // 2, 4000 - GRADIENT16], axis=-1)
    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR
    img = load_image2d(path)
    np.testing.assert_array_equal(img.raw, rgb16)  # Pillow alone would truncate to 8 bit
    assert img.rgb[..., 0].max() == 255 and img.rgb[..., 2].max() == 255


def test_float_and_rgb_tiff(tmp_path):
    f = (GRADIENT16.astype(np.float32) / 4000.0) - 0.25
    tifffile.imwrite(tmp_path / "f.tif", f)
    img = load_image2d(tmp_path / "f.tif")
    assert img.raw.dtype == np.float32 and img.rgb.max() == 255 and img.rgb.min() == 0

    rgb = np.random.default_rng(1).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb.tif"), rgb)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_rgb(tmp_path / "planar.tif"), rgb)


def test_multipage_tiff_is_rejected_clearly(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((5, 8, 8), dtype=np.uint16), photometric="minisblack")
    with pytest.raises(ImageReadError, match="several images") as info:
        read_rgb(path)
    assert "stack.tif" in str(info.value)


def test_miniswhite_tiff_is_inverted(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    tifffile.imwrite(tmp_path / "w.tif", gray, photometric="miniswhite")
    img = load_image2d(tmp_path / "w.tif")
    np.testing.assert_array_equal(img.rgb[..., 0], 255 - gray)
    assert "inverted" in img.intensity


def test_palette_png_is_converted(tmp_path):
    index = np.arange(64, dtype=np.uint8).reshape(8, 8) % 4
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]
    im = Image.fromarray(index, mode="P")
    im.putpalette(palette + [0] * (768 - len(palette)))
    path = tmp_path / "pal.png"
    im.save(path)
    img = load_image2d(path)
    expected = np.array(palette, dtype=np.uint8).reshape(4, 3)[index]
    np.testing.assert_array_equal(img.rgb, expected)
    assert img.meta["palette"] == "converted to RGB"
    assert img.intensity == "8-bit RGB unchanged"


def test_palette_png_with_transparency_is_composited(tmp_path):
    index = np.array([[0, 1]], dtype=np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette([200, 100, 50, 10, 20, 30] + [0] * 762)
    im.info["transparency"] = 0
    path = tmp_path / "pal_t.png"
    im.save(path, transparency=0)
    out = read_rgb(path)
    assert out[0, 0].tolist() == [0, 0, 0]  # fully transparent -> black
    assert out[0, 1].tolist() == [10, 20, 30]


def test_rgba_composite_or_drop(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[..., 3] = [[255, 0], [128, 255]]
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    comp = load_image2d(path)
    assert comp.rgb[0, 0].tolist() == [200, 100, 50]
    assert comp.rgb[0, 1].tolist() == [0, 0, 0]
    assert comp.rgb[1, 0].tolist() == [100, 50, 25]
    assert comp.meta["alpha"] == "composited over black"
    dropped = load_image2d(path, alpha="drop")
    assert np.all(dropped.rgb == [200, 100, 50])
    # An opaque alpha channel is simply ignored.
    rgba[..., 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(path)
    assert np.all(read_rgb(path) == [200, 100, 50])


def test_la_and_1bit_and_bmp(tmp_path):
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[..., 0], la[..., 1] = 100, 255
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert np.all(read_rgb(tmp_path / "la.png") == 100)
    bits = np.array([[0, 1], [1, 0]], dtype=bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert read_rgb(tmp_path / "b.png")[..., 0].tolist() == [[0, 255], [255, 0]]
    rgb = np.random.default_rng(2).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.bmp")
    np.testing.assert_array_equal(read_rgb(tmp_path / "x.bmp"), rgb)


def _marked_image() -> np.ndarray:
    """40x60 gray with a red block in the top-left corner (orientation is visible)."""
    img = np.full((40, 60, 3), 128, dtype=np.uint8)
    img[:10, :10] = [255, 0, 0]
    return img


def test_exif_rotated_jpeg(tmp_path):
    stored = _marked_image()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    img = load_image2d(path)
    assert img.rgb.shape == (60, 40, 3)
    assert img.meta["exif_orientation"] == 6
    # 90 deg clockwise: the top-left block ends up top-right.
    top_right = img.rgb[:10, -10:].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1] < 60
    assert np.abs(img.rgb.astype(int) - np.rot90(stored, -1)).mean() < 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(tmp_path, orientation):
    stored = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3) * 5
    im = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    im.save(path, exif=exif)
    with Image.open(path) as reopened:
        expected = np.asarray(ImageOps.exif_transpose(reopened).convert("RGB"))
    np.testing.assert_array_equal(orient_array(stored, orientation), expected)
    np.testing.assert_array_equal(read_rgb(path), expected)


def test_tiff_orientation_tag(tmp_path):
    stored = _marked_image()
    path = tmp_path / "o.tif"
    tifffile.imwrite(path, stored, photometric="rgb", extratags=[(274, "H", 1, 8, True)])
    out = read_rgb(path)
    np.testing.assert_array_equal(out, np.rot90(stored, 1))


def test_signed_16bit_tiff_with_hu_values_gets_ct_window(tmp_path):
    hu = np.full((32, 32), -1000, dtype=np.int16)
    hu[8:24, 8:24] = 40
    tifffile.imwrite(tmp_path / "ct.tif", hu)
    img = load_image2d(tmp_path / "ct.tif")
    assert img.intensity.startswith("CT window soft_tissue (L40 W400)")
    assert img.rgb[16, 16, 0] == 128 and img.rgb[0, 0, 0] == 0
