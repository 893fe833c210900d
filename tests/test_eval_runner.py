"""evaluate(run_dir, config, prepared_dir) end to end on a small synthetic dataset and an untrained checkpoint:
what it returns, what it writes (predictions in the meds-evaluation format, summary.json,
TensorBoard) and what it must never write (subject ids)."""

import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from ehr_jax import parallel, synthetic
from ehr_jax.data import prepare, shards
from ehr_jax.errors import DataError
from ehr_jax.evaluation import runner
from ehr_jax.model import init as model_init
from ehr_jax.model import transformer
from ehr_jax.train import checkpoint, optim, trainer

from tests import train_fixtures
from tests.train_fixtures import base_config

FIELDS = {"auroc", "auroc_ci", "auprc", "auprc_ci", "brier", "brier_ci", "n_cases", "n_positive",
          "prevalence"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Synthetic MEDS -> prepared shards -> a step-0 checkpoint written the trainer's way."""
    root = tmp_path_factory.mktemp("eval_run")
    synthetic.generate(root / "meds", num_subjects=120, seed=0)
    config = base_config()
    config.data.meds_dir = str(root / "meds")
    config.data.prepared_dir = str(root / "prepared")
    config.data.seq_len = 32
    config.data.min_code_count = 5
    config.model.size = "d32-l1"
    config.eval.tasks = ("mortality", "long_stay")
    config.eval.num_rollouts = 2
    config.eval.max_cases = 16
    config.eval.max_new_tokens = 8
    config.eval.bootstrap = 20
    manifest = prepare.prepare(config.data.meds_dir, config.data.prepared_dir, min_code_count=5)
    model_cfg = transformer.model_config(config.model, manifest["vocab_size"], config.data.seq_len)
    plan = trainer.make_plan(config, model_cfg)
    tx = optim.make_optimizer(config.train, plan.peak_lr, plan.steps)
    _, state, _ = model_init.init(model_cfg, parallel.make_mesh(tuple(config.mesh.shape)), 0, tx)
    saver = checkpoint.Checkpointer(root / "run" / "checkpoints", keep=1, use_async=False)
    saver.save(0, state, {}, {})
    saver.close()
    (root / "run" / "summary.json").write_text(json.dumps({"run_name": "run", "steps": 0}))
    return root / "run", config


def test_evaluate_writes_results_predictions_and_summary(run_dir):
    path, config = run_dir
    results = runner.evaluate(str(path), config, config.data.prepared_dir)
    assert set(results) == {"mortality", "long_stay"}
    # A probe needs both classes among the few train cases, which a tiny sample may lack.
    rollouts = {"zero_shot", "zero_shot_resolved"}
    assert rollouts | {"next_token"} <= set(results["mortality"]) <= rollouts | {"next_token", "probe"}
    assert set(results["long_stay"]) == rollouts | {"probe"}  # no outcome token for next_token
    for methods in results.values():
        for result in methods.values():
            assert FIELDS <= set(result)
            assert 0 < result["n_cases"] <= 16
    summary = json.loads((path / "summary.json").read_text())
    assert summary["run_name"] == "run" and summary["evaluation"] == json.loads(json.dumps(results))
    predictions = pl.read_parquet(path / "evaluation" / "mortality" / "zero_shot" / "predictions.parquet")
    assert predictions.schema == pl.Schema(runner.PREDICTION_SCHEMA)  # exactly meds-evaluation's columns
    assert predictions.height == results["mortality"]["zero_shot"]["n_cases"]
    assert predictions["predicted_boolean_probability"].is_between(0, 1).all()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(path / "tensorboard"))
    # Subject ids live in the predictions file (meds-evaluation needs them), nowhere a user reads.
    ids = {str(s) for s in predictions["subject_id"].to_list()}
    for text in ((path / "summary.json").read_text(), (path / "evaluation" / "results.json").read_text()):
        assert not any(i in text for i in ids)


def test_user_labels_for_unknown_subjects_are_refused(run_dir, tmp_path):
    path, config = run_dir
    labels = pl.DataFrame({"subject_id": [1], "prediction_time": [datetime.datetime(2020, 1, 1)],
                           "boolean_value": [True]})
    (tmp_path / "mortality" / "held_out").mkdir(parents=True)
    labels.write_parquet(tmp_path / "mortality" / "held_out" / "0.parquet")
    config = config.copy_and_resolve_references()
    config.eval.labels_dir = str(tmp_path)
    config.eval.tasks = ("mortality",)
    with pytest.raises(DataError, match="not in the dataset"):
        runner.evaluate(str(path), config, config.data.prepared_dir)


def test_missing_checkpoint(tmp_path, run_dir):
    _, config = run_dir
    with pytest.raises(DataError, match="no checkpoints"):
        runner.evaluate(str(tmp_path), config, config.data.prepared_dir)


def test_restore_model_reads_the_model_item_alone(run_dir, tmp_path):
    """Evaluation needs neither the optimizer item nor the trainer's optimizer code."""
    path, config = run_dir
    shutil.copytree(path / "checkpoints", tmp_path / "checkpoints")
    shutil.rmtree(tmp_path / "checkpoints" / "0" / "optimizer")
    vocab_size = shards.read_manifest(config.data.prepared_dir)["vocab_size"]
    model = runner.restore_model(str(tmp_path), config, vocab_size)
    assert model.embed[...].shape == (vocab_size, 32)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, ehr_jax.evaluation.runner; print(sorted(m for m in "
         "sys.modules if m.startswith('ehr_jax.train')))"],
        capture_output=True, text=True, check=True, cwd=train_fixtures.REPO,
        env={**os.environ, "PYTHONPATH": train_fixtures.REPO})
    assert loaded.stdout.split("\n")[-2] == "['ehr_jax.train', 'ehr_jax.train.checkpoint']"


def test_restore_model_keeps_the_checkpoints_layer_layout(run_dir, tmp_path):
    """A run trained with scanned layers (the GPU/TPU default) evaluates on CPU, where
    scan_layers "auto" means a loop: the checkpoint's meta says which layout to build."""
    _, config = run_dir
    vocab_size = shards.read_manifest(config.data.prepared_dir)["vocab_size"]
    model_cfg = transformer.model_config(config.model, vocab_size, config.data.seq_len)
    assert not model_cfg.scan_layers
    model_cfg = dataclasses.replace(model_cfg, scan_layers=True)
    tx = optim.make_optimizer(config.train, 1e-3, 10)
    _, state, _ = model_init.init(model_cfg, parallel.make_mesh(tuple(config.mesh.shape)), 0, tx)
    saver = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=1, use_async=False)
    saver.save(3, state, {}, {"scan_layers": True})
    saver.close()
    model = runner.restore_model(str(tmp_path), config, vocab_size)
    assert model.cfg.scan_layers and model.blocks.attn.wq[...].shape[0] == 1
    np.testing.assert_array_equal(model.blocks.attn.wq[...], state[0]["blocks"]["attn"]["wq"][...])
