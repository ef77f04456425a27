"""Generation throughput of the rollout engines: tokens/s of HF ``generate`` vs vLLM.

For each model shape and engine: P prompts × G samples, up to T new tokens (random
models of the real vocabulary almost never sample EOS, so they run the full T; the
embedded model stops at its answers, ~37 tokens), timed after one warm-up call, over
``--rounds`` rounds in alternating engine order; prints the table (mean ± half-range
of generated tokens per second)::

    python benchmarks/rollout_speed.py                            # CPU defaults
    python benchmarks/rollout_speed.py --shapes embedded,qwen2-0.5b --prompts 16 \\
        --samples 8 --tokens 256 --dtype bfloat16                   # a GPU

Shapes: ``embedded`` (the shipped tiny model), ``qwen2-0.5b`` and ``qwen2-1.5b``
(random weights with the real configurations, vocabulary 151,936). Engines that are
not installed (vLLM) are reported as such, not skipped silently.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen2-0.5B / Qwen2.5-1.5B (R1-Distill-Qwen-1.5B's base) configurations, random init.
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2),
    "qwen2-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2),
}  # fmt: skip


def make_model_dir(shape: str, root: Path, dtype: str) -> str:
    """A model directory vLLM and HF can both load: embedded as shipped, else random."""
    from remix_rft.engines.models import resolve_model_path

    if shape == "embedded":
        return resolve_model_path("embedded")
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = root / shape
    if (out / "config.json").is_file():
        return str(out)
    cfg = Qwen2Config(vocab_size=151_936, max_position_embeddings=4096, tie_word_embeddings=True,
                      rope_theta=1_000_000.0, **SHAPES[shape])  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(out)
    # Any tokenizer works for throughput: prompts are token ids; the embedded one is local.
    AutoTokenizer.from_pretrained(resolve_model_path("embedded")).save_pretrained(out)
    return str(out)


def prompts_for(tokenizer: Any, n: int) -> list[str]:
    return [f"Compute ({i}+{2 * i})*{i % 7 + 2} step by step. " * 2 for i in range(n)]


def build(engine: str, model_dir: str, dtype: str, max_len: int) -> Any:
    from remix_rft.engines.catalog import build_engine
    from remix_rft.engines.policy import load_policy, load_tokenizer
    from remix_rft.engines.rollout import EngineOptions

    tokenizer = load_tokenizer(model_dir)
    policy = load_policy(model_dir, dtype=dtype)
    if torch.cuda.is_available():
        policy.to("cuda")
    options = EngineOptions(model_path=model_dir, dtype=dtype, max_model_len=max_len,
                            gpu_memory_utilization=float(os.environ.get("VLLM_MEM", "0.3")))  # fmt: skip
    return build_engine(engine, policy=policy, tokenizer=tokenizer, options=options), tokenizer


def time_generation(engine: Any, prompts: list[str], samples: int, tokens: int) -> float:
    from remix_rft.engines.rollout import SamplingSettings

    settings = SamplingSettings(max_new_tokens=tokens, temperature=1.0, n=samples)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    gen = engine.generate(prompts, settings)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return gen.num_tokens() / (time.perf_counter() - start)


def measure_one(args: argparse.Namespace) -> None:
    """``--one ENGINE``: build it in this fresh process, warm up, time one round, print JSON.

    Each engine gets a process of its own: vLLM's CPU backend pins torch's threads for
    the whole process, which would slow an HF engine measured after it in the same one.
    """
    engine, tokenizer = build(args.one, args.model_dir, args.dtype, 64 + args.tokens + 64)
    prompts = prompts_for(tokenizer, args.prompts)
    time_generation(engine, prompts, args.samples, args.tokens)  # warm-up at full size
    print(json.dumps({"tokens_per_s": time_generation(engine, prompts, args.samples, args.tokens)}))
    engine.close()


def one_round(args: argparse.Namespace, engine: str, model_dir: str) -> float | str:
    cmd = [sys.executable, __file__, "--one", engine, "--model-dir", model_dir,
           "--prompts", str(args.prompts), "--samples", str(args.samples),
           "--tokens", str(args.tokens), "--dtype", args.dtype]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:  # reported in the table, e.g. vLLM not installed
        last = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:]
        return f"n/a ({last[0][-90:] if last else 'failed'})"
    return float(json.loads(done.stdout.strip().splitlines()[-1])["tokens_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", default="embedded,qwen2-0.5b")
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        measure_one(args)
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            model_dir = make_model_dir(shape, Path(tmp), args.dtype)
            engines = args.engines.split(",")
            results: dict[str, list[float | str]] = {name: [] for name in engines}
            for r in range(args.rounds):  # alternating order, a fresh process per measurement
                for name in engines if r % 2 == 0 else engines[::-1]:
                    results[name].append(one_round(args, name, model_dir))
            for name, values in results.items():
                failed = [v for v in values if isinstance(v, str)]
                if failed:
                    rows.append({"shape": shape, "engine": name, "tokens_per_s": failed[0]})
                    continue
                mean = statistics.mean(values)
                spread = (max(values) - min(values)) / 2
                rows.append({"shape": shape, "engine": name, "tokens_per_s": f"{mean:,.0f} ± {spread:,.0f}",
                             "rounds": [round(v) for v in values]})  # fmt: skip
    print(f"\n{device}, {args.dtype}: {args.prompts} prompts x {args.samples} samples x "
          f"{args.tokens} tokens, {args.rounds} rounds (alternating order)\n")  # fmt: skip
    print("| shape | engine | generated tokens/s |\n|---|---|---|")
    for row in rows:
        print(f"| {row['shape']} | {row['engine']} | {row['tokens_per_s']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
