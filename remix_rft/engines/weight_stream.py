"""Streamed weight publication: the policy's weights leave the trainer a bucket at a time.

A publication (the push into vLLM, the asynchronous transport, a checkpoint's consolidated
HF copy) used to gather the whole state dict first: under FSDP2 every rank held the full
fp32 policy at once (issue #38: the 7B push needs ≈ 100 GB per GPU). A :class:`WeightStream`
instead yields ``(HF name, tensor)`` pairs, gathering at most ``bucket_mb`` of them at a
time: each FSDP2 parameter is cast to the engine's dtype on its shard (so the gather moves
bf16, not fp32) and all-gathered with ``DTensor.full_tensor()``; a bucket is dropped before
the next is gathered. LoRA adapters are merged one module at a time. The consumer must copy
what it keeps (vLLM and the transport copy into their own storage).

Under FSDP2 iterating a stream is a collective: every rank iterates the same stream to the
end, in the same order (a rank that only needs to drain it, e.g. all but rank 0 when a
checkpoint is written, still iterates). See docs/scale-out.md, "Weight publication".
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_BUCKET_MB = 1024.0
TIED_HEAD = "lm_head.weight"
EMBEDDINGS = "model.embed_tokens.weight"


@dataclass(frozen=True)
class WeightSpec:
    """What a published tensor will be, known without gathering it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class _Entry:
    spec: WeightSpec
    fetch: Callable[[], torch.Tensor]  # the full tensor, in spec.dtype (a collective if sharded)


def _gather(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The full tensor in ``dtype``: a DTensor is cast on its shard, then all-gathered."""
    from torch.distributed.tensor import DTensor, Shard

    tensor = tensor.detach()
    if not isinstance(tensor, DTensor):
        return tensor.to(dtype)
    if tensor.device_mesh.ndim == 1 and tuple(tensor.placements) == (Shard(0),):
        return _gather_rows(tensor.to_local(), dtype, tuple(tensor.shape), tensor.device_mesh)
    return tensor.to(dtype).full_tensor()


GATHER_BLOCK_BYTES = 32 * 2**20  # per rank and collective: transient memory of a gather


def _gather_rows(shard: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], mesh: Any
                 ) -> torch.Tensor:  # fmt: skip
    """FSDP2's dim-0 shards (``torch.chunk`` sizes) gathered into one ``dtype`` tensor.

    ``full_tensor()`` casts the whole shard, then gloo gathers through an internal buffer
    and, for uneven shards, pads and copies again: ~2.5 × the tensor at once (649 MiB for
    the 0.5B model's 260 MiB bf16 embeddings). Here the rows go a block of ≤ 32 MiB per rank
    at a time — cast, gathered, copied into place — so a gather costs the full tensor plus
    a few blocks."""
    import torch.distributed as dist

    group = mesh.get_group()
    world = dist.get_world_size(group)
    rows = -(-shape[0] // world)  # torch.chunk's size: every rank's padded row count
    width = max(1, int(torch.Size(shape[1:]).numel()))
    item = torch.empty((), dtype=dtype).element_size()
    block = max(1, min(rows, GATHER_BLOCK_BYTES // (width * item)))
    out = shard.new_empty((rows * world, *shape[1:]), dtype=dtype)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    for begin in range(0, rows, block):
        end = min(begin + block, rows)
        part = shard.new_zeros((end - begin, *shape[1:]), dtype=dtype)
        have = shard[begin:end]  # fewer (or no) rows at the end of an uneven shard
        part[: have.shape[0]].copy_(have)
        gathered = part.new_empty((world * (end - begin), *shape[1:]))
        gather(gathered, part, group=group)
        for r, piece in enumerate(gathered.chunk(world)):
            out[r * rows + begin : r * rows + end].copy_(piece)
    return out[: shape[0]]


def _plain_entries(model: Any, dtype: torch.dtype | None) -> list[_Entry]:
    from remix_rft.engines.distributed import reshard

    reshard(model)  # FSDP2 keeps the root gathered after a forward: publish from the shards
    entries = []
    for name, tensor in model.state_dict().items():
        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        spec = WeightSpec(name, target, tuple(tensor.shape))
        entries.append(_Entry(spec, lambda t=tensor, d=target: _gather(t, d)))
    return entries


def _lora_entries(model: Any, dtype: torch.dtype | None) -> list[_Entry]:
    """base + adapter, merged one LoRA module at a time (engines/lora.py)."""
    from remix_rft.engines import lora

    base = model.get_base_model()
    layers = {f"{name}.weight": layer for name, layer in lora.lora_layers(base)}
    entries = []
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        name = key.replace(".base_layer.", ".")
        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        spec = WeightSpec(name, target, tuple(tensor.shape))
        if name in layers:
            fetch = lambda layer=layers[name], d=target: lora.merged_weight(layer).to(d)  # noqa: E731
        else:
            fetch = lambda t=tensor, d=target: _gather(t, d)  # noqa: E731
        entries.append(_Entry(spec, fetch))
    return entries


class WeightStream:
    """The policy as a plain causal LM, ``(HF name, tensor)`` a bucket at a time.

    ``dtype``: cast floating tensors to it (the engine's dtype; None keeps the model's).
    ``bucket_mb``: at most this many MB of gathered tensors alive at once (a single
    larger tensor is its own bucket; 0: one tensor at a time). ``tied_head``: also yield
    ``lm_head.weight`` for a model that ties it to the embeddings (vLLM keeps its own
    output layer, and its reload does not re-tie it); a saved HF model leaves it out.
    """

    def __init__(
        self,
        model: Any,
        *,
        dtype: torch.dtype | None = None,
        bucket_mb: float = DEFAULT_BUCKET_MB,
        tied_head: bool = True,
    ) -> None:
        from remix_rft.engines import lora

        if lora.is_lora(model):
            entries = _lora_entries(model, dtype)
        else:
            entries = _plain_entries(model, dtype)
        names = {e.spec.name for e in entries}
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        if tied and not tied_head:
            entries = [e for e in entries if e.spec.name != TIED_HEAD]
        elif tied_head and TIED_HEAD not in names and EMBEDDINGS in names:
            embed = next(e for e in entries if e.spec.name == EMBEDDINGS)
            entries.append(_Entry(WeightSpec(TIED_HEAD, embed.spec.dtype, embed.spec.shape),
                                  embed.fetch))  # fmt: skip
        self.entries = entries
        self.bucket_bytes = int(bucket_mb * 2**20)

    def specs(self) -> list[WeightSpec]:
        """Names, dtypes and shapes of everything the stream yields, in order (no gather)."""
        return [e.spec for e in self.entries]

    def buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Consecutive tensors of at most ``bucket_mb`` together, gathered when reached."""
        group: list[_Entry] = []
        size = 0
        for entry in self.entries:
            if group and size + entry.spec.nbytes > self.bucket_bytes:
                yield [(e.spec.name, e.fetch()) for e in group]
                group, size = [], 0
            group.append(entry)
            size += entry.spec.nbytes
        if group:
            yield [(e.spec.name, e.fetch()) for e in group]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for bucket in self.buckets():
            while bucket:  # hand each tensor over, then let it go
                yield bucket.pop(0)


def stream_weights(
    model: Any, *, dtype: torch.dtype | str | None = None, bucket_mb: float = DEFAULT_BUCKET_MB
) -> WeightStream:
    """A :class:`WeightStream` of ``model``; ``dtype`` may be a config name ("bfloat16")."""
    return WeightStream(model, dtype=torch_dtype(dtype), bucket_mb=bucket_mb)


def torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``"bfloat16"`` → torch.bfloat16; ``"auto"``/None/"" → None (keep the model's)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in ("", "auto"):
        return None
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


# ---- a consolidated HF copy, streamed to one safetensors file ---------------------------
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def _safetensors_header(specs: list[WeightSpec]) -> bytes:
    """The file's header: 8-byte little-endian length, then JSON padded to 8 bytes (the
    layout ``safetensors.torch.save_file`` writes; tensors follow back to back)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        end = offset + spec.nbytes
        header[spec.name] = {
            "dtype": _SAFETENSORS_DTYPES[spec.dtype], "shape": list(spec.shape),
            "data_offsets": [offset, end],
        }  # fmt: skip
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(stream: WeightStream, path: Path | None) -> None:
    """``stream`` into one safetensors file at ``path``, a tensor at a time (never the whole
    state dict in memory). ``path`` None: only take part in the gathers (the ranks that do
    not write). A failed write still drains the stream, so that the other ranks' gathers
    complete, and then raises."""
    if path is None:
        for _ in stream:
            pass
        return
    error: OSError | None = None
    with open(path, "wb") as out:
        out.write(_safetensors_header(stream.specs()))
        for _, tensor in stream:
            if error is None:
                try:
                    out.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                              .numpy().data)  # fmt: skip
                except OSError as err:  # e.g. ENOSPC
                    error = err
            del tensor
    if error is not None:
        raise error


def save_hf_policy_streamed(model: Any, tokenizer: Any, out: Path, *, write: bool) -> None:
    """A loadable HF model directory of ``model`` (FSDP2-sharded: a collective, every rank
    calls it; only the one with ``write`` writes), the weights streamed a tensor at a time
    in the model's own dtype; the same files as ``distributed.save_hf_policy`` writes."""
    stream = WeightStream(model, tied_head=False)
    if not write:
        write_safetensors(stream, None)
        return
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(stream, out / "model.safetensors")
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
