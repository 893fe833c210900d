"""wsd cooldown branches with the real trainer: a branch from a stable run's checkpoint ends
bit for bit where an independent run of the same schedule ends, also after a SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ehr_jax.errors import ConfigError, DataError
from ehr_jax.train import trainer

import train_fixtures

STEPS, BRANCH_STEP = 12, 6  # a 12-step run whose cooldown is its second half
WSD = {"train.schedule": "wsd", "train.warmup_steps": 2, "train.cooldown_frac": 0.5}


def _config(prepared_dir, steps=STEPS, **overrides):
    config = train_fixtures.tiny_config(prepared_dir, steps=steps)
    for key, value in {**WSD, **overrides}.items():
        group, name = key.split(".")
        config[group][name] = value
    return config


@pytest.fixture(scope="module")
def runs(prepared_dir, tmp_path_factory):
    """(stable run dir, independent wsd run dir and summary): the references."""
    stable = str(tmp_path_factory.mktemp("stable"))
    trainer.run(_config(prepared_dir, steps=10, **{"train.cooldown_frac": 0.0,
                                                    "train.keep_steps": (BRANCH_STEP, 9)}),
                stable, prepared_dir)
    independent = str(tmp_path_factory.mktemp("independent"))
    summary = trainer.run(_config(prepared_dir), independent, prepared_dir)
    return stable, independent, summary


def _branch(prepared_dir, stable, **overrides):
    return _config(prepared_dir, **{"train.branch_from": stable,
                                    "train.branch_step": BRANCH_STEP, **overrides})


def _assert_same_end(run_dir, summary, independent, reference):
    for leaf, ref_leaf in zip(train_fixtures.final_state_leaves(run_dir),
                              train_fixtures.final_state_leaves(independent), strict=True):
        np.testing.assert_array_equal(leaf, ref_leaf)
    for key in ("val_loss", "final_train_loss", "target_tokens_seen", "tokens_seen"):
        assert summary[key] == reference[key], key
    losses, ref_losses = (train_fixtures.losses_by_step(d) for d in (run_dir, independent))
    assert losses == {step: loss for step, loss in ref_losses.items() if step > BRANCH_STEP}


def test_stable_run_keeps_its_branch_steps(runs):
    stable, _, _ = runs
    saved = sorted(int(s) for s in os.listdir(os.path.join(stable, "checkpoints")) if s.isdigit())
    assert saved == [BRANCH_STEP, 8, 9, 10]  # the latest 3, and the branch steps (4 is gone)
    lrs = [row["lr"] for row in map(json.loads, open(os.path.join(stable, "metrics.jsonl")))
           if "lr" in row and row["step"] > 2]
    assert len(set(lrs)) == 1  # constant after the warmup


def test_branch_ends_where_the_independent_run_ends(prepared_dir, tmp_path, runs):
    stable, independent, reference = runs
    summary = trainer.run(_branch(prepared_dir, stable), str(tmp_path), prepared_dir)
    _assert_same_end(str(tmp_path), summary, independent, reference)
    assert (summary["schedule"], summary["cooldown_frac"], summary["branched_from_step"]) == (
        "wsd", 0.5, BRANCH_STEP)
    assert summary["branched_from"] == os.path.basename(stable)
    assert reference["branched_from_step"] is None and reference["decay_start"] == BRANCH_STEP


def test_sigkill_in_a_branch_then_rerun_matches(prepared_dir, tmp_path, runs):
    stable, independent, reference = runs
    overrides = [f"{k}={json.dumps(v)}" for k, v in WSD.items()] + [
        f"train.branch_from={json.dumps(stable)}", f"train.branch_step={BRANCH_STEP}"]
    child = [sys.executable, os.path.join(train_fixtures.REPO, "tests", "train_child.py"),
             prepared_dir, str(tmp_path), str(STEPS)]
    env = train_fixtures.child_env(8)
    process = subprocess.Popen(child + ["9"] + overrides, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    checkpoints = tmp_path / "checkpoints"
    deadline = time.time() + 120
    while not (checkpoints / "8").is_dir():  # the branch's own first checkpoint
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no branch checkpoint at step 8 within 120 s"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "summary.json").exists()
    rerun = subprocess.run(child + ["0"] + overrides, env=env, capture_output=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    _assert_same_end(str(tmp_path), summary, independent, reference)


@pytest.mark.parametrize("overrides,error,message", [
    ({"train.branch_step": 5}, DataError, "no checkpoint at step 5"),
    ({"train.warmup_steps": 3}, ConfigError, "warmup"),
    ({"train.cooldown_frac": 0.75}, ConfigError, "cooldown starts"),
    ({"model.size": "d16-l1"}, ConfigError, "model.size"),
])
def test_a_branch_that_cannot_continue_its_source_is_refused(prepared_dir, tmp_path, runs,
                                                             overrides, error, message):
    stable, _, _ = runs
    with pytest.raises(error, match=message):
        trainer.run(_branch(prepared_dir, stable, **overrides), str(tmp_path), prepared_dir)
    assert not (tmp_path / "summary.json").exists()
