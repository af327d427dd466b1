"""Shared fixtures: a tiny random SAM3 checkpoint on disk, loaded like a real one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
FULL_CONFIG = REPO / "configs" / "full_lora_config.yaml"
LORA_KEYS_TSV = REPO.parent / "shared" / "medsam3_v1" / "lora_keys.tsv"
# A copy travels with the tests so a clone without shared/ still checks the 916 MedSAM3-v1 keys.
LORA_KEYS_VENDORED = REPO / "tests" / "fixtures" / "medsam3_v1_lora_keys.tsv.gz"


def medsam3_v1_key_rows() -> list[dict[str, str]]:
    """The rows of MedSAM3-v1's adapter key table (shared/ when present, else the vendored copy)."""
    import csv
    import gzip

    if LORA_KEYS_TSV.is_file():
        text = LORA_KEYS_TSV.read_text()
    else:
        text = gzip.decompress(LORA_KEYS_VENDORED.read_bytes()).decode()
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from medsam3.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_sam3"))


@pytest.fixture(scope="session")
def tiny_video_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM3 *video* checkpoint (detector + tracker); it also loads as an image model."""
    from medsam3.testing import build_tiny_video_checkpoint

    return build_tiny_video_checkpoint(tmp_path_factory.mktemp("tiny_sam3_video"))


def write_config(path: Path, model_name: str | Path, **sections) -> Path:
    """The shipped config with model.name pointed at a local checkpoint, plus overrides per section."""
    raw = yaml.safe_load(FULL_CONFIG.read_text())
    raw["model"]["name"] = str(model_name)
    raw["output"]["output_dir"] = str(path.parent / "outputs")
    for section, values in sections.items():
        raw[section].update(values)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def tiny_config(tmp_path, tiny_checkpoint) -> Path:
    return write_config(tmp_path / "tiny.yaml", tiny_checkpoint, hardware={"device": "cpu"})


@pytest.fixture(scope="session")
def rgb_image() -> np.ndarray:
    """A non-square image with structure (a bright disc and a dark square) at a size != model input."""
    rng = np.random.RandomState(0)
    img = (rng.rand(90, 130, 3) * 60 + 60).astype(np.uint8)
    yy, xx = np.mgrid[:90, :130]
    img[(yy - 40) ** 2 + (xx - 40) ** 2 < 20**2] = (230, 220, 210)
    img[50:80, 80:120] = (20, 30, 40)
    return img


class SmallDisk:
    """A tmpfs of a few MiB: a real full disk (ENOSPC from the kernel), grown later to "free space"."""

    def __init__(self, path: Path):
        self.path = path

    def resize(self, size: str) -> None:
        import subprocess

        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)`` -> a :class:`SmallDisk` mounted at a fresh folder; unmounted afterwards.

    Needs the right to mount (root, or CAP_SYS_ADMIN): skipped with the reason elsewhere.
    """
    import subprocess

    mounted: list[Path] = []

    def make(size: str = "2m") -> SmallDisk:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or done.returncode})")
        mounted.append(where)
        return SmallDisk(where)

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
