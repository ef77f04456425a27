"""ReMix inside TRL: a GRPOTrainer script with one line changed (docs/python-api.md,
"ReMix in TRL"). Trains the embedded model on the embedded arithmetic task on CPU.

    python examples/trl_remix.py [MAX_STEPS] [OUTPUT_DIR]
"""

import sys

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig

from remix_rft.data.arithmetic import ArithmeticTask
from remix_rft.data.prompts import format_prompt
from remix_rft.engines.models import resolve_model_path
from remix_rft.integrations.trl import ReMixGRPOTrainer  # instead of trl.GRPOTrainer
from remix_rft.rewards import math_reward


def correct(prompts, completions, completion_ids, answer, **kwargs):
    """TRL's reward protocol: 1 for the right boxed answer, else 0."""
    return [math_reward(c, a) for c, a in zip(completions, answer, strict=True)]


def main(max_steps: int = 30, output_dir: str = "runs/trl-remix") -> ReMixGRPOTrainer:
    path = resolve_model_path("embedded")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rows = [{"prompt": format_prompt(tokenizer, p.prompt), "answer": p.answer}
            for p in ArithmeticTask().train_problems()]  # fmt: skip
    args = GRPOConfig(
        output_dir=output_dir, max_steps=max_steps, learning_rate=1e-4,
        lr_scheduler_type="constant", per_device_train_batch_size=32, num_generations=8,
        max_completion_length=48, beta=0.02, use_cpu=True, bf16=False, report_to="none",
        save_strategy="no", logging_steps=5, disable_tqdm=True,
    )  # fmt: skip
    trainer = ReMixGRPOTrainer(
        model=model, reward_funcs=correct, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        remix="tiny-remix-grpo",  # ReMix keys: window 4, offpolicy_fraction 0.5, KL-Convex, ...
    )  # fmt: skip
    trainer.train()
    replayed = [s for s in trainer.replay_log if s.replayed]
    print(
        f"{len(trainer.replay_log)} generation rounds, {len(replayed)} with replay; "
        f"oldest replayed sample {max((max(s.ages) for s in replayed), default=0)} versions old"
    )
    return trainer


if __name__ == "__main__":
    main(*(int(a) if i == 0 else a for i, a in enumerate(sys.argv[1:])))
