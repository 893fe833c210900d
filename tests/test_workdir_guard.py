"""Workdirs are guarded: a fingerprint refuses reruns that would mix results, locks give each run
one trainer, and a workdir's data is set up by one process at a time."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_sweep import FakeTrainer, _fake_prepare, _result_names
from test_sweep import _config as sweep_config

from ehr_jax import main, rundir, sweep
from ehr_jax.errors import ConfigError
from ehr_jax.sweep import grid
from ehr_jax.train import trainer

import train_fixtures


class Stages:
    """main's stages replaced: data is the tiny prepared dir, training writes a summary."""

    def __init__(self, monkeypatch, prepared_dir):
        self.calls = []
        monkeypatch.setattr(main, "prepare_data", self.prepare)
        monkeypatch.setattr(trainer, "run", self.train)
        monkeypatch.setattr(sweep, "run", self.sweep)
        self.prepared_dir = prepared_dir

    def prepare(self, data, workdir):
        self.calls.append("prepare")
        return self.prepared_dir

    def train(self, config, workdir, prepared_dir):
        self.calls.append("train")
        summary = {"peak_lr": config.train.lr, "config": config.to_dict()}
        rundir.write_json_atomic(os.path.join(workdir, rundir.SUMMARY), summary)
        return summary

    def sweep(self, config, workdir, prepared_dir, train_fn, evaluate_fn=None, **kwargs):
        self.calls.append("sweep")
        run_dir = os.path.join(workdir, rundir.RUNS, "c1e11-d16-l1")
        os.makedirs(run_dir, exist_ok=True)
        rundir.write_json_atomic(os.path.join(run_dir, rundir.SUMMARY), {"val_loss": 1.0})
        return {"finished": ["c1e11-d16-l1"], "failed": []}


def _single(lr=3e-3):
    config = train_fixtures.base_config()
    config.data.synthetic_subjects = 40
    config.train.lr = lr
    return config


def _sweep(**grid_values):
    config = _single()
    config.grid = grid.default_grid()
    config.grid.budgets = (1e11,)
    config.grid.sizes = ("d16-l1",)
    config.grid.analysis = False
    for key, value in grid_values.items():
        config.grid[key] = value
    return config


def test_finished_run_rerun_with_another_lr_is_refused_and_summary_untouched(
        monkeypatch, tmp_path, prepared_dir):
    stages = Stages(monkeypatch, prepared_dir)
    main.run(_single(lr=8.5e-3), str(tmp_path))
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(ConfigError) as error:
        main.run(_single(lr=0.5), str(tmp_path))
    message = str(error.value)
    assert "train.lr: 0.0085 here, 0.5 now" in message and "use a new --workdir" in message
    assert (tmp_path / "summary.json").read_text() == before
    main.run(_single(lr=8.5e-3), str(tmp_path))  # the same command: finished, kept as it is
    assert stages.calls == ["prepare", "train", "prepare"]
    assert (tmp_path / "summary.json").read_text() == before


def test_sweep_rerun_with_another_dataset_or_grid_is_refused_before_any_data_work(
        monkeypatch, tmp_path, prepared_dir):
    stages = Stages(monkeypatch, prepared_dir)
    main.run(_sweep(), str(tmp_path))
    other = _sweep(budgets=(5e10,))
    other.data.synthetic_subjects = 300
    with pytest.raises(ConfigError) as error:
        main.run(other, str(tmp_path))
    message = str(error.value)
    assert "data.synthetic_subjects: 40 here, 300 now" in message
    assert "grid.budgets: [100000000000.0] here, [50000000000.0] now" in message
    assert stages.calls == ["prepare", "sweep"]  # refused before data was made again
    # A larger grid alone may extend the study, when asked for explicitly.
    larger = _sweep(budgets=(1e11, 3e11))
    with pytest.raises(ConfigError, match="--allow_changes=grid.budgets"):
        main.run(larger, str(tmp_path))
    main.run(larger, str(tmp_path), allow_changes=("grid",))
    record = json.loads((tmp_path / "fingerprint.json").read_text())
    assert record["config"]["grid.budgets"] == [1e11, 3e11]
    assert record["history"][-1]["changed"]["grid.budgets"] == {"was": [1e11], "now": [1e11, 3e11]}
    with pytest.raises(ConfigError, match="--allow_changes=grid,data.seq_len: data.seq_len may not"):
        main.run(larger, str(tmp_path), allow_changes=("grid", "data.seq_len"))


def test_keys_that_change_no_result_are_free_and_nothing_trained_means_any_change(
        monkeypatch, tmp_path, prepared_dir):
    Stages(monkeypatch, prepared_dir)
    config = _single()
    config.train.log_every = 3
    config.data.num_workers = 2
    config.eval.enabled = True
    monkeypatch.setattr("ehr_jax.evaluation.evaluate", lambda *args: {"t": 1})
    main.run(_single(), str(tmp_path))
    main.run(config, str(tmp_path))  # logging and evaluation switches: accepted
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    rundir.record_fingerprint(fresh, rundir.config_fingerprint(_single(lr=0.9), fresh), {})
    main.run(_single(lr=1e-3), str(fresh))  # nothing was trained there: the new config is taken
    assert json.loads((fresh / "fingerprint.json").read_text())["config"]["train.lr"] == 1e-3


def test_other_prepared_data_under_trained_runs_is_refused(monkeypatch, tmp_path, prepared_dir):
    stages = Stages(monkeypatch, prepared_dir)
    main.run(_single(), str(tmp_path))
    stages.prepared_dir = train_fixtures.write_prepared(str(tmp_path / "other"), seed=1)
    with pytest.raises(ConfigError, match="the prepared data now differs"):
        main.run(_single(), str(tmp_path))


def test_validate_only_writes_nothing(monkeypatch, tmp_path, prepared_dir):
    stages = Stages(monkeypatch, prepared_dir)
    assert main.run(_single(), str(tmp_path / "w"), validate_only=True) == {}
    assert not (tmp_path / "w").exists() and stages.calls == []


def _hold_lock(directory, name, seconds, then_write=""):
    """A child process that takes a Lock, optionally writes a file when done, and exits."""
    code = ("import sys, time, pathlib; from ehr_jax import rundir; "
            f"lock = rundir.Lock({str(directory)!r}, {name!r}); lock.acquire(); "
            "print('held', flush=True); "
            f"time.sleep({seconds}); "
            f"p = {then_write!r}; p and pathlib.Path(p).write_text('{{}}'); lock.release()")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=train_fixtures.REPO,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


@pytest.mark.slow
def test_a_lock_names_its_holder_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    child = _hold_lock(tmp_path, rundir.RUN_LOCK, 600)
    lock = rundir.Lock(tmp_path, rundir.RUN_LOCK, "the run")
    assert not lock.acquire(wait=False)
    assert f"pid {child.pid} on host" in lock.holder()
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert lock.acquire(wait=False)  # the kernel dropped the dead holder's lock
    lock.release()


@pytest.mark.slow
def test_sweep_does_other_runs_first_and_never_trains_a_run_held_elsewhere(tmp_path):
    busy = tmp_path / "runs" / "c1e11-d32-l1"
    child = _hold_lock(busy, rundir.RUN_LOCK, 3, then_write=str(busy / "summary.json"))
    trainer_ = FakeTrainer()
    config = sweep_config()
    outcome = sweep.run(config, str(tmp_path), _fake_prepare(config, str(tmp_path)), trainer_)
    child.wait()
    assert trainer_.calls == ["c1e11-d48-l2", "c3e11-d32-l1", "c3e11-d48-l2"]
    assert sorted(outcome["finished"]) == sorted(trainer_.calls + ["c1e11-d32-l1"])
    assert sorted(_result_names(tmp_path)) == sorted(outcome["finished"])


def _sweep_process(workdir, log):
    """A real quickstart:tiny sweep shrunk to seconds: 2 budgets x 2 sizes on 60 patients."""
    args = ["--config=configs/quickstart.py:tiny", f"--workdir={workdir}",
            "--config.data.synthetic_subjects=60", "--config.grid.budgets=(3e9,6e9)",
            "--config.grid.min_steps=5", "--config.train.eval_tokens=2048"]
    return subprocess.Popen([sys.executable, "-m", "ehr_jax.main", *args], cwd=train_fixtures.REPO,
                            env=train_fixtures.child_env(1), stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))


@pytest.mark.slow
def test_sweeps_started_together_and_20s_apart_train_every_run_once(tmp_path):
    workdir = tmp_path / "sweep"
    logs = [tmp_path / f"sweep{i}.log" for i in range(3)]
    processes = [_sweep_process(workdir, logs[0]), _sweep_process(workdir, logs[1])]
    time.sleep(20)
    processes.append(_sweep_process(workdir, logs[2]))
    codes = [p.wait(timeout=900) for p in processes]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], [t[-3000:] for t in texts]
    trained = [line.split(": C=")[0].split()[-1] for t in texts for line in t.splitlines()
               if "Sweep run " in line and ": C=" in line and "skipping" not in line]
    names = _result_names(workdir)
    assert len(names) == 4 == len(set(names)) and sorted(trained) == sorted(names)
    assert "Traceback" not in "".join(texts)
    for name in names:  # each run's metrics were written by one trainer, from step 0 once
        steps = [json.loads(line)["step"] for line in
                 (workdir / "runs" / name / "metrics.jsonl").read_text().splitlines()
                 if "loss" in json.loads(line)]
        assert steps == sorted(set(steps)), name


@pytest.mark.slow
def test_grid_workers_share_the_grid_and_train_every_run_once(tmp_path):
    """config.grid.workers=2: the sweep starts one more process on the same workdir; together
    they train each of the 4 runs once, the worker's log is kept, and the first process records
    every run (it waits for the worker's) before it exits."""
    workdir = tmp_path / "sweep"
    args = ["--config=configs/quickstart.py:tiny", f"--workdir={workdir}", "--config.grid.workers=2",
            "--config.data.synthetic_subjects=60", "--config.grid.budgets=(3e9,6e9)",
            "--config.grid.min_steps=5", "--config.train.eval_tokens=2048"]
    done = subprocess.run([sys.executable, "-m", "ehr_jax.main", *args], cwd=train_fixtures.REPO,
                          env=train_fixtures.child_env(1), capture_output=True, text=True, timeout=900)
    worker_log = (workdir / "workers" / "worker-1.log").read_text()
    assert done.returncode == 0, done.stderr[-3000:] + worker_log[-3000:]
    texts = [done.stderr, worker_log]
    trained = [[line.split(": C=")[0].split()[-1] for line in t.splitlines()
                if "Sweep run " in line and ": C=" in line and "skipping" not in line] for t in texts]
    names = _result_names(workdir)
    assert len(names) == 4 == len(set(names)) and sorted(trained[0] + trained[1]) == sorted(names)
    assert trained[0] and trained[1]  # both processes trained
    assert "worker 2 of 2 started" in done.stderr and "Traceback" not in "".join(texts)
