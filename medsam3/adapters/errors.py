"""The adapters layer's exceptions, importable without torch (the CLI catches them before torch loads)."""

from __future__ import annotations

from ..errors import UserError

__all__ = ["AdapterError", "HubUnavailableError", "TrainedBaseError"]


class AdapterError(UserError):
    """An adapter file that is missing, unreadable, or does not fit the model and config."""


class TrainedBaseError(AdapterError):
    """An adapter from a run that also trained the base model, about to be applied to another base."""


class HubUnavailableError(UserError):
    """The Hugging Face hub cannot be reached (or offline mode is on) and what a run needs is not cached."""
