"""Training: matching, losses (and, from other modules, the training loop)."""
