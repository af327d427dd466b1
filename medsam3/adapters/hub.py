"""The Hugging Face hub: adapters ``owner/repo[:file][@revision]`` (e.g. ``lal-Joey/MedSAM3_v1``) and
the base model's repo (``model.name``, e.g. ``facebook/sam3``).

Downloads go through ``huggingface_hub`` into ``model.cache_dir`` with the user's token
(``HF_TOKEN`` or ``hf auth login``). Whether the hub is usable is decided once per run, before
anything is fetched (:func:`prepare_hub`): ``HF_HUB_OFFLINE=1``, or one short probe of the endpoint.
Offline, everything is read from the cache without touching the network (no timeouts, no retries),
and what is not cached is named in one line, with the command that fetches it
(``medsam3-download``, :func:`download_for_config`). Every failure is one line that says what to do.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..config import Config, ModelConfig
from ..errors import UserError
from .concepts import is_demo
from .errors import AdapterError, HubUnavailableError

__all__ = [
    "DEFAULT_FILES",
    "PROBE_TIMEOUT_S",
    "HubItem",
    "HubRef",
    "download_adapter",
    "download_for_config",
    "hub_items",
    "hub_model_id",
    "hub_offline_reason",
    "looks_like_hub_ref",
    "parse_hub_ref",
    "prepare_hub",
]

logger = logging.getLogger(__name__)

# Same names as peft_format's (which imports torch; this module must not, see prepare_hub's callers).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Tried in order when the reference names no file: a PEFT adapter, then upstream's .pt.
DEFAULT_FILES = (ADAPTER_CONFIG, "best_lora_weights.pt")
# One attempt, this long, decides whether the hub is reachable (huggingface_hub's own timeouts are 10 s
# per request, with retries: 53 s of silence on a machine without network).
PROBE_TIMEOUT_S = 3.0
_PROBE_REUSE_S = 60.0
_PROBED: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when, reason): one probe per run
# Base-model files worth downloading: transformers reads config, safetensors weights, processor and
# tokenizer files. facebook/sam3 also holds Meta's 3.4 GB sam3.pt, which transformers never reads.
BASE_IGNORE = ["*.pt", "*.pth", "*.bin", "*.ckpt", "*.onnx", "*.msgpack", "*.h5"]


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


def looks_like_hub_ref(source: str) -> bool:
    """``owner/repo[...]`` that is not a local path."""
    base = source.split("@")[0].split(":")[0]
    return base.count("/") == 1 and not Path(base).exists() and not source.startswith((".", "/", "~"))


def hub_model_id(model_cfg: ModelConfig) -> str | None:
    """``model.name`` when it names a hub repo (not a local directory), else None."""
    name = model_cfg.name
    local = Path(name).expanduser()
    if local.is_dir() or name.startswith((".", "/", "~")) or local.suffix:
        return None
    return name


@dataclass(frozen=True)
class HubItem:
    """Something a run needs from the hub, and the files that make it usable from the cache."""

    kind: str  # "base model" or "adapter"
    repo_id: str
    revision: str | None
    alternatives: tuple[tuple[str, ...], ...]
    """Cached if all files of any one alternative are."""

    def __str__(self) -> str:
        return f"{self.kind} {self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    def is_cached(self, cache_dir: str | None) -> bool:
        def cached(name: str) -> bool:
            found = try_to_load_from_cache(self.repo_id, name, cache_dir=cache_dir, revision=self.revision)
            return isinstance(found, str)

        return any(all(cached(f) for f in files) for files in self.alternatives)


def hub_items(model_cfg: ModelConfig, weights: str | None) -> list[HubItem]:
    """What the base model and the adapter ``weights`` (a source as ``--weights`` takes it) need from the hub."""
    items = []
    base = hub_model_id(model_cfg)
    if base is not None:
        weights_files = (("config.json", "model.safetensors"), ("config.json", "model.safetensors.index.json"))
        items.append(HubItem("base model", base, model_cfg.revision, weights_files))
    if (
        weights is not None
        and str(weights).lower() != "none"
        and not is_demo(weights)
        and looks_like_hub_ref(str(weights))
    ):
        ref = parse_hub_ref(str(weights))
        if ref.filename:
            files: tuple[tuple[str, ...], ...] = ((ref.filename,),)
            if Path(ref.filename).name == ADAPTER_CONFIG:
                files = ((ref.filename, str(Path(ref.filename).with_name(ADAPTER_WEIGHTS))),)
        else:
            files = ((ADAPTER_CONFIG, ADAPTER_WEIGHTS), ("best_lora_weights.pt",))
        items.append(HubItem("adapter", ref.repo_id, ref.revision, files))
    return items


def hub_offline_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used now (None if it can): offline mode, or one failed probe of the endpoint.

    The probe is a single HEAD request with a short timeout through urllib (which honours the
    HTTP(S)_PROXY variables); any HTTP answer, even an error status, means the hub is reachable.
    """
    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    endpoint = constants.ENDPOINT
    seen = _PROBED.get(endpoint)
    if seen is not None and time.monotonic() - seen[0] < _PROBE_REUSE_S:
        return seen[1]  # the CLI checks before torch loads, then load_model again: one probe per run
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            reason = None
    except urllib.error.HTTPError:
        reason = None  # it answered
    except (urllib.error.URLError, OSError) as exc:  # refused, DNS failure, timeout, TLS failure
        reason = f"the hub ({endpoint}) cannot be reached: {getattr(exc, 'reason', exc)}"
    _PROBED[endpoint] = (time.monotonic(), reason)
    return reason


def _download_command(cfg: Config, weights: str | None) -> str:
    parts = ["medsam3-download"]
    config_file = (cfg.source or "").split(" (")[0]
    if config_file and Path(config_file).is_file():
        parts += ["--config", config_file]
    elif hub_model_id(cfg.model) not in (None, ModelConfig.name):
        parts += ["--set", f"model.name={cfg.model.name}"]
    if weights is not None and str(weights).lower() != "none" and weights != cfg.model.lora_weights:
        parts += ["--weights", str(weights)]
    return " ".join(parts)


def prepare_hub(cfg: Config, weights: str | None) -> bool:
    """Decide once whether this run may use the network; True means "read the cache only".

    Raises :class:`HubUnavailableError` (one line, naming every missing item and the command that
    fetches them) when the hub is unusable and something needed is not cached. Costs nothing when
    the run needs nothing from the hub.
    """
    items = hub_items(cfg.model, weights)
    if not items:
        return False
    reason = hub_offline_reason()
    if reason is None:
        return False
    missing = [item for item in items if not item.is_cached(cfg.model.cache_dir)]
    if missing:
        cache = cfg.model.cache_dir or constants.HF_HUB_CACHE
        raise HubUnavailableError(
            f"{reason}, and not in the local cache ({cache}): {', '.join(map(str, missing))}. "
            f"Fetch them once where the hub is reachable with `{_download_command(cfg, weights)}` "
            f"(same cache; or copy the cache folder over), or point model.name / --weights at local copies"
        )
    logger.info("%s; using the local cache for %s", reason, ", ".join(map(str, items)))
    return True


class _NotCached(Exception):
    """Offline (or unreachable) and this file is not in the local cache."""


def _offline_error(where: str, text: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"{where}: not in the local cache and the hub cannot be reached (offline mode or no network); "
        f"fetch it once where the hub is reachable with `medsam3-download --weights {text}`, "
        f"or pass a local file with --weights"
    )


def _fetch(ref: HubRef, filename: str, cache_dir: str | None, local_files_only: bool = False) -> Path:
    page = f"https://huggingface.co/{ref.repo_id}"
    where = f"{ref.repo_id}/{filename}" + (f"@{ref.revision}" if ref.revision else "")
    try:
        return Path(
            hf_hub_download(
                ref.repo_id, filename, revision=ref.revision, cache_dir=cache_dir, local_files_only=local_files_only
            )
        )
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


def download_adapter(text: str, cache_dir: str | None = None, local_files_only: bool = False) -> Path:
    """Local path of the adapter a hub reference names (a ``.pt`` file or a PEFT directory)."""
    ref = parse_hub_ref(text)
    names = (ref.filename,) if ref.filename else DEFAULT_FILES
    not_cached = []
    for name in names:
        try:
            path = _fetch(ref, name, cache_dir, local_files_only)
            if path.name == ADAPTER_CONFIG:  # a PEFT adapter: its weights sit beside the config
                weights_name = str(Path(name).with_name(ADAPTER_WEIGHTS))
                _fetch(ref, weights_name, cache_dir, local_files_only)
                path = path.parent
        except FileNotFoundError:
            continue
        except _NotCached as exc:
            not_cached.append(str(exc))
            continue
        logger.info("adapter %s -> %s", text, path)
        return path
    if not_cached:
        raise _offline_error(" / ".join(not_cached), text)
    raise AdapterError(
        f"{ref.repo_id}: none of {list(names)} found in the repository; name the file, e.g. "
        f"{ref.repo_id}:path/to/best_lora_weights.pt"
    )


def download_base_model(model_cfg: ModelConfig, local_files_only: bool = False) -> Path:
    """Fetch the base model's repo (transformers' files only) into the cache; returns its snapshot folder."""
    repo_id = hub_model_id(model_cfg)
    if repo_id is None:
        raise UserError(f"model.name={model_cfg.name!r} is a local path, not a hub repo: nothing to download")
    page = f"https://huggingface.co/{repo_id}"
    where = repo_id + (f"@{model_cfg.revision}" if model_cfg.revision else "")
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=model_cfg.revision,
                cache_dir=model_cfg.cache_dir,
                ignore_patterns=BASE_IGNORE,
                local_files_only=local_files_only,
            )
        )
    except GatedRepoError as exc:
        raise AdapterError(
            f"{where}: the repository is gated; request access at {page} and then run `hf auth login` (or set HF_TOKEN)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise AdapterError(f"{where}: revision {model_cfg.revision!r} does not exist in {repo_id}") from exc
    except RepositoryNotFoundError as exc:
        raise AdapterError(f"{where}: repository not found, or private without access; check model.name") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise HubUnavailableError(
            f"{where}: the hub cannot be reached (offline mode or no network); run this where it can"
        ) from exc
    except HfHubHTTPError as exc:
        raise AdapterError(f"{where}: download failed ({exc}); try again") from exc


def download_for_config(cfg: Config, weights: str | None = None) -> list[tuple[HubItem, Path]]:
    """Warm the cache with everything a run of ``cfg`` (and ``weights``) needs from the hub.

    Returns what was fetched (or found cached, when the hub is unusable) and where it lies; empty
    when everything is local. The hub's state is decided once, as for a run (:func:`prepare_hub`).
    """
    source = weights if weights is not None else cfg.model.lora_weights
    items = hub_items(cfg.model, source)
    if not items:
        return []
    reason = hub_offline_reason()
    if reason is not None:
        missing = [item for item in items if not item.is_cached(cfg.model.cache_dir)]
        if missing:
            unset = "; unset HF_HUB_OFFLINE to download" if constants.HF_HUB_OFFLINE else ""
            raise HubUnavailableError(
                f"cannot download {', '.join(map(str, missing))}: {reason}{unset}; run this where the hub is "
                f"reachable, then copy the cache ({cfg.model.cache_dir or constants.HF_HUB_CACHE}) over"
            )
        logger.info("%s; everything is cached already", reason)
    fetched = []
    for item in items:
        if item.kind == "base model":
            path = download_base_model(cfg.model, local_files_only=reason is not None)
        else:
            path = download_adapter(str(source), cache_dir=cfg.model.cache_dir, local_files_only=reason is not None)
        fetched.append((item, path))
    return fetched
