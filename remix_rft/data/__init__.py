"""Data layer: tasks (prompts + verifiers), datasets and the replay buffer."""
