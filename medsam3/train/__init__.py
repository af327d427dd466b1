"""Training: matching and losses (``matcher``, ``loss``), the loop (``trainer``), checkpoints
(``checkpoint``), schedules (``schedule``), validation (``validate``) and DDP helpers (``distributed``)."""
