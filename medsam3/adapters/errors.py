"""The adapters layer's exceptions, importable without torch (the CLI catches them before torch loads)."""

from __future__ import annotations

__all__ = ["AdapterError", "HubUnavailableError", "TrainedBaseError"]


class AdapterError(ValueError):
    """An adapter file that is missing, unreadable, or does not fit the model and config."""


class TrainedBaseError(AdapterError):
    """An adapter from a run that also trained the base model, about to be applied to another base."""


class HubUnavailableError(ValueError):
    """The Hugging Face hub cannot be reached (or offline mode is on) and what a run needs is not cached."""
