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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from remix_rft.apps.args import add_seed, fraction, non_negative_int, positive_int
from remix_rft.data.math_dataset import BENCHMARK_SPECS, DatasetError, load_benchmark
from remix_rft.data.prompts import DEFAULT_MATH_INSTRUCTION, format_prompt
from remix_rft.data.tasks import Problem
from remix_rft.engines.rollout import EngineError
from remix_rft.reward_pool import RewardPool, default_workers

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2
DEFAULT_BENCHMARKS = ",".join(BENCHMARK_SPECS)
DISPLAY_NAMES = {
    "aime24": "AIME24",
    "amc23": "AMC23",
    "math500": "MATH500",
    "minerva": "Minerva",
    "olympiadbench": "Olympiad",
}
META_KEY = "_settings"


class EvalError(ValueError):
    """A user error: bad settings, missing data, a responses file from other settings."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides the responses; a resume must match it."""

    model: str
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 32768
    instruction: str = DEFAULT_MATH_INSTRUCTION
    seed: int = 0

    def validate(self) -> None:
        if self.samples < 1:
            raise EvalError(f"--samples must be >= 1, got {self.samples}")
        if self.temperature < 0:
            raise EvalError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EvalError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise EvalError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def metric_names(self) -> tuple[str, ...]:
        if self.samples == 1:
            return ("pass@1",)
        return (f"avg@{self.samples}", f"pass@{self.samples}")


Key = tuple[str, str, int]  # (benchmark, problem id, sample index)


# ---------------------------------------------------------------------------- responses file


def responses_path(out: Path) -> Path:
    """``results.json`` -> ``results.responses.jsonl`` beside it."""
    return out.with_name(out.stem + ".responses.jsonl")


def read_responses(path: Path) -> tuple[dict[str, Any] | None, dict[Key, dict[str, Any]]]:
    """The settings line and the scored records of a responses file.

    A last line cut short by a kill is dropped and the file truncated to its last
    complete line, so that appending continues cleanly. A bad line elsewhere is an error.
    """
    if not path.exists():
        return None, {}
    raw = path.read_bytes()
    body, newline, tail = raw.rpartition(b"\n")
    lines = body.split(b"\n") if newline else []
    if tail.strip():
        try:
            json.loads(tail)
            lines.append(tail)  # complete, only its newline is missing
            with path.open("ab") as fh:
                fh.write(b"\n")
        except ValueError:
            log.warning("%s: dropping a truncated last line", path)
            with path.open("r+b") as fh:
                fh.truncate(len(body) + len(newline))
    settings: dict[str, Any] | None = None
    records: dict[Key, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if META_KEY in obj:
                settings = obj[META_KEY]
                continue
            key = (str(obj["benchmark"]), str(obj["id"]), int(obj["sample"]))
            float(obj["score"])
        except (ValueError, TypeError, KeyError) as exc:
            raise EvalError(f"{path}: line {number} is not a scored response ({exc!r})") from None
        records[key] = obj
    return settings, records


def _append(fh: Any, obj: dict[str, Any]) -> None:
    fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    fh.flush()


# ---------------------------------------------------------------------------- metrics


def describe_mode(settings: EvalSettings) -> str:
    if settings.samples == 1:
        return "greedy pass@1" if settings.greedy else f"pass@1, temperature {settings.temperature}"
    return (
        f"avg@{settings.samples} and pass@{settings.samples}, temperature "
        f"{settings.temperature}, top-p {settings.top_p}"
    )


def benchmark_metrics(
    problems: Sequence[Problem], records: dict[Key, dict[str, Any]], name: str, samples: int
) -> dict[str, float | int]:
    """avg@K (mean per-sample accuracy) and pass@K over the problems of one benchmark."""
    avg_sum = 0.0
    solved = 0
    for p in problems:
        scores = [float(records[(name, p.id, s)]["score"]) for s in range(samples)]
        avg_sum += sum(scores) / samples
        solved += any(sc > 0 for sc in scores)
    n = max(len(problems), 1)
    out: dict[str, float | int] = {"items": len(problems)}
    if samples == 1:
        out["pass@1"] = 100.0 * avg_sum / n
    else:
        out[f"avg@{samples}"] = 100.0 * avg_sum / n
        out[f"pass@{samples}"] = 100.0 * solved / n
    return out


def average_metrics(per_benchmark: dict[str, dict[str, float | int]]) -> dict[str, float]:
    """Unweighted mean over benchmarks (the paper's "Avg." column)."""
    names = [k for k in next(iter(per_benchmark.values())) if k != "items"]
    count = len(per_benchmark)
    return {m: sum(float(r[m]) for r in per_benchmark.values()) / count for m in names}


def format_table(results: dict[str, Any]) -> str:
    """Rows = metrics, columns = benchmarks and their average, in percent."""
    per = results["benchmarks"]
    cols = [DISPLAY_NAMES.get(b, b) for b in per] + ["Avg."]
    width = max(9, *(len(c) + 2 for c in cols))
    lines = [f"{'':<10}" + "".join(f"{c:>{width}}" for c in cols)]
    for metric in results["average"]:
        values = [float(per[b][metric]) for b in per] + [results["average"][metric]]
        lines.append(f"{metric:<10}" + "".join(f"{v:>{width}.2f}" for v in values))
    lines.append(f"{'items':<10}" + "".join(f"{per[b]['items']:>{width}}" for b in per))
    return "\n".join(lines)


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
            _append(fh, {META_KEY: mine})
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
            _append(fh, record)
        if on_progress:
            on_progress(len(chunk))


# ---------------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    """Add ``remix eval`` to the ``remix`` command's subparsers."""
    p = subparsers.add_parser(
        "eval",
        help="accuracy on AIME24, AMC23, MATH500, Minerva, OlympiadBench",
        description=(
            "Accuracy on the paper's math benchmarks: greedy pass@1 with --samples 1 at "
            "temperature 0, else avg@K and pass@K. Responses are saved as they are scored; "
            "rerunning the same command resumes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model directory, hub id, or 'embedded'")
    p.add_argument("--benchmarks", default=DEFAULT_BENCHMARKS, help="comma-separated names")
    p.add_argument(
        "--data-dir", type=Path, default=None,
        help="directory of benchmark files (default: the copies shipped with remix-rft)",
    )  # fmt: skip
    p.add_argument("--samples", type=int, default=1, help="K responses per problem")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=32768)
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
        "--engine", default="hf", help="rollout engine: hf, hf-static or vllm (pip extra)"
    )
    p.add_argument(
        "--gpu-memory-utilization", type=fraction, default=0.5, help="vllm: share of GPU memory"
    )
    p.add_argument(
        "--max-model-len",
        type=non_negative_int,
        default=0,
        help="vllm: prompt + response tokens (0: model's)",
    )
    p.add_argument("--out", type=Path, default=Path("results.json"), help="results JSON path")
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
    return build_engine(args.engine, policy=model, tokenizer=tokenizer, options=options), tokenizer


def _settings(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(
        model=args.model, samples=args.samples, temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, instruction=args.instruction,
        seed=args.seed,
    )  # fmt: skip


def _prepare(args: argparse.Namespace, settings: EvalSettings) -> tuple[Any, Path, Any, Any]:
    """(benchmarks, responses file, engine, tokenizer); EvalError/OSError on bad input,
    raised before a model is loaded where it can be."""
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
    return benchmarks, responses_file, engine, tokenizer


def run(args: argparse.Namespace) -> int:
    """Entry point of ``remix eval``; returns the exit code."""
    settings = _settings(args)
    try:
        benchmarks, responses_file, engine, tokenizer = _prepare(args, settings)
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
