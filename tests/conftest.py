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
