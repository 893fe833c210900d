"""The entry point end to end: CLI flags and overrides, a 2-step run, user errors."""

import json
import os
import subprocess
import sys

import pytest

import train_fixtures


def _main(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ehr_jax.main", *args], cwd=train_fixtures.REPO,
                          env=train_fixtures.child_env(1), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_main_trains_two_steps_end_to_end_on_synthetic_data(tmp_path):
    result = _main("--config=configs/smoke.py", f"--workdir={tmp_path}",
                   "--config.train.steps=2", "--config.train.checkpoint_every=1",
                   "--config.data.synthetic_subjects=40", "--config.train.eval_tokens=512")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["train"]["steps"] == 2
    assert summary["padded_tokens_seen"] == 2 * 8 * 128
    assert 0 < summary["tokens_seen"] <= summary["padded_tokens_seen"]  # real tokens only
    assert summary["tokenizer_hash"] and summary["etl_name"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    assert json.loads((tmp_path / "config.json").read_text())["model"]["size"] == "d32-l1"


@pytest.mark.slow
def test_user_error_prints_message_without_traceback(tmp_path):
    result = _main("--config=configs/smoke.py", f"--workdir={tmp_path}",
                   "--config.model.size=d7-l99", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: config.model.size='d7-l99'")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "summary.json").exists()


def test_grid_config_runs_the_sweep_and_plain_config_trains_then_evaluates(monkeypatch, tmp_path,
                                                                           prepared_dir):
    from ehr_jax import main, sweep
    from ehr_jax.evaluation import runner
    from ehr_jax.sweep import grid
    from ehr_jax.train import trainer

    calls = []
    monkeypatch.setattr(main, "prepare_data",
                        lambda data, workdir: calls.append("data") or prepared_dir)
    monkeypatch.setattr(sweep, "run", lambda config, workdir, prepared, train_fn, evaluate_fn, **kw:
                        calls.append(("sweep", prepared, train_fn is trainer.run,
                                      evaluate_fn)) or {"finished": [], "failed": []})
    monkeypatch.setattr(trainer, "run", lambda config, workdir, prepared:
                        calls.append(("train", prepared)) or {"steps": 1})
    monkeypatch.setattr(runner, "evaluate", lambda workdir, config, prepared:
                        calls.append(("eval", prepared)) or {"t": 1})
    config = train_fixtures.base_config()
    config.eval.enabled = True
    assert main.run(config, str(tmp_path)) == {"steps": 1, "evaluation": {"t": 1}}
    config.eval.enabled = False
    config.grid = grid.default_grid()
    config.grid.budgets = (1e11,)
    config.grid.analysis = False
    main.run(config, str(tmp_path / "sweep"))
    p = prepared_dir
    assert calls == ["data", ("train", p), ("eval", p), "data", ("sweep", p, True, None)]
