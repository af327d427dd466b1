"""pyproject's package-data globs ship exactly the data files in the package: each glob matches
something, and every data file (the offline demo) is matched, so a wheel works without the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def _package_data() -> dict[str, list[str]]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return pyproject["tool"]["setuptools"]["package-data"]


def _data_files(package_dir: Path) -> set[Path]:
    """Files in the package that are not Python sources (what package-data must carry)."""
    return {
        p
        for p in package_dir.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc", ".typed"} and "__pycache__" not in p.parts
    }


def test_every_glob_matches_a_file_and_every_data_file_is_matched():
    for package, globs in _package_data().items():
        package_dir = REPO / package.replace(".", "/")
        matched: set[Path] = set()
        for pattern in globs:
            hits = {p for p in package_dir.glob(pattern) if p.is_file()}
            assert hits, f"package-data glob {package}:{pattern!r} in pyproject.toml matches no file"
            matched |= hits
        unshipped = sorted(str(p.relative_to(REPO)) for p in _data_files(package_dir) - matched)
        assert not unshipped, f"data files no package-data glob in pyproject.toml ships: {unshipped}"
