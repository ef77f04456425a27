"""Trainer: the iteration loop of DESIGN §2, its configuration, checkpoints and metrics."""
