"""Hub references: the real huggingface_hub cache in offline mode, and a stub for network outcomes."""

import shutil

import pytest
import torch
from huggingface_hub import errors as hub_errors

from medsam3.adapters import hub
from medsam3.adapters.errors import HubUnavailableError
from medsam3.adapters.hub import parse_hub_ref
from medsam3.adapters.loading import read_adapter
from medsam3.adapters.peft_format import AdapterError


@pytest.fixture
def tiny_upstream_pt(tmp_path):
    state = {
        "transformer.decoder.layers.0.linear1.lora.lora_A": torch.randn(32, 4),
        "transformer.decoder.layers.0.linear1.lora.lora_B": torch.randn(4, 64),
    }
    path = tmp_path / "best_lora_weights.pt"
    torch.save(state, path)
    return path


def test_parse_hub_ref():
    assert parse_hub_ref("lal-Joey/MedSAM3_v1") == hub.HubRef("lal-Joey/MedSAM3_v1")
    assert parse_hub_ref("lal-Joey/MedSAM3_v1:ckpt/best_lora_weights.pt@v1") == hub.HubRef(
        "lal-Joey/MedSAM3_v1", "ckpt/best_lora_weights.pt", "v1"
    )
    with pytest.raises(AdapterError, match="not a hub reference"):
        parse_hub_ref("no slash here")


def warm_cache(cache_dir, repo_id, filename, source, commit="0" * 40):
    """Lay a file out the way huggingface_hub caches it (refs/main -> snapshots/<commit>/file)."""
    root = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    target = root / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)
    return target


def test_offline_with_warm_cache_uses_real_huggingface_hub(tmp_path, tiny_upstream_pt):
    cached = warm_cache(tmp_path / "cache", "lal-Joey/MedSAM3_v1", "best_lora_weights.pt", tiny_upstream_pt)
    adapter = read_adapter("lal-Joey/MedSAM3_v1", cache_dir=str(tmp_path / "cache"))
    assert adapter.origin == str(cached)
    assert adapter.rank == 4 and len(adapter.state) == 2


def test_offline_with_cold_cache_says_what_to_do(tmp_path):
    with pytest.raises(HubUnavailableError, match="not in the local cache.*medsam3-download --weights lal-Joey") as err:
        read_adapter("lal-Joey/MedSAM3_v1:best_lora_weights.pt", cache_dir=str(tmp_path / "empty"))
    assert "HF_HUB_OFFLINE=0" not in str(err.value)


def http_error(cls, status):
    import httpx2

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x/y/resolve/main/f"))
    return cls(f"{status}", response=response)


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            lambda: http_error(hub_errors.GatedRepoError, 403),
            r"gated; request access at https://huggingface.co/lal-Joey/MedSAM3_v1 and then run `hf auth login`",
        ),
        (lambda: http_error(hub_errors.RepositoryNotFoundError, 404), "repository not found.*hf auth login"),
        (lambda: http_error(hub_errors.RevisionNotFoundError, 404), "revision"),
        (lambda: hub_errors.OfflineModeIsEnabled("offline"), "cannot be reached.*medsam3-download"),
        (lambda: http_error(hub_errors.HfHubHTTPError, 500), "download failed"),
    ],
)
def test_hub_failures_are_one_actionable_line(monkeypatch, error, expected):
    def stub(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        raise error()

    monkeypatch.setattr(hub, "hf_hub_download", stub)
    with pytest.raises((AdapterError, HubUnavailableError), match=expected) as err:
        read_adapter("lal-Joey/MedSAM3_v1@main")
    assert "\n" not in str(err.value)


def test_hub_tries_peft_then_upstream_file(monkeypatch, tiny_upstream_pt):
    asked = []

    def stub(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        asked.append(filename)
        if filename == "best_lora_weights.pt":
            return str(tiny_upstream_pt)
        raise http_error(hub_errors.RemoteEntryNotFoundError, 404)

    monkeypatch.setattr(hub, "hf_hub_download", stub)
    adapter = read_adapter("lal-Joey/MedSAM3_v1", cache_dir="/nonexistent")
    assert asked == ["adapter_config.json", "best_lora_weights.pt"]
    assert adapter.rank == 4

    asked.clear()
    with pytest.raises(AdapterError, match="none of .*'other.pt'.* found"):
        read_adapter("lal-Joey/MedSAM3_v1:other.pt")
