"""What one upload may cost the server: refused before any work, with a message; old files swept."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import pytest

from medsam3.app.limits import UploadLimits, UploadRefused, prune_upload_scratch, prune_work_dir
from medsam3.app.main import main
from medsam3.app.service import AppService
from medsam3.errors import UserError


def _testfile(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


@pytest.fixture
def service(tmp_path):
    """The upload side of the service needs no model."""
    return AppService(None, work_dir=tmp_path / "work", limits=UploadLimits(max_upload_mb=1, max_unzipped_mb=1))


def _unzipped(service) -> list[Path]:
    return [p for p in service.work_dir.iterdir() if p.name.startswith("unzipped-")]


def test_a_zip_member_with_an_absolute_name_cannot_reach_a_server_file(service, tmp_path):
    """The member '/…/outside.dcm' is unpacked inside the work dir; the app used to read the server's file
    at that absolute path instead (dest / '/abs' is '/abs')."""
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(_testfile("MR_small.dcm").read_bytes())  # what must never be shown
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(str(outside), _testfile("CT_small.dcm").read_bytes())
    upload = service.open(archive)
    assert upload.loaded.path.is_relative_to(service.work_dir)
    assert upload.loaded.image.meta["modality"] == "CT"  # the zipped file, not the MR outside


def test_zips_over_the_limits_are_refused_before_unpacking(service, tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("series/IM1", b"\0" * (2 << 20))  # 2 MB unpacked, 2 KB packed
    assert bomb.stat().st_size < 10_000
    with pytest.raises(UploadRefused, match=r"unpacks to 2.0 MB, over this server's limit of 1 MB"):
        service.open(bomb)
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for k in range(5):
            zf.writestr(f"IM{k}", b"x")
    with pytest.raises(UploadRefused, match="holds 5 files, over this server's limit of 4"):
        AppService(None, work_dir=tmp_path / "w2", limits=UploadLimits(max_zip_files=4)).open(many)
    assert not _unzipped(service)


def test_a_corrupt_zip_is_a_user_error(service, tmp_path):
    """Found by the fuzzer: a damaged deflate stream raised zlib.error, a bad member name OSError."""
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("CT_small.dcm", _testfile("CT_small.dcm").read_bytes())
    data = bytearray(good.read_bytes())
    data[60:80] = bytes(20)  # inside the compressed member
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not a readable zip file"):
        service.open(bad)


def test_an_upload_over_the_size_limit_is_refused_before_reading(service, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(3 << 20))
    with pytest.raises(UploadRefused, match=r"3.0 MB is over this server's upload limit of 1 MB"):
        service.open(big)


def test_old_results_and_upload_scratch_are_swept(tmp_path):
    work = tmp_path / "work"
    old, new, other = work / "run-00001-1", work / "run-00002-1", work / "notes"
    for d in (old, new, other):
        d.mkdir(parents=True)
        (d / "f").write_text("x")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(other, (an_hour_ago, an_hour_ago))
    assert prune_work_dir(work, max_age_s=600) == 1
    assert sorted(p.name for p in work.iterdir()) == ["notes", "run-00002-1"]
    scratch = tmp_path / "gradio"
    scratch.mkdir()
    (scratch / "tmpabc").write_text("")
    (scratch / "tmpnew").write_text("")
    os.utime(scratch / "tmpabc", (an_hour_ago, an_hour_ago))
    assert prune_upload_scratch(scratch, 600) == 1 and [p.name for p in scratch.iterdir()] == ["tmpnew"]


def test_limit_flags_are_checked(capsys):
    assert main(["--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--max-upload-mb", "--max-unzipped-mb", "--max-zip-files", "--keep-minutes"))
