"""A batch that fills the disk stops with one line naming the file; every finished input stays whole,
and ``--skip-existing`` after space is freed finishes the rest to the same outputs as a run with room."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medsam3.cli.infer import main

N_IMAGES = 6


def _inputs(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        img = (rng.random((72, 96, 3)) * 200).astype(np.uint8)
        img[10 + i : 40 + i, 20:60] = 240
        Image.fromarray(img).save(folder / f"scan{i}.png")
    vol = rng.normal(40, 300, (48, 40, 6)).astype(np.int16)  # CT-like, a label map per volume
    nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1])).to_filename(folder / "ct.nii.gz")
    return folder


def _run(config, inputs: Path, out: Path, *extra) -> int:
    args = ["--config", config, "--input-dir", inputs, "--output-dir", out, "--prompt", "liver", "tumor"]
    args += ["--weights", "none", "--threshold", "0.1", "--binary-masks", "-q", *extra]
    return main([str(a) for a in args])


def _done(out: Path) -> list[str]:
    return sorted(p.parent.name for p in [*out.glob("*/detections.json"), *out.glob("*/legend.json")])


def _files(folder: Path) -> dict[str, bytes]:
    """What a finished input left: masks and label maps compared by content (PNG bytes, NIfTI voxels)."""
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.suffix == ".png":
            out[str(f.relative_to(folder))] = np.asarray(Image.open(f)).tobytes()
        elif f.name.endswith(".nii.gz"):
            out[str(f.relative_to(folder))] = np.asarray(nib.load(f).dataobj).tobytes()
    return out


def _rows(out: Path) -> list[tuple]:
    with open(out / "summary.csv", newline="") as fh:
        return sorted(tuple((k, v) for k, v in r.items() if k != "seconds") for r in csv.DictReader(fh))


def test_full_disk_stops_the_batch_keeps_finished_outputs_and_skip_existing_finishes(
    tiny_config, tmp_path, small_disk, capsys
):
    inputs = _inputs(tmp_path / "in")
    reference = tmp_path / "reference"
    assert _run(tiny_config, inputs, reference) == 0
    total = sum(f.stat().st_size for f in reference.rglob("*") if f.is_file())
    capsys.readouterr()

    disk = small_disk(f"{total // 2 // 1024}k")  # room for about half the outputs
    out = disk.path / "out"
    assert _run(tiny_config, inputs, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert "error: no space left on the device while writing the output " + str(out) in err[0], err[0]
    done = _done(out)
    assert 0 < len(done) < N_IMAGES + 1, done
    for name in done:  # every input marked finished is whole and equal to the run with room
        assert _files(out / name) == _files(reference / name), name
    assert not [p for p in out.rglob(".tmp*")], "no half-written file is left"

    disk.resize("64m")  # space freed
    mtimes = {name: (out / name).stat().st_mtime_ns for name in done}
    assert _run(tiny_config, inputs, out, "--skip-existing") == 0
    assert _done(out) == _done(reference)
    assert {name: (out / name).stat().st_mtime_ns for name in done} == mtimes, "finished inputs were not redone"
    for name in _done(reference):
        assert _files(out / name) == _files(reference / name), name
    assert _rows(out) == _rows(reference)
