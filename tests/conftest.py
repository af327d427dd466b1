"""Shared fixtures and helpers: a tiny random SAM3 checkpoint on disk, loaded like a real one; how the
tests run our entry points (in-process, as scripts, under torchrun); hub caches, adapters and videos
that several test folders build.

Test modules import helpers from here (``from tests.conftest import ...``), never from each other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core: torch's own threads on top would oversubscribe (measured: 356 s with them vs
    # 291 s single-threaded for the default run on 2 cores). Set before torch is imported.
    os.environ["OMP_NUM_THREADS"] = "1"

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


@pytest.fixture
def image_file(tmp_path, rgb_image) -> Path:
    """``rgb_image`` saved as a PNG."""
    from PIL import Image

    path = tmp_path / "scan.png"
    Image.fromarray(rgb_image).save(path)
    return path


@contextlib.contextmanager
def single_torch_thread():
    """Tiny models run fastest single-threaded; two threads on a shared 2-core box oversubscribe badly."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """The test runs with one torch thread (see :func:`single_torch_thread`)."""
    with single_torch_thread():
        yield


@pytest.fixture(scope="session")
def rgb_image() -> np.ndarray:
    """A non-square image with structure (a bright disc and a dark square) at a size != model input."""
    rng = np.random.RandomState(0)
    img = (rng.rand(90, 130, 3) * 60 + 60).astype(np.uint8)
    yy, xx = np.mgrid[:90, :130]
    img[(yy - 40) ** 2 + (xx - 40) ** 2 < 20**2] = (230, 220, 210)
    img[50:80, 80:120] = (20, 30, 40)
    return img


# -- synthetic DICOM sources (DICOM SEG / RTSTRUCT tests) ------------------------------------------
def _oblique_orientation() -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions (LPS) of a slice tilted 20 deg about S/I and 10 deg about L/R."""
    a, b = np.deg2rad(20), np.deg2rad(10)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    col = np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), -np.sin(b)])
    return row, col


@pytest.fixture
def ct_series(tmp_path):
    """``ct_series(n=8, rows=32, columns=24)`` -> (folder, HU volume (slices, rows, columns), positions).

    A synthetic CT series with non-trivial geometry: oblique orientation, anisotropic pixels
    (0.7 mm between rows, 0.9 mm between columns), 2.5 mm slices, off-centre origin; an ellipsoid
    'organ' at 60 HU in -100 HU background. File names and InstanceNumbers do not follow the
    spatial order. ``tweak(k, ds)`` may change slice ``k`` before it is saved.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    def build(
        n: int = 8, rows: int = 32, columns: int = 24, folder_name: str = "series", tweak=None, spacing=(0.7, 0.9)
    ):
        folder = tmp_path / folder_name
        folder.mkdir(parents=True)
        row_dir, col_dir = _oblique_orientation()
        normal = np.cross(row_dir, col_dir)
        study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
        zz, yy, xx = np.mgrid[:n, :rows, :columns]
        organ = ((zz - n / 2) / (n / 2.5)) ** 2 + ((yy - rows / 2) / (rows / 3)) ** 2 + (
            (xx - columns / 2.5) / (columns / 4)
        ) ** 2 < 1
        hu = np.where(organ, 60, -100).astype(np.int16)
        positions = []
        names = np.random.default_rng(n).permutation(n)
        for k in range(n):
            pos = np.array([-35.5, 12.25, -80.0]) + k * 2.5 * normal
            positions.append(pos)
            ds = pydicom.Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
                "Test^Synthetic",
                "SYN001",
                "19700101",
                "O",
            )
            ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20260101", "120000", "S1"
            ds.AccessionNumber, ds.ReferringPhysicianName = "ACC1", ""
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series, 3, "CT"
            ds.PatientPosition, ds.Laterality = "HFS", ""
            ds.SeriesDescription = "synthetic oblique CT"
            ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_ref, ""
            ds.Manufacturer = "synthetic"
            ds.InstanceNumber = n - k
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ImagePositionPatient = [round(float(v), 6) for v in pos]
            ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [float(v) for v in spacing]
            ds.SliceThickness = 2.5
            ds.KVP = "120"
            ds.AcquisitionNumber = 1
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = rows, columns
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.WindowCenter, ds.WindowWidth = 40, 400
            ds.PixelData = (hu[k] + 1024).astype(np.int16).tobytes()
            if tweak is not None:
                tweak(k, ds)
            ds.save_as(folder / f"IM{names[k]:04d}.dcm", enforce_file_format=True)
        return folder, hu.astype(np.float32), positions

    return build


@pytest.fixture
def enhanced_ct(ct_series, tmp_path):
    """``enhanced_ct(**series_kwargs)`` -> path of a Legacy Converted Enhanced CT (one multi-frame file)
    made by highdicom from :func:`ct_series`; frames stored in a shuffled order."""
    hd = pytest.importorskip("highdicom")
    import pydicom
    from pydicom.uid import generate_uid

    def build(**kwargs):
        folder, hu, positions = ct_series(folder_name="for_enhanced", **kwargs)
        datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
        mf = hd.legacy.LegacyConvertedEnhancedCTImage(
            legacy_datasets=datasets,
            series_instance_uid=generate_uid(),
            series_number=4,
            sop_instance_uid=generate_uid(),
            instance_number=1,
        )
        path = tmp_path / "enhanced_ct.dcm"
        mf.save_as(path, enforce_file_format=True)
        return path, hu, positions

    return build


# ------------------------------------------------------------------------------------------ entry points
def run_cli(*args, main: Callable[[Sequence[str]], int] | None = None) -> int:
    """An entry point's ``main`` (default: ``infer_sam.py``'s) in-process, every argument as a string; its exit code."""
    if main is None:
        from medsam3.cli.infer import main
    return main([str(a) for a in args])


# Subprocesses import this checkout, offline, one thread each (so ranks compute bit-identical numbers).
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def python_cmd(script: str, *args) -> list[str]:
    """``python <repo>/<script> args...``"""
    return [sys.executable, str(REPO / script), *[str(a) for a in args]]


def torchrun_cmd(script: str, *args, nproc: int = 2) -> list[str]:
    """``torchrun --standalone --nproc_per_node <nproc> <repo>/<script> args...``"""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(REPO / script),
        *[str(a) for a in args],
    ]


def run_process(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` with :data:`SUBPROCESS_ENV`, capturing its text output."""
    return subprocess.run(cmd, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=timeout, cwd=cwd)


# ------------------------------------------------------------------------------------------ hub
COMMIT = "1" * 40


def closed_port_url() -> str:
    """A local URL nothing listens on: connections are refused at once (an unreachable hub, no network)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def cache_repo(cache_dir: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/...)."""
    root = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, snapshot / name)
    return snapshot


# ------------------------------------------------------------------------------------------ upstream adapters
RANK, ALPHA = 4, 8.0
POINT_LAYERS = {
    "geometry_encoder.points_direct_project": (4, None),
    "geometry_encoder.points_pool_project": (None, None),
    "geometry_encoder.points_pos_enc_project": (None, None),
}


def make_upstream_adapter(model, rank: int = RANK, seed: int = 0) -> dict:
    """An adapter as upstream would save it for ``model``: Meta names, fused qkv, point-prompt layers."""
    import torch

    from medsam3.adapters.upstream import meta_module_for
    from medsam3.config import load_config
    from medsam3.model.lora_targets import select_lora_targets

    gen = torch.Generator().manual_seed(seed)
    lora = load_config(FULL_CONFIG).lora
    modules = dict(model.named_modules())
    state = {}
    for hf in select_lora_targets(model.named_modules(), lora):
        mapping, block = meta_module_for(hf)
        key = mapping.meta_module + ".lora.lora_"
        if key + "A" in state:
            continue
        in_f = modules[hf].in_features
        out_f = sum(modules[h].out_features for h in mapping.hf_modules)
        state[key + "A"] = torch.randn(in_f, rank, generator=gen) * 0.3
        state[key + "B"] = torch.randn(rank, out_f, generator=gen) * 0.3
    hidden = model.config.geometry_encoder_config.hidden_size
    for name, (in_f, _) in POINT_LAYERS.items():
        state[f"{name}.lora.lora_A"] = torch.randn(in_f or hidden, rank, generator=gen)
        state[f"{name}.lora.lora_B"] = torch.randn(rank, hidden, generator=gen)
    return state


def config_for(tmp_path: Path, tiny_checkpoint: Path, *extra: str):
    """The shipped config on ``tiny_checkpoint`` with the upstream adapter's rank and alpha, on CPU."""
    from medsam3.config import load_config

    return load_config(
        FULL_CONFIG,
        [
            f"model.name={tiny_checkpoint}",
            f"lora.rank={RANK}",
            f"lora.alpha={ALPHA}",
            "hardware.device=cpu",
            f"output.output_dir={tmp_path / 'out'}",
            *extra,
        ],
    )


# ------------------------------------------------------------------------------------------ video
def write_disc_video(path: Path, n: int = 6, fps: float = 12.0, h: int = 72, w: int = 96) -> Path:
    """A moving, resizing disc as mp4."""
    import cv2

    yy, xx = np.mgrid[:h, :w]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(n):
        f = np.full((h, w, 3), 30, np.uint8)
        f[(yy - 36) ** 2 + (xx - 20 - 5 * i) ** 2 < (9 + i % 3) ** 2] = 220
        writer.write(f)
    writer.release()
    return path


def video_cli_args(checkpoint: Path, out_dir: Path, threshold: str = "0.0") -> list[str]:
    """``infer_sam.py`` flags for a video run on ``checkpoint`` without an adapter, on CPU, quiet."""
    return [
        "--weights",
        "none",
        "--set",
        f"model.name={checkpoint}",
        "--threshold",
        threshold,
        "--device",
        "cpu",
        "--output-dir",
        str(out_dir),
        "-q",
    ]


def save_tiny_adapter(config: Path, out_dir: Path, metadata: dict | None = None) -> Path:
    """A PEFT adapter for the tiny model of ``config``, with non-zero B (so it changes the output)."""
    import torch

    from medsam3.adapters.peft_format import save_adapter
    from medsam3.config import load_config
    from medsam3.model import add_lora, load_base_model

    cfg = load_config(config)
    model, _ = load_base_model(cfg.model)
    torch.manual_seed(0)  # PEFT draws lora_A from the global generator: the same adapter whatever ran before
    peft_model = add_lora(model, cfg.lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return save_adapter(peft_model, out_dir, metadata=metadata)


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


def random_peft_lora(model, rank: int = 4, seed: int = 1):
    """``model`` under a PEFT LoRA whose A and B are random (PEFT starts B at zero: merging it would change
    nothing), in eval mode (get_peft_model leaves it training: LoRA dropout would be on)."""
    import torch
    from peft import get_peft_model

    from medsam3.config import LoraConfigSection
    from medsam3.model import build_lora_config

    peft = get_peft_model(model, build_lora_config(model, LoraConfigSection(), rank=rank, alpha=2.0 * rank))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return peft.eval()
