"""The one exception family raised by :mod:`medsam3.io` for unreadable inputs.

Every message names the path, says what was wrong and how to fix it, so a
researcher running the CLI on a folder of scans can act on it without reading
a traceback. The original exception is always chained (``raise ... from``).
"""

from __future__ import annotations

import errno
import re
from os import PathLike

from ..errors import UserError

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_MAX_REASON = 400


def printable(text: str, limit: int = _MAX_REASON) -> str:
    """``text`` as one readable line: control bytes from a corrupt file become spaces, long values are cut."""
    text = " ".join(_UNPRINTABLE.sub(" ", str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ImageReadError(UserError):
    """An input image or volume could not be read.

    Attributes:
        path: the offending file or folder (as given).
        reason: what was wrong.
        hint: how to fix it (may be empty).
    """

    def __init__(self, path: str | PathLike[str], reason: str, hint: str = "") -> None:
        self.path = str(path)
        self.reason = printable(reason)
        self.hint = hint
        message = f"Cannot read '{self.path}': {self.reason}"
        if hint:
            message += f". Fix: {hint}"
        super().__init__(message)

    def __str__(self) -> str:  # OSError (ImageNotFoundError) would otherwise reformat it
        return str(self.args[0]) if self.args else self.reason

    def __reduce__(self):  # keep pickling (multiprocessing data loaders) working
        return (type(self), (self.path, self.reason, self.hint))


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """The path does not exist (also catchable as :class:`FileNotFoundError`)."""

    def __init__(self, path: str | PathLike[str], reason: str, hint: str = "") -> None:
        super().__init__(path, reason, hint)
        self.errno = errno.ENOENT
        self.filename = self.path


class UnsupportedFormatError(ImageReadError):
    """The file extension / content is not a format :mod:`medsam3.io` reads."""


class MissingCodecError(ImageReadError):
    """The file is valid but compressed with a codec whose decoder is not installed."""
