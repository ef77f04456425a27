"""`remix eval`: metrics, the responses file, resume after a kill, errors, a real mini run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from remix_rft.apps import evaluate
from remix_rft.data.math_dataset import BENCHMARK_FILES, load_benchmark
from remix_rft.data.tasks import Problem
from remix_rft.engines.models import EMBEDDED_MODEL_DIR
from remix_rft.engines.rollout import Generation
from remix_rft.reward_pool import default_workers


def parse(*argv: str) -> argparse.Namespace:
    """``remix eval`` arguments; grading in-process unless a test asks for workers (each
    pool start imports math-verify in every worker, seconds that these tests need not pay)."""
    parser = argparse.ArgumentParser(prog="remix")
    evaluate.add_parser(parser.add_subparsers(dest="command"))
    workers = [] if "--reward-workers" in argv else ["--reward-workers", "0"]
    return parser.parse_args(["eval", *workers, *argv])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FakeModel:
    """Stands in for a rollout engine: answers right when the problem's index is even."""

    def __init__(self, problems: dict[str, list[Problem]], fail_after_batches: int | None = None):
        self.answer_of = {}
        for ps in problems.values():
            for i, p in enumerate(ps):
                gold = p.answer[0] if isinstance(p.answer, list) else p.answer
                self.answer_of[p.prompt] = gold if i % 2 == 0 else "not an answer"
        self.fail_after = fail_after_batches
        self.prompts_seen: list[str] = []

    def generate(self, prompts, settings):
        if self.fail_after is not None and self.fail_after <= 0:
            raise KeyboardInterrupt  # the kill
        if self.fail_after is not None:
            self.fail_after -= 1
        self.prompts_seen.extend(prompts)
        texts = [f"work... \\boxed{{{self.answer_of[p.split(chr(10))[0]]}}}" for p in prompts]
        return Generation([], [], [], [], texts)


def small_benchmarks(tmp_path: Path) -> Path:
    """Two tiny benchmark files in the real formats (float answers, list answers)."""
    data = tmp_path / "data"
    data.mkdir()
    amc = [{"problem": f"amc problem {i}", "answer": float(100 + i)} for i in range(5)]
    minerva = [{"problem": f"minerva problem {i}", "answer": [f"{i}.5\n"]} for i in range(4)]
    (data / BENCHMARK_FILES["amc23"]).write_text(json.dumps(amc))
    (data / BENCHMARK_FILES["minerva"]).write_text(json.dumps(minerva))
    return data


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    data = small_benchmarks(tmp_path)
    problems = {n: list(load_benchmark(n, data)) for n in ("amc23", "minerva")}
    fake = FakeModel(problems)
    monkeypatch.setattr(evaluate, "_load_engine", lambda args: (fake, object()))
    return data, fake


# ---------------------------------------------------------------------------- metrics


def test_metrics_avg_and_pass_at_k():
    problems = [Problem("b/0", "p0", "1"), Problem("b/1", "p1", "2")]
    scores = {
        ("b", "b/0", 0): 1.0,
        ("b", "b/0", 1): 0.0,
        ("b", "b/1", 0): 0.0,
        ("b", "b/1", 1): 0.0,
    }
    records = {k: {"score": v} for k, v in scores.items()}
    m = evaluate.benchmark_metrics(problems, records, "b", samples=2)
    assert m == {"items": 2, "avg@2": 25.0, "pass@2": 50.0}
    avg = evaluate.average_metrics({"a": m, "b": {"items": 1, "avg@2": 75.0, "pass@2": 100.0}})
    assert avg == {"avg@2": 50.0, "pass@2": 75.0}


# ---------------------------------------------------------------------------- runs


def test_eval_end_to_end_with_fake_generation(fake_env, tmp_path, capsys):
    data, fake = fake_env
    out = tmp_path / "res" / "results.json"
    args = parse(
        "--model", "m", "--data-dir", str(data), "--benchmarks", "amc23,minerva",
        "--reward-workers", "2",  # graded in the worker pool
    )  # fmt: skip
    args.out = out
    assert evaluate.run(args) == 0
    results = json.loads(out.read_text())
    assert results["mode"] == "greedy pass@1"
    assert results["benchmarks"]["amc23"] == {"items": 5, "pass@1": 60.0}
    assert results["benchmarks"]["minerva"] == {"items": 4, "pass@1": 50.0}
    assert results["average"]["pass@1"] == pytest.approx(55.0)
    lines = read_jsonl(out.with_name("results.responses.jsonl"))
    assert evaluate.META_KEY in lines[0] and len(lines) == 1 + 9
    assert {"benchmark", "id", "sample", "score", "answer", "response"} <= set(lines[1])
    printed = capsys.readouterr().out
    assert "AMC23" in printed and "Minerva" in printed and "Avg." in printed and "55.00" in printed


def test_samples_give_avg_and_pass_at_k(fake_env, tmp_path):
    data, fake = fake_env
    out = tmp_path / "k.json"
    args = parse(
        "--model", "m", "--data-dir", str(data), "--benchmarks", "amc23",
        "--samples", "3", "--temperature", "0.7", "--out", str(out),
    )  # fmt: skip
    assert evaluate.run(args) == 0
    amc = json.loads(out.read_text())["benchmarks"]["amc23"]
    assert amc == {"items": 5, "avg@3": 60.0, "pass@3": 60.0}
    assert len(fake.prompts_seen) == 15


def test_resume_after_kill_and_truncated_line(fake_env, tmp_path):
    data, fake = fake_env
    out = tmp_path / "r.json"
    argv = ["--model", "m", "--data-dir", str(data), "--batch-size", "2", "--out", str(out)]
    argv += ["--benchmarks", "amc23,minerva"]
    fake.fail_after = 2  # killed during the third batch of two
    with pytest.raises(KeyboardInterrupt):
        evaluate.run(parse(*argv))
    responses = out.with_name("r.responses.jsonl")
    assert len(read_jsonl(responses)) == 1 + 4
    with responses.open("a") as fh:  # killed in the middle of writing a line
        fh.write('{"benchmark": "amc23", "id": "amc23/4", "sam')

    fake.fail_after = None
    fake.prompts_seen.clear()
    assert evaluate.run(parse(*argv)) == 0
    assert len(fake.prompts_seen) == 9 - 4  # only the missing ones
    lines = read_jsonl(responses)
    keys = [(r["benchmark"], r["id"], r["sample"]) for r in lines[1:]]
    assert len(keys) == len(set(keys)) == 9
    assert json.loads(out.read_text())["benchmarks"]["amc23"]["pass@1"] == 60.0

    fake.prompts_seen.clear()  # a finished evaluation regenerates nothing
    assert evaluate.run(parse(*argv)) == 0
    assert fake.prompts_seen == []


def test_resume_with_other_settings_is_refused(fake_env, tmp_path, capsys):
    data, _ = fake_env
    out = tmp_path / "s.json"
    base = ["--model", "m", "--data-dir", str(data), "--benchmarks", "amc23", "--out", str(out)]
    assert evaluate.run(parse(*base)) == 0
    assert evaluate.run(parse(*base, "--max-new-tokens", "99")) == 2
    assert "max_new_tokens" in capsys.readouterr().err
    assert evaluate.run(parse(*base, "--max-new-tokens", "99", "--overwrite")) == 0


def test_missing_data_is_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert evaluate.run(parse("--model", "m", "--data-dir", str(missing))) == 2
    assert str(missing) in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    assert evaluate.run(parse("--model", "m", "--data-dir", str(tmp_path / "d"))) == 2
    assert str(tmp_path / "d" / "aime24.json") in capsys.readouterr().err
    assert (
        evaluate.run(parse("--model", "m", "--data-dir", str(tmp_path), "--benchmarks", "x")) == 2
    )
    assert "unknown benchmark" in capsys.readouterr().err
    assert evaluate.run(parse("--model", "m", "--data-dir", str(tmp_path), "--samples", "0")) == 2


def test_missing_model_is_exit_2(fake_env, tmp_path, monkeypatch, capsys):
    data, _ = fake_env
    monkeypatch.undo()  # the real model loader
    args = parse("--model", str(tmp_path / "no-model"), "--data-dir", str(data))
    args.benchmarks = "amc23"
    args.out = tmp_path / "x.json"
    assert evaluate.run(args) == 2
    assert "no-model" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the real thing


@pytest.mark.skipif(
    not (EMBEDDED_MODEL_DIR / "config.json").is_file(), reason="embedded tiny model not built"
)
def test_mini_eval_embedded_model_real_files(tmp_path, capsys):
    out = tmp_path / "results.json"
    args = parse(
        "--model", "embedded", "--limit", "2",  # the shipped benchmark copies
        "--reward-workers", str(default_workers()),  # the CLI's default
        "--max-new-tokens", "16", "--batch-size", "10", "--out", str(out),
    )  # fmt: skip
    assert evaluate.run(args) == 0
    results = json.loads(out.read_text())
    assert set(results["benchmarks"]) == set(BENCHMARK_FILES)
    assert all(r["items"] == 2 for r in results["benchmarks"].values())
    lines = read_jsonl(out.with_name("results.responses.jsonl"))
    assert len(lines) == 1 + 10
    assert all(r["score"] in (0.0, 1.0) and isinstance(r["response"], str) for r in lines[1:])
    assert "Avg." in capsys.readouterr().out
