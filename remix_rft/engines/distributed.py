"""Data-parallel training on PyTorch's own engine: ``torchrun`` to launch, FSDP2 to shard.

The trainer runs unchanged in one process when ``WORLD_SIZE`` is unset (every
helper here is then the identity). Under ``torchrun`` every rank:

* joins the process group (NCCL on CUDA, gloo on CPU), one device per rank;
* takes its own contiguous slice of each iteration's prompts — all G responses of
  a prompt stay on one rank, so GRPO groups are whole — and keeps its own replay
  buffer of the data it generated;
* shards policy, reference and critic with FSDP2 (``fully_shard`` per decoder
  layer, then the root), fp32 master weights and, with ``dtype=bfloat16``, bf16
  compute through :class:`~torch.distributed.fsdp.MixedPrecisionPolicy`;
* divides every loss by the GLOBAL token (or sequence) count of the minibatch —
  the all-reduced :func:`~remix_rft.algorithm.aggregation.aggregation_count` —
  and sums, not averages, the gradient shards, so N ranks make exactly the update
  one rank makes on the same global batch;
* generates with full (unsharded) parameters and no collectives inside
  ``generate``, because ranks stop decoding at different lengths.

Metrics are reduced across ranks, evaluation is sharded and its correct answers
summed, and only rank 0 writes the run directory. The trainer's sharded (DCP)
checkpoints live in :mod:`remix_rft.trainer.ranks`; model construction in
:mod:`remix_rft.engines.factory`. Of the project it imports only the algorithm layer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

T = TypeVar("T")


# ---- the process group ---------------------------------------------------------------
def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: the rank's CUDA device when there is one, else the CPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA device")
    return torch.device("cuda", local_rank)


@dataclass
class DistEnv:
    """Where this process stands; the default is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    enabled: bool = False  # launched by torchrun: collectives, FSDP, DCP checkpoints

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (identity in one process) --
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _reduce(self, values: Sequence[float], op: Any) -> list[float]:
        t = torch.tensor(
            [float(v) for v in values], dtype=torch.float64, device=self._comm_device()
        )
        dist.all_reduce(t, op=op)
        return t.tolist()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def sum(self, value: float) -> float:
        return self._reduce([value], dist.ReduceOp.SUM)[0] if self.enabled else value

    def sum_int(self, value: int) -> int:
        return round(self.sum(float(value))) if self.enabled else value

    def max(self, value: float) -> float:
        return self._reduce([value], dist.ReduceOp.MAX)[0] if self.enabled else value

    def min_int(self, value: int) -> int:
        return round(self._reduce([value], dist.ReduceOp.MIN)[0]) if self.enabled else value

    def gather(self, obj: T) -> list[T]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Any) -> Any:
        """``fn()`` on rank 0 only; its result, or its exception, on every rank."""
        if not self.enabled:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # re-raised on every rank below
                error = err
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    # -- data sharding --
    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous slice (sizes differ by at most one)."""
        if not self.enabled:
            return list(items)
        n, w, r = len(items), self.world_size, self.rank
        return list(items[r * n // w : (r + 1) * n // w])

    def local_minibatch(self, minibatch_size: int) -> int:
        return minibatch_size // self.world_size

    def local_offpolicy(self, global_count: int) -> int:
        return global_count // self.world_size

    def masked_whiten(
        self, values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
    ) -> torch.Tensor:
        """Whitening with the statistics of the global batch (every rank's tokens)."""
        from remix_rft.algorithm import masked_whiten

        if not self.enabled:
            return masked_whiten(values, mask, eps)
        mask = mask.float()
        total, count = self._reduce(
            [float((values * mask).sum()), float(mask.sum())], dist.ReduceOp.SUM
        )
        count = max(count, 1.0)
        mean = total / count
        sq = self.sum(float((((values - mean) * mask) ** 2).sum()))
        return (values - mean) * torch.rsqrt(torch.tensor(sq / count + eps)) * mask

    def merge_stats(self, stats: T) -> T:
        """Sum the running sums and counts of every rank's StepStats, take max of maxima."""
        if not self.enabled:
            return stats
        merged = type(stats)()
        for sums, counts, maxima in self.gather((stats.sums, stats.counts, stats.maxima)):  # type: ignore[attr-defined]
            for key in sums:
                merged.add(key, sums[key], counts[key])  # type: ignore[attr-defined]
            for key, value in maxima.items():
                merged.max(key, value)  # type: ignore[attr-defined]
        return merged

    def reduce_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One metrics row for the whole job from every rank's row of this iteration.

        Every rank holds the same number of fresh samples and training rows, so the
        mean of per-rank means is the global mean.
        """
        if not self.enabled:
            return row
        rows = self.gather(row)
        out = dict(row)
        for key, value in row.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            values = [r.get(key, value) for r in rows]
            if key in SUM_KEYS:
                out[key] = sum(values)
            elif key in MAX_KEYS or key.endswith("/max"):
                out[key] = max(values)
            elif key in SAME_KEYS:
                continue
            else:
                out[key] = sum(float(v) for v in values) / len(values)
        return out


SUM_KEYS = {
    "offpolicy/samples", "time/gen_tokens_per_s",
    "dynamic/kept_groups", "dynamic/dropped_groups", "dynamic/balanced_groups",
    "replay/samples", "batch/fresh_samples",
}  # fmt: skip
MAX_KEYS = {
    "gen/logprob_diff_max", "time/gen_s", "time/step_s", "buffer/versions", "dynamic/rounds",
    "replay/reuse_max",
}  # fmt: skip
SAME_KEYS = {"step", "rollouts", "tokens", "updates", "utd", "lr"}

_ENV: DistEnv | None = None


def setup(device: str = "auto", *, timeout_minutes: float = 60.0) -> DistEnv:
    """Join the torchrun process group once per process; a no-op without torchrun.

    ``timeout_minutes`` (``dist_timeout_minutes``): how long a collective may wait; NCCL's
    default of 10 fails ranks waiting for rank 0's checkpoint write or a long evaluation."""
    global _ENV
    if _ENV is not None:
        return _ENV
    if not launched_by_torchrun():
        return DistEnv(device=resolve_device(device))
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if not dist.is_initialized():
        timeout = timedelta(minutes=timeout_minutes)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev, timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    _ENV = DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev, enabled=True)
    log.info("rank %d of %d on %s (%s)", rank, world, dev, dist.get_backend())
    return _ENV


def shutdown(*, barrier: bool = False) -> None:
    """Leave the process group. ``barrier`` (a run that ended the same way on every rank):
    wait for the others first, so that no rank tears its connections down while a peer is
    still in a collective (gloo then aborts the peer at exit, rarely, under load)."""
    global _ENV
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
    _ENV = None


# ---- FSDP2 -------------------------------------------------------------------------------
def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks to shard one by one (HF names them in ``_no_split_modules``)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        for name, m in model.named_modules():
            if name.endswith("layers") and isinstance(m, nn.ModuleList):
                layers = list(m)
                break
    return layers


def shard_model(model: nn.Module, env: DistEnv, *, dtype: str = "float32") -> nn.Module:
    """``fully_shard`` every decoder layer, then the root; gradients are summed over ranks."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    on_meta = any(p.is_meta for p in model.parameters())
    if not on_meta:
        model.to(env.device)
    if dtype == "bfloat16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    # The loss is already divided by the global count: sum the shards, do not average.
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            if dist.get_backend() == "gloo":  # gloo has no PREMUL_SUM: plain SUM reductions
                m.set_force_sum_reduction_for_comms(True)
    if on_meta:  # only this rank's shards are allocated (factory.load_from_rank0 fills them)
        model.to_empty(device=env.device)
    return model


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard(model: Any) -> None:
    """Every FSDP unit back to sharded DTensor parameters (a no-op for a plain module).

    FSDP2 keeps the root unit's parameters gathered after a forward; code that pairs
    the parameters of two sharded models (a weight copy) needs both sharded alike.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def gather_root(model: Any) -> None:
    """All-gather the root FSDP unit (embeddings, final norm, ``lm_head``) after a forward.

    Code that applies the output head itself, after the forward (the chunked log-probs
    of ``engines/policy.py``), needs the full head weight. FSDP2 keeps the root gathered
    after its forward only while the root is set not to reshard then (its default, which
    ``unsharded`` can change), so gather it explicitly; the backward reshards it as usual.
    No-op for a module that is not sharded.
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.unshard()


@contextmanager
def unsharded(model: Any) -> Iterator[None]:
    """All-gather every FSDP unit once and keep it gathered until the block ends."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    saved = []
    for unit in units:
        state = unit._get_fsdp_state()
        groups = state._fsdp_param_groups
        saved.append(
            (state._auto_reshard_after_forward, [g.post_forward_mesh_info for g in groups])
        )
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit, (auto, infos) in zip(units, saved, strict=True):
            unit.reshard()
            state = unit._get_fsdp_state()
            state._auto_reshard_after_forward = auto
            for group, info in zip(state._fsdp_param_groups, infos, strict=True):
                group.post_forward_mesh_info = info


def move_batch(batch: Any, device: torch.device) -> Any:
    values = {
        f.name: getattr(batch, f.name).to(device)
        for f in fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }
    return replace(batch, **values)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute activations in backward; non-reentrant (composes with FSDP2 and LoRA)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def autocast_bf16(model: nn.Module, device: torch.device) -> None:
    """fp32 weights, bf16 matmuls: wrap this module's ``forward`` in autocast.

    ``autocast_dtype`` tells code that applies a submodule outside ``forward`` (the
    chunked output head of ``engines/policy.py``) to run it under the same autocast."""
    model.forward_without_autocast = model.forward
    model.forward = torch.autocast(device_type=device.type, dtype=torch.bfloat16)(model.forward)
    model.autocast_dtype = torch.bfloat16


@contextmanager
def without_autocast(model: Any) -> Iterator[None]:
    """Run ``model``'s plain fp32 forward for the block (a no-op without autocast_bf16).

    HF ``generate`` under CUDA autocast meets key/value states of mixed dtypes that
    its KV cache refuses ("index_copy_(): ... Float and BFloat16", seen with
    transformers 5.17 on an H200, for both the dynamic and the static cache), so the
    HF engine decodes with the fp32 master weights; the update keeps bf16 compute.
    """
    plain = getattr(model, "forward_without_autocast", None)
    if plain is None:
        yield
        return
    wrapped = model.forward
    model.forward = plain
    try:
        yield
    finally:
        model.forward = wrapped


# ---- a consolidated HF copy (one process; a sharded run streams it: weight_stream.py) --------
def save_hf_policy(model: Any, state: dict[str, torch.Tensor], tokenizer: Any, out: Path) -> None:
    """A loadable HF model directory from a full state dict (the FSDP class name must not leak)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    if getattr(model.config, "tie_word_embeddings", False):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
