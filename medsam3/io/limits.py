"""How large a decoded image may be, checked from the header before any pixel is allocated.

A corrupt or hostile file can declare 65535 x 65535 x 65535 voxels in a few hundred bytes (or a
gzip bomb can hold them): every reader asks :func:`check_array_size` with the header's numbers
first, and refuses with a message instead of allocating. The default, 2 GiB for the largest array
a reader builds (voxels x 4 bytes: readers hand out float32), covers a 512 x 512 x 2048 CT; raise
it with the environment variable ``MEDSAM3_MAX_ARRAY_GIB`` (or :data:`MAX_ARRAY_BYTES`).
"""

from __future__ import annotations

import math
import os
from os import PathLike

from .errors import ImageReadError

__all__ = ["MAX_ARRAY_BYTES", "check_array_size"]


def _from_env() -> int:
    text = os.environ.get("MEDSAM3_MAX_ARRAY_GIB", "").strip()
    try:
        return int(float(text) * 2**30) if text else 2 << 30
    except ValueError:
        return 2 << 30


MAX_ARRAY_BYTES: int = _from_env()


def check_array_size(path: str | PathLike[str], shape, bytes_per_value: float = 4, what: str = "image") -> None:
    """Raise :class:`ImageReadError` when ``shape`` (from a header) would decode to more than the limit.

    ``bytes_per_value``: the widest type the reader holds the data in (4 for float32).
    """
    dims = [int(n) for n in shape]
    if any(n < 0 for n in dims):
        raise ImageReadError(path, f"the header declares a negative {what} size {tuple(dims)}", "the file is corrupt")
    nbytes = math.prod(dims) * bytes_per_value
    if nbytes > MAX_ARRAY_BYTES:
        raise ImageReadError(
            path,
            f"the header declares a {what} of {' x '.join(map(str, dims))} values ({nbytes / 2**30:.1f} GiB "
            f"decoded), over the {MAX_ARRAY_BYTES / 2**30:.1f} GiB limit",
            "if the file is real, crop or downsample it, or raise the limit with MEDSAM3_MAX_ARRAY_GIB",
        )
