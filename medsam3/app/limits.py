"""What one upload may cost the server, checked before any work: file size, unpacked zip size and
member count; and how long the files a session leaves behind are kept.

A shared server (the usual way the app runs at a site) must not be filled by one large upload, a
zip bomb or weeks of downloads nobody fetched. Gradio refuses an upload over ``max_upload_mb``
before it is stored (``launch(max_file_size=...)``); :meth:`UploadLimits.check_upload` repeats the
check for files reaching the service another way (examples, scripts). Zip members are counted and
summed from the zip's directory before anything is unpacked; ``zipfile`` never writes more than a
member's declared size, so the sum bounds the disk used. Folders of finished runs and unpacked
uploads older than ``keep_minutes`` are deleted when the next one is made, and Gradio's own upload
cache is swept on the same schedule (``Blocks.delete_cache``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

__all__ = [
    "UploadLimits",
    "UploadRefused",
    "add_limit_flags",
    "limits_from_args",
    "prune_upload_scratch",
    "prune_work_dir",
    "start_sweeper",
]

logger = logging.getLogger(__name__)


class UploadRefused(UserError):
    """An upload over a limit, or not a readable zip: refused before any work, with what to do."""


@dataclass(frozen=True)
class UploadLimits:
    """Defaults: a 1 GiB upload (a zipped CT series is rarely over 500 MB), 4 GiB unpacked, 10,000
    files in a zip (a long series is ~2,000 slices), results kept for an hour."""

    max_upload_mb: float = 1024.0
    max_unzipped_mb: float = 4096.0
    max_zip_files: int = 10_000
    keep_minutes: float = 60.0

    @property
    def keep_seconds(self) -> float:
        return self.keep_minutes * 60.0

    def gradio_max_file_size(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def check_upload(self, path: str | Path) -> None:
        size = Path(path).stat().st_size
        if size > self.max_upload_mb * 2**20:
            raise UploadRefused(
                f"{Path(path).name}: {size / 2**20:.1f} MB is over this server's upload limit of "
                f"{self.max_upload_mb:g} MB; upload a smaller file (or start medsam3-app with a larger --max-upload-mb)"
            )

    def check_zip(self, name: str, members: Sequence[zipfile.ZipInfo]) -> None:
        if not members:
            raise UploadRefused(f"{name}: the zip file holds no files")
        if len(members) > self.max_zip_files:
            raise UploadRefused(
                f"{name}: holds {len(members)} files, over this server's limit of {self.max_zip_files}; "
                f"zip one series (or start medsam3-app with a larger --max-zip-files)"
            )
        unpacked = sum(m.file_size for m in members)
        if unpacked > self.max_unzipped_mb * 2**20:
            raise UploadRefused(
                f"{name}: unpacks to {unpacked / 2**20:.1f} MB, over this server's limit of "
                f"{self.max_unzipped_mb:g} MB; upload fewer files "
                f"(or start medsam3-app with a larger --max-unzipped-mb)"
            )


def prune_work_dir(work_dir: Path, max_age_s: float, now: float | None = None) -> int:
    """Delete the run and unpacked-upload folders in ``work_dir`` older than ``max_age_s``; returns how many."""
    now = time.time() if now is None else now
    removed = 0
    for path in work_dir.iterdir():
        if not path.is_dir() or not path.name.startswith(("run-", "unzipped-")):
            continue
        try:
            old = now - path.stat().st_mtime > max_age_s
        except FileNotFoundError:  # another thread removed it first
            continue
        if old:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("removed %d result folder(s) older than %.0f s from %s", removed, max_age_s, work_dir)
    return removed


def prune_upload_scratch(upload_dir: Path, max_age_s: float, now: float | None = None) -> int:
    """Delete Gradio's multipart scratch files (``tmp*`` directly in its upload folder) older than
    ``max_age_s``. Gradio 6 leaves one empty file per upload there and its ``delete_cache`` does
    not track them (measured by ``scripts/bench_app.py --load``)."""
    now = time.time() if now is None else now
    removed = 0
    for path in upload_dir.glob("tmp*"):
        try:
            if path.is_file() and now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # gradio moved it meanwhile
            continue
    return removed


def start_sweeper(
    work_dir: Path,
    max_age_s: float,
    upload_dir: Path | None = None,
    gradio_cache: Callable[[], None] | None = None,
) -> threading.Thread:
    """A daemon thread that prunes ``work_dir``, Gradio's upload scratch files in ``upload_dir`` and
    (``gradio_cache()``) Gradio's file cache every half ``max_age_s`` (at most every 10 minutes), so an
    idle server also gives its disk back.

    Gradio's own ``delete_cache`` task left 74 of 270 cached files behind after 8 concurrent clients
    (``scripts/bench_app.py --load``); it iterates its file sets while request threads add to them, and
    one "Set changed size during iteration" ends that task for good. Here that error is retried.
    """
    period = max(1.0, min(max_age_s, 1200.0) / 2)

    def sweep() -> None:
        while True:
            time.sleep(period)
            try:
                prune_work_dir(work_dir, max_age_s)
                if upload_dir is not None and upload_dir.is_dir():
                    prune_upload_scratch(upload_dir, max_age_s)
            except OSError as exc:  # e.g. the work dir was removed under us: say so, keep serving
                logger.warning("could not prune %s: %s", work_dir, exc)
            for attempt in range(3):
                if gradio_cache is None:
                    break
                try:
                    gradio_cache()
                    break
                except RuntimeError as exc:  # a request added a file meanwhile: try again
                    logger.debug("Gradio cache sweep, attempt %d: %s", attempt + 1, exc)

    thread = threading.Thread(target=sweep, name="medsam3-sweeper", daemon=True)
    thread.start()
    return thread


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    d = UploadLimits()
    g = parser.add_argument_group("limits (checked before any work)")
    g.add_argument(
        "--max-upload-mb", type=float, default=d.max_upload_mb, help=f"largest upload (default {d.max_upload_mb:g})"
    )
    g.add_argument(
        "--max-unzipped-mb",
        type=float,
        default=d.max_unzipped_mb,
        help=f"largest unpacked zip (default {d.max_unzipped_mb:g})",
    )
    g.add_argument(
        "--max-zip-files", type=int, default=d.max_zip_files, help=f"most files in a zip (default {d.max_zip_files})"
    )
    g.add_argument(
        "--keep-minutes",
        type=float,
        default=d.keep_minutes,
        help=f"delete uploads and result files older than this (default {d.keep_minutes:g})",
    )


def limits_from_args(args: argparse.Namespace) -> UploadLimits:
    limits = UploadLimits(args.max_upload_mb, args.max_unzipped_mb, args.max_zip_files, args.keep_minutes)
    for name in ("max_upload_mb", "max_unzipped_mb", "max_zip_files", "keep_minutes"):
        if not getattr(limits, name) > 0:
            raise UploadRefused(f"--{name.replace('_', '-')} must be > 0, got {getattr(limits, name)}")
    return limits
