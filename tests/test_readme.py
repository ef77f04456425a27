"""The README and docs/ stay true: CI installs and tests as the README says, every relative
link resolves, every `remix` command the README shows exists, and the README's own-task
walkthrough validates when copied as written; the benchmark commands beside the tables in
docs/ name scripts, options and variants that exist."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
MAX_README_LINES = 320

FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.S | re.M)
COMMENT = re.compile(r"<!--.*?-->", re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
REMIX_CALL = re.compile(r"(?:^|[\s`(])remix ([a-z][a-z-]*)((?:[^`\n])*)")


def markdown_files() -> list[Path]:
    docs = sorted((ROOT / "docs").glob("*.md"))
    return [README, *docs, *sorted((ROOT / "examples").glob("*/README.md"))]


def without_code(text: str) -> str:
    """Text with HTML comments, fenced blocks and inline code removed (links live outside)."""
    text = COMMENT.sub("", text)
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def code_texts(text: str) -> list[str]:
    """Fenced blocks and inline code spans: where commands are written."""
    text = COMMENT.sub("", text)
    blocks = [body for _, body in FENCE.findall(text)]
    rest = FENCE.sub("", text)
    return blocks + re.findall(r"`([^`\n]+)`", rest)


def section(text: str, title: str) -> str:
    """The body of the `## title` section, up to the next level-2 heading."""
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    text = FENCE.sub("", COMMENT.sub("", path.read_text(encoding="utf-8")))
    for heading in HEADING.findall(text):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out | set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))  # explicit anchors


def install_commands() -> list[list[str]]:
    """README commands 1 and 2: the `python3 -m venv ...` lines, split at `&&`."""
    block = FENCE.findall(section(README.read_text(encoding="utf-8"), "Install and run"))[0][1]
    lines = [ln for ln in block.splitlines() if ln.startswith("python3 -m venv")]
    return [[part.strip() for part in ln.split("&&")] for ln in lines]


def ci_lines() -> list[str]:
    lines = [ln.strip() for ln in CI_RUN.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def ci_has(command: str) -> bool:
    """`command` is a line of .ci/run, bare or behind its pytest exit-code wrapper."""
    return any(line in (command, f"pytest_rc {command}") for line in ci_lines())


def test_readme_commands_are_the_ones_ci_runs() -> None:
    commands = install_commands()
    assert len(commands) == 2, "README's Install and run shows commands 1 and 2"
    demo, tests = commands
    assert demo[-1] == "remix demo" and tests[-1] == "python -m pytest -q"
    for part in tests:  # venv, activate, the install line and the test command, as CI runs
        assert ci_has(part), f"README command 2 runs {part!r}; .ci/run does not"
    # command 1 installs exactly as command 2 does, without the test extras
    assert demo[:2] == tests[:2]
    assert tests[2].replace(' -e ".[test]"', " -e .") == demo[2]


def test_readme_cpu_torch_line_pins_the_same_torch() -> None:
    """The CPU-wheel line installs the very version commands 1 and 2 (and CI) pin."""
    text = section(README.read_text(encoding="utf-8"), "Install and run")
    pins = {m.group(1) for m in re.finditer(r"pip install -q (torch==\S+) -e", text)}
    cpu = re.findall(
        r"pip install (torch==\S+) --index-url https://download\.pytorch\.org/whl/cpu", text
    )
    assert len(pins) == 1 and cpu == list(pins), (pins, cpu)


def test_readme_vllm_test_commands_are_the_ones_ci_runs() -> None:
    block = FENCE.findall(section(README.read_text(encoding="utf-8"), "Tests"))[0][1]
    for line in block.splitlines():
        for part in (p.strip() for p in line.split("&&")):
            env = re.match(r"^((?:[A-Z_]+=\S+ )+)(.*)$", part)
            if env:  # VAR=1 cmd in the README is `export VAR=1` then cmd in .ci/run
                for assignment in env.group(1).split():
                    assert ci_has(f"export {assignment}"), assignment
                part = env.group(2)
            assert ci_has(part), f"README's vLLM test step runs {part!r}; .ci/run does not"


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in LINK.findall(without_code(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_slug_rules() -> None:
    assert github_slug("`remix demo`") == "remix-demo"
    assert github_slug("§1.6 Checkpoint and resume") == "16-checkpoint-and-resume"
    assert github_slug("Where ReMix's gain comes from, in one table") == (
        "where-remixs-gain-comes-from-in-one-table"
    )


def cli_help(*args: str) -> str:
    """What `remix ARGS --help` prints, from the CLI's own parser."""
    from remix_rft.cli import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*args, "--help"])
    return out.getvalue()


def remix_calls(doc: Path) -> list[tuple[str, str]]:
    """(subcommand, the rest of the line) of every `remix ...` in the doc's code."""
    calls = []
    for text in code_texts(doc.read_text(encoding="utf-8")):
        calls += [(m.group(1), m.group(2)) for m in REMIX_CALL.finditer(text)]
    return calls


def test_readme_remix_commands_exist() -> None:
    """Every `remix SUB --option` in the README (and in docs/) is in `remix --help` and in
    `remix SUB --help`."""
    listed = set(re.findall(r"^ {4}([a-z][a-z-]*)\s", cli_help(), re.M))
    assert {"train", "demo"} <= {sub for sub, _ in remix_calls(README)}, "README: train, demo"
    options: dict[str, set[str]] = {}
    for doc in markdown_files():
        for sub, rest in remix_calls(doc):
            where = f"{doc.relative_to(ROOT)} mentions `remix {sub}`"
            assert sub in listed, f"{where}; `remix --help` lists {sorted(listed)}"
            if sub not in options:
                options[sub] = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", cli_help(sub)))
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
                assert flag in options[sub], f"{where} ... {flag}: no such option"


def walkthrough_blocks() -> dict[str, str]:
    """The own-task walkthrough's code blocks, by language, as the README shows them."""
    body = section(README.read_text(encoding="utf-8"), "Your own data and reward")
    blocks: dict[str, str] = {}
    for lang, code in FENCE.findall(body):
        blocks.setdefault(lang, code)
    return blocks


def test_walkthrough_reward_function_scores_as_described(tmp_path: Path) -> None:
    namespace: dict = {}
    exec(compile(walkthrough_blocks()["python"], "reward.py", "exec"), namespace)  # noqa: S102
    score = namespace["score"]
    assert score("3*4=12 5*6=30 12+30=42 42*2=84 \\boxed{84}", {"answer": "84"}) == 1.0
    assert score("12+30=42 \\boxed{42}", {"answer": "84"}) == 0.0
    assert score("no answer", {"answer": "84"}) == 0.0


def test_walkthrough_validates_as_written(tmp_path: Path) -> None:
    """Data made by the README's script, its reward.py and config.yaml: --dry-run passes."""
    blocks = walkthrough_blocks()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run(["bash", "-e", "-c", blocks["bash"]], cwd=tmp_path, env=env, check=True)
    task = tmp_path / "my-task"
    assert len((task / "train.jsonl").read_text().splitlines()) == 2000
    (task / "reward.py").write_text(blocks["python"])
    (task / "config.yaml").write_text(blocks["yaml"])
    body = section(README.read_text(encoding="utf-8"), "Your own data and reward")
    dry_run = [
        line.split("#")[0]
        for lang, code in FENCE.findall(body)
        if lang == "bash"
        for line in code.splitlines()
        if "--dry-run" in line
    ]
    assert dry_run, "the walkthrough shows its --dry-run command"
    argv = shlex.split(dry_run[0])
    assert argv[0] == "remix"
    proc = subprocess.run(
        [sys.executable, "-m", "remix_rft", *argv[1:]],
        cwd=task,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2000 train / 200 held-out" in proc.stdout


SCRIPT_CALL = re.compile(
    r"(?:python3?|bash)\s+((?:benchmarks|scripts|examples)/[\w./-]+\.(?:py|sh))([^`;|&()]*)"
)


def documented_script_calls() -> list[tuple[Path, str, str]]:
    """(doc, script, arguments) of every `python benchmarks/...` style command in the docs."""
    calls = []
    for doc in markdown_files():
        text = COMMENT.sub("", doc.read_text(encoding="utf-8"))
        blocks = [body for _, body in FENCE.findall(text)]
        spans = re.findall(r"`([^`]+)`", FENCE.sub("", text))  # spans may wrap lines
        for code in blocks + spans:
            code = code.replace("\\\n", " ")
            calls += [(doc, m.group(1), m.group(2)) for m in SCRIPT_CALL.finditer(code)]
    return calls


def test_documented_scripts_options_and_variants_exist() -> None:
    """Every table's command names a script that exists, options it defines and, for the
    efficiency benchmark, variants it knows (checked against the sources, not by running)."""
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "benchmarks").glob("*.py"))
    calls = documented_script_calls()
    assert any(script == "benchmarks/efficiency.py" for _, script, _ in calls)
    for doc, script, args in calls:
        where = f"{doc.relative_to(ROOT)}: {script}{args[:60]}"
        assert (ROOT / script).is_file(), f"{where}: no such script"
        if not script.endswith(".py"):
            continue
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", args):
            assert f'"{flag}"' in (ROOT / script).read_text(encoding="utf-8"), (
                f"{where}: {script} defines no option {flag}"
            )
        variants = re.search(r"--variants((?:\s+[a-z][\w.-]*)+)", args)
        for name in variants.group(1).split() if variants else []:
            assert f'"{name}"' in sources, f"{where}: no benchmark variant {name!r}"
