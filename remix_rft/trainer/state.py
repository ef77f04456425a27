"""What a run carries across a restart (:class:`TrainerState`) and how it is saved.

One process: model weights as safetensors (a loadable HF model), the rest via
``torch.save`` (loaded with ``weights_only=True``). Under torchrun: a sharded
``torch.distributed.checkpoint`` of models and optimizers, each rank's buffer and RNG
state, and on rank 0 a consolidated, loadable copy of the policy for ``remix eval``.
Either way the directory is written under a temporary name and renamed when complete
(``checkpoint.py``), so a run killed at any moment resumes from the last whole one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from remix_rft.data.buffer import ReplayBuffer
from remix_rft.data.sampler import PromptSampler
from remix_rft.engines.distributed import DistEnv
from remix_rft.engines.policy import ValueModel
from remix_rft.engines.weight_stream import save_hf_policy_streamed
from remix_rft.trainer import checkpoint as ckpt

log = logging.getLogger(__name__)

DCP_DIR = "dcp"
RANK_STATE = "rank_{rank:05d}.pt"
FORMAT = "dcp"


@dataclass
class Counters:
    """Everything about progress that a resumed run must continue from."""

    step: int = 0  # completed iterations
    rollouts: int = 0  # responses sampled for training (consumed by the learner), cumulative
    tokens: int = 0  # response tokens generated for training, cumulative
    updates: int = 0  # optimizer updates, cumulative
    wall_time_s: float = 0.0  # across resumes
    reincarnated_at: int = 0  # iteration of reincarnation (0: not yet)
    base_eval_accuracy: float | None = None
    last_eval_accuracy: float | None = None
    best_eval_accuracy: float = -1.0
    evals_since_best: int = 0
    skipped_updates: int = 0  # optimizer updates skipped for a non-finite loss or gradient

    def record_eval(self, accuracy: float) -> None:
        self.last_eval_accuracy = accuracy
        if accuracy > self.best_eval_accuracy:
            self.best_eval_accuracy, self.evals_since_best = accuracy, 0
        else:
            self.evals_since_best += 1


@dataclass
class TrainerState:
    """The models, optimizers and streams a checkpoint holds; the trainer's parts share it."""

    policy: Any
    reference: Any | None  # π_base; None when nothing uses it (β = 0 and no kl/base)
    critic: ValueModel | None
    optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LambdaLR
    buffer: ReplayBuffer
    sampler: PromptSampler
    shuffle_rng: torch.Generator
    counters: Counters
    tokenizer: Any
    lora: bool = False
    # async: the producer's torch RNG after the last rollout used (§1.6); None: sync runs,
    # where the learner's own RNG (``torch_rng``) is the one that samples
    producer_rng: torch.Tensor | None = None

    @property
    def reincarnated(self) -> bool:
        return self.counters.reincarnated_at > 0

    def streams(self, sampler_state: dict[str, Any]) -> dict[str, Any]:
        """Buffer, prompt order and RNG state (per rank under torchrun)."""
        streams = {
            "buffer": self.buffer.state_dict(),
            "sampler": sampler_state,
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle_rng.get_state(),
        }
        if self.producer_rng is not None:
            streams["producer_rng"] = self.producer_rng
        return streams

    def load_streams(self, saved: dict[str, Any]) -> None:
        self.buffer.load_state_dict(saved["buffer"])
        self.sampler.load_state_dict(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        self.shuffle_rng.set_state(saved["shuffle_rng"])
        self.producer_rng = saved.get("producer_rng")  # older checkpoints: the learner's


# ---- one process -----------------------------------------------------------------
def save(
    state: TrainerState,
    run_dir: Path,
    step: int,
    env: DistEnv,
    *,
    keep: int,
    sampler: dict,
    keep_best: bool = False,
    score: float | None = None,
) -> Path:
    """A checkpoint of ``state`` after iteration ``step``; ``sampler`` is the prompt order
    to resume from (an asynchronous producer may have drawn prompts ahead of ``step``).

    Retention keeps the newest ``keep`` checkpoints and, with ``keep_best``, the one of the
    highest ``score`` (this step's eval accuracy; None if it was not evaluated). A failed write
    raises :class:`~remix_rft.trainer.checkpoint.CheckpointWriteError` (on every rank) and
    leaves the previous checkpoint as it was."""
    if env.enabled:
        return _save_sharded(
            state, run_dir, step, env, keep=keep, sampler=sampler, keep_best=keep_best,
            score=score,
        )  # fmt: skip
    models: dict[str, Any] = {"policy": _WithTokenizer(state.policy, state.tokenizer)}
    if state.lora:  # merged HF model + base and adapter (the reference is the base)
        from remix_rft.engines import lora

        models = lora.checkpoint_models(state.policy, state.tokenizer)
    elif state.reincarnated and state.reference is not None:
        models["reference"] = state.reference
    if state.critic is not None:
        models["critic"] = state.critic
    saved: dict[str, Any] = {
        "counters": asdict(state.counters),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        **state.streams(sampler),
    }
    if state.critic_optimizer is not None:
        saved["critic_optimizer"] = state.critic_optimizer.state_dict()
    return ckpt.save_checkpoint(
        run_dir, step, models, saved, keep=keep, keep_best=keep_best, score=score
    )


def load(state: TrainerState, checkpoint: Path, env: DistEnv, dtype: str) -> None:
    """Restore ``state`` in place from ``checkpoint`` (refuses another world size)."""
    if env.enabled or (checkpoint / DCP_DIR).is_dir():
        _load_sharded(state, checkpoint, env)
        return
    saved = ckpt.load_state(checkpoint)
    state.counters = Counters(**saved["counters"])
    if state.lora:
        from remix_rft.engines import lora

        lora.load_checkpoint(state.policy, checkpoint)
    else:
        load_weights(state.policy, checkpoint / "policy")
    if state.reincarnated and state.reference is not None and not state.lora:
        if not (checkpoint / "reference").is_dir():
            raise ValueError(
                f"checkpoint {checkpoint} was reincarnated without keeping π_base (kl_coef 0, "
                "log_kl_base off), so this run cannot use it: resume with kl_coef=0 "
                "log_kl_base=false"
            )
        load_weights(state.reference, checkpoint / "reference")
    if state.critic is not None and state.critic_optimizer is not None:
        loaded = ValueModel.from_pretrained(str(checkpoint / "critic"), dtype=dtype)
        state.critic.load_state_dict(loaded.state_dict())
        state.critic_optimizer.load_state_dict(saved["critic_optimizer"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.load_streams(saved)


class _WithTokenizer:
    """Saves a policy together with its tokenizer, so a checkpoint is a loadable HF model."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def save_pretrained(self, out_dir: Path) -> None:
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


def load_weights(model: Any, path: Path) -> None:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint {path} holds no safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied embeddings are saved once; anything else missing means a wrong checkpoint.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


# ---- torchrun: sharded DCP checkpoints -------------------------------------------
def _app_state(state: TrainerState) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    out: dict[str, Any] = {
        "policy": get_model_state_dict(state.policy),
        "optimizer": get_optimizer_state_dict(state.policy, state.optimizer),
    }
    if state.reincarnated and state.reference is not None:
        out["reference"] = get_model_state_dict(state.reference)
    if state.critic is not None and state.critic_optimizer is not None:
        out["critic"] = get_model_state_dict(state.critic)
        out["critic_optimizer"] = get_optimizer_state_dict(state.critic, state.critic_optimizer)
    return out


def _save_sharded(
    state: TrainerState,
    run_dir: Path,
    step: int,
    env: DistEnv,
    *,
    keep: int,
    sampler: dict,
    keep_best: bool = False,
    score: float | None = None,
) -> Path:
    """Every rank writes its DCP shards and its streams into rank 0's ``step_N.tmp``; when all
    are done, rank 0 writes the manifest and publishes it (or, if any rank's write failed,
    removes the directory), and every rank gets rank 0's result or error."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    tmp = env.on_main(lambda: _begin(run_dir, step))  # broadcast: every rank waits for it
    failure: BaseException | None = None
    try:
        dcp.save(_app_state(state), checkpoint_id=str(tmp / DCP_DIR))  # collective
        ckpt.save_state(state.streams(sampler), tmp / RANK_STATE.format(rank=env.rank))
    except (Exception, CheckpointException) as err:  # DCP: on every rank if any rank failed
        failure = _unwrap(err)
    try:  # collective: every rank takes part, failed or not; rank 0 streams it to its file
        write = env.is_main and failure is None
        save_hf_policy_streamed(state.policy, state.tokenizer, tmp / "policy", write=write)
    except Exception as err:
        failure = failure or err
    if env.is_main and failure is None:
        try:
            shared = {
                "format": FORMAT,
                "world_size": env.world_size,
                "counters": asdict(state.counters),
                "scheduler": state.scheduler.state_dict(),
            }
            ckpt.save_state(shared, tmp / ckpt.STATE_FILE)
        except Exception as err:
            failure = err
    failures = env.gather(_describe(failure))  # also the barrier: every rank's files are in

    def finish() -> Path:
        failed = [(rank, f) for rank, f in enumerate(failures) if f is not None]
        if failed:
            rank, (kind, message, code) = failed[0]
            error: BaseException
            if failure is not None and rank == env.rank:
                error = failure
            elif code is not None:
                error = OSError(code, f"rank {rank}: {message}")
            else:
                error = RuntimeError(f"checkpoint write failed on rank {rank}: {kind}: {message}")
            raise _picklable(ckpt.abort_checkpoint(tmp, error))
        return ckpt.commit_checkpoint(tmp, keep=keep, keep_best=keep_best, score=score)

    return env.on_main(finish)


def _begin(run_dir: Path, step: int) -> Path:
    try:
        return ckpt.begin_checkpoint(run_dir, step)
    except OSError as err:  # e.g. ENOSPC creating the directory
        tmp = ckpt.checkpoint_root(run_dir) / (ckpt.step_dir_name(step) + ckpt.TMP_SUFFIX)
        raise _picklable(ckpt.abort_checkpoint(tmp, err)) from err


def _unwrap(error: BaseException) -> BaseException:
    """The first rank's own exception inside DCP's CheckpointException (a BaseException that
    carries every rank's error and traceback), so an ENOSPC is reported as one."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        first = failures[min(failures)]
        inner = first[0] if isinstance(first, tuple) else first
        if isinstance(inner, BaseException):
            return inner
    return error


def _describe(error: BaseException | None) -> tuple[str, str, int | None] | None:
    """What a rank's failure was, in a form every rank can receive (exceptions may not pickle)."""
    if error is None:
        return None
    code = error.errno if isinstance(error, OSError) else None
    return type(error).__name__, str(error), code


def _picklable(error: BaseException) -> BaseException:
    """``env.on_main`` sends rank 0's exception to every rank: keep ours, flatten others."""
    if isinstance(error, ckpt.CheckpointWriteError | OSError | RuntimeError | ValueError):
        return error
    return RuntimeError(f"checkpoint write failed: {type(error).__name__}: {error}")


def checkpoint_world_size(checkpoint: Path) -> int | None:
    """Ranks that wrote a DCP checkpoint; None for a single-process checkpoint."""
    if not (checkpoint / DCP_DIR).is_dir():
        return None
    saved = ckpt.load_state(checkpoint)
    return int(saved["world_size"]) if saved.get("format") == FORMAT else None


def check_resume(checkpoint: Path, world_size: int, distributed: bool) -> None:
    saved = checkpoint_world_size(checkpoint)
    saved_size = saved if saved is not None else 1
    if (saved is not None) != distributed or saved_size != world_size:
        raise ValueError(
            f"checkpoint {checkpoint} was written by {saved_size} rank(s) "
            f"({'sharded DCP' if saved is not None else 'single process'}) but this run has "
            f"{world_size} rank(s); resume with the same world size "
            f"(torchrun --nproc-per-node {saved_size} ...)"
            + ("" if saved is not None else " or without torchrun")
        )


def _load_sharded(state: TrainerState, checkpoint: Path, env: DistEnv) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    check_resume(checkpoint, env.world_size, env.enabled)
    shared = ckpt.load_state(checkpoint)
    state.counters = Counters(**shared["counters"])
    app = _app_state(state)  # shapes to load into (reference only when reincarnated)
    dcp.load(app, checkpoint_id=str(checkpoint / DCP_DIR))
    set_model_state_dict(state.policy, app["policy"])
    set_optimizer_state_dict(state.policy, state.optimizer, app["optimizer"])
    if "reference" in app:
        set_model_state_dict(state.reference, app["reference"])
    if state.critic is not None and state.critic_optimizer is not None:
        set_model_state_dict(state.critic, app["critic"])
        set_optimizer_state_dict(state.critic, state.critic_optimizer, app["critic_optimizer"])
    state.scheduler.load_state_dict(shared["scheduler"])
    mine = ckpt.load_torch_file(checkpoint / RANK_STATE.format(rank=env.rank))
    state.load_streams(mine)
