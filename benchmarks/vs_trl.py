"""TRL's ``GRPOTrainer`` vs our GRPO and ReMix-GRPO on the embedded model and task.

The same tiny model (``remix_rft/assets/tiny``) is trained on the same embedded
arithmetic task with the settings of ``configs/tiny-grpo.yaml``: 16 prompts per
iteration x 8 responses, at most 48 new tokens, temperature 1, the config's
learning rate (constant), no KL (β = 0), ε = 0.2, one optimizer update per
generation batch, the loss averaged over all tokens of the batch (TRL's
``loss_type="dapo"`` = our ``token-mean``) and advantages scaled by the group std.
Every ``--eval-every`` iterations all runs are evaluated the same way: greedy
pass@1 on the first 200 held-out problems (``generate_texts`` + ``task.reward``).

Reported for TRL GRPO, our GRPO, our ReMix-GRPO (``tiny-remix-grpo``) and the same
ReMix-GRPO with asynchronous rollouts (``rollout_mode=async``, η = ``--max-staleness``;
with ``--threads N`` its learner gets N − 1 torch threads and its producer 1, the CPU
budget of the other runs):
seconds per iteration (mean over iterations, evaluation excluded),
rollouts-to-target and training-wall-clock-to-target (docs/design.md §5: the first
evaluation where the mean of two consecutive evaluations reaches the target),
and the final accuracy::

    pip install -e .[bench]
    python benchmarks/vs_trl.py --steps 20 --seeds 0 --rounds 2 \\
        --out benchmarks/results/vs_trl.md
    python benchmarks/vs_trl.py --steps 30 --target 0.9 --threads 2 --rounds 2 \\
        --eval-every 5   # with the async run: wall-clock to 0.9, evaluations included

``trl-remix`` is TRL's trainer with ReMix (``remix_rft.integrations.trl.ReMixGRPOTrainer``,
tiny-remix-grpo's ReMix keys). Seeds can run in parallel processes and be merged into one
table (``benchmarks/results/vs_trl_remix.md``)::

    for s in 0 1 2; do (for m in trl-remix remix trl; do python benchmarks/vs_trl.py \
        --only $m --steps 30 --eval-every 5 --threads 1 --seeds $s \
        --out /tmp/vs/$m-s$s.md --json /tmp/vs/$m-s$s.json; done) & done; wait
    python benchmarks/vs_trl.py --merge /tmp/vs/*.json --steps 30 --eval-every 5 \
        --target 0.9 --out benchmarks/results/vs_trl_remix.md

Runs are made one after the other in this process; ``--rounds 2`` repeats
every run in reversed order (A B C, C B A) so that load from other processes
on a shared machine weighs on every method alike.

This file holds the command line and the order of the runs; the runs themselves are in
``vs_trl_runs.py`` (ours, and what every run shares) and ``vs_trl_trl.py`` (TRL's), the
table, the verdicts and the markdown in ``vs_trl_report.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(ROOT))

from vs_trl_report import describe_model, report  # noqa: E402
from vs_trl_runs import LABELS, METHODS, SETTINGS, RunResult, model_path, run_ours  # noqa: E402
from vs_trl_trl import import_trl, run_trl  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="iterations per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--rounds", type=int, default=1,
        help="repeat every run this many times, alternating the order (timing fairness)",
    )  # fmt: skip
    p.add_argument(
        "--target", type=float, default=None,
        help="target accuracy (default: our GRPO's plateau, mean of its last 3 evaluations, "
        "averaged over seeds; TRL's if ours is not run)",
    )  # fmt: skip
    p.add_argument("--only", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-problems", type=int, default=200)
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads per run (async: one of them goes to the producer process)",
    )  # fmt: skip
    p.add_argument("--max-staleness", type=int, default=1, help="async runs: η")
    p.add_argument("--model", default="embedded")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/vs_trl.md"))
    p.add_argument("--json", type=Path, default=None, help="also write every run's rows here")
    p.add_argument(
        "--merge", type=Path, nargs="+", default=None, metavar="JSON",
        help="train nothing: one table from the --json files of earlier runs (e.g. one "
        "process per seed, run in parallel)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or args.rounds < 1:
        p.error("--steps, --eval-every and --rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    if args.merge:  # trains nothing: TRL not needed
        results = merged_results(args)
        methods = [m for m in METHODS if any(r.method == m for r in results)]
        return report(args, methods, results, (os.getloadavg(), os.getloadavg()))
    methods = [m for m in METHODS if m in args.only]
    if any(m.startswith("trl") for m in methods):
        import_trl()  # fail before anything trains
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    source_model = model_path(args.model)  # a missing model fails now
    loads_start = os.getloadavg()
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="vs_trl-") as tmp:
        work = Path(tmp)
        # Every run trains a private snapshot: a rebuild of the embedded model while
        # the benchmark runs must not hand later runs a different model.
        args.model = str(work / "model")
        shutil.copytree(source_model, args.model)
        args.model_desc = describe_model(source_model, Path(args.model))
        print(f"model: {args.model_desc}", flush=True)
        runs = 0
        for rnd in range(args.rounds):
            for seed in args.seeds:
                order = methods if runs % 2 == 0 else methods[::-1]
                runs += 1
                for method in order:
                    torch.set_num_threads(args.threads)
                    print(f"== {LABELS[method]}, seed {seed}, round {rnd}", flush=True)
                    if method.startswith("trl"):
                        results.append(run_trl(seed, rnd, args, work, method))
                    else:
                        results.append(run_ours(method, seed, rnd, args, work))
                    results[-1].settings = {k: getattr(args, k) for k in SETTINGS}
    return report(args, methods, results, (loads_start, os.getloadavg()))


def merged_results(args: argparse.Namespace) -> list[RunResult]:
    """The runs of earlier ``--json`` files, and the settings they record (every file must
    have used the same ones); files from before runs recorded them: the merge command's
    ``--steps``, ``--eval-every``, ``--eval-problems``, and the report says so."""
    results = [
        RunResult(**row)
        for path in args.merge
        for row in json.loads(path.read_text(encoding="utf-8"))
    ]
    args.seeds = sorted({r.seed for r in results})
    args.rounds = len({r.round for r in results})
    recorded = {tuple(r.settings.get(k) for k in SETTINGS) for r in results}
    if len(recorded) > 1 and all(None not in s for s in recorded):
        raise SystemExit(f"the runs were made with different {SETTINGS}: {sorted(recorded)}")
    if len(recorded) == 1 and None not in (only := recorded.pop()):
        vars(args).update(zip(SETTINGS, only, strict=True))
        source = "the settings above are the ones the runs recorded"
    else:
        source = (
            "the runs do not all record their settings: the iterations and evaluation settings "
            "above are the merge command's (--steps, --eval-every, --eval-problems)"
        )
    args.model_desc = f"{args.model} (see the merged runs' logs for the snapshot hash)"
    args.merge_note = (
        f"Merged from {len(args.merge)} --json files (runs made in separate processes, e.g. "
        "one per seed in parallel; the load averages above are those of the merge, not of "
        f"the runs, and the run order below is the files' order; {source})."
    )
    return results


if __name__ == "__main__":
    sys.exit(main())
