"""Intensity handling: raw scanner values -> the uint8 the model was trained on.

SAM-family models see 8-bit RGB. Medical data is not 8-bit: CT is in Hounsfield
units (-1024..3071+), MR and 16-bit PNG/TIFF have arbitrary ranges. Everything
here is one linear map ``[low, high] -> [0, 255]`` (clipped), chosen so that:

* CT / HU data gets a clinical window (default ``soft_tissue`` L40 W400);
* MR and other non-calibrated data gets robust percentile scaling
  (0.5th..99.5th percentile), so a few hot voxels do not crush the contrast and
  16-bit inputs are *scaled*, never clipped at 255;
* 8-bit images (natural RGB, 8-bit grayscale) pass through unchanged.

CT window presets (level L / width W in HU; range = L - W/2 .. L + W/2):

============  =====  ======  ==================  ================================
preset        level  width   HU range            note
============  =====  ======  ==================  ================================
soft_tissue      40     400  -160 .. 240         abdomen / general soft tissue
lung           -600    1500  -1350 .. 150        lung parenchyma
bone            400    1800  -500 .. 1300        Radiopaedia's bone window; the
                                                 narrower L300 W1500 is also in
                                                 use -- pass ``(300, 1500)``
brain            40      80  0 .. 80             brain parenchyma
liver            60     160  -20 .. 140          contrast-enhanced (portal
                                                 venous) liver, parenchyma
                                                 ~100 HU; unenhanced liver reads
                                                 better with ``(30, 150)``
============  =====  ======  ==================  ================================

Mapping formula (the one used by most ML pipelines, not DICOM's ``W-1``
variant): ``y = clip((x - (L - W/2)) / W, 0, 1) * 255`` rounded to nearest.
So ``L - W/2 -> 0``, ``L -> 128``, ``L + W/2 -> 255``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import UserError

logger = logging.getLogger(__name__)

#: What callers may pass as ``window``: None/"auto" (choose from metadata), a
#: preset name, "percentile", "dicom" (the file's own WindowCenter/Width),
#: "level,width" as a string, or a ``(level, width)`` pair.
WindowSpec = str | Sequence[float] | None

DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)
DEFAULT_CT_PRESET = "soft_tissue"
# Percentiles are computed on at most this many (strided) samples: exact enough
# for display scaling and keeps a 512x512x600 CT well under a second.
_MAX_SAMPLES = 2_000_000


@dataclass(frozen=True)
class WindowPreset:
    """A named CT window (values in HU)."""

    name: str
    level: float
    width: float
    note: str = ""

    @property
    def low(self) -> float:
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        return self.level + self.width / 2.0


WINDOW_PRESETS: dict[str, WindowPreset] = {
    p.name: p
    for p in (
        WindowPreset("soft_tissue", 40, 400, "abdomen / general soft tissue"),
        WindowPreset("lung", -600, 1500, "lung parenchyma"),
        WindowPreset("bone", 400, 1800, "bone (Radiopaedia); L300 W1500 is a common narrower alternative"),
        WindowPreset("brain", 40, 80, "brain parenchyma"),
        WindowPreset("liver", 60, 160, "contrast-enhanced (portal venous) liver"),
    )
}
_ALIASES = {"softtissue": "soft_tissue", "soft": "soft_tissue", "abdomen": "soft_tissue", "mediastinum": "soft_tissue"}


def _norm_name(name: str) -> str:
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return _ALIASES.get(key, key)


def get_window_preset(name: str) -> WindowPreset:
    """The preset called ``name`` (case-insensitive; '-'/' ' accepted for '_')."""
    key = _norm_name(name)
    if key not in WINDOW_PRESETS:
        raise UserError(f"Unknown CT window preset {name!r}; choose one of {', '.join(WINDOW_PRESETS)}")
    return WINDOW_PRESETS[key]


def _fmt(x: float) -> str:
    """Short number for descriptions: 40.0 -> '40', 12.3456 -> '12.35'."""
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.4g}"


def _linear_to_uint8(array: np.ndarray, low: float, high: float) -> np.ndarray:
    if not high > low:
        return np.zeros(np.shape(array), dtype=np.uint8)
    x = np.asarray(array, dtype=np.float32)
    scale = np.float32(255.0 / (high - low))
    out = (x - np.float32(low)) * scale
    np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(out, 0.0, 255.0, out=out)
    return np.rint(out).astype(np.uint8)


def apply_window(array: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map ``[level - width/2, level + width/2]`` linearly onto uint8 0..255 (clipped).

    Works on any shape; NaN becomes 0. ``width`` must be positive.
    """
    if not width > 0:
        raise UserError(f"window width must be > 0, got {width}")
    return _linear_to_uint8(array, level - width / 2.0, level + width / 2.0)


def _sample(array: np.ndarray, max_samples: int = _MAX_SAMPLES) -> np.ndarray:
    flat = np.asarray(array).reshape(-1)
    if flat.size > max_samples:
        flat = flat[:: math.ceil(flat.size / max_samples)]
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    return flat


def percentile_range(
    array: np.ndarray, lower: float = DEFAULT_PERCENTILES[0], upper: float = DEFAULT_PERCENTILES[1]
) -> tuple[float, float]:
    """(low, high) intensity at the given percentiles, ignoring NaN/inf.

    Falls back to (min, max) when the percentiles coincide (e.g. an image that
    is mostly background), so sparse bright structures still become visible.
    Returns (0, 0) for an empty or all-NaN array.
    """
    if not 0 <= lower < upper <= 100:
        raise UserError(f"need 0 <= lower < upper <= 100, got {lower}, {upper}")
    s = _sample(array)
    if s.size == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(s, [lower, upper]))
    if not hi > lo:
        lo, hi = float(s.min()), float(s.max())
    return lo, hi


def scale_percentiles(
    array: np.ndarray, lower: float = DEFAULT_PERCENTILES[0], upper: float = DEFAULT_PERCENTILES[1]
) -> np.ndarray:
    """Robust contrast stretch to uint8: the ``lower``..``upper`` percentile range -> 0..255."""
    lo, hi = percentile_range(array, lower, upper)
    return _linear_to_uint8(array, lo, hi)


def looks_like_hu(array: np.ndarray) -> bool:
    """Heuristic for data without a modality tag (NIfTI, signed TIFF): is this CT in HU?

    CT volumes contain air (about -1000 HU) or padding (-1024/-2048/-3024),
    while MR / PET / 16-bit photos are (nearly) non-negative. We call it HU
    when the 1st percentile is <= -500 and nothing is below -3100. A CT crop
    without any air is *not* detected -- pass ``modality="CT"`` or a window.
    """
    arr = np.asarray(array)
    if arr.dtype.kind not in "if" or arr.size == 0:
        return False
    s = _sample(arr)
    if s.size == 0:
        return False
    p1 = float(np.percentile(s, 1.0))
    return p1 <= -500.0 and float(s.min()) >= -3100.0


@dataclass(frozen=True)
class IntensityMapping:
    """The chosen linear map ``[low, high] -> [0, 255]`` plus a log-ready description.

    Computed once per image/volume (for volumes: from the whole volume, so all
    slices share one contrast) and then applied slice by slice.
    """

    kind: Literal["window", "percentile", "identity"]
    low: float
    high: float
    description: str
    invert: bool = False
    level: float | None = None
    width: float | None = None

    def apply(self, array: np.ndarray) -> np.ndarray:
        """uint8 array of the same shape as ``array``."""
        arr = np.asarray(array)
        if self.kind == "identity" and arr.dtype == np.uint8:
            out = arr.copy()
        else:
            out = _linear_to_uint8(arr, self.low, self.high)
        if self.invert:
            np.subtract(np.uint8(255), out, out=out)
        return out


_NUM = r"(-?\d+(?:\.\d+)?)"


@dataclass(frozen=True)
class _Parsed:
    mode: Literal["auto", "preset", "custom", "percentile", "dicom"]
    preset: WindowPreset | None = None


def parse_window(window: WindowSpec) -> _Parsed:
    """Validate a user ``window`` argument early (CLI flags), without any data."""
    if window is None:
        return _Parsed("auto")
    if isinstance(window, str):
        key = _norm_name(window)
        if key in ("", "auto"):
            return _Parsed("auto")
        if key in ("percentile", "percentiles", "p"):
            return _Parsed("percentile")
        if key in ("dicom", "file"):
            return _Parsed("dicom")
        text = window.strip().lower()
        m = re.fullmatch(_NUM + r"\s*[,:/]\s*" + _NUM, text) or re.fullmatch(
            r"l\s*" + _NUM + r"\s*[,_ ]?\s*w\s*" + _NUM, text
        )
        if m:
            return parse_window((float(m.group(1)), float(m.group(2))))
        try:
            return _Parsed("preset", get_window_preset(window))
        except ValueError:
            raise UserError(
                f"Invalid window {window!r}: use 'auto', 'percentile', 'dicom', a preset "
                f"({', '.join(WINDOW_PRESETS)}), 'level,width' such as '40,400', or a (level, width) tuple"
            ) from None
    if isinstance(window, (tuple, list, np.ndarray)) and len(window) == 2:
        level, width = (float(v) for v in window)
        if not (math.isfinite(level) and math.isfinite(width)) or width <= 0:
            raise UserError(f"Invalid window (level={level}, width={width}): width must be a positive number")
        return _Parsed("custom", WindowPreset("custom", level, width))
    raise UserError(f"Invalid window {window!r}: expected None, a string or a (level, width) pair")


def choose_intensity(
    values: np.ndarray,
    *,
    window: WindowSpec = None,
    modality: str | None = None,
    is_hu: bool | None = None,
    invert: bool = False,
    source_bits: int | None = None,
    file_window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> IntensityMapping:
    """Pick the intensity mapping for ``values`` and describe it for the log.

    Args:
        values: the raw intensities (2D, 3D or HxWx3).
        window: user override (see :data:`WindowSpec`); None/"auto" decides from metadata:
            CT (by ``modality``/``is_hu``, or HU-looking signed data when the
            modality is unknown) -> ``soft_tissue``; 8-bit data -> unchanged;
            everything else -> percentile scaling.
        modality: DICOM modality ("CT", "MR", ...) if known.
        is_hu: force HU / non-HU interpretation (None: infer).
        invert: display inverted (DICOM MONOCHROME1, TIFF min-is-white).
        source_bits: bits per sample of the stored data (8 -> pass-through candidate).
        file_window: (center, width) stored in the file, used by ``window="dicom"``.
        percentiles: (lower, upper) for percentile scaling.
    """
    parsed = parse_window(window)
    modality = modality.upper() if modality else None
    arr = np.asarray(values)
    if is_hu is None:
        if modality is not None:
            is_hu = modality == "CT"
        else:
            is_hu = looks_like_hu(arr)
    inv = ", MONOCHROME1 inverted" if invert else ""

    def windowed(preset: WindowPreset, origin: str) -> IntensityMapping:
        prefix = "CT window" if (modality == "CT" or is_hu) else "window"
        desc = f"{prefix} {preset.name} (L{_fmt(preset.level)} W{_fmt(preset.width)}){origin}{inv}"
        if not is_hu and parsed.mode in ("preset", "custom"):
            logger.warning(
                "Applying window %s to data that does not look like CT/HU (modality=%s)", preset.name, modality
            )
        return IntensityMapping("window", preset.low, preset.high, desc, invert, preset.level, preset.width)

    if parsed.mode in ("preset", "custom"):
        assert parsed.preset is not None
        return windowed(parsed.preset, "")
    if parsed.mode == "dicom":
        if file_window is None:
            raise UserError("window='dicom' needs a WindowCenter/WindowWidth in the file, and this input has none")
        c, w = file_window
        return windowed(WindowPreset("from file", float(c), float(w)), "")
    if parsed.mode == "auto":
        if is_hu:
            origin = "" if modality == "CT" else "; HU-like intensities detected"
            return windowed(get_window_preset(DEFAULT_CT_PRESET), origin)
        is_8bit = arr.dtype == np.uint8 or (
            source_bits is not None
            and source_bits <= 8
            and arr.size > 0
            and float(np.nanmin(arr)) >= 0
            and float(np.nanmax(arr)) <= 255
        )
        if is_8bit:
            kind = "RGB" if arr.ndim == 3 and arr.shape[-1] == 3 else "grayscale"
            return IntensityMapping("identity", 0.0, 255.0, f"8-bit {kind} unchanged{inv}", invert)
    lo_p, hi_p = percentiles
    lo, hi = percentile_range(arr, lo_p, hi_p)
    who = f"{modality} " if modality else ""
    desc = f"{who}percentile scaling p{_fmt(lo_p)}-p{_fmt(hi_p)} ({_fmt(lo)} -> 0, {_fmt(hi)} -> 255){inv}"
    return IntensityMapping("percentile", lo, hi, desc, invert)
