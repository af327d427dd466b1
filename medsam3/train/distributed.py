"""DDP plumbing for training: the shared helpers of :mod:`medsam3.inference.distributed`.

Batch inference and evaluation scale out with torchrun too, and may not import ``train``; the
one copy lives in ``inference`` and is re-exported here for the training modules.
"""

from __future__ import annotations

from ..inference.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed

__all__ = ["DistInfo", "all_reduce_sum", "barrier", "cleanup", "init_distributed"]
