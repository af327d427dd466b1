#!/usr/bin/env python3
"""Fuzz the readers the CLI and the app use with mutated real files; every outcome must be a result
or a ``medsam3.errors.UserError``.

Why hypothesis (not atheris): it is pure Python (atheris needs libFuzzer and only instruments Python
code, so pydicom/nibabel/Pillow's C parts are not guided anyway), its draws express structure-aware
mutations (inner file of a .nii.gz or a zip, JSON/YAML values) next to byte mutations, it explores
boundary integers first, and it runs the same way inside pytest for the short deterministic run.

Each input runs in a worker process of its own target: 5 s of CPU time per input (``ITIMER_PROF``,
so a busy shared machine does not make a slow input look like a hang), an address-space limit
(``RLIMIT_AS``) of the worker's size after imports + 2 GiB, and a parent that kills and restarts a
worker that stops answering for 60 s (a hang outside the CPU, e.g. a blocking read).

Findings (any other exception, a hang, a dead worker) are grouped by exception type and the innermost
medsam3 frame (else the innermost frame); one input per group is saved with ``--save-findings DIR``.

  python scripts/fuzz_inputs.py --target all --max-inputs 300            # the short run (tests do this)
  nice -n 10 python scripts/fuzz_inputs.py --target dicom --budget 600   # a long run, inputs/s and findings

Add a target: a seed builder and a reader call in ``TARGETS`` (e.g. the nnU-Net ``dataset.json``
importer: ``nnunet_json`` below reads it with medsam3.io.nnunet).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import multiprocessing as mp
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TIME_LIMIT_S = 5  # CPU seconds per input
WALL_LIMIT_S = 60  # the parent kills a worker silent for this long
MEMORY_LIMIT = 2 << 30


# -- seeds -------------------------------------------------------------------------------------------
@dataclass
class Seed:
    """One seed input: ``files`` maps relative names to bytes; ``entry`` is what the reader is given
    ('' = the folder itself). ``wrap`` says how the mutated member is packed: 'raw', 'gz' or 'zip'."""

    name: str
    files: dict[str, bytes]
    entry: str
    wrap: str = "raw"
    mutable: list[str] = field(default_factory=list)  # members the mutator may change (default: all)

    def members(self) -> list[str]:
        return self.mutable or sorted(self.files)


def _pydicom_file(name: str) -> Path | None:
    from pydicom.data import get_testdata_file

    try:
        found = get_testdata_file(name, download=False)
    except Exception as exc:  # noqa: BLE001 - pydicom-data absent or its index unreadable: fewer seeds, said once
        print(f"seed {name} unavailable: {exc}", file=sys.stderr)
        return None
    return Path(found) if found else None


def dicom_seeds(_tmp: Path) -> list[Seed]:
    names = [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "JPEG2000.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "emri_small.dcm",
        "rtdose.dcm",
        "SC_rgb_rle.dcm",
    ]
    seeds = []
    for name in names:
        path = _pydicom_file(name)
        if path is not None:
            seeds.append(Seed(name, {name: path.read_bytes()}, name))
    return seeds


def _series_bytes(n: int = 3) -> dict[str, bytes]:
    """A 3-slice CT series from CT_small.dcm: positions 1.25 mm apart, new SOP/instance numbers."""
    import pydicom
    from pydicom.uid import generate_uid

    src = _pydicom_file("CT_small.dcm")
    series_uid = generate_uid(entropy_srcs=["medsam3 fuzz series"])
    out = {}
    for k in range(n):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["medsam3 fuzz", str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 1.25 * k]
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out[f"IM{k:04d}"] = buf.getvalue()  # extension-less, as PACS exports name them
    return out


def dicom_series_seeds(_tmp: Path) -> list[Seed]:
    return [Seed("ct_series", _series_bytes(), "")]


def zip_seeds(_tmp: Path) -> list[Seed]:
    series = {f"series/{k}": v for k, v in _series_bytes().items()}
    one = {"CT_small.dcm": _pydicom_file("CT_small.dcm").read_bytes()}
    return [Seed("series.zip", series, "upload.zip", wrap="zip"), Seed("one.zip", one, "upload.zip", wrap="zip")]


def nifti_seeds(tmp: Path) -> list[Seed]:
    import nibabel as nib

    data_dir = Path(nib.__file__).parent / "tests" / "data"
    seeds = []
    anat = data_dir / "anatomical.nii"
    if anat.is_file():
        seeds.append(Seed("anatomical.nii", {"a.nii": anat.read_bytes()}, "a.nii"))
    ex4d = data_dir / "example4d.nii.gz"
    if ex4d.is_file():
        seeds.append(Seed("example4d.nii.gz", {"b.nii.gz": ex4d.read_bytes()}, "b.nii.gz", wrap="gz"))
    rng = np.random.default_rng(0)
    arr = (rng.normal(0, 300, (12, 10, 6))).astype(np.int16)
    img = nib.Nifti1Image(arr, np.diag([0.8, 0.8, 2.5, 1.0]))
    img.header.set_slope_inter(1.0, -1024.0)
    img.to_filename(tmp / "ct.nii.gz")
    seeds.append(Seed("ct_int16.nii.gz", {"c.nii.gz": (tmp / "ct.nii.gz").read_bytes()}, "c.nii.gz", wrap="gz"))
    nib.Nifti2Image(arr.astype(np.float32), np.eye(4)).to_filename(tmp / "n2.nii")
    seeds.append(Seed("nifti2.nii", {"d.nii": (tmp / "n2.nii").read_bytes()}, "d.nii"))
    return seeds


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, **kw).save(buf, format=fmt)
    return buf.getvalue()


def png_seeds(tmp: Path) -> list[Seed]:
    import cv2

    rng = np.random.default_rng(1)
    gray8 = rng.integers(0, 255, (24, 20), dtype=np.uint8)
    rgb8 = rng.integers(0, 255, (16, 18, 3), dtype=np.uint8)
    rgba8 = rng.integers(0, 255, (16, 18, 4), dtype=np.uint8)
    gray16 = rng.integers(0, 65535, (20, 22), dtype=np.uint16)
    rgb16 = rng.integers(0, 65535, (12, 14, 3), dtype=np.uint16)
    ok, enc16 = cv2.imencode(".png", rgb16)
    assert ok
    seeds = [
        Seed("gray8.png", {"a.png": _encode(gray8, "PNG")}, "a.png"),
        Seed("rgb8.png", {"a.png": _encode(rgb8, "PNG")}, "a.png"),
        Seed("rgba8.png", {"a.png": _encode(rgba8, "PNG")}, "a.png"),
        Seed("gray16.png", {"a.png": _encode(gray16, "PNG")}, "a.png"),
        Seed("rgb16.png", {"a.png": enc16.tobytes()}, "a.png"),
        Seed("rgb.jpg", {"a.jpg": _encode(rgb8, "JPEG")}, "a.jpg"),
        Seed("gray.bmp", {"a.bmp": _encode(gray8, "BMP")}, "a.bmp"),
    ]
    return seeds


def tiff_seeds(tmp: Path) -> list[Seed]:
    import tifffile

    rng = np.random.default_rng(2)
    seeds = []
    for name, arr, kw in [
        ("gray16.tif", rng.integers(0, 4000, (20, 16), dtype=np.uint16), {}),
        ("rgb8.tif", rng.integers(0, 255, (12, 10, 3), dtype=np.uint8), {"photometric": "rgb"}),
        ("float.tif", rng.normal(size=(10, 12)).astype(np.float32), {}),
        ("deflate.tif", rng.integers(0, 255, (16, 16), dtype=np.uint8), {"compression": "zlib"}),
        ("pages.tif", rng.integers(0, 255, (3, 8, 8), dtype=np.uint8), {}),
    ]:
        buf = io.BytesIO()
        try:
            tifffile.imwrite(buf, arr, **kw)
        except Exception as exc:  # noqa: BLE001 - a codec missing here: that seed is skipped, said once
            print(f"seed {name} unavailable: {exc}", file=sys.stderr)
            continue
        seeds.append(Seed(name, {"a.tif": buf.getvalue()}, "a.tif"))
    return seeds


def coco_seeds(_tmp: Path) -> list[Seed]:
    rng = np.random.default_rng(3)
    images = {f"img{k}.png": _encode(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8), "PNG") for k in range(2)}
    coco = {
        "images": [
            {"id": 1, "file_name": "img0.png", "height": 32, "width": 40},
            {"id": 2, "file_name": "img1.png", "height": 32, "width": 40},
        ],
        "categories": [{"id": 0, "name": "organs"}, {"id": 1, "name": "liver"}, {"id": 2, "name": "spleen"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 8], "area": 80, "iscrowd": 0,
             "segmentation": [[4, 4, 14, 4, 14, 12, 4, 12]]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 10, 6, 6], "area": 36, "iscrowd": 1,
             "segmentation": {"size": [32, 40], "counts": [330, 6, 26, 6, 26, 6, 906]}},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 2, 5, 5], "area": 25, "iscrowd": 0},
        ],
    }  # fmt: skip
    files = {"_annotations.coco.json": json.dumps(coco).encode(), **images}
    return [Seed("coco", files, "", mutable=["_annotations.coco.json"])]


def nnunet_json_seeds(_tmp: Path) -> list[Seed]:
    """The shared datasets' dataset.json files, each beside one (empty) case: listing needs names only."""
    root = REPO.parent / "shared" / "datasets"
    metas = {p.parent.name: p.read_bytes() for p in sorted(root.glob("*/dataset.json"))}
    if not metas:
        example = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 1,
                   "file_ending": ".nii.gz"}  # fmt: skip
        metas["example"] = json.dumps(example).encode()
    seeds = []
    for name, blob in metas.items():
        meta = json.loads(blob)
        ending = meta.get("file_ending", ".nii.gz")
        case = {f"imagesTr/case_{k:04d}{ending}": b"" for k in range(len(meta.get("channel_names", {"0": ""})))}
        case[f"labelsTr/case{ending}"] = b""
        seeds.append(Seed(name, {"dataset.json": blob, **case}, "", mutable=["dataset.json"]))
    return seeds


def config_seeds(_tmp: Path) -> list[Seed]:
    return [Seed(p.name, {"c.yaml": p.read_bytes()}, "c.yaml") for p in sorted((REPO / "configs").glob("*.yaml"))]


def _tiny_lora(rank: int = 2) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        "backbone.vision_backbone.trunk.blocks.0.attn.proj.lora.lora_A": torch.randn(1024, rank, generator=g),
        "backbone.vision_backbone.trunk.blocks.0.attn.proj.lora.lora_B": torch.randn(rank, 1024, generator=g),
    }


def adapter_pt_seeds(_tmp: Path) -> list[Seed]:
    import torch

    buf = io.BytesIO()
    torch.save(_tiny_lora(), buf)
    return [Seed("upstream.pt", {"best_lora_weights.pt": buf.getvalue()}, "best_lora_weights.pt")]


def peft_seeds(tmp: Path) -> list[Seed]:
    import torch
    from safetensors.torch import save

    g = torch.Generator().manual_seed(0)
    mod = "base_model.model.vision_encoder.backbone.layers.0.attention.o_proj"
    tensors = {
        f"{mod}.lora_A.weight": torch.randn(2, 32, generator=g),
        f"{mod}.lora_B.weight": torch.randn(32, 2, generator=g),
    }
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["o_proj"],
              "base_model_name_or_path": "facebook/sam3"}  # fmt: skip
    files = {"adapter_model.safetensors": save(tensors), "adapter_config.json": json.dumps(config).encode()}
    return [Seed("peft_dir", files, "")]


# -- what each target calls: the public readers ----------------------------------------------------
def read_image_or_volume(path: Path):
    """What ``infer_sam.py`` and the app do with an input path (``inference.inputs.load_input``), then
    the pictures the model sees."""
    from medsam3.io import is_volume_path, load_image2d, load_volume

    if is_volume_path(path):
        volume = load_volume(path, volume_index=0 if path.name.endswith((".nii", ".nii.gz")) else None)
        return [volume.slice_rgb(k) for k in range(min(volume.shape[-1], 3))]
    return load_image2d(path).rgb


def read_upload(path: Path):
    """The app's upload path: unzip (with its limits), then read."""
    from medsam3.app.service import AppService

    service = AppService(None, work_dir=path.parent / "work")
    upload = service.open(path)
    return upload.picture(0)


def read_coco(folder: Path):
    from medsam3.data.coco import CocoConceptDataset

    ds = CocoConceptDataset(folder / "_annotations.coco.json", folder, resolution=32, mask_resolution=8)
    return [ds[k] for k in range(min(len(ds), 2))]


def read_nnunet_json(folder: Path):
    """The importer's reader (medsam3.io.nnunet): parses dataset.json and lists the cases beside it."""
    from medsam3.io import nnunet

    return nnunet.read_dataset(folder)


def read_config(path: Path):
    from medsam3.config import load_config

    return load_config(path)


def read_adapter_file(path: Path):
    from medsam3.adapters import read_adapter

    return read_adapter(path)


@dataclass(frozen=True)
class Target:
    seeds: Callable[[Path], list[Seed]]
    read: Callable[[Path], object]
    imports: tuple[str, ...]  # loaded before the limits apply (all the reader imports lazily)


IO = ("medsam3.io", "pydicom", "nibabel", "tifffile", "cv2", "PIL.Image")
TARGETS: dict[str, Target] = {
    "dicom": Target(dicom_seeds, read_image_or_volume, IO),
    "dicom_series": Target(dicom_series_seeds, read_image_or_volume, IO),
    "nifti": Target(nifti_seeds, read_image_or_volume, IO),
    "png": Target(png_seeds, read_image_or_volume, IO),
    "tiff": Target(tiff_seeds, read_image_or_volume, IO),
    "zip_upload": Target(zip_seeds, read_upload, (*IO, "medsam3.app.service", "medsam3.model.sam3")),
    "coco": Target(coco_seeds, read_coco, ("medsam3.data.coco", "pycocotools.coco")),
    "nnunet_json": Target(nnunet_json_seeds, read_nnunet_json, ("medsam3.errors",)),
    "config": Target(config_seeds, read_config, ("medsam3.config", "yaml")),
    "adapter_pt": Target(
        adapter_pt_seeds, read_adapter_file, ("medsam3.adapters.loading", "medsam3.adapters.upstream")
    ),
    "peft_adapter": Target(peft_seeds, read_adapter_file, ("medsam3.adapters.loading", "medsam3.adapters.peft_format")),
}


# -- mutations -------------------------------------------------------------------------------------
INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 2**63 - 1, 2**64 - 1, 46341, 65535 * 65535]  # fmt: skip
JSON_VALUES = [None, 0, -1, 1, 10**30, -(10**30), 1e308, "", "x" * 300, "../../etc/passwd", [], {}, [[]], True,
               [1, 2], {"a": None}, "nan", float("inf")]  # fmt: skip


def mutate_bytes(data, blob: bytes, others: list[bytes]) -> bytes:
    """1-8 byte-level edits, biased to the header (the first KiB) where parsers take their sizes."""
    from hypothesis import strategies as st

    b = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        n = len(b)
        head = min(n, 1024) or 1
        pos = data.draw(st.integers(0, max(0, (head if data.draw(st.booleans()) else n) - 1)))
        op = data.draw(st.sampled_from(["flip", "int", "truncate", "delete", "dup", "insert", "splice"]))
        if op == "flip" and n:
            b[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "int" and n:
            width = data.draw(st.sampled_from([1, 2, 4, 8]))
            value = data.draw(st.sampled_from(INTERESTING)) % (1 << (8 * width))
            if data.draw(st.booleans()):
                value = (1 << (8 * width)) - value if value else value  # negative in two's complement
            order = data.draw(st.sampled_from(["little", "big"]))
            b[pos : pos + width] = (value % (1 << (8 * width))).to_bytes(width, order)
        elif op == "truncate":
            del b[pos:]
        elif op == "delete":
            del b[pos : pos + data.draw(st.integers(1, 64))]
        elif op == "dup" and n:
            b[pos:pos] = b[pos : pos + data.draw(st.integers(1, 256))]
        elif op == "insert":
            b[pos:pos] = data.draw(st.binary(min_size=1, max_size=32))
        elif op == "splice" and others:
            other = data.draw(st.sampled_from(others))
            b[pos:] = other[data.draw(st.integers(0, max(0, len(other) - 1))) :]
    return bytes(b)


def _json_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:8]):
            yield from _json_paths(v, (*prefix, i))


def mutate_tree(data, blob: bytes, fmt: str) -> bytes | None:
    """Replace or delete a value of a JSON/YAML document (types and sizes a parser must check)."""
    import yaml
    from hypothesis import strategies as st

    try:
        tree = json.loads(blob) if fmt == "json" else yaml.safe_load(blob)
    except (ValueError, yaml.YAMLError):
        return None
    paths = [p for p in _json_paths(tree) if p]
    if not paths:
        return None
    for _ in range(data.draw(st.integers(1, 3), label="tree edits")):
        path = data.draw(st.sampled_from(paths))
        parent = tree
        try:
            for part in path[:-1]:
                parent = parent[part]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = copy.deepcopy(data.draw(st.sampled_from(JSON_VALUES)))  # no shared objects
        except (KeyError, IndexError, TypeError):
            continue
    try:
        return json.dumps(tree).encode() if fmt == "json" else yaml.safe_dump(tree).encode()
    except (ValueError, yaml.YAMLError, RecursionError):  # a value placed inside itself
        return None


def mutate_seed(data, seed: Seed, others: list[bytes]) -> dict[str, bytes]:
    """The seed's files with one member mutated (inside its gzip/zip when the draw says so)."""
    from hypothesis import strategies as st

    files = dict(seed.files)
    member = data.draw(st.sampled_from(seed.members()), label="member")
    blob = files[member]
    suffix = Path(member).suffix.lower()
    layer = data.draw(st.sampled_from(["outer", "inner", "tree"]), label="layer")
    if layer == "tree" and suffix in (".json", ".yaml", ".yml"):
        tree = mutate_tree(data, blob, "json" if suffix == ".json" else "yaml")
        files[member] = tree if tree is not None else mutate_bytes(data, blob, others)
    elif layer == "inner" and seed.wrap == "gz":
        files[member] = gzip.compress(mutate_bytes(data, gzip.decompress(blob), others), mtime=0)
    else:
        files[member] = mutate_bytes(data, blob, others)
    if seed.wrap == "zip":
        if layer == "outer":
            return {seed.entry: mutate_bytes(data, _zip(seed.files), others)}
        return {seed.entry: _zip(files)}
    return files


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, blob in sorted(files.items()):
            zf.writestr(name, blob)
    return buf.getvalue()


# -- the worker: one per target, bounded in time and memory ----------------------------------------
class InputTimeout(BaseException):
    """Raised by SIGPROF: the input used more than TIME_LIMIT_S of CPU time."""


def _alarm(_signum, _frame):
    raise InputTimeout(f"over {TIME_LIMIT_S} s of CPU time")


def _vm_size() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _classify(exc: BaseException) -> tuple[str, str]:
    """('user_error' | 'defect', signature). The signature groups one bug's inputs together."""
    from medsam3.errors import UserError

    if isinstance(exc, UserError):
        return "user_error", ""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/medsam3/" in f.filename]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    loc = f"{Path(where.filename).name}:{where.lineno} {where.name}" if where else "?"
    return "defect", f"{type(exc).__name__} at {loc}"


def worker_main(conn, target_name: str, workdir: str) -> None:
    import importlib
    import logging
    import warnings

    logging.disable(logging.CRITICAL)  # readers log and warn about odd files: noise at 1000s of inputs/min
    warnings.simplefilter("ignore")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # C libraries (libpng) print to stderr directly
    target = TARGETS[target_name]
    for module in target.imports:
        importlib.import_module(module)
    limit = _vm_size() + MEMORY_LIMIT
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGPROF, _alarm)
    counter = 0
    while True:
        job = conn.recv()
        if job is None:
            return
        counter += 1
        conn.send(run_one(target, Path(workdir), counter, *job))


def run_one(target: Target, root: Path, counter: int, files: dict[str, bytes], entry: str) -> tuple:
    """Write one input under ``root`` and read it with ``target``: (kind, signature[, traceback], seconds)."""
    case = root / f"case{counter}"
    case.mkdir()
    for name, blob in files.items():
        (case / name).parent.mkdir(parents=True, exist_ok=True)
        (case / name).write_bytes(blob)
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_PROF, TIME_LIMIT_S)
    try:
        target.read(case / entry if entry else case)
        outcome: tuple = ("ok", "")
    except InputTimeout:
        outcome = ("defect", f"hang over {TIME_LIMIT_S} s")
    except MemoryError:
        outcome = ("defect", "MemoryError (over the 2 GiB limit)")
    except (Exception, BaseException) as exc:  # noqa: BLE001 - the harness classifies whatever escapes
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        outcome = _classify(exc)
        if outcome[0] == "defect":
            outcome = (*outcome, "".join(traceback.format_exception(exc))[-3000:])
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    shutil.rmtree(case, ignore_errors=True)
    return (*outcome, time.perf_counter() - t0)


class InProcess:
    """Inputs read in this process (the test suite's short run): the CPU-time limit, no memory limit."""

    def __init__(self, target: str):
        import importlib

        self.target = TARGETS[target]
        for module in self.target.imports:  # before the CPU timer runs: an import is not an input's cost
            importlib.import_module(module)
        self.tmp = tempfile.mkdtemp(prefix=f"fuzz-{target}-")
        self.counter = 0
        self.previous = signal.signal(signal.SIGPROF, _alarm)

    def run(self, files: dict[str, bytes], entry: str) -> tuple:
        self.counter += 1
        return run_one(self.target, Path(self.tmp), self.counter, files, entry)

    def close(self) -> None:
        signal.signal(signal.SIGPROF, self.previous)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Worker:
    """A target's worker process; restarted when it dies or stops answering."""

    def __init__(self, target: str):
        self.target = target
        self.tmp = tempfile.mkdtemp(prefix=f"fuzz-{target}-")
        self.proc = None
        self.startups = 0

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited limits, threads or locks
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, self.target, self.tmp), daemon=True)
        self.proc.start()
        self.startups += 1

    def run(self, files: dict[str, bytes], entry: str) -> tuple:
        fresh = self.proc is None or not self.proc.is_alive()
        if fresh:
            self._start()
        self.conn.send((files, entry))
        # a fresh worker imports first; afterwards its own CPU timer answers at TIME_LIMIT_S
        if self.conn.poll(180 if fresh else WALL_LIMIT_S):
            try:
                return self.conn.recv()
            except EOFError:  # the worker died while reading the input
                return self._died()
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
            self.proc = None
            return ("defect", f"no answer for {WALL_LIMIT_S} s (killed)", "", float(WALL_LIMIT_S))
        return self._died()

    def _died(self) -> tuple:
        self.proc.join()
        code = self.proc.exitcode
        self.proc = None
        return ("defect", f"worker died (exit code {code}: a crash or the memory limit)", "", 0.0)

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- the driver ------------------------------------------------------------------------------------
@dataclass
class Report:
    target: str
    inputs: int = 0
    ok: int = 0
    user_errors: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    findings: dict[str, list] = field(default_factory=dict)  # signature -> [count, example files, traceback]
    interrupted: bool = False

    def line(self) -> str:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        return (
            f"{self.target:13s} inputs {self.inputs:6d}  {rate:6.1f}/s  ok {self.ok:6d}  user errors "
            f"{self.user_errors:6d}  slowest {self.slowest:5.2f} s  distinct failures {len(self.findings)}"
            + ("  (interrupted)" if self.interrupted else "")
        )


def fuzz_target(
    name: str, max_inputs: int, budget: float, seed: int, save: Path | None = None, in_process: bool = False
) -> Report:
    """Fuzz one target: its unmodified seeds, then mutated ones until ``max_inputs`` or ``budget`` seconds."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    target = TARGETS[name]
    with tempfile.TemporaryDirectory() as tmp:
        seeds = target.seeds(Path(tmp))
    if not seeds:
        raise SystemExit(f"{name}: no seed files available")
    others = [b for s in seeds for b in s.files.values()]
    report = Report(name)
    worker = InProcess(name) if in_process else Worker(name)
    start = time.monotonic()

    def record(files, entry, outcome):
        kind, signature, *rest = outcome
        report.slowest = max(report.slowest, outcome[-1])
        if kind == "ok":
            report.ok += 1
        elif kind == "user_error":
            report.user_errors += 1
        else:
            entry_list = report.findings.setdefault(signature, [0, files, rest[0] if len(rest) > 1 else ""])
            entry_list[0] += 1
            if entry_list[0] == 1:
                print(f"  FINDING {name}: {signature}", flush=True)

    try:
        for s in seeds:  # the unmodified seeds first: they must read (or be refused) cleanly
            files = {s.entry: _zip(s.files)} if s.wrap == "zip" else s.files
            record(files, s.entry, worker.run(files, s.entry))
            report.inputs += 1
        start = time.monotonic()  # the budget starts with a warm worker (imports can take a minute)
        chunk = 0
        while report.inputs < max_inputs and time.monotonic() - start < budget:
            n = min(50, max_inputs - report.inputs)  # the budget is checked between runs of 50

            @hseed(seed * 100003 + chunk)
            @settings(
                max_examples=n,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(st.data())
            def one(data):
                s = data.draw(st.sampled_from(seeds), label="seed")
                files = mutate_seed(data, s, others)
                record(files, s.entry, worker.run(files, s.entry))
                report.inputs += 1

            one()
            chunk += 1
    except KeyboardInterrupt:  # Ctrl-C (or kill -INT): report what ran so far
        report.interrupted = True
    finally:
        worker.close()
    report.seconds = time.monotonic() - start
    if save is not None:
        for k, (_count, files, tb) in enumerate(report.findings.values()):
            case = save / name / f"finding{k}"
            case.mkdir(parents=True, exist_ok=True)
            for fname, blob in files.items():
                (case / fname).parent.mkdir(parents=True, exist_ok=True)
                (case / fname).write_bytes(blob)
            (case / "traceback.txt").write_text(tb)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", action="append", help=f"one of {', '.join(TARGETS)} or 'all' (repeatable)")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per target (default 60)")
    p.add_argument("--max-inputs", type=int, default=10**9, help="stop a target after this many inputs")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed replays the same inputs)")
    p.add_argument("--save-findings", type=Path, help="write one input (and traceback) per distinct failure here")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(TARGETS))
        return 0
    names = args.target or ["all"]
    names = list(TARGETS) if "all" in names else names
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}")
    reports = []
    for name in names:
        report = fuzz_target(name, args.max_inputs, args.budget, args.seed, args.save_findings)
        print(report.line(), flush=True)
        for signature, (count, files, tb) in report.findings.items():
            print(f"    {count:5d} x {signature}   e.g. {sorted(files)}")
            if tb:
                print("      " + tb.strip().splitlines()[-1][:300])
        reports.append(report)
        if report.interrupted:
            break
    total = sum(len(r.findings) for r in reports)
    print(f"total: {sum(r.inputs for r in reports)} inputs, {total} distinct failures")
    return 1 if total else 0


if __name__ == "__main__":
    raise SystemExit(main())
