"""Issue #38: the memory plan's predictions beside measured peaks (CPU, fp32 or a GPU).

Two phases the plan predicts (``remix_rft/trainer/memory_plan.py``):

* **update** — one training step (forward + backward of the policy loss through
  ``response_stats``, the chunked output head, AdamW step) of a random-init Qwen2 in one
  process; measured: the process's peak minus what it held before the model was built
  (CPU: the kernel's RSS high-water mark, reset before the step; CUDA:
  ``max_memory_allocated``). The first step (which creates AdamW's moments) runs on a few
  tokens, the measured one at the full length, as every later step of a run does.
* **publication** — one weight publication (``engines/transport.py: policy_weights``,
  consumed one tensor at a time) from a model sharded with FSDP2 over 2 gloo ranks:
  peak growth of each rank during the publication; ``full`` (a full state dict on every
  rank) or ``streamed`` (per-bucket, where the installed version streams).

Each measurement runs in its own process (peaks do not mix), with glibc's mmap threshold
pinned so freed tensors leave the RSS at once.

    nice -n 10 python benchmarks/memory_plan_check.py            # CPU table (about 5 min)
    python benchmarks/memory_plan_check.py --quick               # tiny shapes (a test)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from remix_rft.trainer.memory_plan import (  # noqa: E402
    GIB,
    Hardware,
    ModelShape,
    memory_plan,
    push_transfer,
)

# (layers, hidden, intermediate, heads, kv heads, vocab, tied): Qwen2-0.5B's and 1.5B's
# widths at 4 layers, vocabularies cut so that a CPU step stays under 5 GiB.
SHAPES = {
    "h896": ModelShape(4, 896, 4864, 14, 2, 65536, True, "Qwen2-0.5B width, 4 layers"),
    "h1536": ModelShape(4, 1536, 8960, 12, 2, 16384, True, "Qwen2-1.5B width, 4 layers"),
    "h896-v152k": ModelShape(4, 896, 4864, 14, 2, 151936, True, "Qwen2-0.5B, 4 layers"),
    "h1536-v32k": ModelShape(4, 1536, 8960, 12, 2, 32768, False, "Qwen2-1.5B width, 4 layers"),
    "tiny": ModelShape(2, 64, 176, 4, 2, 512, True, "smoke test"),
    "r1-1.5b": ModelShape(28, 1536, 8960, 12, 2, 151936, False, "R1-Distill-Qwen-1.5B"),
}
# (shape, gradient checkpointing, prompt tokens, response tokens): one row per step
TRAIN_CASES = [("h896", False, 128, 896), ("h896", True, 128, 896), ("h1536", True, 128, 896),
               ("h896", False, 256, 3840), ("h1536", True, 256, 3840)]
PUSH_CASES = ["h896-v152k", "h1536-v32k"]
# One GPU (benchmarks/gpu_check.sh): the 1.5B shape, a step at 8,448 tokens, bf16.
GPU_TRAIN_CASES = [("r1-1.5b", True, 256, 8192)]
GPU_PUSH_CASES = ["r1-1.5b"]


@dataclass
class Row:
    phase: str
    shape: str
    setting: str
    measured_gib: float
    predicted_gib: float

    @property
    def error(self) -> float:
        return self.predicted_gib / self.measured_gib - 1


def plan_config(gc: bool, tokens: int, response: int, dtype: str = "float32"):
    from remix_rft.trainer.config import load_config

    return load_config(None, [
        "algorithm=grpo", "model=embedded", "kl_coef=0", f"dtype={dtype}",
        f"gradient_checkpointing={str(gc).lower()}", f"micro_batch_tokens={tokens}",
        f"max_new_tokens={response}", f"eval_max_new_tokens={response}", "rollout_engine=hf",
    ])  # fmt: skip


def predicted_update(shape: ModelShape, gc: bool, prompt: int, response: int, device: str,
                     dtype: str) -> float:
    cfg = plan_config(gc, prompt + response, response, dtype)
    hw = Hardware(gpu_memory_gb=1e3, gpus=1, device=device, prompt_tokens=prompt)
    return memory_plan(cfg, hw, shape).phases[0].total


def predicted_push(shape: ModelShape, mode: str, bucket_mb: float = 256, ranks: int = 2) -> float:
    """The plan's bytes in flight: full fp32 state dict, or bf16 buckets (cast on the shard)."""
    from remix_rft.trainer.config import TrainConfig

    cfg = plan_config(False, 1024, 896, "bfloat16")
    if hasattr(TrainConfig(), "weight_sync_bucket_mb"):
        cfg.weight_sync_bucket_mb = bucket_mb
    return push_transfer(cfg, shape, Hardware(gpus=ranks, push=mode))[1]


# ---- children ------------------------------------------------------------------------------
def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (Linux >= 4.0)
        f.write("5")


def build_model(shape: ModelShape, device: str, gc: bool):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate, tie_word_embeddings=shape.tied,
        attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    if gc:
        from remix_rft.engines.distributed import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    return model


def _row(vocab: int, prompt: int, response: int):
    import torch

    from remix_rft.data.batch import collate
    from remix_rft.data.buffer import Sample

    gen = torch.Generator().manual_seed(1)
    sample = Sample(
        prompt_ids=torch.randint(0, vocab, (prompt,), generator=gen),
        response_ids=torch.randint(0, vocab, (response,), generator=gen),
        behavior_logprobs=torch.zeros(response),
        reward=1.0, advantage=1.0, version=1, group=0, finished=True,
    )  # fmt: skip
    return collate([sample], pad_id=0)


def train_step(model, optim, batch) -> None:
    from remix_rft.engines.policy import response_stats

    optim.zero_grad(set_to_none=True)  # as Updater: gradients exist from the backward on
    stats = response_stats(model, batch, temperature=1.0)
    mask = batch.response_mask.to(stats.logprobs.device)
    loss = -(stats.logprobs * mask).sum() / mask.sum() - 1e-3 * (stats.entropy * mask).mean()
    loss.backward()
    optim.step()


def child_train(shape: ModelShape, gc: bool, prompt: int, response: int, device: str,
                dtype_name: str) -> float:
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    torch.ones(8).sum()  # the allocator's and kernels' first-use costs, before the baseline
    before = torch.cuda.memory_allocated() if device == "cuda" else _rss_now()
    model = build_model(shape, device, gc)
    if dtype == torch.bfloat16:  # one process: fp32 masters, bf16 compute (as the trainer)
        from remix_rft.engines.distributed import autocast_bf16

        autocast_bf16(model, torch.device(device))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-6)
    train_step(model, optim, _row(shape.vocab, 8, 8))  # creates AdamW's moments
    batch = _row(shape.vocab, prompt, response)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_hwm()
    train_step(model, optim, batch)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _hwm()
    return (peak - before) / GIB


def _publish(model, mode: str, bucket_mb: float) -> None:
    """One publication, each tensor held only as long as an engine copying it would."""
    import torch

    if mode == "full":  # the path before #38 item 1: every rank gathers the full fp32 model
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=False)
        state = get_model_state_dict(model, options=opts)
        del state
        return
    from remix_rft.engines.weight_stream import WeightStream  # the scale-sync helper's

    for _name, tensor in WeightStream(model, dtype=torch.bfloat16, bucket_mb=bucket_mb):
        del tensor


def _push_rank(rank: int, shape: ModelShape, port: int, out: str, mode: str, device: str,
               world: int, bucket_mb: float) -> None:
    import gc

    import torch

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from remix_rft.engines.distributed import setup, shard_model, shutdown

    env = setup(device)
    model = shard_model(build_model(shape, "cpu", False), env)  # built on the host, sharded
    gc.collect()
    env.barrier()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _rss_now()
        _reset_hwm()
    _publish(model, mode, bucket_mb)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _hwm()
    Path(f"{out}.{rank}").write_text(json.dumps((peak - before) / GIB))
    shutdown(barrier=True)


def child_push(shape: ModelShape, mode: str, device: str, bucket_mb: float) -> float:
    import tempfile

    import torch.multiprocessing as mp

    world = 1 if device == "cuda" else 2  # one GPU here; 2 gloo ranks on the CPU
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/grown"
        port = 29000 + os.getpid() % 1000
        mp.spawn(_push_rank, args=(shape, port, out, mode, device, world, bucket_mb),
                 nprocs=world)  # fmt: skip
        return max(json.loads(Path(f"{out}.{r}").read_text()) for r in range(world))


def push_mode() -> str:
    """What the installed ``policy_weights`` does: streamed where the config has the key."""
    from remix_rft.trainer.config import TrainConfig

    return "streamed" if hasattr(TrainConfig(), "weight_sync_bucket_mb") else "full"


# ---- the orchestrator ----------------------------------------------------------------------
def run_child(args: list[str]) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    done = subprocess.run([sys.executable, __file__, "--child", *args], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def measure(train_cases, push_cases, device: str, dtype: str) -> list[Row]:
    rows = []
    for name, gc, prompt, response in train_cases:
        got = run_child(["train", name, str(int(gc)), str(prompt), str(response), device, dtype])
        want = predicted_update(SHAPES[name], gc, prompt, response, device, dtype) / GIB
        setting = f"{prompt + response} tokens, checkpointing {'on' if gc else 'off'}, {dtype}"
        rows.append(Row("update", name, setting, got, want))
        print(_fmt(rows[-1]), flush=True)
    modes = ["full", "streamed"] if push_mode() == "streamed" else ["full"]
    bucket = 1024 if device == "cuda" else 256
    ranks = "1 GPU (FSDP2, nccl)" if device == "cuda" else "2 gloo ranks"
    for name in push_cases:
        for mode in modes:
            got = run_child(["push", name, mode, device, str(bucket)])
            want = predicted_push(SHAPES[name], mode, bucket, 1 if device == "cuda" else 2) / GIB
            setting = ("full fp32 state dict" if mode == "full"
                       else f"streamed bf16, {bucket} MiB buckets") + f", {ranks}"
            rows.append(Row("publication", name, setting, got, want))
            print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(row: Row) -> str:
    s = SHAPES[row.shape]
    return (f"| {row.phase} | {row.shape} ({s.params() / 1e6:.0f}M params) | {row.setting} | "
            f"{row.measured_gib:.2f} | {row.predicted_gib:.2f} | {row.error:+.1%} |")


HEADER = ("| phase | shape | setting | measured peak (GiB) | plan (GiB) | plan / measured - 1 |\n"
          "|---|---|---|---|---|---|")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, name, *rest = sys.argv[2:]
        if kind == "train":
            gc, prompt, response, device, dtype = rest
            print(child_train(SHAPES[name], gc == "1", int(prompt), int(response), device, dtype))
        else:  # push NAME [MODE DEVICE BUCKET_MB]
            mode, device, bucket = (rest + [push_mode(), "cpu", "256"][len(rest):])[:3]
            print(child_push(SHAPES[name], mode, device, float(bucket)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--tolerance", type=float, default=0.15)
    p.add_argument("--phases", default="update,publication",
                   help="which rows to measure (comma-separated)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the 1.5B shape on one GPU, bf16 (benchmarks/gpu_check.sh)")
    args = p.parse_args()
    if args.device == "cuda" and not _cuda_available():
        print("memory_plan_check: --device cuda needs a CUDA device, and torch sees none "
              "(torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    print(HEADER, flush=True)
    if args.quick:
        rows = measure([("tiny", True, 16, 48)], ["tiny"], "cpu", "float32")
    else:
        gpu = args.device == "cuda"
        train = (GPU_TRAIN_CASES if gpu else TRAIN_CASES) if "update" in args.phases else []
        push = (GPU_PUSH_CASES if gpu else PUSH_CASES) if "publication" in args.phases else []
        rows = measure(train, push, args.device, "bfloat16" if gpu else "float32")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    bad = [r for r in rows if abs(r.error) > args.tolerance and not args.quick]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
