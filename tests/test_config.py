import os
import subprocess
import sys
from pathlib import Path

import pytest

from remix_rft.cli import main
from remix_rft.trainer.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algorithm: remix-grpo\nlr: 1.0e-4\ntask:\n  max_operand: 5\n")
    cfg = load_config(path, ["window=3", "offpolicy_fraction=0.5", "lr=2e-5", "task.seed=4"])
    assert cfg.lr == 2e-5
    assert cfg.task.max_operand == 5 and cfg.task.seed == 4
    assert cfg.offpolicy_batch_size() == cfg.fresh_batch_size()  # half the batch is reused
    assert cfg.updates_per_step() == 2  # 256 samples / minibatch 128


@pytest.mark.parametrize(
    "override, key",
    [
        ("lr=-1", "lr"),
        ("group_size=1", "group_size"),
        ("nonsense=3", "nonsense"),
        ("lr=fast", "lr"),
        ("algorithm=dpo", "algorithm"),
        ("kl_lambda=1.5", "kl_lambda"),
        ("task.nme=x", "task.nme"),
        ("window=3", "window"),  # replay needs a remix-* algorithm
        ("steps=0", "steps"),
        ("loss_agg=sum", "loss_agg"),
        ("advantage_estimator=vtrace", "advantage_estimator"),
        ("max_nonfinite_updates=-1", "max_nonfinite_updates"),
        ("eval.threads=-1", "eval_threads"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [override])


def test_cli_exits_2_with_one_line_naming_the_key(tmp_path, capsys):
    code = main(["train", str(CONFIGS / "tiny-grpo.yaml"), "lr=-0.1", f"out_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "'lr'" in err[0] and "> 0" in err[0]


def test_cli_missing_config_file_names_it(capsys):
    assert main(["train", str(CONFIGS / "nope.yaml")]) == 2
    assert str(CONFIGS / "nope.yaml") in capsys.readouterr().err


def test_cli_missing_model_path_names_it(tmp_path, capsys):
    code = main(
        [
            "train",
            str(CONFIGS / "tiny-grpo.yaml"),
            "model=/no/such/model",
            f"out_dir={tmp_path / 'r'}",
        ]
    )
    assert code == 2
    assert "/no/such/model" in capsys.readouterr().err


def test_every_shipped_config_is_valid():
    for path in sorted(CONFIGS.glob("*.yaml")):
        load_config(path)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_in_the_sectioned_form_too(path):
    import dataclasses

    from remix_rft.trainer.config import TrainConfig, build_config, read_yaml
    from remix_rft.trainer.config_sections import sectioned

    flat = read_yaml(path)
    nested = sectioned(flat, TrainConfig)
    assert set(nested) & {"rollout", "optim", "loss", "eval"}  # really regrouped
    assert dataclasses.asdict(build_config(nested)) == dataclasses.asdict(load_config(path))


def test_sectioned_overrides_and_unknown_section_keys():
    cfg = load_config(None, ["algorithm=remix-grpo", "rollout.mode=async", "optim.lr=3e-5",
                             "remix.reincarnation_step=5", "post_reincarnation.lr=1e-4",
                             "vllm.gpu_memory_utilization=0.3"])  # fmt: skip
    assert (cfg.rollout_mode, cfg.lr, cfg.post_reincarnation_lr) == ("async", 3e-5, 1e-4)
    assert cfg.vllm_gpu_memory_utilization == 0.3
    with pytest.raises(ConfigError, match="'rollout.bogus'.*max_staleness"):
        load_config(None, ["rollout.bogus=1"])


def test_help_config_lists_every_key_with_its_help(capsys):
    import dataclasses

    from remix_rft.trainer.config import TrainConfig

    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(TrainConfig):
        assert f" {field.name}:" in out or f"(flat: {field.name})" in out or field.name == "task"
    assert "mode  (flat: rollout_mode): str = 'sync'" in out
    assert "max_staleness" in out and "policy versions" in out  # the field's own comment


def test_advantage_estimator_defaults_to_the_algorithm_and_is_a_key():
    assert load_config(None, ["algorithm=remix-grpo"]).estimator == "grpo"
    ppo = load_config(None, ["algorithm=remix-ppo"])
    assert ppo.estimator == "gae" and ppo.uses_critic
    rloo = load_config(None, ["advantage_estimator=rloo"])
    assert rloo.estimator == "rloo" and not rloo.uses_critic
    with pytest.raises(ConfigError, match="'group_size'.*rloo"):
        load_config(None, ["advantage_estimator=rloo", "group_size=1"])


def test_a_registered_estimator_is_accepted_by_name(monkeypatch):
    """Adding an estimator is one function plus its registration."""
    from remix_rft.algorithm import advantages

    monkeypatch.setattr(advantages, "ADVANTAGE_ESTIMATORS", dict(advantages.ADVANTAGE_ESTIMATORS))
    for module in ("config_checks", "config_fields"):  # their references to the registry
        monkeypatch.setattr(
            f"remix_rft.trainer.{module}.ADVANTAGE_ESTIMATORS", advantages.ADVANTAGE_ESTIMATORS
        )

    @advantages.register_advantage("sign")
    def sign(rewards, group_size, **_):
        return rewards.sign()

    assert load_config(None, ["advantage_estimator=sign"]).estimator == "sign"


def test_planned_updates_count_the_growing_buffer_and_reincarnation():
    cfg = load_config(
        None,
        ["algorithm=remix-grpo", "prompts_per_step=4", "group_size=4", "minibatch_size=16",
         "window=3", "offpolicy_fraction=0.5", "steps=6", "reincarnation_step=4",
         "post_reincarnation_epochs=2"],
    )  # fmt: skip
    # steps 1-4: 16 fresh + 0 / 16 / 16 / 16 reused -> 1, 2, 2, 2 updates;
    # steps 5-6 on-policy (16 fresh, 2 epochs) -> 2, 2. Old count: 6 × 2 = 12.
    assert cfg.planned_updates() == 11
    assert cfg.planned_updates(reincarnated_at=2) == 1 + 2 + 4 * 2
    ppo = load_config(None, ["algorithm=ppo", "steps=5", "critic_warmup_steps=2"])
    assert ppo.planned_updates() == 3  # warmup iterations train only the critic


def test_version_flag_prints_the_package_version(capsys):
    from remix_rft import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"remix-rft {__version__}"
    # `python -m remix_rft.cli` runs the command too (it used to import and exit silently)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-m", "remix_rft.cli", "--version"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0 and result.stdout.strip() == f"remix-rft {__version__}"


REMIX = ["algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5", "reincarnation_step=3"]


@pytest.mark.parametrize(
    "overrides, key, allowed",
    [
        (["post_reincarnation_lr=1e-5"], "post_reincarnation_lr", "on-policy algorithm grpo"),
        ([*REMIX, "post_reincarnation_group_size=1"], "post_reincarnation_group_size", ">= 2"),
        ([*REMIX, "post_reincarnation_kl_coef=-0.5"], "post_reincarnation_kl_coef", "-1"),
        ([*REMIX, "post_reincarnation_prompts_per_step=-4"], "post_reincarnation_prompts", ">= 0"),
        ([*REMIX, "post_reincarnation_lr=-1e-4"], "post_reincarnation_lr", ">= 0"),
        (
            [*REMIX, "micro_batch_size=32", "post_reincarnation_minibatch_size=16"],
            "micro_batch_size",
            "post_reincarnation_minibatch_size",
        ),
    ],
)
def test_invalid_post_reincarnation_values_name_the_key(overrides, key, allowed):
    with pytest.raises(ConfigError, match=f"'{key}.*{allowed}"):
        load_config(None, overrides)


def test_post_reincarnation_phase_and_the_rollouts_it_samples():
    cfg = load_config(
        None,
        [*REMIX, "prompts_per_step=4", "group_size=8", "lr=1e-4", "kl_coef=0.02",
         "post_reincarnation_prompts_per_step=16", "post_reincarnation_minibatch_size=256",
         "post_reincarnation_lr=5e-5", "post_reincarnation_kl_coef=0"],
    )  # fmt: skip
    before, after = cfg.phase(reincarnated=False), cfg.phase(reincarnated=True)
    assert (before.fresh_batch_size, before.offpolicy_batch_size, before.lr) == (32, 32, 1e-4)
    assert (after.fresh_batch_size, after.offpolicy_batch_size, after.lr) == (128, 0, 5e-5)
    assert (before.kl_coef, after.kl_coef) == (0.02, 0.0)
    assert (after.group_size, after.epochs, after.updates(128)) == (8, 1, 1)  # unset: unchanged
    # 3 iterations of 32 before reincarnation, then 128 per iteration
    assert [cfg.rollouts_for_steps(n) for n in (1, 3, 4, 5)] == [32, 96, 224, 352]
    assert cfg.steps_for_rollouts(351) == 4 and cfg.steps_for_rollouts(352) == 5
    assert cfg.steps_for_rollouts(10) == 1  # at least one iteration
    unset = load_config(None, REMIX)
    assert unset.phase(reincarnated=True).fresh_batch_size == unset.fresh_batch_size()
    assert unset.phase(reincarnated=True).lr == unset.lr


def test_post_reincarnation_keys_without_reincarnation_are_ignored_with_a_warning(caplog):
    cfg = load_config(None, [*REMIX, "reincarnation_step=0", "post_reincarnation_lr=5e-5"])
    assert "post_reincarnation_lr ignored" in caplog.text
    assert cfg.rollouts_for_steps(10) == 10 * cfg.fresh_batch_size()


def test_a_renamed_key_still_loads_with_a_warning_naming_the_new_one(tmp_path, caplog):
    """``warmup_steps`` counted optimizer updates, not iterations: it is now ``warmup_updates``."""
    assert load_config(None, ["warmup_steps=7"]).warmup_updates == 7
    assert "config key 'warmup_steps' is now 'warmup_updates'" in caplog.text
    path = tmp_path / "old.yaml"
    path.write_text("algorithm: grpo\nwarmup_steps: 3\n")
    assert load_config(path).warmup_updates == 3


def test_unset_settings_are_none_and_older_sentinels_still_mean_unset(caplog):
    """None inherits; the 0 / -1 that older configs wrote for "unset" load as None."""
    cfg = load_config(None, [*REMIX, "reincarnation_step=5"])
    assert cfg.post_reincarnation_lr is None and cfg.offpolicy_clip_eps_low is None
    assert cfg.phase(reincarnated=True).lr == cfg.lr
    old = load_config(
        None,
        [*REMIX, "reincarnation_step=5", "post_reincarnation_kl_coef=-1",
         "post_reincarnation_epochs=0", "offpolicy_clip_eps_low=-1", "eval_max_new_tokens=0"],
    )  # fmt: skip
    assert old == cfg
    assert "'post_reincarnation_kl_coef': -1.0 for 'unset' is deprecated" in caplog.text
    beta0 = load_config(None, [*REMIX, "reincarnation_step=5", "post_reincarnation_kl_coef=0"])
    assert beta0.phase(reincarnated=True).kl_coef == 0.0  # 0 is a real β, not "unset"
    assert load_config(None, [*REMIX, "post_reincarnation_lr=null"]).post_reincarnation_lr is None


def test_dry_run_prints_the_lambda_schedule_reincarnation_and_the_phase_after_it(capsys):
    """#21.1: --dry-run shows the paper config's λ schedule step by step, where it
    reincarnates and what the on-policy phase after it runs."""
    assert main(["train", str(CONFIGS / "tiny-remix-grpo-paper.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    # as the config documents it: 1 up to step 9, then -0.1 every 2 steps, 0.5 from step 18
    assert "lambda step-down schedule: 1 (steps 1-9), 0.9 (steps 10-11)" in lines["KL"]
    assert "0.5 (steps 18-60)" in lines["KL"]
    assert "32 fresh + 21 reused (window 3" in lines["training"]
    assert "2 optimizer updates per step (minibatch 64, epochs 2)" in lines["UTD"]
    assert lines["reincarnation"].split(None, 1)[1] == "at step 20"
    assert "16 prompts x 8 responses = 128 rollouts, on-policy, 1 update per step" in lines["after"]
    assert "nothing was trained" in out


def test_dry_run_of_an_on_policy_config_never_reincarnates(capsys):
    assert main(["train", str(CONFIGS / "tiny-grpo.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 optimizer update per step" in out
    assert "reincarnation  never" in out and "after reinc." not in out


# ---- #37 item 8: paths relative to the config file, one-line errors ----------------------
def _own_task(tmp_path: Path) -> Path:
    """A config in tmp_path/cfg naming data and a reward file beside it (relative paths)."""
    folder = tmp_path / "cfg"
    (folder / "data").mkdir(parents=True)
    row = '{"problem": "1+1?", "answer": "2"}\n'
    (folder / "data" / "train.jsonl").write_text(row * 4)
    (folder / "reward.py").write_text("def score(response, problem):\n    return 0.0\n")
    path = folder / "own.yaml"
    path.write_text(
        "task:\n  name: custom\n  train_path: data/train.jsonl\n"
        "  eval_path: data/train.jsonl\n  reward_fn: reward.py:score\n"
    )
    return path


def test_relative_paths_in_a_config_file_follow_the_file_not_the_cwd(tmp_path, monkeypatch):
    path = _own_task(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    folder = path.parent.resolve()
    assert cfg.task.train_path == str(folder / "data" / "train.jsonl")
    assert cfg.task.reward_fn == f"{folder / 'reward.py'}:score"
    # a command-line override is relative to the working directory
    (elsewhere / "mine.jsonl").write_text('{"problem": "p", "answer": "1"}\n')
    cfg = load_config(path, ["task.train_path=mine.jsonl"])
    assert cfg.task.train_path == "mine.jsonl"
    # hub ids and shipped names are not paths
    cfg = load_config(path, [])
    assert cfg.model == "embedded"
    r1 = load_config(CONFIGS / "r1-distill-1.5b-grpo.yaml")
    assert (r1.task.train_path, r1.task.eval_path) == (
        "agentica-org/DeepScaleR-Preview-Dataset", "builtin:math500"
    )


def test_a_missing_relative_path_names_the_key_and_the_base_it_used(tmp_path, monkeypatch, capsys):
    path = _own_task(tmp_path)
    monkeypatch.chdir(tmp_path)
    text = path.read_text().replace("data/train.jsonl\n  eval", "data/nope.jsonl\n  eval")
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "'task.train_path'" in message and "data/nope.jsonl" in message
    assert f"config file's directory ({path.parent.resolve() / 'data' / 'nope.jsonl'}" in message
    # the same path as an override: looked for (later) relative to the working directory
    code = main(["train", str(path), "task.train_path=data/nope.jsonl", "--dry-run"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"data/nope.jsonl does not exist (relative to the working directory {tmp_path}" in err


def test_a_config_written_for_the_cwd_still_loads_with_a_warning(tmp_path, monkeypatch, caplog):
    path = _own_task(tmp_path)
    monkeypatch.chdir(tmp_path)
    path.write_text(path.read_text().replace("data/train.jsonl", "cfg/data/train.jsonl"))
    cfg = load_config(path)
    assert cfg.task.train_path == str(tmp_path / "cfg" / "data" / "train.jsonl")
    assert "relative to the working directory" in caplog.text


def test_dry_run_of_an_empty_dataset_fails_naming_the_file(tmp_path, capsys):
    path = _own_task(tmp_path)
    (path.parent / "data" / "train.jsonl").write_text("")
    assert main(["train", str(path), f"out_dir={tmp_path / 'r'}", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.jsonl: the dataset is empty" in err[0]


def test_did_you_mean_is_not_followed_by_every_key(capsys):
    code = main(["train", "tiny-grpo", "lrr=1e-5", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "did you mean lr?" in err and "adam_beta1" not in err and "--help-config" in err
    with pytest.raises(ConfigError, match=r"did you mean task\.name") as info:
        load_config(None, ["task.nme=math"])
    assert "task.answer_key" not in str(info.value)
    with pytest.raises(ConfigError, match=r"allowed: task\.answer_key"):  # nothing close
        load_config(None, ["task.zzzz=1"])


def test_help_config_shows_the_allowed_values_of_choice_keys(capsys):
    assert main(["train", "--help-config"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def after(key_line: str) -> str:
        return lines[lines.index(key_line) + 1].strip()

    assert after("  algorithm: str = 'grpo'") == "one of: grpo, ppo, remix-grpo, remix-ppo"
    assert after("  name: str = 'arithmetic'") == "one of: arithmetic, math, custom"
    policy = next(i for i, ln in enumerate(lines) if ln.startswith("  policy_loss"))
    assert lines[policy + 1].strip() == "one of: cispo, gspo, mix-ppg"
    assert any("relative to the file's directory" in ln for ln in lines[:4])


def test_an_unwritable_out_dir_is_one_line_not_a_traceback(tmp_path, capsys):
    (tmp_path / "afile").write_text("in the way")
    out_dir = tmp_path / "afile" / "run"
    args = ["train", "tiny-grpo", f"out_dir={out_dir}", "steps=1"]
    assert main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"out_dir {out_dir}: cannot be created: {tmp_path / 'afile'} is not a directory" in err
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"remix train: error: out_dir {out_dir}: cannot be written" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_out_dir_fails_the_dry_run(tmp_path):
    from remix_rft.trainer.io import RunDirError, check_out_dir

    tmp_path.chmod(0o555)
    try:
        with pytest.raises(RunDirError, match="no write permission"):
            check_out_dir(tmp_path / "run")
    finally:
        tmp_path.chmod(0o755)


def test_dry_run_counts_the_lines_skip_bad_rows_skipped(tmp_path, capsys):
    path = _own_task(tmp_path)
    data = path.parent / "data" / "train.jsonl"
    data.write_text(data.read_text() + "{not json\n")
    assert main(["train", str(path), f"out_dir={tmp_path / 'r'}", "--dry-run"]) == 2
    assert "line 5 is not JSON" in capsys.readouterr().err
    args = ["train", str(path), "task.skip_bad_rows=true", f"out_dir={tmp_path / 'r'}"]
    assert main([*args, "--dry-run"]) == 0
    task_line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("task "))
    # train and eval are the same file here: its bad line is counted in each
    assert "4 train / 4 held-out problems (2 bad rows or lines skipped" in task_line


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], []])
def test_remix_help_does_not_import_torch(argv):
    """`remix --help` lists every command without importing an app (torch: seconds)."""
    code = (
        "import sys\nfrom remix_rft.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(CONFIGS.parent)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=CONFIGS.parent,
    ).stdout
    assert "HEAVY []" in out
    if argv != ["train", "--help"]:
        assert all(name in out for name in ("train", "eval", "compare", "demo", "build-tiny"))


def test_the_lazy_command_list_matches_each_apps_own_help():
    from remix_rft.cli import APP_COMMANDS, build_parser

    def helps(parser):
        action = next(a for a in parser._actions if a.dest == "command")
        return {c.dest: c.help for c in action._choices_actions}

    full, lazy = helps(build_parser()), helps(build_parser(load=()))
    assert lazy == full and set(APP_COMMANDS) < set(full)
    args = build_parser(load={"compare"}).parse_args(["compare", "a", "--target", "0.5"])
    assert args.target == 0.5 and args.run_dirs == ["a"]
