"""The memory plan of ``remix train CONFIG --dry-run``: bytes per device and per phase.

Every term is arithmetic on the model's shape (its HF config) and the run's config; the
formulas, and how they were checked against measured peaks, are in docs/scale-out.md
("Memory plan"). Phases, per device (one GPU, or one process's host RAM with ``device
cpu``): the update (sharded states, FSDP2's gathered units, activations of one micro-batch,
the chunked output head), the no-grad log-prob passes (π_k, π_base, values), generation
(vLLM's share or the HF engine's KV cache), and the weight push to vLLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remix_rft.trainer.config import TrainConfig

GIB = 1024**3
MIB = 1024**2
# Paper: prompts <= 766 tokens (DeepScaleR, filtered); the plan's default prompt length.
DEFAULT_PROMPT_TOKENS = 766
# CUDA context, NCCL buffers and allocator slack a GPU never gives the trainer.
GPU_RESERVE_GIB = 2.0
# Measured on CPU (benchmarks/results/logprob_memory.md): one chunk's head costs
# ~2.1 fp32 [c, V] tensors at its peak with gradients, ~2 without.
HEAD_CHUNK_FP32_COPIES = 2.1
# vLLM's own activations and CUDA graphs inside its share (a profile-run allowance).
VLLM_ACTIVATION_GIB = 1.5

# Shapes of the published config.json of the models the recipes use, for machines that
# cannot reach the hub (layers, hidden, intermediate, heads, kv heads, vocab, tied).
KNOWN_SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "qwen/qwen2-0.5b": (24, 896, 4864, 14, 2, 151936, True),
    "qwen/qwen2.5-0.5b": (24, 896, 4864, 14, 2, 151936, True),
    "qwen/qwen2-1.5b": (28, 1536, 8960, 12, 2, 151936, True),
    "qwen/qwen2.5-1.5b": (28, 1536, 8960, 12, 2, 151936, True),
    "qwen/qwen2.5-math-1.5b": (28, 1536, 8960, 12, 2, 151936, True),
    "deepseek-ai/deepseek-r1-distill-qwen-1.5b": (28, 1536, 8960, 12, 2, 151936, False),
    "qwen/qwen2-7b": (28, 3584, 18944, 28, 4, 152064, False),
    "qwen/qwen2.5-7b": (28, 3584, 18944, 28, 4, 152064, False),
    "deepseek-ai/deepseek-r1-distill-qwen-7b": (28, 3584, 18944, 28, 4, 152064, False),
}


class PlanError(ValueError):
    """A model whose shape the plan cannot know (no local config, not in the table)."""


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a Qwen2/Llama-style decoder (q/k/v biases as Qwen2)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    source: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        h, kv = self.hidden, self.kv_dim
        attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q, k, v (biased), o
        return attention + 3 * h * self.intermediate + 2 * h  # MLP, two RMSNorms

    def backbone_params(self) -> int:
        return self.layers * self.layer_params() + self.vocab * self.hidden + self.hidden

    def params(self) -> int:
        return self.backbone_params() + (0 if self.tied else self.vocab * self.hidden)

    def largest_tensor(self) -> int:
        return max(self.vocab * self.hidden, self.hidden * self.intermediate)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_dim * dtype_bytes


def shape_from_hf_config(config: dict[str, Any], source: str) -> ModelShape:
    return ModelShape(
        layers=config["num_hidden_layers"],
        hidden=config["hidden_size"],
        intermediate=config["intermediate_size"],
        heads=config["num_attention_heads"],
        kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        vocab=config["vocab_size"],
        tied=bool(config.get("tie_word_embeddings", False)),
        source=source,
    )


def model_shape(model: str) -> ModelShape:
    """The shape from a local ``config.json`` (the embedded models, a local path), else from
    the built-in table of known hub models (no network is used)."""
    from remix_rft.engines.models import resolve_model_path

    try:
        path = Path(resolve_model_path(model)) / "config.json"
    except FileNotFoundError:
        path = Path("/nonexistent")
    if path.is_file():
        return shape_from_hf_config(json.loads(path.read_text()), f"config.json at {path.parent}")
    known = KNOWN_SHAPES.get(model.lower())
    if known is None:
        raise PlanError(
            f"memory plan: no local config.json for model {model!r} and not in the built-in "
            f"table ({', '.join(sorted(KNOWN_SHAPES))}); give a local model directory"
        )
    return ModelShape(*known, source="built-in table of published configs (no network used)")


@dataclass(frozen=True)
class Hardware:
    """What the plan is made for (CLI flags, not config keys)."""

    gpu_memory_gb: float = 80.0  # per device, GiB (on ``cpu``: host RAM per rank)
    gpus: int = 8  # data-parallel ranks (FSDP2 shards over them)
    device: str = "cuda"
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    push: str = ""  # full or streamed; empty: streamed where the config has the bucket key

    @property
    def usable(self) -> float:
        reserve = GPU_RESERVE_GIB if self.device == "cuda" else 0.0
        return (self.gpu_memory_gb - reserve) * GIB


@dataclass
class Phase:
    """One phase's terms (bytes) and the config key to change when it does not fit."""

    name: str
    terms: list[tuple[str, float]] = field(default_factory=list)
    fix: str = ""

    @property
    def total(self) -> float:
        return sum(b for _, b in self.terms)

    def add(self, label: str, nbytes: float) -> None:
        if nbytes > 0:
            self.terms.append((label, nbytes))


@dataclass
class MemoryPlan:
    shape: ModelShape
    hardware: Hardware
    phases: list[Phase]

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda p: p.total)

    def fits(self) -> bool:
        return all(p.total <= self.hardware.usable for p in self.phases)

    def misfits(self) -> list[Phase]:
        return [p for p in self.phases if p.total > self.hardware.usable]


@dataclass(frozen=True)
class Precision:
    """Bytes of the parameters computed with, activations, and whether FSDP2 shards."""

    compute: int  # 2 under bf16 mixed precision, 4 in fp32
    sharded: bool
    autocast_cache: bool  # one process, bf16: autocast keeps a bf16 copy of each weight


def precision(cfg: TrainConfig, hw: Hardware) -> Precision:
    bf16 = cfg.dtype == "bfloat16"
    sharded = hw.gpus > 1
    return Precision(2 if bf16 else 4, sharded, bf16 and not sharded)


def micro_tokens(cfg: TrainConfig, hw: Hardware, *, logprob: bool = False) -> int:
    """Padded tokens of one forward pass: the token budget, else rows x longest sequence."""
    budget = cfg.logprob_micro_batch_tokens if logprob else 0
    budget = budget or cfg.micro_batch_tokens
    if budget:
        return max(budget, sequence_tokens(cfg, hw))  # a longer row still runs, alone
    rows = cfg.micro_batch_size or max(1, cfg.minibatch_size // hw.gpus)
    return rows * sequence_tokens(cfg, hw)


def sequence_tokens(cfg: TrainConfig, hw: Hardware) -> int:
    return hw.prompt_tokens + max(cfg.max_new_tokens, cfg.eval_max_new_tokens or 0)


def layer_activation_bytes(shape: ModelShape, tokens: int, act: int) -> float:
    """Tensors one decoder layer saves for its backward, per token (docs: Memory plan).

    bf16: input 2h, each RMSNorm's fp32 input + bf16 output 6h, q/k/v after RoPE and
    repeat_kv + the attention output and its reshaped copy 10h, the residual 2h, the MLP's
    gate, silu, up and product 8i = 26h + 8i bytes. fp32: 36h + 16i.
    """
    h, i = shape.hidden, shape.intermediate
    per_token = 26 * h + 8 * i if act == 2 else 36 * h + 16 * i
    return float(per_token * tokens)


def head_bytes(shape: ModelShape, cfg: TrainConfig, tokens: int, act: int) -> float:
    """The output head's peak: one chunk (fp32 copies + its own logits), or full logits."""
    c = min(cfg.logprob_chunk_tokens, cfg.max_new_tokens)
    if c:
        logits = c * shape.vocab * act if act == 2 else 0  # fp32 logits are the first copy
        return HEAD_CHUNK_FP32_COPIES * c * shape.vocab * 4 + logits
    return tokens * shape.vocab * act + 3 * cfg.max_new_tokens * shape.vocab * 4


def states(cfg: TrainConfig, shape: ModelShape, hw: Hardware, *, grads: bool) -> list:
    """Per-device shards of what lives all run long: fp32 masters, gradients, AdamW moments."""
    n = hw.gpus
    per_trained = 16 if grads else 12
    terms = [(f"policy: fp32 weights, {'grads, ' if grads else ''}AdamW (/{n})",
              per_trained * shape.params() / n)]
    if cfg.uses_critic:
        terms.append((f"critic: fp32 weights, {'grads, ' if grads else ''}AdamW (/{n})",
                      per_trained * shape.backbone_params() / n))
    if cfg.needs_reference:
        terms.append((f"reference: fp32 weights (/{n})", 4 * shape.params() / n))
    return terms


def training_phase(cfg: TrainConfig, shape: ModelShape, hw: Hardware) -> Phase:
    prec = precision(cfg, hw)
    tokens = micro_tokens(cfg, hw)
    phase = Phase("update", fix="micro_batch_tokens (lower), gradient_checkpointing: true, "
                  "logprob_chunk_tokens, or more GPUs")
    for label, nbytes in states(cfg, shape, hw, grads=True):
        phase.add(label, nbytes)
    if prec.sharded:  # the unit computed + the prefetched next; the root stays gathered
        phase.add("FSDP2: 2 gathered layers", 2 * shape.layer_params() * prec.compute)
        phase.add("FSDP2: root unit (embeddings, lm_head) gathered",
                  (shape.params() - shape.layers * shape.layer_params()) * prec.compute)
    if prec.autocast_cache:
        phase.add("autocast: bf16 copy of the weights", 2 * shape.params())
    acts = activation_bytes(cfg, shape, tokens, prec.compute)
    phase.add(f"activations, {tokens} tokens "
              f"({'with' if cfg.gradient_checkpointing else 'without'} checkpointing)", acts)
    phase.add(f"output head, chunks of {cfg.logprob_chunk_tokens} tokens",
              head_bytes(shape, cfg, tokens, prec.compute))
    return phase


def activation_bytes(cfg: TrainConfig, shape: ModelShape, tokens: int, act: int) -> float:
    layer = layer_activation_bytes(shape, tokens, act)
    if cfg.gradient_checkpointing:  # each layer's input kept; one layer recomputed at a time
        return shape.layers * tokens * shape.hidden * act + layer
    return shape.layers * layer


def logprob_phase(cfg: TrainConfig, shape: ModelShape, hw: Hardware) -> Phase:
    """π_k / π_base / values without gradients: no saved activations, only what the
    forward keeps (every layer's hidden state when it returns them all) + one chunk."""
    prec = precision(cfg, hw)
    tokens = micro_tokens(cfg, hw, logprob=True)
    phase = Phase("log-prob passes (no grad)", fix="logprob_micro_batch_tokens (lower)")
    for label, nbytes in states(cfg, shape, hw, grads=not _streamed(cfg, hw)):
        phase.add(label, nbytes)
    if prec.sharded:
        phase.add("FSDP2: gathered layers + root",
                  (2 * shape.layer_params() + shape.params() - shape.layers * shape.layer_params())
                  * prec.compute)
    # One layer's input and output: the last hidden state is hooked from the final norm,
    # not collected with every layer's (engines/policy.py: _last_hidden).
    phase.add(f"hidden states, {tokens} tokens", 2 * tokens * shape.hidden * prec.compute)
    phase.add("one layer's transient tensors", layer_activation_bytes(shape, tokens, prec.compute)
              / 2)
    phase.add("output head chunk", 2 * cfg.logprob_chunk_tokens * shape.vocab * 4)
    return phase


def _streamed(cfg: TrainConfig, hw: Hardware) -> bool:
    if hw.push:
        return hw.push == "streamed"
    return hasattr(cfg, "weight_sync_bucket_mb")


def generation_phase(cfg: TrainConfig, shape: ModelShape, hw: Hardware) -> Phase:
    prec = precision(cfg, hw)
    grads = not _streamed(cfg, hw)  # the streamed life cycle frees grads after the step
    phase = Phase("generation", fix="vllm_gpu_memory_utilization or more GPUs")
    for label, nbytes in states(cfg, shape, hw, grads=grads):
        phase.add(label, nbytes)
    seq = sequence_tokens(cfg, hw)
    if cfg.rollout_engine == "vllm":
        phase.add(f"vLLM (vllm_gpu_memory_utilization {cfg.vllm_gpu_memory_utilization:g})",
                  cfg.vllm_gpu_memory_utilization * hw.gpu_memory_gb * GIB)
        return phase
    kv = 4 if prec.autocast_cache or prec.compute == 4 else 2  # one process decodes in fp32
    if prec.sharded:
        phase.add("FSDP2: whole policy gathered for generate", shape.params() * prec.compute)
    seqs = max(1, cfg.fresh_batch_size() // hw.gpus)
    phase.add(f"KV cache, {seqs} sequences x {seq} tokens",
              seqs * seq * shape.kv_bytes_per_token(kv))
    phase.fix = "rollout_engine: vllm, prompts_per_step (lower) or more GPUs"
    return phase


def vllm_pool_lines(cfg: TrainConfig, shape: ModelShape, hw: Hardware) -> list[str]:
    """What vLLM's share holds: bf16 weights, its activations, and the KV cache left over."""
    pool = cfg.vllm_gpu_memory_utilization * hw.gpu_memory_gb * GIB
    kv = pool - 2 * shape.params() - VLLM_ACTIVATION_GIB * GIB
    seq = sequence_tokens(cfg, hw)
    tokens = max(0.0, kv) / shape.kv_bytes_per_token(2)
    line = (f"  vLLM share {_gib(pool)}: weights {_gib(2 * shape.params())} + activations "
            f"{VLLM_ACTIVATION_GIB:.1f} GiB + KV cache {_gib(max(kv, 0))} = {tokens / 1e3:.0f}k "
            f"tokens, {tokens / seq:.1f} sequences of {seq} tokens at once")
    if tokens < seq:
        return [line, f"  WARNING: vLLM's KV cache cannot hold one {seq}-token sequence: "
                "raise vllm_gpu_memory_utilization"]
    return [line]


def push_phase(cfg: TrainConfig, shape: ModelShape, hw: Hardware) -> Phase:
    streamed = _streamed(cfg, hw)
    phase = Phase(f"weight push ({'streamed' if streamed else 'full'})",
                  fix="weight_sync_bucket_mb (lower), vllm_gpu_memory_utilization")
    for label, nbytes in states(cfg, shape, hw, grads=not streamed):
        phase.add(label, nbytes)
    phase.add(*push_transfer(cfg, shape, hw))
    if streamed:
        phase.add("vLLM weights awake (bf16; KV cache woken after the push)", 2 * shape.params())
    else:
        phase.add("vLLM awake (weights + KV cache)",
                  cfg.vllm_gpu_memory_utilization * hw.gpu_memory_gb * GIB)
    return phase


def push_transfer(cfg: TrainConfig, shape: ModelShape, hw: Hardware) -> tuple[str, float]:
    """The weights in flight: the whole fp32 model on every rank, or one bucket in the
    engine's dtype plus the one fp32 tensor being gathered."""
    if not _streamed(cfg, hw):
        # get_model_state_dict gathers a tied lm_head under its own key too, and each
        # gather stages its tensor once more (measured: benchmarks/memory_plan_check.py)
        state = shape.params() + (shape.vocab * shape.hidden if shape.tied else 0)
        return ("full fp32 state dict gathered on every rank",
                4.0 * (state + shape.largest_tensor()))
    bucket = getattr(cfg, "weight_sync_bucket_mb", 1024) * MIB
    engine = 2 if cfg.dtype == "bfloat16" else 4
    published = shape.params() + (shape.vocab * shape.hidden if shape.tied else 0)
    largest = engine * shape.largest_tensor()  # a tensor above the bucket is its own bucket
    # + the shard's cast copy of the tensor being gathered (measured with 2 gloo ranks)
    return (f"one bucket ({bucket / MIB:.0f} MiB) + the shard of the tensor gathered",
            max(min(bucket, engine * published), largest) + largest / hw.gpus)


def memory_plan(cfg: TrainConfig, hw: Hardware, shape: ModelShape | None = None) -> MemoryPlan:
    shape = shape or model_shape(cfg.model)
    phases = [training_phase(cfg, shape, hw), logprob_phase(cfg, shape, hw),
              generation_phase(cfg, shape, hw)]
    if cfg.rollout_engine == "vllm" and hw.device == "cuda":
        phases.append(push_phase(cfg, shape, hw))
    return MemoryPlan(shape, hw, phases)


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def plan_text(cfg: TrainConfig, hw: Hardware) -> list[str]:
    plan = memory_plan(cfg, hw)
    s, where = plan.shape, "GPU" if hw.device == "cuda" else "process (host RAM)"
    lines = [
        f"memory plan    per {where}, {hw.gpus} x {hw.gpu_memory_gb:g} GiB "
        f"({_gib(hw.usable)} usable), {cfg.dtype}; prompts <= {hw.prompt_tokens} tokens",
        f"  model shape: {s.params() / 1e9:.2f} B params, {s.layers} layers, hidden "
        f"{s.hidden}, intermediate {s.intermediate}, {s.heads}/{s.kv_heads} heads, vocab "
        f"{s.vocab}, {'tied' if s.tied else 'untied'} lm_head ({s.source})",
    ]
    for phase in plan.phases:
        ok = "fits" if phase.total <= hw.usable else "DOES NOT FIT"
        lines.append(f"  {phase.name}: {_gib(phase.total)} ({ok})")
        lines += [f"    {_gib(b):>10}  {label}" for label, b in phase.terms]
    if cfg.rollout_engine == "vllm" and hw.device == "cuda":
        lines += vllm_pool_lines(cfg, s, hw)
    lines.append(f"  predicted peak: {_gib(plan.peak.total)} in {plan.peak.name}")
    lines += [f"  WARNING: {p.name} needs {_gib(p.total)} > {_gib(hw.usable)}: change {p.fix}"
              for p in plan.misfits()]
    return lines
