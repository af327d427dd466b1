"""medsam3-download warms the cache for a config and prints where; afterwards the same run works offline.

The hub is a stub at the huggingface_hub boundary (``snapshot_download`` / ``hf_hub_download``) that
lays files out as huggingface_hub caches them; the reachability probe answers from a local HTTP server.
Then the real huggingface_hub and transformers read that cache with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants
from huggingface_hub import errors as hub_errors
from PIL import Image

from medsam3.__main__ import main as python_m_medsam3
from medsam3.adapters import hub
from medsam3.cli.download import main as download_main
from medsam3.config import load_config
from medsam3.inference.predictor import Predictor
from tests.conftest import cache_repo, closed_port_url, run_cli, save_tiny_adapter, write_config


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def reachable_hub(monkeypatch):
    """The probe finds a hub (a local server); downloads go to stubs that fill the cache."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(hub, "_PROBED", {})
    yield monkeypatch
    server.shutdown()


@pytest.fixture
def tiny_adapter(tmp_path, tiny_config):
    """A PEFT adapter for the tiny model with non-zero B (so it changes the output)."""
    return save_tiny_adapter(tiny_config, tmp_path / "adapter_src")


def test_download_then_offline_inference(tmp_path, reachable_hub, tiny_checkpoint, tiny_adapter, rgb_image, capsys):
    cache = tmp_path / "cache"
    remote = {
        "tiny-org/sam3": {p.name: p for p in Path(tiny_checkpoint).iterdir() if p.is_file()},
        "tiny-org/adapter": {p.name: p for p in Path(tiny_adapter).iterdir() if p.is_file()},
    }
    calls = []

    def snapshot_stub(repo_id, revision=None, cache_dir=None, ignore_patterns=None, local_files_only=False):
        calls.append(("snapshot", repo_id, tuple(ignore_patterns or ())))
        return str(cache_repo(Path(cache_dir), repo_id, remote[repo_id]))

    def file_stub(repo_id, filename, revision=None, cache_dir=None, local_files_only=False):
        calls.append(("file", repo_id, filename))
        if filename not in remote[repo_id]:
            raise hub_errors.RemoteEntryNotFoundError(f"{filename} not in {repo_id}", response=None)
        return str(cache_repo(Path(cache_dir), repo_id, {filename: remote[repo_id][filename]}) / filename)

    reachable_hub.setattr(hub, "snapshot_download", snapshot_stub)
    reachable_hub.setattr(hub, "hf_hub_download", file_stub)
    config = write_config(
        tmp_path / "cfg.yaml",
        "tiny-org/sam3",
        model={"cache_dir": str(cache)},
    )
    assert download_main(["--config", str(config), "--weights", "tiny-org/adapter", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"base model tiny-org/sam3 -> {cache / 'models--tiny-org--sam3' / 'snapshots' / ('1' * 40)}",
        f"adapter tiny-org/adapter -> {cache / 'models--tiny-org--adapter' / 'snapshots' / ('1' * 40)}",
    ]
    assert ("snapshot", "tiny-org/sam3", tuple(hub.BASE_IGNORE)) in calls and "*.pt" in hub.BASE_IGNORE

    # Offline now (the stubs are gone, real huggingface_hub reads the cache): the same run works and
    # matches the model and adapter read from their local folders.
    reachable_hub.undo()
    assert constants.HF_HUB_OFFLINE
    image = tmp_path / "scan.png"
    Image.fromarray(rgb_image).save(image)
    out = tmp_path / "res.json"
    args = ["--config", config, "--weights", "tiny-org/adapter", "--image", image, "--prompt", "liver"]
    assert run_cli(*args, "--threshold", "0", "--json", out, "--output", tmp_path / "o.png") == 0
    got = json.loads(out.read_text())
    local = write_config(tmp_path / "local.yaml", tiny_checkpoint)
    predictor = Predictor.from_config(load_config(local), weights=str(tiny_adapter), device="cpu")
    predictor.set_image(rgb_image)
    expected = predictor.predict(["liver"], threshold=0.0)[0]
    scores = [d["score"] for p in got["prompts"] for d in p["detections"]]
    assert scores
    np.testing.assert_allclose(sorted(scores), sorted(expected.scores.tolist()), atol=1e-5)


def test_download_offline_with_a_cold_cache_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = download_main(["--weights", "lal-Joey/MedSAM3_v1", "--cache-dir", str(tmp_path / "c"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cannot download base model facebook/sam3, adapter lal-Joey/MedSAM3_v1" in err
    assert "unset HF_HUB_OFFLINE" in err


def test_download_unreachable_hub_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", closed_port_url())
    monkeypatch.setattr(hub, "_PROBED", {})
    assert python_m_medsam3(["download", "--cache-dir", str(tmp_path / "c"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "medsam3-download: error: cannot download base model facebook/sam3" in err and "cannot be reached" in err


def test_local_sources_need_no_download(tiny_config, capsys):
    assert download_main(["--config", str(tiny_config), "--weights", "none"]) == 0
    assert capsys.readouterr().out == ""
