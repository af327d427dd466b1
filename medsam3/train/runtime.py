"""What makes a run stoppable and exactly resumable: signal handling, RNG state, seeding, sampler skip.

A resumed run must continue with the same data order, augmentation and dropout as an uninterrupted
one; the tests compare adapters of both within 1e-6.
"""

from __future__ import annotations

import itertools
import logging
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from .distributed import all_reduce_sum

__all__ = ["SkipSampler", "StopRequest", "rng_state", "seed_everything", "set_rng_state"]

logger = logging.getLogger(__name__)


class StopRequest:
    """First Ctrl-C (or SIGTERM): finish the current optimizer step, save a checkpoint, stop.

    A second Ctrl-C interrupts at once (KeyboardInterrupt), losing only the steps since the last
    checkpoint. Under torchrun every rank gets the signal; ranks agree on stopping through an
    all-reduce, so they stop after the same step.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stop requested: finishing this step and saving a checkpoint (Ctrl-C again to abort now)")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device: torch.device) -> bool:
        """True when any rank was asked to stop."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        return bool(all_reduce_sum(flag).item() > 0)


class SkipSampler(Sampler):
    """The sampler's order for this epoch, without its first ``skip`` indices (resume mid-epoch)."""

    def __init__(self, base: DistributedSampler, skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_s = state["numpy"]
    np.random.set_state(
        ("MT19937", np_s["key"].numpy().astype(np.uint32), np_s["pos"], np_s["has_gauss"], np_s["cached_gaussian"])
    )
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
