"""Every user mistake is one clear error before any work: config keys, paths, command lines."""

import importlib.util
import os
import subprocess
import sys

import ml_collections
import pytest

from ehr_jax import config_check, config_files
from ehr_jax.errors import ConfigError

import train_fixtures

DEVICES = 8  # conftest's fake CPU devices


def _base():
    config = train_fixtures.base_config()
    config.data.synthetic_subjects = 40
    return config


def _quickstart():
    return config_files.load_sibling(os.path.join(train_fixtures.REPO, "configs", "base.py"),
                                     "quickstart")


def _set(config, key, value):
    """config with key=value, as a config file could build it (of any type)."""
    as_dict = config.to_dict()
    group, _, name = key.rpartition(".")
    (as_dict[group] if group else as_dict)[name] = value
    return ml_collections.ConfigDict(as_dict)


# (key, value, text the one problem must contain); tmp_path placeholders are filled in the test.
SINGLE_RUN_MISTAKES = [
    ("train.lr", -1.0, "config.train.lr=-1.0; expected in [0, 1]"),
    ("train.lr", 1e30, "config.train.lr=1e+30; expected in [0, 1]"),
    ("train.lr", "0.1", "config.train.lr='0.1'; expected a finite number"),
    ("train.steps", 1.5, "config.train.steps=1.5; expected an integer"),
    ("train.flops", float("nan"), "config.train.flops=nan; expected a finite number"),
    ("data.seq_len", -3, "config.data.seq_len=-3; expected >= 2"),
    ("data.synthetic_subjects", 0, "config.data.synthetic_subjects=0"),
    ("data.min_code_count", 0, "config.data.min_code_count=0; expected >= 1"),
    ("data.meds_dir", "{tmp}/no_meds", "config.data.meds_dir="),
    ("data.meds_dir", "{tmp}", "a MEDS dataset keeps its events in"),  # not a MEDS root
    ("data.prepared_dir", "{file}", "config.data.prepared_dir="),
    ("model.size", "d7-l99", "config.model.size='d7-l99' is not a known size"),
    ("model.dtype", "float16", "config.model.dtype='float16'"),
    ("model.n_kv_heads", 3, "config.model.n_kv_heads=3 must divide"),
    ("model.remat", "yes", "config.model.remat='yes'; expected True or False"),
    ("mesh.shape", (3, 1, 1), "mesh.shape=(3, 1, 1)"),
    ("mesh.shape", (-1, -1, 1), "at most one entry may be -1"),
    ("mesh.shape", ("a", 1, 1), "config.mesh.shape=('a', 1, 1); expected a tuple of integers"),
    ("train.global_batch_size", 12, "global_batch_size=12 must be a multiple of the 8"),
    ("train.global_batch_size", 0, "config.train.global_batch_size=0; expected >= 1"),
    ("train.tokens", 5000, "set exactly one of train.steps, train.tokens, train.flops"),
    ("train.steps", 0, "set exactly one of train.steps, train.tokens, train.flops"),
    ("train.warmup_frac", 1.0, "config.train.warmup_frac=1.0; expected in [0, 1)"),
    ("train.grad_clip", 0.0, "config.train.grad_clip=0.0; expected > 0"),
    ("train.b2", 1.0, "config.train.b2=1.0; expected in (0, 1)"),
    ("train.log_every", 0, "config.train.log_every=0; expected >= 1"),
    ("train.keep_checkpoints", -2, "config.train.keep_checkpoints=-2; expected >= 1"),
    ("eval.tasks", ("mortality", "no_such_task"), "no_such_task"),
    ("eval.max_cases", -1, "config.eval.max_cases=-1; expected >= 0"),
    ("eval.num_rollouts", 0, "config.eval.num_rollouts=0; expected >= 1"),
    ("eval.labels_dir", "{tmp}/no_labels", "config.eval.labels_dir="),
    ("eval.labels_dir", "{tmp}", "has no such folders"),  # exists, without task folders
    ("train.lrr", 0.1, "config.train.lrr is not a key ehr_jax reads"),
]

GRID_MISTAKES = [
    ("grid.budgets", (), "config.grid.budgets=(); expected a non-empty tuple"),
    ("grid.budgets", (1e11, -5.0), "config.grid.budgets=(100000000000.0, -5.0)"),
    ("grid.budgets", (0,), "expected a non-empty tuple of positive training-FLOP budgets"),
    ("grid.sizes", ("d9-l9",), "config.model.size='d9-l9' is not a known size"),
    ("grid.sizes", (("d16-l1",),), "config.grid.sizes must be size names"),
    ("grid.only", "c9e9-d16-l1", "config.grid.only names c9e9-d16-l1"),
    ("grid.sizes_per_budget", 0, "config.grid.sizes_per_budget=0; expected >= 1"),
    ("grid.max_epochs", -1.0, "config.grid.max_epochs=-1.0; expected >= 0"),
    ("grid.analysis_n", "embedding", "config.grid.analysis_n='embedding'; expected 'non_embedding'"),
]


def _fill(value, tmp_path):
    if isinstance(value, str) and "{" in value:
        (tmp_path / "a_file").write_text("x")
        return value.format(tmp=tmp_path, file=tmp_path / "a_file")
    return value


@pytest.mark.parametrize("key,value,expected", SINGLE_RUN_MISTAKES,
                         ids=[f"{k}={v}" for k, v, _ in SINGLE_RUN_MISTAKES])
def test_each_single_run_mistake_is_one_problem_naming_key_and_value(tmp_path, key, value,
                                                                    expected):
    config = _set(_base(), key, _fill(value, tmp_path))
    problems = config_check.check_problems(config, str(tmp_path / "work"), DEVICES)
    assert len(problems) == 1 and expected in problems[0], problems
    assert not (tmp_path / "work").exists()  # a check writes nothing


@pytest.mark.parametrize("key,value,expected", GRID_MISTAKES,
                         ids=[f"{k}={v}" for k, v, _ in GRID_MISTAKES])
def test_each_grid_mistake_is_one_problem(tmp_path, key, value, expected):
    config = _set(_quickstart(), key, value)
    problems = config_check.check_problems(config, str(tmp_path), DEVICES)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize("name,preset", [("base", None), ("smoke", None), ("quickstart", ""),
                                         ("quickstart", "tiny"), ("quickstart", "eval"),
                                         ("synthetic_large", None), ("mimic_iv", ""),
                                         ("mimic_iv", "eval")])
def test_every_shipped_config_passes_but_mimic_iv_wants_its_data(tmp_path, name, preset):
    spec = importlib.util.spec_from_file_location(
        f"config_{name}", os.path.join(train_fixtures.REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded = module.get_config() if preset is None else module.get_config(preset)
    problems = config_check.check_problems(loaded, str(tmp_path), DEVICES)
    if name == "mimic_iv":
        assert len(problems) == 1 and "config.data.meds_dir is empty" in problems[0]
    else:
        assert problems == []


def test_all_problems_are_reported_together_each_once(tmp_path):
    config = _base()
    for key, value in (("train.lr", -1.0), ("data.seq_len", -3), ("model.size", "d7-l99"),
                       ("eval.tasks", ("no_such_task",)), ("mesh.shape", (3, 1, 1)),
                       ("eval.max_cases", -1)):
        config = _set(config, key, value)
    with pytest.raises(ConfigError) as error:
        config_check.check(config, str(tmp_path), DEVICES)
    lines = str(error.value).splitlines()
    assert lines[0] == "6 problems with the config; nothing was run:"
    for text in ("train.lr=-1.0", "seq_len=-3", "d7-l99", "no_such_task", "(3, 1, 1)",
                 "max_cases=-1"):
        assert sum(text in line for line in lines[1:]) == 1, (text, lines)


def test_missing_key_and_workdir_paths(tmp_path):
    config = _base()
    with config.unlocked():
        del config.train["b2"]
    assert config_check.check_problems(config, str(tmp_path), DEVICES) == [
        "config.train.b2 is missing (configs/base.py has 0.95)"]
    (tmp_path / "f").write_text("x")
    for workdir, text in ((tmp_path / "f", "is a file"), (tmp_path / "f" / "sub", "a file"),
                          ("/proc/no_such_dir", "is not writable")):
        problems = config_check.check_problems(_base(), str(workdir), DEVICES)
        assert len(problems) == 1 and f"--workdir='{workdir}' " in problems[0], problems
        assert text in problems[0]


def test_a_duration_on_the_command_line_replaces_the_config_files():
    config = _base()  # base.py sets train.steps=200
    config.train.tokens = 5_000_000
    config_check.command_line_durations(config, {"train.tokens": 5_000_000})
    assert (config.train.steps, config.train.tokens, config.train.flops) == (0, 5_000_000, 0.0)
    both = _base()
    both.train.flops = 1e12
    config_check.command_line_durations(both, {"train.flops": 1e12, "train.steps": 200})
    assert (both.train.steps, both.train.flops) == (200, 1e12)  # both given: left to the check
    untouched = _base()
    config_check.command_line_durations(untouched, {"train.lr": 0.1})
    assert untouched.train.steps == 200


def _main_processes(cases, tmp_path):
    """Starts one `ehr_jax.main` per case at once (the CPU is small, start-up is mostly import)."""
    processes = []
    for i, args in enumerate(cases):
        workdir = tmp_path / f"w{i}"
        argv = [a.format(workdir=workdir, tmp=tmp_path) for a in args]
        processes.append((workdir, subprocess.Popen(
            [sys.executable, "-m", "ehr_jax.main", *argv], cwd=train_fixtures.REPO,
            env=train_fixtures.child_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)))
    return [(workdir, *p.communicate(timeout=600), p.returncode) for workdir, p in processes]


COMMAND_LINE_MISTAKES = [
    (["--config=configs/does_not_exist.py", "--workdir={workdir}"],
     "error: --config=configs/does_not_exist.py: no such config file"),
    (["--config=configs/smoke.py", "--workdir={workdir}", "--config.no_such_key=1",
      "--config.train.lrr=2"],
     "error: 2 problems with the command line:"),
    (["--config=configs/smoke.py", "--workdir={workdir}", "--config.train.lr=abc"],
     "error: flag --config.train.lr=abc: could not convert string to float"),
    (["--config=configs/quickstart.py:nope", "--workdir={workdir}"],
     "unknown preset 'nope'"),
    (["--config=configs/smoke.py"], "--workdir must have a value"),
    (["--config=configs/smoke.py", "--workdir={tmp}/a_file"], "is a file"),
    (["--config=configs/smoke.py", "--workdir={workdir}", "--config.eval.enabled=True",
      "--config.eval.tasks=no_such_task", "--config.train.lr=-1"],
     "error: 2 problems with the config; nothing was run:"),
]


@pytest.mark.slow
def test_command_line_mistakes_exit_2_with_one_error_line_and_no_work(tmp_path):
    (tmp_path / "a_file").write_text("x")
    results = _main_processes([args for args, _ in COMMAND_LINE_MISTAKES], tmp_path)
    for (args, expected), (workdir, _, stderr, returncode) in zip(COMMAND_LINE_MISTAKES, results):
        assert returncode == 2, (args, stderr[-2000:])
        assert "Traceback" not in stderr and expected in stderr, (args, stderr[-2000:])
        assert not (workdir / "meds").exists() and not (workdir / "prepared").exists()
    unknown_key = results[1][2]
    assert "--config.no_such_key: the config has no key 'no_such_key'" in unknown_key
    assert "did you mean train.lr" in unknown_key
    both = results[-1][2]
    assert "config.train.lr=-1.0; expected in [0, 1]" in both and "['no_such_task']" in both
