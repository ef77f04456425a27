"""Math datasets: file formats, answer normalisation, bad rows, the real benchmark files."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from remix_rft.data.builtin import BUILTIN_BENCHMARK_DIR, BUILTIN_DATA_DIR, BUILTIN_DATASETS
from remix_rft.data.math_dataset import (
    BENCHMARK_FILES,
    DatasetError,
    MathTask,
    load_benchmark,
    load_math_problems,
    normalize_ground_truth,
)
from remix_rft.data.tasks import Task

# The shipped copies; the project's reference copy sits beside the checkout when present.
BENCH_DIR = BUILTIN_BENCHMARK_DIR
REFERENCE_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

ROWS = [
    {"problem": "1+1?", "answer": "2"},
    {"problem": "Half?", "answer": "\\frac{1}{2}\n"},
    {"problem": "AMC style", "answer": 142.0},
    {"problem": "Minerva style", "answer": ["0.01\n", "0.02\n"]},
]


def write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows))
    return path


# ---------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (142.0, "142"),
        ("142.0", "142"),
        (7, "7"),
        (0.25, "0.25"),
        ("  \\frac{1}{2}\n", "\\frac{1}{2}"),
        ("$2^{1009}$", "2^{1009}"),
        (["9.6\n"], "9.6"),
        (["0.01\n", "0.02\n"], ["0.01", "0.02"]),
        (["5", "5.0"], "5"),
        ("025", "025"),
    ],
)
def test_normalize_ground_truth(raw, expected):
    assert normalize_ground_truth(raw) == expected


def test_multiple_answer_parts_are_joined():
    assert normalize_ground_truth(["$69$,$84$"], multiple_parts=True) == "69, 84"
    assert normalize_ground_truth(["$(1,2),(3,4)$"], multiple_parts=True) == "(1,2),(3,4)"
    prose = "$f(x)=ax$, where $a$ is odd"
    assert normalize_ground_truth([prose], multiple_parts=True) == "f(x)=ax, where a is odd"


@pytest.mark.parametrize(
    "bad", [None, "", "   ", [], [None], [["x"]], True, float("nan"), {"a": 1}]
)
def test_bad_answers_raise(bad):
    with pytest.raises(ValueError):
        normalize_ground_truth(bad)


# ---------------------------------------------------------------------------- formats


def test_json_jsonl_parquet_agree(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    js = load_math_problems(write_json(tmp_path / "d.json", ROWS))
    jsonl_path = tmp_path / "d.jsonl"
    jsonl_path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    jl = load_math_problems(jsonl_path)
    rows = [{"problem": r["problem"], "answer": json.dumps(r["answer"])} for r in ROWS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    pa_rows = load_math_problems(tmp_path / "d.parquet")
    assert [p.answer for p in js] == ["2", "\\frac{1}{2}", "142", ["0.01", "0.02"]]
    assert [p.answer for p in jl] == [p.answer for p in js]
    assert [p.prompt for p in pa_rows] == [p.prompt for p in js]
    assert js[0].id == "d/0" and js.skipped == 0


def test_custom_keys_and_limit(tmp_path):
    rows = [{"question": f"q{i}", "final": str(i)} for i in range(10)]
    probs = load_math_problems(
        write_json(tmp_path / "c.json", rows), problem_key="question", answer_key="final", limit=3
    )
    assert [(p.prompt, p.answer) for p in probs] == [("q0", "0"), ("q1", "1"), ("q2", "2")]


def test_bad_row_names_file_row_and_key(tmp_path):
    rows = [*ROWS, {"problem": "no answer"}, {"problem": "", "answer": "1"}, ["not", "a dict"]]
    path = write_json(tmp_path / "bad.json", rows)
    with pytest.raises(DatasetError, match=r"bad\.json: row 4 has no key 'answer'"):
        load_math_problems(path)
    loaded = load_math_problems(path, on_bad_row="skip")
    assert len(loaded) == 4 and loaded.skipped == 3
    assert "row 5 key 'problem' is empty" in loaded.skipped_reasons[1]
    with pytest.raises(DatasetError, match=r"row 0 key 'answer' is an empty list"):
        load_math_problems(write_json(tmp_path / "e.json", [{"problem": "p", "answer": []}]))


def test_a_missing_key_shows_the_rows_keys_and_the_setting(tmp_path):
    path = write_json(tmp_path / "q.json", [{"question": "1+1?", "final": "2"}])
    with pytest.raises(DatasetError) as err:
        load_math_problems(path)
    message = str(err.value)
    assert "q.json: row 0 has no key 'problem'" in message
    assert "its keys: question, final" in message and "task.problem_key" in message
    with pytest.raises(DatasetError, match=r"its keys: question, final; set task.answer_key"):
        load_math_problems(path, problem_key="question")


def test_an_empty_dataset_is_an_error_naming_the_file(tmp_path):
    for name, text in (("e.jsonl", ""), ("blank.jsonl", "\n\n"), ("e.json", "[]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DatasetError, match=rf"{name}: the dataset is empty"):
            load_math_problems(tmp_path / name)
    assert load_math_problems(tmp_path / "e.json", limit=0) == []


def test_skip_bad_rows_skips_lines_that_are_not_json_and_counts_them(tmp_path):
    good = json.dumps({"problem": "1+1?", "answer": "2"})
    path = tmp_path / "mixed.jsonl"
    path.write_text(f"{good}\n{{oops\n{good}\nnot json either\n")
    with pytest.raises(DatasetError, match=r"line 2 is not JSON.*skip_bad_rows"):
        load_math_problems(path)
    loaded = load_math_problems(path, on_bad_row="skip")
    assert len(loaded) == 2 and loaded.skipped == 2
    assert "line 2 is not JSON" in loaded.skipped_reasons[0]
    assert "line 4 is not JSON" in loaded.skipped_reasons[1]
    path.write_text("{oops\n")
    with pytest.raises(DatasetError, match=r"empty: no rows \(1 lines skipped as not JSON\)"):
        load_math_problems(path, on_bad_row="skip")


def test_unreadable_sources(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="does not exist"):
        load_math_problems(tmp_path / "missing.json")
    (tmp_path / "broken.jsonl").write_text('{"problem": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(DatasetError, match="line 2"):
        load_math_problems(tmp_path / "broken.jsonl")
    (tmp_path / "x.csv").write_text("problem,answer\n")
    with pytest.raises(DatasetError, match="unsupported"):
        load_math_problems(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="on_bad_row"):
        load_math_problems(tmp_path / "x.csv", on_bad_row="ignore")  # type: ignore[arg-type]
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="`datasets` package"):
        load_math_problems("someorg/some-math-set")


def test_math_task(tmp_path):
    train = write_json(tmp_path / "train.json", ROWS)
    evals = write_json(tmp_path / "eval.json", ROWS[:2])
    task = MathTask(train, evals, name="mymath")
    task_view: Task = task  # structural: MathTask satisfies the Task protocol
    assert callable(task_view.reward) and task.name == "mymath"
    assert len(task.train_problems()) == 4 and len(task.eval_problems()) == 2
    p = task.train_problems()[2]
    assert task.reward("so \\boxed{142}", p) == 1.0
    assert task.reward("so \\boxed{141}", p) == 0.0
    assert task.reward("\\boxed{0.5}", task.eval_problems()[1]) == 1.0
    assert MathTask(train).eval_problems() == []


# ---------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", list(BENCHMARK_FILES))
def test_real_benchmarks_load(name):
    problems = load_benchmark(name, BENCH_DIR)
    expected = {"aime24": 30, "amc23": 83, "math500": 500, "minerva": 272, "olympiadbench": 675}
    assert len(problems) == expected[name] and problems.skipped == 0
    for p in problems:
        answers = p.answer if isinstance(p.answer, list) else [p.answer]
        assert all(isinstance(a, str) and a and a == a.strip() for a in answers)
        assert not any(a.endswith(".0") and a[:-2].isdigit() for a in answers)
    if name == "amc23":
        assert problems[0].answer == "142"


def test_real_olympiad_multiple_answers():
    problems = load_benchmark("olympiadbench", BENCH_DIR)
    answers = [p.answer for p in problems]
    assert "69, 84" in answers
    assert all("$" not in a for a in answers if isinstance(a, str))


def test_missing_benchmark_file(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "aime24.json")):
        load_benchmark("aime24", tmp_path)
    with pytest.raises(DatasetError, match="unknown benchmark"):
        load_benchmark("gsm8k", BENCH_DIR)


def test_real_training_set():
    problems = load_math_problems("builtin:math_train", limit=50)
    assert len(problems) == 50 and all(p.prompt and p.answer for p in problems)
    assert problems[0].id == "math_train/0"
    everything = load_math_problems("builtin:math_train", on_bad_row="skip")
    assert len(everything) == 7474 - 4 and everything.skipped == 4


def test_builtin_names_and_defaults():
    assert len(load_math_problems("builtin:aime24")) == len(load_benchmark("aime24")) == 30
    with pytest.raises(DatasetError, match="builtin:math_train"):  # lists what ships
        load_math_problems("builtin:gsm8k")


@pytest.mark.parametrize("name", list(BUILTIN_DATASETS))
def test_shipped_data_identical_to_reference_copy(name):
    """Byte-identical to the reference copy beside the checkout; on a clone without it,
    to the checksums recorded when the files were copied (SHA256SUMS)."""
    relative = BUILTIN_DATASETS[name]
    shipped = (BUILTIN_DATA_DIR / relative).read_bytes()
    reference = REFERENCE_DATA_DIR / relative
    if reference.is_file():
        assert shipped == reference.read_bytes()
    sums = dict(
        reversed(line.split())
        for line in (BUILTIN_DATA_DIR / "SHA256SUMS").read_text().splitlines()
    )
    assert hashlib.sha256(shipped).hexdigest() == sums[relative]


def test_paper_recipes_name_the_paper_data_and_the_offline_alternative_resolves():
    from remix_rft.trainer.config import PACKAGED_CONFIGS, load_config
    from remix_rft.trainer.plan import plan_lines

    recipes = sorted(PACKAGED_CONFIGS.glob("r1-distill-*.yaml"))
    assert len(recipes) == 6
    for path in recipes:
        cfg = load_config(path)  # loading a config reads no data: nothing is downloaded
        assert (cfg.task.train_path, cfg.task.eval_path) == (
            "agentica-org/DeepScaleR-Preview-Dataset",
            "builtin:math500",
        )
        assert (cfg.task.problem_key, cfg.task.answer_key) == ("problem", "answer")
        assert "task.train_path=builtin:math_train" in path.read_text()  # documented offline
    # the embedded model stands in for the hub model, the shipped MATH train for DeepScaleR
    cfg = load_config(
        PACKAGED_CONFIGS / "r1-distill-1.5b-remix-ppo.yaml",
        ["model=embedded", "task.train_path=builtin:math_train"],
    )
    assert any("math: 7470 train / 500 held-out problems" in line for line in plan_lines(cfg))


def test_a_hub_dataset_row_in_deepscaler_columns_loads(monkeypatch):
    """DeepScaleR's rows (problem, answer, solution) through the hub path, without a network."""
    import types

    rows = [{"problem": "What is $1+1$?", "answer": "2", "solution": "It is $\\boxed{2}$."}]
    fake = types.SimpleNamespace(load_dataset=lambda name, split: rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    loaded = load_math_problems("agentica-org/DeepScaleR-Preview-Dataset")
    assert [(p.prompt, p.answer) for p in loaded] == [("What is $1+1$?", "2")]
    assert loaded[0].meta == {"solution": "It is $\\boxed{2}$."}
