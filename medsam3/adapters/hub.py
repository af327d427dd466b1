"""Adapters from the Hugging Face hub: ``owner/repo[:file][@revision]``, e.g. ``lal-Joey/MedSAM3_v1``.

Downloads go through ``huggingface_hub`` into ``model.cache_dir`` with the user's token
(``HF_TOKEN`` or ``hf auth login``). ``HF_HUB_OFFLINE=1`` with a warm cache works; every
failure becomes one :class:`~medsam3.adapters.peft_format.AdapterError` line that says what to run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError

__all__ = ["DEFAULT_FILES", "HubRef", "download_adapter", "parse_hub_ref"]

logger = logging.getLogger(__name__)

# Tried in order when the reference names no file: a PEFT adapter, then upstream's .pt.
DEFAULT_FILES = (ADAPTER_CONFIG, "best_lora_weights.pt")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    filename: str | None = None
    revision: str | None = None


def parse_hub_ref(text: str) -> HubRef:
    m = re.fullmatch(r"(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<file>[^@]+))?(?:@(?P<rev>.+))?", text.strip())
    if not m:
        raise AdapterError(
            f"{text!r}: not a hub reference; expected owner/repo, owner/repo:file.pt or owner/repo:file.pt@revision"
        )
    return HubRef(m["repo"], m["file"], m["rev"])


class _NotCached(Exception):
    """Offline (or unreachable) and this file is not in the local cache."""


def _offline_error(where: str) -> AdapterError:
    return AdapterError(
        f"{where}: not in the local cache and the hub cannot be reached (offline mode or no network); "
        f"connect and set HF_HUB_OFFLINE=0 to download it once, or pass a local file with --weights"
    )


def _fetch(ref: HubRef, filename: str, cache_dir: str | None) -> Path:
    page = f"https://huggingface.co/{ref.repo_id}"
    where = f"{ref.repo_id}/{filename}" + (f"@{ref.revision}" if ref.revision else "")
    try:
        return Path(hf_hub_download(ref.repo_id, filename, revision=ref.revision, cache_dir=cache_dir))
    except GatedRepoError as exc:
        raise AdapterError(
            f"{where}: the repository is gated; request access at {page} and then run `hf auth login` (or set HF_TOKEN)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise AdapterError(f"{where}: revision {ref.revision!r} does not exist in {ref.repo_id}") from exc
    except RepositoryNotFoundError as exc:
        raise AdapterError(
            f"{where}: repository not found, or private without access; check the id or run `hf auth login`"
        ) from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise _NotCached(where) from exc
    except EntryNotFoundError as exc:
        raise FileNotFoundError(where) from exc
    except HfHubHTTPError as exc:
        raise AdapterError(f"{where}: download failed ({exc}); try again or pass a local file") from exc


def download_adapter(text: str, cache_dir: str | None = None) -> Path:
    """Local path of the adapter a hub reference names (a ``.pt`` file or a PEFT directory)."""
    ref = parse_hub_ref(text)
    names = (ref.filename,) if ref.filename else DEFAULT_FILES
    not_cached = []
    for name in names:
        try:
            path = _fetch(ref, name, cache_dir)
            if path.name == ADAPTER_CONFIG:  # a PEFT adapter: its weights sit beside the config
                weights_name = str(Path(name).with_name(ADAPTER_WEIGHTS))
                _fetch(ref, weights_name, cache_dir)
                path = path.parent
        except FileNotFoundError:
            continue
        except _NotCached as exc:
            not_cached.append(str(exc))
            continue
        logger.info("adapter %s -> %s", text, path)
        return path
    if not_cached:
        raise _offline_error(" / ".join(not_cached))
    raise AdapterError(
        f"{ref.repo_id}: none of {list(names)} found in the repository; name the file, e.g. "
        f"{ref.repo_id}:path/to/best_lora_weights.pt"
    )
