"""Build the task a config names, with the reward pool that grades its responses, and
measure a policy's held-out accuracy on it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from remix_rft.data.arithmetic import ArithmeticSpec, ArithmeticTask
from remix_rft.data.math_dataset import MathTask
from remix_rft.data.tasks import Problem, Task
from remix_rft.engines.distributed import DistEnv
from remix_rft.engines.models import resolve_model_path
from remix_rft.engines.rollout import RolloutEngine, SamplingSettings
from remix_rft.reward_fns import RewardError
from remix_rft.reward_pool import MATH_REWARD_SPEC, RewardPool, default_workers
from remix_rft.reward_protocol import RewardFuncs
from remix_rft.trainer.config import TaskConfig, TrainConfig, inherit

log = logging.getLogger(__name__)


class GradedTask:
    """A task whose responses are graded in a :class:`RewardPool`: its own verifier, or
    the user's ``task.reward_fn``, time-limited, in worker processes."""

    def __init__(self, task: Task, pool: RewardPool) -> None:
        self.task = task
        self.pool = pool
        self.name = task.name

    @property
    def grades_truncated(self) -> bool:
        """A user's function sees every response (``truncated=`` says which were cut);
        the built-in verifier's cut training responses score 0 unseen."""
        return self.pool.spec != MATH_REWARD_SPEC

    def train_problems(self) -> Sequence[Problem]:
        return self.task.train_problems()

    def eval_problems(self) -> Sequence[Problem]:
        return self.task.eval_problems()

    def reward(self, response: str, problem: Problem) -> float:
        return self.score([(response, problem)])[0]

    def score(
        self,
        pairs: Sequence[tuple[str, Problem]],
        truncated: Sequence[bool] | None = None,
        completion_ids: Sequence[list[int]] | None = None,
    ) -> list[float]:
        """Rewards of (response, problem) pairs, in order."""
        items = [(response, problem.as_dict()) for response, problem in pairs]
        return self.pool.score(items, truncated, completion_ids)

    def close(self) -> None:
        self.pool.close()


def score_responses(
    task: Task,
    pairs: Sequence[tuple[str, Problem]],
    graded: Sequence[bool] | None = None,
    *,
    grade_unfinished: bool = False,
    completion_ids: Sequence[list[int]] | None = None,
) -> list[float]:
    """Rewards of (response, problem) pairs in the task's reward pool, in order.

    ``graded[i]``: response i ended before ``max_new_tokens``. A user's reward function is
    called on every response, with ``truncated = not graded[i]`` (the reward contract,
    docs/your-own-task.md); for the built-in verifier (and a bare Task) a response cut off
    before its end scores 0 unseen, unless ``grade_unfinished`` (held-out evaluation grades
    every response, as ``remix eval`` always did). ``completion_ids[i]``: response i's
    generated token ids, for a user's function that takes the ``completion_ids`` keyword."""
    finished = [True] * len(pairs) if graded is None else [bool(g) for g in graded]
    if isinstance(task, GradedTask) and task.grades_truncated:
        return task.score(pairs, truncated=[not f for f in finished], completion_ids=completion_ids)
    keep = [i for i in range(len(pairs)) if finished[i] or grade_unfinished]
    chosen = [pairs[i] for i in keep]
    if isinstance(task, GradedTask):
        scored = task.score(chosen)
    else:  # a bare Task (tests, benchmarks): its own reward, in this process
        scored = [task.reward(response, problem) for response, problem in chosen]
    rewards = [0.0] * len(pairs)
    for i, value in zip(keep, scored, strict=True):
        rewards[i] = value
    return rewards


def probe_reward(task: Task) -> None:
    """Call a user's reward function once, before anything is trained, on the first
    training problem with the response ``\\boxed{<its answer>}`` (``truncated=False``):
    a function that raises, returns a non-number or cannot be called stops the run here,
    in seconds, with RewardError naming it and the file:line (docs/your-own-task.md)."""
    if not (isinstance(task, GradedTask) and task.grades_truncated):
        return  # the built-in verifier
    problems = task.train_problems()
    if not problems:
        return
    problem = problems[0]
    answer = problem.answer[0] if isinstance(problem.answer, list) else problem.answer
    try:
        task.score([(f"\\boxed{{{answer}}}", problem)], truncated=[False])
    except RewardError as err:
        raise RewardError(f"{err} (the check call before training)") from None


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


def build_task(cfg: TaskConfig, tokenizer: str = "", announce: bool = True) -> GradedTask:
    """The task and its reward pool; ``tokenizer`` (the model) gives TRL-protocol reward
    functions their ``completion_ids``; ``announce``: log where held-out problems come from."""
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
    task = MathTask(
        train_source=cfg.train_path,
        eval_source=cfg.eval_path or None,
        name=cfg.name,
        problem_key=cfg.problem_key,
        answer_key=cfg.answer_key,
        on_bad_row="skip" if cfg.skip_bad_rows else "error",
        holdout_fraction=cfg.holdout_fraction,
        holdout_max=cfg.holdout_max,
        holdout_seed=cfg.seed,
    )
    task.train_problems()  # load now: a bad file fails before any model is built
    task.eval_problems()
    if announce:
        log_held_out(task, cfg)
    return GradedTask(task, pool)


def log_held_out(task: MathTask, cfg: TaskConfig) -> None:
    """Say where a dataset task's held-out problems come from when not from ``eval_path``."""
    if cfg.eval_path:
        return
    n_eval = len(task.eval_problems())
    if task.held_out_of_train and n_eval:
        log.warning(
            "task %s has no task.eval_path: %d of %d train_path rows are held out for "
            "evaluation (task.holdout_fraction=%g, task.holdout_max=%d)",
            cfg.name, n_eval, n_eval + len(task.train_problems()), cfg.holdout_fraction,
            cfg.holdout_max,
        )  # fmt: skip
    else:
        why = "holdout_fraction=0" if not cfg.holdout_fraction else "train_path is too small"
        log.warning(
            "task %s has no task.eval_path (and task.%s): this run is never evaluated "
            "(eval/accuracy stays empty)",
            cfg.name, why,
        )  # fmt: skip


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


@dataclass(frozen=True)
class EvalResponse:
    """One held-out response, for ``samples.jsonl``."""

    problem: Problem
    prompt: str  # as the model saw it (chat-formatted)
    response: str
    reward: float
    truncated: bool


@dataclass(frozen=True)
class HeldOut:
    """A held-out evaluation: ``accuracy`` is the share of responses whose reward is at
    least ``task.accuracy_threshold`` (for 0/1 verifiers, the mean reward), ``reward_mean``
    the mean reward; ``responses``: every response to the first ``keep`` problems."""

    accuracy: float
    reward_mean: float
    responses: list[EvalResponse] = field(default_factory=list)


@torch.no_grad()
def held_out_eval(
    cfg: TrainConfig,
    task: Task,
    problems: Sequence[Problem],
    prompt_text: Callable[[Problem], str],
    engine: RolloutEngine,
    dist: DistEnv,
    step: int,
    keep: int = 0,
) -> HeldOut:
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
    finished: list[bool] = []
    # vLLM batches continuously: one call per rank keeps its batch full to the last long
    # response (chunks would each wait for their slowest); the HF engines pad a batch, so
    # eval_batch_size bounds their memory.
    size = len(prompts) if cfg.rollout_engine == "vllm" else cfg.eval_batch_size
    with torch_threads(cfg.eval_threads):
        for begin in range(0, len(prompts), max(size, 1)):
            chunk = prompts[begin : begin + size]
            gen = engine.generate(chunk, replace(settings, seed=settings.seed + begin))
            texts += gen.texts
            finished += gen.finished or [True] * len(gen.texts)  # an engine without flags
    k = cfg.eval_samples
    pairs = [(t, mine[i // k]) for i, t in enumerate(texts)]
    scores = score_responses(task, pairs, finished, grade_unfinished=True)
    threshold = cfg.task.accuracy_threshold
    total = max(len(problems) * k, 1)
    kept = [
        EvalResponse(mine[i // k], prompts[i // k], texts[i], scores[i], not finished[i])
        for i in range(min(keep * k, len(texts)))
    ]
    return HeldOut(
        accuracy=dist.sum(float(sum(s >= threshold for s in scores))) / total,
        reward_mean=dist.sum(float(sum(scores))) / total,
        responses=kept,
    )
