"""remix-rft: rollout-efficient RL finetuning (PPO, GRPO, ReMix)."""

__version__ = "0.1.0"
