"""The base class of every error that means "fix your input", importable without torch.

Command-line front ends turn these, and only these, into one ``prog: error: ...`` line and exit
code 2. Anything else escaping a command is a bug in medsam3 and is shown with its traceback.
It derives from ``ValueError`` so callers that caught ``ValueError`` before keep working.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

__all__ = ["DiskFullError", "InputNotFoundError", "UserError", "disk_full_errors"]


class UserError(ValueError):
    """A problem with what the user gave (a file, a flag, a config key), with a message saying how to fix it."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder named on the command line or in a config does not exist."""


class DiskFullError(UserError, OSError):
    """The disk (or quota) ran out while writing a file: the user's environment, not a bug.

    Raised by the atomic writers, which leave the previous file (or none) in place, so what was
    finished before stays whole and a rerun (``--resume``, ``--skip-existing``) continues.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:  # OSError would prefix "[Errno 28]"
        return str(self.args[1])


_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SPACE_TEXT = ("no space left on device", "storagefull", "disk quota exceeded")
# torch.save's C++ writer loses the errno ("file write failed", "basic_ios::clear: iostream error"):
# those count only when the disk is (nearly) full at that moment.
_WRITE_FAILED_TEXT = ("file write failed", "iostream error")
_NEARLY_FULL = 1 << 20


def _free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def _out_of_space(exc: BaseException, folder: Path) -> bool:
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
            return True
    text = str(exc).lower()
    if any(t in text for t in _SPACE_TEXT):
        return True
    if any(t in text for t in _WRITE_FAILED_TEXT):
        free = _free_bytes(folder)
        return free is not None and free < _NEARLY_FULL
    return False


@contextlib.contextmanager
def disk_full_errors(path: str | PathLike[str], what: str = "a file") -> Iterator[None]:
    """Turn "no space left" (ENOSPC/EDQUOT, or a library's wording of it) while writing ``path`` into
    one :class:`DiskFullError` line naming the path, the free space and what to do; other errors pass."""
    path = Path(path)
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if not _out_of_space(exc, path.parent):
            raise
        free = _free_bytes(path.parent)
        left = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
        raise DiskFullError(
            f"no space left on the device while writing {what} {path} ({left} in {path.parent}); the "
            f"unfinished file was removed and earlier outputs are intact. Free some space (or write to another "
            f"disk) and run again: training continues with --resume latest, a batch with --skip-existing"
        ) from exc
