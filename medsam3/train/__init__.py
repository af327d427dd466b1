"""Training: matching and losses (``matcher``, ``loss``), the loop (``trainer``), checkpoints
(``checkpoint``), schedules (``schedule``), validation (``validate``) and DDP helpers (``distributed``).

May import: evaluation (metrics for validation), inference (prompt encoding shared with the
Predictor), adapters, model, config and the leaves data, io and outputs. Only the CLI imports train.
"""
