"""Math problems from JSON, JSONL, parquet or a Hugging Face dataset, and the math task.

Ground truths are normalised once, here, so that grading never meets a raw row:
whole floats become integer strings (``142.0`` -> ``"142"``), lists are sets of
acceptable answers (stripped of whitespace and trailing newlines), OlympiadBench's
``$...$`` wrapped parts are joined into one answer when ``is_multiple_answer`` is set.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from remix_rft.data.builtin import BUILTIN_BENCHMARK_DIR, builtin_path, is_builtin
from remix_rft.data.tasks import Answer, Problem
from remix_rft.rewards import math_reward

logger = logging.getLogger(__name__)

OnBadRow = Literal["error", "skip"]


class DatasetError(ValueError):
    """A dataset that cannot be read, or a row without a usable problem or answer."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where one evaluation set lives and how its fields are read."""

    file: str
    problem_key: str = "problem"
    answer_key: str = "answer"


BENCHMARK_SPECS: dict[str, BenchmarkSpec] = {
    "aime24": BenchmarkSpec("aime24.json"),
    "amc23": BenchmarkSpec("amc23.json"),  # float answers: 142.0 -> "142"
    "math500": BenchmarkSpec("math500.json"),
    "minerva": BenchmarkSpec("minerva.json"),  # lists of acceptable forms
    "olympiadbench": BenchmarkSpec("olympiadbench.json"),  # list + is_multiple_answer
}
BENCHMARK_FILES: dict[str, str] = {name: spec.file for name, spec in BENCHMARK_SPECS.items()}


class LoadedProblems(list[Problem]):
    """The problems of one source, plus what was skipped on the way (``on_bad_row="skip"``)."""

    def __init__(self, problems: Sequence[Problem], source: str, skipped: Sequence[str] = ()):
        super().__init__(problems)
        self.source = source
        self.skipped_reasons: list[str] = list(skipped)

    @property
    def skipped(self) -> int:
        return len(self.skipped_reasons)


# ---------------------------------------------------------------------------- answers


def _number_to_str(value: int | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _clean_text(text: str) -> str:
    """Strip whitespace and a ``$...$`` wrapper; a whole-number decimal becomes an integer."""
    s = text.strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$") and "$" not in s[1:-1]:
        s = s[1:-1].strip()
    head, dot, tail = s.partition(".")
    if dot and tail and set(tail) == {"0"} and head.lstrip("+-").isdigit():
        s = head
    return s


_DOLLAR_PARTS_RE = re.compile(r"\$([^$]+)\$")


def _split_dollar_parts(text: str) -> list[str]:
    """``$69$,$84$`` -> ``["69", "84"]``; any other text is one part (``$`` dropped)."""
    s = text.strip()
    if s.endswith("$."):  # a sentence's full stop after the formula
        s = s[:-1]
    parts = _DOLLAR_PARTS_RE.findall(s)
    between = _DOLLAR_PARTS_RE.sub("", s)
    if len(parts) > 1 and not between.replace(",", "").replace(";", "").strip():
        return [_clean_text(p.strip(" ,")) for p in parts]
    if len(parts) > 1:  # prose around formulas: keep the words, drop the delimiters
        return [_clean_text(s.replace("$", ""))]
    s = _clean_text(s)
    return [s.replace("$", "") if "\\$" not in s else s]  # stray delimiters, e.g. "$221,$8$"


def normalize_ground_truth(value: Any, *, multiple_parts: bool = False) -> Answer:
    """One row's answer as a string or a list of acceptable strings.

    ``multiple_parts`` (OlympiadBench's ``is_multiple_answer``) means the answer is
    several parts of one answer, joined with ", ", rather than alternatives.
    Raises ValueError naming what is wrong.
    """
    if value is None:
        raise ValueError("is missing (null)")
    if isinstance(value, bool):
        raise ValueError(f"has type bool ({value!r})")
    if isinstance(value, (int, float)):
        return _number_to_str(value)
    if isinstance(value, str):
        parts = _split_dollar_parts(value)
        if multiple_parts or len(parts) > 1:
            s = ", ".join(p for p in parts if p)
        else:
            s = parts[0]
        if not s:
            raise ValueError("is empty")
        return s
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("is an empty list")
        options: list[str] = []
        for i, item in enumerate(value):
            if isinstance(item, (list, tuple, dict)) or item is None or isinstance(item, bool):
                raise ValueError(f"item {i} has type {type(item).__name__}")
            norm = normalize_ground_truth(item, multiple_parts=multiple_parts)
            assert isinstance(norm, str)
            if norm not in options:
                options.append(norm)
        return options[0] if len(options) == 1 else options
    raise ValueError(f"has type {type(value).__name__}")


# ---------------------------------------------------------------------------- rows


class RawRows(list[Any]):
    """A source's rows, and the lines of a JSONL file that were skipped as not JSON."""

    def __init__(self, rows: Sequence[Any], bad_lines: Sequence[str] = ()) -> None:
        super().__init__(rows)
        self.bad_lines = list(bad_lines)


def _read_rows(
    source: str, split: str | None, on_bad_row: OnBadRow = "error"
) -> tuple[RawRows, str]:
    """Rows of a shipped dataset (``builtin:NAME``), a file or a Hugging Face dataset,
    and a name for messages."""
    if is_builtin(source):
        try:
            path = builtin_path(source)
        except ValueError as exc:  # an unknown name: say which ones ship
            raise DatasetError(str(exc)) from None
        return _read_file(path, on_bad_row), source
    path = Path(source).expanduser()
    if path.is_dir():
        raise DatasetError(f"{path} is a directory; give a .json, .jsonl or .parquet file")
    if path.exists():
        return _read_file(path, on_bad_row), str(path)
    if path.suffix in (".json", ".jsonl", ".parquet") or source.startswith((".", "/", "~")):
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise DatasetError(f"dataset file {path} does not exist{where}")
    return RawRows(_read_hub(source, split)), source


def _read_jsonl(path: Path, on_bad_row: OnBadRow) -> RawRows:
    """One JSON value per line; a line that is not JSON stops the load (``error``) or is
    skipped and named in ``bad_lines`` (``skip``: task.skip_bad_rows)."""
    rows: list[Any] = []
    bad: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                message = f"{path}: line {line_no} is not JSON: {exc}"
                if on_bad_row == "error":
                    raise DatasetError(
                        f"{message} (task.skip_bad_rows: true skips such lines)"
                    ) from exc
                logger.warning("skipping %s", message)
                bad.append(message)
    return RawRows(rows, bad)


def _read_file(path: Path, on_bad_row: OnBadRow = "error") -> RawRows:
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"data": [...]} style, or one split per key
                lists = [v for v in data.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise DatasetError(f"{path}: expected a JSON list of objects")
                data = lists[0]
            if not isinstance(data, list):
                raise DatasetError(f"{path}: expected a JSON list of objects")
            return RawRows(data)
        if suffix == ".jsonl":
            return _read_jsonl(path, on_bad_row)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return RawRows(pq.read_table(path).to_pylist())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON: {exc}") from exc
    raise DatasetError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl, .parquet)")


def _read_hub(name: str, split: str | None) -> list[Any]:
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError(
            f"{name!r} is not a file, and the `datasets` package needed to load it from the "
            "Hugging Face hub is not installed (pip install 'remix-rft[data]')"
        ) from exc
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # network, missing split, unknown name
        raise DatasetError(f"cannot load Hugging Face dataset {name!r}: {exc}") from exc
    return [dict(row) for row in ds]


def _is_json(value: Any) -> bool:
    """A value that passes to a reward worker as JSON unchanged (no bytes, dates, images)."""
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _missing_key(row: dict[str, Any], key: str, setting: str) -> ValueError:
    """``has no key 'problem' (its keys: question, answer; task.problem_key names it)``."""
    keys = [str(k) for k in row]
    shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} keys)" if len(keys) > 12 else "")
    return ValueError(
        f"has no key {key!r} (its keys: {shown or 'none'}; set {setting} to the key that holds it)"
    )


def _row_problem(row: Any, problem_key: str, answer_key: str) -> tuple[str, Answer]:
    if not isinstance(row, dict):
        raise ValueError(f"is a {type(row).__name__}, not an object")
    if problem_key not in row:
        raise _missing_key(row, problem_key, "task.problem_key")
    problem = row[problem_key]
    if not isinstance(problem, str) or not problem.strip():
        kind = "empty" if isinstance(problem, str) else type(problem).__name__
        raise ValueError(f"key {problem_key!r} is {kind}, not a non-empty string")
    context = row.get("context")  # OlympiadBench: shared setup of a problem group
    if isinstance(context, str) and context.strip():
        problem = f"{context.strip()}\n\n{problem.strip()}"
    if not answer_key:  # the user's reward functions judge; an "answer" column stays raw
        return problem.strip(), row.get("answer", "")
    if answer_key not in row:
        raise _missing_key(row, answer_key, "task.answer_key")
    multiple = bool(row.get("is_multiple_answer", False))
    try:
        answer = normalize_ground_truth(row[answer_key], multiple_parts=multiple)
    except ValueError as exc:
        raise ValueError(f"key {answer_key!r} {exc}") from None
    return problem.strip(), answer


def load_math_problems(
    source: str | Path,
    *,
    problem_key: str = "problem",
    answer_key: str = "answer",
    split: str | None = None,
    on_bad_row: OnBadRow = "error",
    limit: int | None = None,
    name: str | None = None,
) -> LoadedProblems:
    """Problems of a .json / .jsonl / .parquet file or a Hugging Face dataset name.

    A bad row raises DatasetError naming the source, the row index and the key; with
    ``on_bad_row="skip"`` it is skipped, logged and counted in ``result.skipped``.
    Problem ids are ``"<name>/<row index>"`` (name defaults to the file stem).
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    rows, where = _read_rows(str(source), split, on_bad_row)
    if not rows and limit != 0:
        unparsable = f" ({len(rows.bad_lines)} lines skipped as not JSON)" if rows.bad_lines else ""
        raise DatasetError(f"{where}: the dataset is empty: no rows{unparsable}")
    stem = (
        str(source).removeprefix("builtin:") if is_builtin(str(source)) else Path(str(source)).stem
    )
    prefix = name or stem or str(source)
    problems: list[Problem] = []
    skipped: list[str] = list(rows.bad_lines)
    for index, row in enumerate(rows):
        if limit is not None and len(problems) >= limit:
            break
        try:
            prompt, answer = _row_problem(row, problem_key, answer_key)
        except ValueError as exc:
            message = f"{where}: row {index} {exc}"
            if on_bad_row == "error":
                raise DatasetError(message) from None
            logger.warning("skipping %s", message)
            skipped.append(message)
            continue
        meta = {k: v for k, v in row.items() if k not in (problem_key, answer_key) and _is_json(v)}
        problems.append(Problem(id=f"{prefix}/{index}", prompt=prompt, answer=answer, meta=meta))
    if not problems and limit != 0:
        raise DatasetError(f"{where}: no usable rows ({len(skipped)} skipped)")
    if skipped:
        logger.warning(
            "%s: skipped %d bad rows or lines, kept %d", where, len(skipped), len(problems)
        )
    return LoadedProblems(problems, where, skipped)


def load_benchmark(
    name: str, data_dir: str | Path | None = None, *, limit: int | None = None
) -> LoadedProblems:
    """One of the paper's five benchmarks from ``data_dir`` by its usual file name
    (default: the copies shipped with the package)."""
    if name not in BENCHMARK_SPECS:
        raise DatasetError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_SPECS)}")
    spec = BENCHMARK_SPECS[name]
    path = Path(data_dir or BUILTIN_BENCHMARK_DIR).expanduser() / spec.file
    if not path.is_file():
        raise DatasetError(f"benchmark file {path} does not exist")
    return load_math_problems(
        path, problem_key=spec.problem_key, answer_key=spec.answer_key, limit=limit, name=name
    )


# ---------------------------------------------------------------------------- the task


@dataclass
class MathTask:
    """A math dataset as a Task: its problems and the boxed-answer verifier."""

    train_source: str | Path
    eval_source: str | Path | None = None
    name: str = "math"
    problem_key: str = "problem"
    answer_key: str = "answer"
    split: str | None = None
    eval_split: str | None = None
    on_bad_row: OnBadRow = "error"
    limit: int | None = None
    eval_limit: int | None = None
    _train: LoadedProblems | None = field(default=None, init=False, repr=False)
    _eval: LoadedProblems | None = field(default=None, init=False, repr=False)

    def _load(self, source: str | Path, split: str | None, limit: int | None) -> LoadedProblems:
        return load_math_problems(
            source,
            problem_key=self.problem_key,
            answer_key=self.answer_key,
            split=split,
            on_bad_row=self.on_bad_row,
            limit=limit,
        )

    def train_problems(self) -> Sequence[Problem]:
        if self._train is None:
            self._train = self._load(self.train_source, self.split, self.limit)
        return self._train

    def eval_problems(self) -> Sequence[Problem]:
        """The eval source's problems; empty when the task has no eval source."""
        if self.eval_source is None:
            return []
        if self._eval is None:
            self._eval = self._load(self.eval_source, self.eval_split, self.eval_limit)
        return self._eval

    def reward(self, response: str, problem: Problem) -> float:
        return math_reward(response, problem.answer)
