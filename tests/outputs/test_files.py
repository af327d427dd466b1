"""The atomic writers on a full disk: one DiskFullError naming the file, the previous file untouched."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medsam3.errors import DiskFullError, UserError
from medsam3.outputs import save_png, write_json


def _full_disk_at(path: Path) -> None:
    """Make the writer's temporary file /dev/full: the kernel answers every write with ENOSPC (no root needed)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    os.symlink("/dev/full", path.with_name(f".tmp{os.getpid()}_{path.name}"))


def test_write_json_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "detections.json"
    write_json({"finished": True}, target)
    _full_disk_at(target)
    with pytest.raises(DiskFullError) as info:
        write_json({"finished": False, "big": list(range(100_000))}, target)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert message.startswith(f"no space left on the device while writing the output {target}")
    assert "--skip-existing" in message and "--resume" in message
    assert target.read_text() == '{\n "finished": true\n}'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_save_png_on_a_full_disk(tmp_path):
    target = tmp_path / "mask.png"
    _full_disk_at(target)
    with pytest.raises(DiskFullError, match="mask.png"):
        save_png(np.zeros((64, 64), np.uint8), target)
    assert not target.exists()


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    target = tmp_path / "out.json"
    os.symlink("/proc/version", target.with_name(f".tmp{os.getpid()}_{target.name}"))  # read-only: EACCES/EIO
    with pytest.raises(OSError) as info:
        write_json({"a": 1}, target)
    assert not isinstance(info.value, DiskFullError)
