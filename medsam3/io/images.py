"""2D raster files (PNG, JPEG, BMP, TIFF) -> numpy, keeping the original bit depth.

Pillow reads PNG/JPEG/BMP and applies the EXIF orientation (phone photos of
light boxes, dermoscopy, endoscopy stills). Two gaps are covered by other
libraries: Pillow silently reduces 16-bit *colour* PNGs to 8 bit, so those go
through OpenCV; and TIFF (microscopy, 16-bit radiographs, float maps, planar
RGB) goes through tifffile, with Pillow as fallback for compressions that
tifffile cannot decode without ``imagecodecs``.

Nothing here scales intensities: this module returns the stored values;
:mod:`medsam3.io.windows` decides how they become uint8.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError, MissingCodecError
from .limits import check_array_size

logger = logging.getLogger(__name__)

AlphaMode = Literal["composite", "drop"]
_EXIF_ORIENTATION = 0x0112


@dataclass
class RasterImage:
    """Stored pixels of a 2D file.

    ``pixels`` is (H, W) for grayscale (any dtype) or (H, W, 3) RGB (uint8,
    uint16 or float). ``bits`` is bits per stored sample; ``invert`` is True
    for min-is-white grayscale (display must be inverted).
    """

    pixels: np.ndarray
    bits: int
    invert: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def orient_array(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF Orientation value (1..8) to a (H, W[, C]) array, like PIL's exif_transpose."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.swapaxes(np.rot90(a, 2), 0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    if orientation not in ops:
        logger.warning("Ignoring invalid orientation value %r", orientation)
        return array
    return np.ascontiguousarray(ops[orientation](array))


def _handle_alpha(rgba: np.ndarray, mode: AlphaMode, max_value: float, meta: dict[str, Any]) -> np.ndarray:
    """(H, W, 4) -> (H, W, 3): composite over black, or drop alpha."""
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if np.all(alpha == max_value):
        meta["alpha"] = "opaque alpha ignored"
        return np.ascontiguousarray(rgb)
    if mode == "drop":
        meta["alpha"] = "alpha dropped"
        return np.ascontiguousarray(rgb)
    if mode != "composite":
        raise ValueError(f"alpha must be 'composite' or 'drop', got {mode!r}")
    meta["alpha"] = "composited over black"
    weight = alpha.astype(np.float32)[..., None] / np.float32(max_value)
    out = rgb.astype(np.float32) * weight
    if np.issubdtype(rgb.dtype, np.integer):
        return np.rint(out).astype(rgb.dtype)
    return out.astype(rgb.dtype)


def _max_value(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def _from_channels(arr: np.ndarray, alpha: AlphaMode, meta: dict[str, Any]) -> np.ndarray:
    """(H, W), (H, W, 1..4) -> (H, W) gray or (H, W, 3) RGB."""
    if arr.ndim == 2:
        return arr
    channels = arr.shape[-1]
    if channels == 1:
        return arr[..., 0]
    if channels == 2:  # gray + alpha
        gray = arr[..., :1]
        rgba = np.concatenate([gray, gray, gray, arr[..., 1:]], axis=-1)
        return _handle_alpha(rgba, alpha, _max_value(arr.dtype), meta)[..., 0]
    if channels == 3:
        return arr
    if channels == 4:
        return _handle_alpha(arr, alpha, _max_value(arr.dtype), meta)
    raise ValueError(f"{channels} channels per pixel")


def _png_16bit_color(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(26)
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6)


def _read_png16_color(path: Path, alpha: AlphaMode) -> RasterImage:
    """16-bit RGB(A) PNG via OpenCV, because Pillow truncates it to 8 bit."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    check_array_size(path, (height, width, 4), 4, "image")
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a dependency of medsam3
        logger.warning("%s is a 16-bit colour PNG; without opencv it is read as 8 bit", path)
        return _read_pil(path, "png", alpha, skip_png16=True)
    buf = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(
            path, "corrupt or truncated 16-bit PNG (OpenCV could not decode it)", "re-export the image"
        )
    meta: dict[str, Any] = {"format": "PNG", "mode": "RGB;16", "reader": "opencv"}
    if arr.ndim == 3 and arr.shape[-1] >= 3:
        arr = arr[..., [2, 1, 0, 3][: arr.shape[-1]]]  # BGR(A) -> RGB(A)
    pixels = _from_channels(arr, alpha, meta)
    return RasterImage(pixels, bits=16, meta=meta)


def _read_pil(path: Path, fmt: str, alpha: AlphaMode, skip_png16: bool = False) -> RasterImage:
    if fmt == "png" and not skip_png16 and _png_16bit_color(path):
        return _read_png16_color(path, alpha)
    name = fmt.upper()
    try:
        with Image.open(path) as opened:
            check_array_size(path, (opened.height, opened.width, len(opened.getbands())), 4, "image")
            opened.load()
            meta: dict[str, Any] = {"format": opened.format, "mode": opened.mode, "reader": "pillow"}
            if getattr(opened, "n_frames", 1) > 1:
                meta["frames"] = opened.n_frames
                logger.warning("%s has %d frames; using the first", path, opened.n_frames)
            orientation = opened.getexif().get(_EXIF_ORIENTATION)
            im = ImageOps.exif_transpose(opened)
            if orientation and orientation != 1:
                meta["exif_orientation"] = int(orientation)
            transparency = "transparency" in opened.info
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError(
            path,
            f"not a valid {name} image (unrecognised or corrupt content)",
            "re-export the image, or check that the extension matches the content",
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            path, f"image is too large for Pillow's safety limit ({exc})", "downsample or tile the image first"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"corrupt or truncated {name} file ({exc})", "re-export the image") from exc

    mode = im.mode
    if mode == "1":
        return RasterImage(np.asarray(im.convert("L")), 8, meta=meta)
    if mode == "L":
        return RasterImage(np.asarray(im), 8, meta=meta)
    if mode.startswith("I;16"):
        return RasterImage(np.asarray(im).astype(np.uint16), 16, meta=meta)
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return RasterImage(arr.astype(np.uint16), 16, meta=meta)
        return RasterImage(arr.astype(np.int32), 32, meta=meta)
    if mode == "F":
        return RasterImage(np.asarray(im, dtype=np.float32), 32, meta=meta)
    if mode in ("P", "PA"):
        meta["palette"] = "converted to RGB"
        im = im.convert("RGBA" if (mode == "PA" or transparency) else "RGB")
    elif mode in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        meta["converted_from"] = mode
        im = im.convert("RGB")
    return RasterImage(_from_channels(np.asarray(im), alpha, meta), 8, meta=meta)


def _needs_codec(exc: BaseException) -> bool:
    return "imagecodecs" in str(exc)


MAX_TIFF_PAGES = 100_000
# Deflate packs at most ~1032:1, 8 one-bit pixels a byte: a TIFF declaring more values per stored byte
# is corrupt (found by the fuzzer: 466 bytes declaring 3 x 8388608 x 8 pixels took 25 s of CPU).
MAX_VALUES_PER_BYTE = 10_000


def check_tiff_page_chain(path: Path) -> int:
    """Walk the TIFF's chain of image directories (IFDs) and return how many there are.

    A corrupt file whose next-IFD offset points back to an earlier one makes tifffile walk the same
    page forever (found by the fuzzer: a TIFF whose next page is itself); this refuses it first.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            return 0  # not a TIFF header: tifffile says what is wrong
        magic = struct.unpack(order + "H", head[2:4])[0]
        big = magic == 43
        if magic not in (42, 43) or (big and len(head) < 16):
            return 0
        count_fmt, entry_size, offset_fmt = (order + "Q", 20, order + "Q") if big else (order + "H", 12, order + "I")
        offset = struct.unpack(offset_fmt, head[8:16] if big else head[4:8])[0]
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise ImageReadError(
                    path, f"the TIFF's page chain loops back to offset {offset}", "the file is corrupt; re-export it"
                )
            if len(seen) >= MAX_TIFF_PAGES or offset + 8 > size:
                break  # tifffile reports a truncated chain itself
            seen.add(offset)
            fh.seek(offset)
            raw = fh.read(struct.calcsize(count_fmt))
            if len(raw) < struct.calcsize(count_fmt):
                break
            fh.seek(offset + len(raw) + struct.unpack(count_fmt, raw)[0] * entry_size)
            raw = fh.read(struct.calcsize(offset_fmt))
            if len(raw) < struct.calcsize(offset_fmt):
                break
            offset = struct.unpack(offset_fmt, raw)[0]
    return len(seen)


def _read_tiff(path: Path, alpha: AlphaMode) -> RasterImage:
    import tifffile

    check_tiff_page_chain(path)

    meta: dict[str, Any] = {"format": "TIFF", "reader": "tifffile"}
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            page = tf.pages.first
            shape, axes = tuple(series.shape), series.axes
            extra = {ax: n for ax, n in zip(axes, shape, strict=True) if ax not in "YXS" and n > 1}
            if extra:
                raise ImageReadError(
                    path,
                    f"TIFF holds several images (axes {axes}, shape {shape}), not one 2D image",
                    "save each plane as its own file (or pass a single-page TIFF)",
                )
            check_array_size(path, shape, max(4, series.dtype.itemsize), "image")
            values, stored = math.prod(shape), max(1, path.stat().st_size)
            if values > MAX_VALUES_PER_BYTE * stored:  # tifffile decodes strip by strip in Python: a CPU bomb
                raise ImageReadError(
                    path,
                    f"the header declares {values} values in a {stored}-byte file (more than deflate can pack)",
                    "the file is corrupt; re-export it",
                )
            arr = series.asarray()
            photometric = int(page.photometric)
            colormap = page.colormap
            orient_tag = page.tags.get("Orientation")
            orientation = int(orient_tag.value) if orient_tag is not None else 1
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises ValueError/TiffFileError/struct.error/... on bad input
        if _needs_codec(exc):
            logger.info("tifffile cannot decode %s without imagecodecs (%s); trying Pillow", path, exc)
            try:
                return _read_pil(path, "tiff", alpha)
            except ImageReadError as pil_exc:
                raise MissingCodecError(
                    path, f"TIFF compression not supported by the installed decoders ({exc})", "pip install imagecodecs"
                ) from pil_exc
        raise ImageReadError(
            path, f"corrupt or unreadable TIFF file ({type(exc).__name__}: {exc})", "re-export the image"
        ) from exc

    # Bring samples ('S') last and drop singleton non-spatial axes.
    squeeze_axes = tuple(i for i, ax in enumerate(axes) if ax not in "YXS")
    if squeeze_axes:
        arr = arr.reshape([n for i, n in enumerate(arr.shape) if i not in squeeze_axes])
    axes_left = "".join(ax for ax in axes if ax in "YXS")
    if "S" in axes_left and axes_left.index("S") != len(axes_left) - 1:
        arr = np.moveaxis(arr, axes_left.index("S"), -1)
    meta["photometric"] = (
        tifffile.PHOTOMETRIC(photometric).name
        if photometric in tifffile.PHOTOMETRIC._value2member_map_
        else photometric
    )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    bits = arr.dtype.itemsize * 8
    invert = False
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None and arr.ndim == 2:
        cmap = np.asarray(colormap)
        cmap8 = np.rint(cmap / 257.0).astype(np.uint8) if cmap.max() > 255 else cmap.astype(np.uint8)
        arr = np.moveaxis(cmap8[:, arr], 0, -1)
        meta["palette"] = "converted to RGB"
        bits = 8
    elif photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        invert = True
    elif photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB) and not (arr.ndim == 2):
        logger.info("TIFF photometric %s not handled by tifffile path; using Pillow for %s", meta["photometric"], path)
        return _read_pil(path, "tiff", alpha)
    if orientation != 1:
        meta["tiff_orientation"] = orientation
        arr = orient_array(arr, orientation)
    try:
        pixels = _from_channels(arr, alpha, meta)
    except ValueError as exc:
        raise ImageReadError(
            path, f"unsupported TIFF layout ({exc}, shape {arr.shape})", "save it as grayscale or RGB"
        ) from exc
    return RasterImage(pixels, bits, invert=invert, meta=meta)


def read_raster(path: Path, fmt: str, *, alpha: AlphaMode = "composite") -> RasterImage:
    """Read a PNG/JPEG/BMP/TIFF file (``fmt`` from :func:`medsam3.io.formats.detect_format`)."""
    if alpha not in ("composite", "drop"):
        raise ValueError(f"alpha must be 'composite' or 'drop', got {alpha!r}")
    if fmt == "tiff":
        return _read_tiff(path, alpha)
    if fmt in ("png", "jpeg", "bmp"):
        return _read_pil(path, fmt, alpha)
    raise ValueError(f"not a raster format: {fmt!r}")
