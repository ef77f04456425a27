"""ReMixGRPOTrainer's state in TRL's checkpoints (remix_rft/integrations/trl.py).

Each ``checkpoint-N`` gets ``remix_replay.pt`` (``remix_replay_<rank>.pt`` with several
processes: the buffer holds each process's own completions) and, once reincarnated with
β > 0, ``remix_reference.pt`` (π_base, which TRL does not save); both written atomically
and loaded with ``weights_only=True``; ``train(resume_from_checkpoint=...)`` restores them.
A mixin of the trainer: its methods use the trainer's buffer, counters and TRL's hooks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from remix_rft.data.buffer import Sample
from remix_rft.trainer.checkpoint import load_torch_file, save_state

log = logging.getLogger(__name__)

REPLAY_FILE = "remix_replay.pt"  # remix_replay_<rank>.pt with several processes
REFERENCE_FILE = "remix_reference.pt"  # π_base after reincarnation, when β > 0 uses it
STATE_FORMAT = 1


class ReplayCheckpointMixin:
    """Saves and restores the ReMix state of a ``trl.GRPOTrainer`` subclass (listed before
    it in the bases, so that its ``_save_checkpoint`` and
    ``_load_optimizer_and_scheduler`` wrap TRL's)."""

    buffer: Any
    args: Any
    state: Any
    accelerator: Any
    ref_model: Any
    beta: float
    reincarnated: bool
    num_iterations: int
    is_fsdp_enabled: bool
    is_deepspeed_enabled: bool
    _version: int
    _pending: dict[int, Sample]

    def remix_state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue as the uninterrupted one: the buffer (samples
        and its draw's generator), the version counter (also the λ schedule's position), the
        round's fresh samples not yet stored (those with μ known: the others would be
        dropped when stored), reincarnation and β. Tensors and plain data only, so it loads
        with ``weights_only=True``. ``replay_log`` (diagnostics) is not in it."""
        pending = {row: s.to_state() for row, s in self._pending.items()
                   if s.behavior_logprobs is not None}  # fmt: skip
        return {
            "format": STATE_FORMAT, "buffer": self.buffer.state_dict(), "version": self._version,
            "pending": pending, "reincarnated": self.reincarnated, "beta": float(self.beta),
        }  # fmt: skip

    def load_remix_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])  # first: a different window raises here
        self._version = int(state["version"])
        self._pending = {int(row): Sample.from_state(s) for row, s in state["pending"].items()}
        self.reincarnated = bool(state["reincarnated"])
        self.beta = float(state["beta"])

    def _replay_file(self, checkpoint: str | Path) -> Path:
        """This process's file: the buffer holds this process's own completions."""
        name = REPLAY_FILE
        if self.args.world_size > 1:
            name = REPLAY_FILE.replace(".pt", f"_{self.args.process_index}.pt")
        return Path(checkpoint) / name

    def _keeps_reference(self) -> bool:
        return self.reincarnated and self.ref_model is not None and self.beta != 0.0

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Our files go in before TRL's: transformers writes ``trainer_state.json`` (which a
        resume needs) late, so a checkpoint it can resume from already holds them; its
        rotation removes them with their ``checkpoint-N`` folder. Every process writes its
        own replay file (as transformers' ``rng_state_<rank>.pth``); π_base, the same on
        every process, only where ``should_save``."""
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        checkpoint = Path(self._get_output_dir(trial=trial)) / folder
        checkpoint.mkdir(parents=True, exist_ok=True)
        _save_atomic(self.remix_state_dict(), self._replay_file(checkpoint))
        if self._keeps_reference() and self.args.should_save:
            if self.is_fsdp_enabled or self.is_deepspeed_enabled:
                log.warning("ReMixGRPOTrainer: π_base is not saved under FSDP/DeepSpeed; "
                            "resuming %s will need it (β > 0)", checkpoint)  # fmt: skip
            else:
                reference = self.accelerator.unwrap_model(self.ref_model).state_dict()
                _save_atomic({k: v.detach().cpu() for k, v in reference.items()},
                             checkpoint / REFERENCE_FILE)  # fmt: skip
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """transformers calls this with the checkpoint on every resume (plain, FSDP and
        DeepSpeed alike) before the first step; TRL restores its own extra state here too."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.load_remix_checkpoint(checkpoint)

    def load_remix_checkpoint(self, checkpoint: str | Path) -> None:
        """Restore the ReMix state from a ``checkpoint-N`` folder (``weights_only`` loads); a
        folder without this process's file resumes with an empty buffer and one warning."""
        path = self._replay_file(checkpoint)
        if not path.is_file():
            # written by TRL's GRPOTrainer or an older remix-rft: the counter follows the
            # rounds already run, so the λ schedule and versions go on from there
            micro = self.state.global_step * self.args.gradient_accumulation_steps
            self._version = -(-micro // (self.args.steps_per_generation * self.num_iterations))
            log.warning(
                "ReMixGRPOTrainer: %s not found: resuming with an empty replay buffer", path
            )
            return
        state = load_torch_file(path)  # its own errors name the file
        try:
            self.load_remix_state_dict(state)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if self._keeps_reference():
            reference = Path(checkpoint) / REFERENCE_FILE
            if not reference.is_file():
                raise ValueError(f"{reference} not found: {path} was written after reincarnation "
                                 f"with beta={self.beta}, whose KL needs that π_base")  # fmt: skip
            weights = load_torch_file(reference)
            self.accelerator.unwrap_model(self.ref_model).load_state_dict(weights)


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary sibling (fsynced), then renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_state(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
