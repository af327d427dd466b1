"""Fixtures for medsam3.io tests: real files shipped by test-dependency packages.

* pydicom's bundled test files (+ the ``pydicom-data`` package for the larger ones)
* nibabel's ``nibabel/tests/data``
* optionally the TotalSegmentator 2.18.0 sdist's ``tests/reference_files`` (a real
  20-slice JPEG 2000 CT series plus the NIfTI that TotalSegmentator produced from it),
  fetched once with ``pip download`` into pytest's cache. The tests that use it are marked
  ``network`` and run only when asked (``pytest -m network``; CI runs them). Set
  ``MEDSAM3_TOTALSEG_SDIST=/path/to/totalsegmentator-2.18.0.tar.gz`` to use a local
  copy, or ``MEDSAM3_NO_DOWNLOAD=1`` to skip them instead of downloading.

No binary test data is committed: everything else is synthesised in tmp_path.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

TOTALSEG_VERSION = "2.18.0"
TOTALSEG_MEMBERS = (
    "tests/reference_files/example_ct_dicom/",
    "tests/reference_files/example_seg_dicom.nii.gz",
    "tests/reference_files/example_ct_sm.nii.gz",
    "tests/reference_files/example_mr_sm.nii.gz",
)


def dicom_testfile(name: str) -> Path:
    """Path of a pydicom / pydicom-data test file, or skip with the package to install."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)  # never hit the network from a test
    if path is None:
        pytest.skip(f"{name} is not installed: pip install pydicom-data")
    return Path(path)


def require_decoder(transfer_syntax_uid) -> None:
    from pydicom.pixels import get_decoder

    decoder = get_decoder(transfer_syntax_uid)
    if not decoder.is_available:
        pytest.skip(f"no decoder for {transfer_syntax_uid.name}: {decoder.missing_dependencies}")


@pytest.fixture(scope="session")
def dicom_file():
    """``dicom_file("CT_small.dcm")`` -> Path (skips if the file's package is missing)."""
    return dicom_testfile


@pytest.fixture(scope="session")
def need_decoder():
    """``need_decoder(uid)`` skips the test when pydicom has no plugin for that transfer syntax."""
    return require_decoder


@pytest.fixture(scope="session")
def nibabel_data() -> Path:
    import nibabel

    path = Path(nibabel.__file__).parent / "tests" / "data"
    if not (path / "anatomical.nii").exists():
        pytest.skip("nibabel's test data is not installed with this nibabel")
    return path


def _fetch_totalseg_sdist(cache: Path) -> Path:
    local = os.environ.get("MEDSAM3_TOTALSEG_SDIST")
    if local:
        if not Path(local).is_file():
            pytest.skip(f"MEDSAM3_TOTALSEG_SDIST={local} does not exist")
        return Path(local)
    tar = cache / f"totalsegmentator-{TOTALSEG_VERSION}.tar.gz"
    if tar.is_file():
        return tar
    if os.environ.get("MEDSAM3_NO_DOWNLOAD"):
        pytest.skip("MEDSAM3_NO_DOWNLOAD is set; TotalSegmentator reference files not cached")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(cache),
        f"totalsegmentator=={TOTALSEG_VERSION}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"could not pip download the TotalSegmentator sdist ({exc})")
    if proc.returncode != 0 or not tar.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"could not pip download the TotalSegmentator sdist: {tail[0]}")
    return tar


@pytest.fixture(scope="session")
def totalseg_reference(request, tmp_path_factory) -> Path:
    """``tests/reference_files`` of the TotalSegmentator sdist (subset), extracted."""
    cache_obj = getattr(request.config, "cache", None)
    cache = (
        Path(cache_obj.mkdir("medsam3_io_totalseg")) if cache_obj is not None else tmp_path_factory.mktemp("totalseg")
    )
    out = cache / "extracted"
    marker = out / ".complete"
    if not marker.exists():
        tar_path = _fetch_totalseg_sdist(cache)
        prefix = f"totalsegmentator-{TOTALSEG_VERSION}/"
        with tarfile.open(tar_path) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith(prefix) and m.name[len(prefix) :].startswith(TOTALSEG_MEMBERS)
            ]
            if not members:
                pytest.skip(f"{tar_path} has no tests/reference_files")
            for m in members:
                m.name = m.name[len(prefix) :]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(out, members=members, filter="data")
            else:  # Python < 3.11.4
                tar.extractall(out, members=members)
        marker.touch()
    return out / "tests" / "reference_files"


@pytest.fixture
def make_ct_series(tmp_path):
    """Build a multi-slice CT series in tmp_path from pydicom's CT_small.dcm.

    Slice k sits at ``origin + k * spacing * normal`` (normal = row x column
    direction of ``iop``) and holds CT_small's pixels (cropped to 128 rows x
    100 columns, so a transposition would be caught) plus ``10 * k``.
    File names are shuffled and InstanceNumber runs backwards, so neither can
    be mistaken for the spatial order. Returns (folder, list of HU arrays by k,
    list of positions by k).
    """
    import numpy as np
    import pydicom
    from pydicom.pixels import apply_modality_lut
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(dicom_testfile("CT_small.dcm"))

    def build(
        n: int = 6,
        iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        spacing: float = 2.5,
        folder_name: str = "series",
        skip: tuple[int, ...] = (),
        drop_position: bool = False,
        series_uid: str | None = None,
        origin=(-100.0, -50.0, 20.0),
        prefix: str = "IM",
    ):
        folder = tmp_path / folder_name
        folder.mkdir(exist_ok=True)
        iop_arr = np.asarray(iop, dtype=float)
        normal = np.cross(iop_arr[:3], iop_arr[3:])
        names = np.random.default_rng(n).permutation(n)
        series_uid = series_uid or generate_uid()
        hus, positions = [], []
        for k in range(n):
            ds = copy.deepcopy(src)
            arr = (src.pixel_array[:, :100].astype(np.int16) + 10 * k).astype(np.int16)
            ds.Columns = arr.shape[1]
            ds.PixelData = arr.tobytes()
            pos = np.asarray(origin) + k * spacing * normal
            ds.ImageOrientationPatient = [float(v) for v in iop_arr]
            ds.ImagePositionPatient = [float(v) for v in pos]
            if drop_position:
                del ds.ImagePositionPatient
            ds.InstanceNumber = n - k
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            hus.append(apply_modality_lut(arr, ds).astype(np.float32))
            positions.append(pos)
            if k not in skip:
                ds.save_as(folder / f"{prefix}{names[k]:04d}", enforce_file_format=True)
        return folder, hus, positions

    return build
