"""Reading medical and natural images for MedSAM3, and writing label maps back.

Entry points::

    read_rgb(path, window=None) -> uint8 (H, W, 3)         # any 2D input
    load_image2d(path, window=None) -> Image2D             # + raw intensities, spacing, description
    load_volume(path, window=None, volume_index=None) -> Volume   # NIfTI, DICOM folder, multi-frame DICOM
    Volume.slices_rgb(axis=-1) / Volume.labels_from_slices(...)  # slice out, put predictions back
    save_label_map(labels, volume, path)                   # NIfTI aligned voxel-for-voxel
    is_volume_path(path) -> bool

Why these libraries
-------------------
We use the reference library of each format rather than one do-everything
toolkit: **pydicom** (DICOM; pure Python, the de-facto standard, whose
``apply_modality_lut`` gives HU exactly as the standard defines and whose
plugin system decodes JPEG 2000 / JPEG-LS / RLE through small optional
wheels -- pylibjpeg-openjpeg, pyjpegls, pylibjpeg-rle), **nibabel** (NIfTI;
keeps the header, qform/sform and their codes, so label maps overlay exactly
in every viewer), **tifffile** (TIFF; 16-bit, float, planar and multi-page
layouts that Pillow mishandles) and **Pillow** (PNG/JPEG/BMP, EXIF
orientation). SimpleITK was not needed: it is a ~50 MB binary that hides
DICOM slice sorting and rescaling behind its own conventions (and
reorders arrays to z, y, x), while the pieces above are small, widely used and
let us test each step against the library's own reference functions.

Intensities: see :mod:`medsam3.io.windows` (CT window presets, percentile
scaling, automatic choice). Axis conventions: see :mod:`medsam3.io.volume`.
Errors: every reader raises :class:`ImageReadError` (a ``ValueError``) whose
message names the path, the problem and the fix.

A leaf: imports nothing from medsam3 outside ``io``. Inside it, dependencies point one way:
``api`` -> readers (``dicom``, ``nifti``, ``images``) -> ``volume`` -> ``windows``, ``errors``.
"""

from .api import Image2D, is_volume_path, load_image2d, load_volume, read_rgb
from .errors import ImageNotFoundError, ImageReadError, MissingCodecError, UnsupportedFormatError
from .formats import SUPPORTED_EXTENSIONS, detect_format
from .nifti import label_map_image, save_label_map, save_volume, volume_to_nifti
from .volume import SliceGeometry, Volume, slice_geometry
from .windows import (
    DEFAULT_CT_PRESET,
    WINDOW_PRESETS,
    IntensityMapping,
    WindowPreset,
    WindowSpec,
    apply_window,
    choose_intensity,
    get_window_preset,
    looks_like_hu,
    parse_window,
    percentile_range,
    scale_percentiles,
)

__all__ = [
    "DEFAULT_CT_PRESET",
    "Image2D",
    "ImageNotFoundError",
    "ImageReadError",
    "IntensityMapping",
    "MissingCodecError",
    "SUPPORTED_EXTENSIONS",
    "SliceGeometry",
    "UnsupportedFormatError",
    "Volume",
    "WINDOW_PRESETS",
    "WindowPreset",
    "WindowSpec",
    "apply_window",
    "choose_intensity",
    "detect_format",
    "get_window_preset",
    "is_volume_path",
    "label_map_image",
    "load_image2d",
    "load_volume",
    "looks_like_hu",
    "parse_window",
    "percentile_range",
    "read_rgb",
    "save_label_map",
    "save_volume",
    "scale_percentiles",
    "slice_geometry",
    "volume_to_nifti",
]
