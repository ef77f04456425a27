"""The ``task:`` section of a run's configuration (:class:`TaskConfig`): what to train on
and how responses are rewarded and evaluated. The run's other keys are in
:mod:`remix_rft.trainer.config_fields`, which re-exports this class."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TaskConfig:
    """What to train on: the embedded arithmetic task or a math dataset."""

    name: str = "arithmetic"
    # arithmetic (embedded) task
    seed: int = 0
    num_products: int = 2
    min_operand: int = 1
    max_operand: int = 9
    outer_multiply: bool = True
    n_train: int = 20000
    n_eval: int = 500
    # math datasets (JSON, JSONL, parquet or a Hugging Face dataset name)
    train_path: str = ""
    eval_path: str = ""
    problem_key: str = "problem"
    answer_key: str = "answer"
    instruction: str = ""  # appended to every prompt; empty for the embedded task
    skip_bad_rows: bool = False
    # reward: the task's own verifier, or a user's function (required for name=custom):
    # path/to/file.py:function or module:function, called as fn(response, problem_dict)
    reward_fn: str = ""
    # grading processes: -1 auto (0 for the embedded task's integer answers, else
    # min(4, CPUs)); 0 grades in the trainer process (debugging)
    reward_workers: int = -1
    reward_timeout_s: float = 5.0  # per response; past it the response scores 0
    # TRL-protocol reward functions (issue #35), fn(prompts, completions, completion_ids,
    # **columns) -> list[float | None], as module:function or file.py:function; their weighted
    # sum (None: skipped) is the reward. Instead of reward_fn. answer_key "" then passes every
    # other column of a row to them unchanged (a dataset without answers).
    reward_funcs: list[str] = field(default_factory=list)
    reward_weights: list[float] = field(default_factory=list)  # empty: 1.0 each
    # held-out evaluation (docs/your-own-task.md): a response counts as correct when its
    # reward >= accuracy_threshold (eval/accuracy: the share of such; eval/reward_mean beside)
    accuracy_threshold: float = 1.0
    # a math/custom task without eval_path holds out this share of train_path (seeded by
    # task.seed, at most holdout_max rows) for evaluation; 0: no evaluation (warned)
    holdout_fraction: float = 0.1
    holdout_max: int = 500
