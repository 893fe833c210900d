"""Kill-and-resume: a run stopped after a checkpoint and restarted ends bit-identical."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ehr_jax.train import trainer

import train_fixtures

pytestmark = pytest.mark.slow  # every test here trains a model or starts processes

STEPS = 12


@pytest.fixture(scope="module")
def uninterrupted(prepared_dir, tmp_path_factory):
    """The reference: the same run from step 0 to the end without a stop."""
    run_dir = str(tmp_path_factory.mktemp("uninterrupted"))
    summary = trainer.run(train_fixtures.tiny_config(prepared_dir, steps=STEPS), run_dir, prepared_dir)
    return run_dir, summary


def _assert_same_run(run_dir, summary, reference):
    ref_dir, ref_summary = reference
    for leaf, ref_leaf in zip(train_fixtures.final_state_leaves(run_dir),
                              train_fixtures.final_state_leaves(ref_dir), strict=True):
        np.testing.assert_array_equal(leaf, ref_leaf)
    assert summary["final_train_loss"] == ref_summary["final_train_loss"]
    assert summary["val_loss"] == ref_summary["val_loss"]
    assert summary["loss_by_token_type"] == ref_summary["loss_by_token_type"]
    assert train_fixtures.losses_by_step(run_dir) == train_fixtures.losses_by_step(ref_dir)


class _Stop(Exception):
    pass


def test_stop_after_checkpoint_then_rerun_matches_uninterrupted(prepared_dir, tmp_path,
                                                                 monkeypatch, uninterrupted):
    config = train_fixtures.tiny_config(prepared_dir, steps=STEPS)
    save = trainer.TrainLoop.save

    def save_then_stop(self, state, step):
        save(self, state, step)
        if step == 4:
            self.checkpointer.wait()
            raise _Stop  # as if the job were preempted right after this checkpoint

    monkeypatch.setattr(trainer.TrainLoop, "save", save_then_stop)
    with pytest.raises(_Stop):
        trainer.run(config, str(tmp_path), config.data.prepared_dir)
    monkeypatch.setattr(trainer.TrainLoop, "save", save)
    assert not (tmp_path / "summary.json").exists()
    summary = trainer.run(config, str(tmp_path), config.data.prepared_dir)  # same command: resumes from step 4
    _assert_same_run(str(tmp_path), summary, uninterrupted)


def _finished_steps(run_dir) -> list[int]:
    path = os.path.join(run_dir, "checkpoints")
    return sorted(int(s) for s in os.listdir(path) if s.isdigit()) if os.path.isdir(path) else []


def test_sigkill_after_checkpoint_then_rerun_matches_uninterrupted(prepared_dir, tmp_path,
                                                                   uninterrupted):
    child = [sys.executable, os.path.join(train_fixtures.REPO, "tests", "train_child.py"),
             prepared_dir, str(tmp_path), str(STEPS)]
    env = train_fixtures.child_env(8)
    process = subprocess.Popen(child + ["5"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while 8 not in _finished_steps(tmp_path):  # step 8 is saved once the slow steps begin
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 8 within 120 s"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "summary.json").exists()
    rerun = subprocess.run(child, env=env, capture_output=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    _assert_same_run(str(tmp_path), summary, uninterrupted)
