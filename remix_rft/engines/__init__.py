"""Engines: models, log-probabilities and rollout backends."""
