"""`remix eval --run RUN_DIR [--step N]`: a run's checkpoint on its own held-out data and
reward, equal to the trainer's eval/accuracy; custom-task accuracy by threshold, held-out
rows from train_path, no sentinels in summary.json."""

import json
import logging
from pathlib import Path

import pytest

from remix_rft.apps.eval_run import response_budget
from remix_rft.cli import main
from remix_rft.engines.models import EMBEDDED_MODEL_DIR
from remix_rft.trainer.config import load_config
from remix_rft.trainer.loop import train
from remix_rft.trainer.plan import print_plan

TINY_GRPO = Path(__file__).resolve().parents[1] / "remix_rft" / "configs" / "tiny-grpo.yaml"
SHORT = [  # the shipped tiny-grpo, kept short: two iterations, each evaluated
    "steps=2", "prompts_per_step=4", "group_size=4", "minibatch_size=16", "eval_every=1",
    "eval_problems=16", "eval_batch_size=16", "save_every=1", "threads=1",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not (EMBEDDED_MODEL_DIR / "config.json").is_file(), reason="embedded tiny model not built"
)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_grpo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-run") / "tiny-grpo"
    train(load_config(TINY_GRPO, [*SHORT, f"out_dir={out}"]))
    return out


def test_eval_run_prints_the_runs_last_eval_accuracy(tiny_grpo_run, capsys):
    last = metrics(tiny_grpo_run)[-1]
    assert main(["eval", "--run", str(tiny_grpo_run)]) == 0
    printed = capsys.readouterr().out
    assert f"held-out accuracy {last['eval/accuracy']:.4f} " in printed
    results = json.loads((tiny_grpo_run / "eval" / "step_000002.json").read_text())
    assert results["accuracy"] == last["eval/accuracy"]  # the same responses, to the bit
    assert results["reward_mean"] == last["eval/reward_mean"]
    assert results["problems"] == 16 and results["max_new_tokens"] == 48  # the run's budget
    responses = (tiny_grpo_run / "eval" / "step_000002.responses.jsonl").read_text()
    assert len(responses.splitlines()) == 16


def test_eval_run_of_an_earlier_step(tiny_grpo_run, tmp_path):
    row = metrics(tiny_grpo_run)[1]
    out = tmp_path / "step1.json"
    assert main(["eval", "--run", str(tiny_grpo_run), "--step", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["step"] == 1 and results["accuracy"] == row["eval/accuracy"]


def test_eval_run_errors_are_one_line(tiny_grpo_run, tmp_path, capsys):
    assert main(["eval", "--run", str(tiny_grpo_run), "--step", "7"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"remix eval: error: --step 7: {tiny_grpo_run} has checkpoints of steps 1, 2 only"
    )
    assert main(["eval", "--run", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "give --run RUN_DIR or --model MODEL" in capsys.readouterr().err


def test_response_budget_stays_in_the_models_context():
    assert response_budget(None, 32768, 256, 40) == (
        216,
        "max new tokens lowered from 32768 to 216: the model's context is 256 positions and "
        "the longest prompt takes 40",
    )
    assert response_budget(10, 32768, 256, 40) == (10, "")
    assert response_budget(None, 48, None, 40) == (48, "")  # context unknown: as asked
    budget, note = response_budget(16, 32768, 256, 767)  # a prompt alone overfills it
    assert budget == 16 and "more than the model's context" in note


# ---------------------------------------------------------------------------- custom tasks


def custom_task(tmp_path: Path, rows: int = 20, reward: float = 0.5) -> list[str]:
    data = tmp_path / "mine.jsonl"
    data.write_text(
        "".join(
            json.dumps({"q": f"({i % 9 + 1}*2+3*4)*5=?", "a": str(i)}) + "\n" for i in range(rows)
        )  # fmt: skip
    )
    fn = tmp_path / "mine.py"
    fn.write_text(f"def score(response, problem):\n    return {reward}\n")
    return ["task.name=custom", f"task.train_path={data}", "task.problem_key=q",
            "task.answer_key=a", f"task.reward_fn={fn}:score", "task.reward_workers=0"]  # fmt: skip


def test_custom_task_holds_out_train_rows_and_scores_by_threshold(tiny_config, tmp_path, caplog):
    task = custom_task(tmp_path)
    with caplog.at_level(logging.WARNING):
        cfg = tiny_config("steps=1", "eval_every=1", *task)
        summary = train(cfg)
    assert "2 of 20 train_path rows are held out" in caplog.text  # 10%, logged
    rows = metrics(cfg.resolved_out_dir())
    assert rows[-1]["eval/reward_mean"] == 0.5
    assert rows[-1]["eval/accuracy"] == 0.0  # 0.5 < task.accuracy_threshold (1.0)
    assert summary["best_eval_accuracy"] == 0.0
    cfg = tiny_config("steps=1", "eval_every=1", "task.accuracy_threshold=0.5", *task, out="b")
    train(cfg)
    assert metrics(cfg.resolved_out_dir())[-1]["eval/accuracy"] == 1.0


def test_custom_task_without_held_out_rows_warns_and_writes_nulls(
    tiny_config, tmp_path, caplog, capsys
):
    cfg = tiny_config("steps=1", "task.holdout_fraction=0", *custom_task(tmp_path))
    with caplog.at_level(logging.WARNING):
        assert print_plan(cfg) == 0  # --dry-run
    assert "evaluation     NONE" in capsys.readouterr().out
    assert "this run is never evaluated" in caplog.text
    summary = train(cfg)
    assert summary["best_eval_accuracy"] is None and summary["final_eval_accuracy"] is None
    on_disk = json.loads((cfg.resolved_out_dir() / "summary.json").read_text())
    assert on_disk["best_eval_accuracy"] is None and -1 not in on_disk.values()
