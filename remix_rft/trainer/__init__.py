"""Trainer: the iteration loop of docs/design.md §1, its configuration, checkpoints and metrics."""
