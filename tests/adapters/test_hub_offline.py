"""Offline or not is decided once, quickly; what is missing (base model and adapter) is named in one line.

The hub is never reached: offline mode, or HF_ENDPOINT on a closed local port; cached repos are laid
out the way huggingface_hub caches them and read by the real huggingface_hub / transformers.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import constants

from medsam3.adapters import hub
from medsam3.adapters.errors import HubUnavailableError
from medsam3.adapters.plan import plan_run
from medsam3.config import config_from_dict, load_config
from tests.conftest import cache_repo, closed_port_url


@pytest.fixture
def unreachable(monkeypatch):
    """HF_HUB_OFFLINE unset and the endpoint a closed local port; counts the probes."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", closed_port_url())
    monkeypatch.setattr(hub, "_PROBED", {})
    probes = []
    real = urllib.request.urlopen

    def counting(request, timeout=None):
        probes.append((request.full_url, timeout))
        return real(request, timeout=timeout)

    monkeypatch.setattr(hub.urllib.request, "urlopen", counting)
    return probes


def _cfg(tmp_path, **model):
    return config_from_dict({"model": {"cache_dir": str(tmp_path / "cache"), **model}})


@pytest.mark.parametrize("mode", ["offline", "unreachable"])
def test_cold_cache_names_base_and_adapter_and_the_command_in_one_line(tmp_path, monkeypatch, mode, request):
    if mode == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        request.getfixturevalue("unreachable")
    with pytest.raises(HubUnavailableError) as err:
        plan_run(_cfg(tmp_path), "lal-Joey/MedSAM3_v1")
    msg = str(err.value)
    assert "\n" not in msg and ".." not in msg and "HF_HUB_OFFLINE=0" not in msg
    assert "base model facebook/sam3, adapter lal-Joey/MedSAM3_v1" in msg
    assert "`medsam3-download --weights lal-Joey/MedSAM3_v1`" in msg
    assert ("HF_HUB_OFFLINE=1" in msg) == (mode == "offline")
    assert ("Connection refused" in msg) == (mode == "unreachable")


def test_the_hub_is_probed_once_with_a_short_timeout(tmp_path, unreachable):
    for _ in range(3):  # the CLI's early check, load_model's, ...: one probe
        with pytest.raises(HubUnavailableError):
            plan_run(_cfg(tmp_path), "lal-Joey/MedSAM3_v1")
    assert unreachable == [(constants.ENDPOINT, hub.PROBE_TIMEOUT_S)]
    assert hub.PROBE_TIMEOUT_S <= 5


def test_only_what_is_missing_is_named(tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    files = {p.name: p for p in Path(tiny_checkpoint).iterdir() if p.is_file()}
    cache_repo(tmp_path / "cache", "tiny-org/sam3", files)
    with pytest.raises(HubUnavailableError) as err:
        plan_run(_cfg(tmp_path, name="tiny-org/sam3"), "lal-Joey/MedSAM3_v1")
    assert ": adapter lal-Joey/MedSAM3_v1." in str(err.value) and "base model" not in str(err.value)


def test_nothing_from_the_hub_means_no_probe(tmp_path, unreachable, tiny_config):
    assert plan_run(load_config(tiny_config), "none").hub_offline is False  # local base, no adapter
    assert unreachable == []


def test_unreachable_hub_with_a_warm_cache_loads_from_the_cache(tmp_path, unreachable, tiny_checkpoint):
    """A hub id for the base, HF_HUB_OFFLINE unset, no network: the cached snapshot loads, no error."""
    from transformers import Sam3Model

    from medsam3.adapters.loading import load_model

    files = {p.name: p for p in Path(tiny_checkpoint).iterdir() if p.is_file()}
    cache_repo(tmp_path / "cache", "tiny-org/sam3", files)
    model, processor, origin = load_model(_cfg(tmp_path, name="tiny-org/sam3"), "none")
    assert isinstance(model, Sam3Model) and origin.startswith("none (the base model")
    assert len(unreachable) == 1


def test_hub_items_leave_local_sources_alone(tmp_path, tiny_checkpoint):
    cfg = _cfg(tmp_path, name=str(tiny_checkpoint))
    assert hub.hub_items(cfg.model, "none") == []
    assert hub.hub_items(cfg.model, str(tmp_path)) == []
    items = hub.hub_items(_cfg(tmp_path).model, "lal-Joey/MedSAM3_v1:ckpt/best_lora_weights.pt@v1")
    assert [str(i) for i in items] == ["base model facebook/sam3", "adapter lal-Joey/MedSAM3_v1@v1"]
    assert items[1].alternatives == (("ckpt/best_lora_weights.pt",),)
