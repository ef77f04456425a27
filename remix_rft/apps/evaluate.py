"""`remix eval`: accuracy on the paper's five math benchmarks, resumable.

Greedy pass@1 when ``--samples 1`` at temperature 0; otherwise avg@K (mean pass@1 over
K samples per problem) and pass@K. Every response is appended, with its score, to
``<out stem>.responses.jsonl`` as soon as it is scored; a restarted evaluation reads
that file and generates only what is missing (a truncated last line, from a kill in
mid-write, is dropped). The first line of the file records the settings, so that a
resume with different settings is refused instead of mixing results.

Library functions log; only :func:`run` (the CLI entry point) prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from remix_rft.apps.args import add_seed, fraction, non_negative_int, positive_int
from remix_rft.apps.eval_results import (
    META_KEY,
    EvalError,
    EvalSettings,
    Key,
    append_record,
    average_metrics,
    benchmark_metrics,
    describe_mode,
    format_table,
    read_responses,
    responses_path,
)
from remix_rft.apps.eval_run import response_budget
from remix_rft.data.math_dataset import BENCHMARK_SPECS, DatasetError, load_benchmark
from remix_rft.data.prompts import DEFAULT_MATH_INSTRUCTION, format_prompt
from remix_rft.data.tasks import Problem
from remix_rft.engines.models import model_context
from remix_rft.engines.rollout import EngineError
from remix_rft.reward_pool import RewardPool, default_workers

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2
DEFAULT_BENCHMARKS = ",".join(BENCHMARK_SPECS)
DEFAULT_MAX_NEW_TOKENS = 32768  # R1-distilled models' budget; capped by the model's context
# ---------------------------------------------------------------------------- evaluation


def load_benchmarks(
    names: Iterable[str], data_dir: Path | None, limit: int | None
) -> dict[str, list[Problem]]:
    """The named benchmarks from ``data_dir``, or the shipped copies when it is None."""
    if data_dir is not None and not data_dir.is_dir():
        raise EvalError(f"data directory {data_dir} does not exist")
    out: dict[str, list[Problem]] = {}
    for name in names:
        if name not in BENCHMARK_SPECS:
            raise EvalError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARK_SPECS)}")
        try:
            out[name] = list(load_benchmark(name, data_dir, limit=limit))
        except DatasetError as exc:
            raise EvalError(str(exc)) from None
    return out


def evaluate(
    engine: Any,
    tokenizer: Any,
    benchmarks: dict[str, list[Problem]],
    settings: EvalSettings,
    responses_file: Path,
    *,
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    grader: RewardPool | None = None,
) -> dict[str, Any]:
    """Generate and score every missing (benchmark, problem, sample); return the metrics.

    ``on_start(total, already_done)`` and ``on_progress(n_new)`` drive a progress bar.
    ``grader`` scores with the math verifier (default: in this process).
    """
    settings.validate()
    stored, records = read_responses(responses_file)
    mine = asdict(settings)
    if stored is not None and stored != mine:
        changed = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        raise EvalError(
            f"{responses_file} holds responses made with other settings ({', '.join(changed)}); "
            "use another --out or pass --overwrite"
        )
    todo: list[tuple[str, Problem, int]] = [
        (name, p, s)
        for name, problems in benchmarks.items()
        for p in problems
        for s in range(settings.samples)
        if (name, p.id, s) not in records
    ]
    # longest prompts first: batches of similar lengths pad less, and memory runs out early
    todo.sort(key=lambda item: len(item[1].prompt), reverse=True)
    total = sum(len(ps) for ps in benchmarks.values()) * settings.samples
    if on_start:
        on_start(total, total - len(todo))
    log.info("%d of %d responses to generate (%d resumed)", len(todo), total, total - len(todo))

    responses_file.parent.mkdir(parents=True, exist_ok=True)
    with responses_file.open("a", encoding="utf-8") as fh:
        if stored is None:
            append_record(fh, {META_KEY: mine})
        with grader or RewardPool(workers=0) as pool:
            _generate_missing(
                engine, tokenizer, todo, settings, batch_size, fh, records, on_progress, pool
            )

    per = {
        name: benchmark_metrics(problems, records, name, settings.samples)
        for name, problems in benchmarks.items()
    }
    return {
        "settings": mine,
        "mode": describe_mode(settings),
        "benchmarks": per,
        "average": average_metrics(per),
        "responses": str(responses_file),
    }


def _generate_missing(
    engine: Any,
    tokenizer: Any,
    todo: list[tuple[str, Problem, int]],
    settings: EvalSettings,
    batch_size: int,
    fh: Any,
    records: dict[Key, dict[str, Any]],
    on_progress: Callable[[int], None] | None,
    grader: RewardPool,
) -> None:
    from remix_rft.engines.rollout import SamplingSettings

    prompt_cache: dict[str, str] = {}
    for begin in range(0, len(todo), batch_size):
        chunk = todo[begin : begin + batch_size]
        prompts = []
        for _, problem, _ in chunk:
            if problem.prompt not in prompt_cache:
                prompt_cache[problem.prompt] = format_prompt(
                    tokenizer, problem.prompt, settings.instruction
                )
            prompts.append(prompt_cache[problem.prompt])
        start = time.perf_counter()
        sampling = SamplingSettings(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed + begin,
            logprobs=False,
        )
        texts = engine.generate(prompts, sampling).texts
        log.debug("generated %d responses in %.1fs", len(texts), time.perf_counter() - start)
        pairs = zip(chunk, texts, strict=True)
        scores = grader.score([(text, problem.as_dict()) for (_, problem, _), text in pairs])
        for (name, problem, s), text, score in zip(chunk, texts, scores, strict=True):
            record = {
                "benchmark": name,
                "id": problem.id,
                "sample": s,
                "score": score,
                "answer": problem.answer,
                "response": text,
            }
            records[(name, problem.id, s)] = record
            append_record(fh, record)
        if on_progress:
            on_progress(len(chunk))


# ---------------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    """Add ``remix eval`` to the ``remix`` command's subparsers."""
    p = subparsers.add_parser(
        "eval",
        help="a run's checkpoint on its own held-out data, or a model on the math benchmarks",
        description=(
            "--run RUN_DIR: a checkpoint of a run (the newest, or --step N) on the run's own "
            "held-out problems and reward, as the trainer's eval/accuracy. --model: accuracy on "
            "the paper's math benchmarks, greedy pass@1 with --samples 1 at temperature 0, else "
            "avg@K and pass@K; responses are saved as they are scored, and rerunning the same "
            "command resumes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run", metavar="RUN_DIR", help="a run directory of remix train")
    p.add_argument(
        "--step", type=non_negative_int, default=None,
        help="with --run: the checkpoint of this step (default: the newest)",
    )  # fmt: skip
    p.add_argument("--model", help="model directory, hub id, or 'embedded' (benchmarks)")
    p.add_argument("--benchmarks", default=DEFAULT_BENCHMARKS, help="comma-separated names")
    p.add_argument(
        "--data-dir", type=Path, default=None,
        help="directory of benchmark files (default: the copies shipped with remix-rft)",
    )  # fmt: skip
    p.add_argument("--samples", type=int, default=1, help="K responses per problem")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=None,
        help="default: --run: the run's eval budget; --model: 32768; either way at most what "
        "the model's context leaves after the longest prompt",
    )  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument(
        "--limit", type=positive_int, default=None, help="first N problems per benchmark"
    )
    p.add_argument("--instruction", default=DEFAULT_MATH_INSTRUCTION, help="appended to problems")
    add_seed(p)
    p.add_argument(
        "--reward-workers", type=non_negative_int, default=default_workers(),
        help="processes grading responses in parallel (0: in this process)",
    )  # fmt: skip
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    p.add_argument(
        "--engine", default=None,
        help="rollout engine: hf, hf-static or vllm (pip extra); default: hf (--run: the run's)",
    )  # fmt: skip
    p.add_argument(
        "--gpu-memory-utilization", type=fraction, default=0.5, help="vllm: share of GPU memory"
    )
    p.add_argument(
        "--max-model-len",
        type=non_negative_int,
        default=0,
        help="vllm: prompt + response tokens (0: model's)",
    )
    p.add_argument(
        "--out", type=Path, default=None,
        help="results JSON path (default: results.json; --run: RUN_DIR/eval/step_N.json)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="discard saved responses first")
    p.set_defaults(func=run)


def _load_engine(args: argparse.Namespace) -> tuple[Any, Any]:
    """(rollout engine, tokenizer) for ``--model`` with ``--engine``."""
    import torch

    from remix_rft.engines.catalog import build_engine
    from remix_rft.engines.models import resolve_model_path
    from remix_rft.engines.policy import load_policy, load_tokenizer
    from remix_rft.engines.rollout import EngineOptions

    cuda = torch.cuda.is_available()
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if cuda else "float32")
    tokenizer = load_tokenizer(args.model)
    model = load_policy(args.model, dtype=dtype)
    model.to("cuda" if cuda else "cpu")
    model.eval()
    options = EngineOptions(
        model_path=resolve_model_path(args.model),
        dtype=dtype,
        seed=args.seed,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        sleep_between_rollouts=False,  # nothing trains in between
        batch_size=args.batch_size,
    )
    return build_engine(
        args.engine or "hf", policy=model, tokenizer=tokenizer, options=options
    ), tokenizer


def _settings(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(
        model=args.model, samples=args.samples, temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        instruction=args.instruction, seed=args.seed,
    )  # fmt: skip


def _budgeted(
    args: argparse.Namespace, settings: EvalSettings, tokenizer: Any, problems: list[Problem]
) -> EvalSettings:
    """``settings`` with max new tokens at most what the model's context leaves after the
    longest prompt (a note on stderr when that lowers them)."""
    context = model_context(args.model)
    if context is None:
        return settings
    longest = max(
        len(tokenizer(format_prompt(tokenizer, p.prompt, settings.instruction),
                      add_special_tokens=False)["input_ids"])
        for p in problems
    )  # fmt: skip
    budget, note = response_budget(args.max_new_tokens, DEFAULT_MAX_NEW_TOKENS, context, longest)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return replace(settings, max_new_tokens=budget)


def _prepare(
    args: argparse.Namespace, settings: EvalSettings
) -> tuple[Any, Path, Any, Any, EvalSettings]:
    """(benchmarks, responses file, engine, tokenizer, settings with the response budget);
    EvalError/OSError on bad input, raised before a model is loaded where it can be."""
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    settings.validate()
    if not names:
        raise EvalError("--benchmarks is empty")
    benchmarks = load_benchmarks(names, args.data_dir, args.limit)
    responses_file = responses_path(Path(args.out))
    if args.overwrite and responses_file.exists():
        responses_file.unlink()
    read_responses(responses_file)  # fail on a foreign file before loading a model
    engine, tokenizer = _load_engine(args)
    problems = [p for ps in benchmarks.values() for p in ps]
    return (
        benchmarks,
        responses_file,
        engine,
        tokenizer,
        _budgeted(args, settings, tokenizer, problems),
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``remix eval``; returns the exit code."""
    if bool(args.run) == bool(args.model):
        print("remix eval: error: give --run RUN_DIR or --model MODEL", file=sys.stderr)
        return EXIT_USAGE
    if args.run:
        from remix_rft.apps import eval_run

        return eval_run.run(args)
    args.out = args.out or Path("results.json")
    settings = _settings(args)
    try:
        benchmarks, responses_file, engine, tokenizer, settings = _prepare(args, settings)
    except (EvalError, FileNotFoundError, OSError, ValueError, RuntimeError) as exc:
        print(f"remix eval: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if settings.greedy and settings.samples > 1:
        print("note: temperature 0 is greedy, so all samples of a problem are identical")

    from tqdm.auto import tqdm

    bar: Any = None

    def on_start(total: int, done: int) -> None:
        nonlocal bar
        if done:
            print(f"resuming: {done} of {total} responses already in {responses_file}")
        bar = tqdm(total=total, initial=done, desc="eval", unit="resp", dynamic_ncols=True)

    try:
        results = evaluate(
            engine, tokenizer, benchmarks, settings, responses_file,
            batch_size=args.batch_size, on_start=on_start, on_progress=lambda n: bar.update(n),
            grader=RewardPool(workers=args.reward_workers),
        )  # fmt: skip
    except (EvalError, EngineError) as exc:
        print(f"remix eval: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if bar is not None:
            bar.close()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nmodel: {args.model}  ({results['mode']}, max {settings.max_new_tokens} new tokens)")
    print(format_table(results))
    print(f"\nresults: {out}\nresponses: {responses_file}")
    return EXIT_OK
