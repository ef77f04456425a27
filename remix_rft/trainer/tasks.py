"""Build the task a config names, with the reward pool that grades its responses, and
measure a policy's held-out accuracy on it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch

from remix_rft.data.arithmetic import ArithmeticSpec, ArithmeticTask
from remix_rft.data.tasks import Problem, Task
from remix_rft.engines.distributed import DistEnv
from remix_rft.engines.models import resolve_model_path
from remix_rft.engines.rollout import RolloutEngine, SamplingSettings
from remix_rft.reward_pool import MATH_REWARD_SPEC, RewardPool, default_workers
from remix_rft.reward_protocol import RewardFuncs
from remix_rft.trainer.config import TaskConfig, TrainConfig, inherit


class GradedTask:
    """A task whose responses are graded in a :class:`RewardPool`: its own verifier, or
    the user's ``task.reward_fn``, time-limited, in worker processes."""

    def __init__(self, task: Task, pool: RewardPool) -> None:
        self.task = task
        self.pool = pool
        self.name = task.name

    def train_problems(self) -> Sequence[Problem]:
        return self.task.train_problems()

    def eval_problems(self) -> Sequence[Problem]:
        return self.task.eval_problems()

    def reward(self, response: str, problem: Problem) -> float:
        return self.score([(response, problem)])[0]

    def score(self, pairs: Sequence[tuple[str, Problem]]) -> list[float]:
        """Rewards of (response, problem) pairs, in order."""
        return self.pool.score([(response, problem.as_dict()) for response, problem in pairs])

    def close(self) -> None:
        self.pool.close()


def score_responses(
    task: Task, pairs: Sequence[tuple[str, Problem]], graded: Sequence[bool] | None = None
) -> list[float]:
    """Rewards of (response, problem) pairs in the task's reward pool, in order; a pair
    whose ``graded`` flag is False (a response cut off before its end) scores 0 unseen."""
    keep = [i for i in range(len(pairs)) if graded is None or graded[i]]
    chosen = [pairs[i] for i in keep]
    if isinstance(task, GradedTask):
        scored = task.score(chosen)
    else:  # a bare Task (tests, benchmarks): its own reward, in this process
        scored = [task.reward(response, problem) for response, problem in chosen]
    rewards = [0.0] * len(pairs)
    for i, value in zip(keep, scored, strict=True):
        rewards[i] = value
    return rewards


def reward_workers(cfg: TaskConfig) -> int:
    """``task.reward_workers``, with auto (-1) resolved: the embedded task's integer answers
    take the verifier's microsecond fast path, where worker round trips would only add
    time; other tasks get min(4, CPUs shared by the local torchrun ranks)."""
    if cfg.reward_workers >= 0:
        return cfg.reward_workers
    if cfg.name == "arithmetic" and not cfg.reward_fn and not cfg.reward_funcs:
        return 0
    return default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def reward_spec(cfg: TaskConfig, tokenizer: str = "") -> str:
    """What the reward pool runs: the user's ``reward_fn``, the TRL-protocol
    ``reward_funcs`` (as one adapter, ``reward_protocol.py``), or the task's verifier."""
    if cfg.reward_funcs:
        weights = cfg.reward_weights or [1.0] * len(cfg.reward_funcs)
        path = resolve_model_path(tokenizer) if tokenizer else ""  # "embedded" -> its dir
        funcs = RewardFuncs(tuple(cfg.reward_funcs), tuple(weights), cfg.answer_key, path)
        return funcs.spec()
    return cfg.reward_fn or MATH_REWARD_SPEC


def build_task(cfg: TaskConfig, tokenizer: str = "") -> GradedTask:
    """The task and its reward pool; ``tokenizer`` (the model) gives TRL-protocol reward
    functions their ``completion_ids``."""
    pool = RewardPool(
        reward_spec(cfg, tokenizer),
        workers=reward_workers(cfg),
        time_limit_s=cfg.reward_timeout_s,
    )
    pool.load_fn()  # import the user's function now: a bad one fails before any model loads
    if cfg.name == "arithmetic":
        spec = ArithmeticSpec(
            seed=cfg.seed,
            num_products=cfg.num_products,
            min_operand=cfg.min_operand,
            max_operand=cfg.max_operand,
            outer_multiply=cfg.outer_multiply,
            n_train=cfg.n_train,
            n_eval=cfg.n_eval,
        )  # fmt: skip
        return GradedTask(ArithmeticTask(spec), pool)
    from remix_rft.data.math_dataset import MathTask

    task = MathTask(
        train_source=cfg.train_path,
        eval_source=cfg.eval_path or None,
        name=cfg.name,
        problem_key=cfg.problem_key,
        answer_key=cfg.answer_key,
        on_bad_row="skip" if cfg.skip_bad_rows else "error",
    )
    task.train_problems()  # load now: a bad file fails before any model is built
    task.eval_problems()
    return GradedTask(task, pool)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """``threads`` torch CPU threads inside the block (0: leave them as they are)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def held_out_accuracy(
    cfg: TrainConfig,
    task: Task,
    problems: Sequence[Problem],
    prompt_text: Callable[[Problem], str],
    engine: RolloutEngine,
    dist: DistEnv,
    step: int,
) -> float:
    """Greedy pass@1, or avg@k of ``eval_samples`` sampled responses at ``eval_temperature``
    (the paper's setting for R1-distilled models); each rank scores its slice."""
    mine = dist.shard(problems)
    prompts = [prompt_text(p) for p in mine]
    settings = SamplingSettings(
        max_new_tokens=inherit(cfg.eval_max_new_tokens, cfg.max_new_tokens),
        temperature=cfg.eval_temperature, top_p=cfg.eval_top_p, n=cfg.eval_samples,
        # its own stream: sampled evaluation leaves the training trajectory unchanged
        seed=cfg.seed + 104_729 * (step + 1) + dist.rank,
        logprobs=False,
    )  # fmt: skip
    texts: list[str] = []
    # vLLM batches continuously: one call per rank keeps its batch full to the last long
    # response (chunks would each wait for their slowest); the HF engines pad a batch, so
    # eval_batch_size bounds their memory.
    size = len(prompts) if cfg.rollout_engine == "vllm" else cfg.eval_batch_size
    with torch_threads(cfg.eval_threads):
        for begin in range(0, len(prompts), max(size, 1)):
            chunk = prompts[begin : begin + size]
            texts += engine.generate(chunk, replace(settings, seed=settings.seed + begin)).texts
    k = cfg.eval_samples
    scores = score_responses(task, [(t, mine[i // k]) for i, t in enumerate(texts)])
    return dist.sum(sum(scores)) / max(len(problems) * k, 1)
