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
from ehr_jax.train import checkpoint, optim

from tests import train_fixtures
from tests.train_fixtures import base_config

pytestmark = pytest.mark.slow  # every test here trains a model or starts processes

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
    tx = optim.make_optimizer(config.train)
    _, state, _ = model_init.init(model_cfg, parallel.make_mesh(tuple(config.mesh.shape)), 0, tx)
    saver = checkpoint.Checkpointer(root / "run" / "checkpoints", keep=1, use_async=False)
    saver.save(0, state, {}, {})
    saver.close()
    (root / "run" / "summary.json").write_text(json.dumps({"run_name": "run", "steps": 0}))
    return root / "run", config


def test_evaluate_writes_results_predictions_and_summary(run_dir):
    path, config = run_dir
    config = config.copy_and_resolve_references()
    config.eval.write_trajectories = True
    results = runner.evaluate(str(path), config, config.data.prepared_dir)["builtin"]
    assert set(results) == {"mortality", "long_stay"}
    # A probe needs both classes among the train cases, which a tiny dataset may lack.
    rollouts = {"zero_shot", "zero_shot_resolved"}
    assert rollouts | {"next_token", "probe"} == set(results["mortality"])
    assert set(results["long_stay"]) == rollouts | {"next_token", "probe"}
    assert "horizon" in results["long_stay"]["next_token"]["not_run"]  # no outcome token: says why
    assert results["mortality"]["next_token"]["calibrated"] is False
    for methods in results.values():
        for result in methods.values():
            if "not_run" not in result:
                assert FIELDS <= set(result)
                assert 0 < result["n_cases"] <= 16
    for task in results:
        assert 0 <= results[task]["zero_shot"]["capped_share"] <= 1
        assert results[task]["zero_shot"]["token_cap_max"] <= 8
        # This task's own share of the sampler's phase clocks (the sampler serves every task).
        phases = [results[task]["zero_shot"][f"rollout_{p}_s"] for p in ("prefill", "refill", "decode", "host")]
        assert min(phases) >= 0 and 0 < sum(phases) <= results[task]["zero_shot"]["rollout_s"]
    summary = json.loads((path / "summary.json").read_text())
    assert summary["run_name"] == "run" and summary["evaluation"]["builtin"] == json.loads(json.dumps(results))
    out = path / "evaluation" / "builtin"
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    predictions = pl.read_parquet(out / "mortality" / "zero_shot" / "predictions.parquet")
    assert predictions.schema == pl.Schema(runner.PREDICTION_SCHEMA)  # exactly meds-evaluation's columns
    assert predictions.height == results["mortality"]["zero_shot"]["n_cases"]
    assert predictions["predicted_boolean_probability"].is_between(0, 1).all()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(path / "tensorboard"))
    # The rollouts as a MEDS dataset: one subject per rollout, mapped back in a side table.
    import meds
    import pyarrow.parquet as pq

    rollouts = out / "mortality" / "trajectories"
    meds.DataSchema.validate(pq.read_table(rollouts / "data" / "held_out" / "0.parquet"))
    side = pl.read_parquet(rollouts / "rollout_subjects.parquet")
    assert side.height == 2 * results["mortality"]["zero_shot"]["n_cases"]
    # Subject ids live in the predictions file (meds-evaluation needs them), nowhere a user reads.
    ids = {str(s) for s in predictions["subject_id"].to_list()}
    for text in ((path / "summary.json").read_text(), (out / "results.json").read_text()):
        assert not any(i in text for i in ids)


def _comparable(results: dict) -> dict:
    """Results without wall-clock fields."""
    return {task: {m: {k: v for k, v in r.items() if not k.startswith("rollout_") and k != "generated_tokens_per_s"}
                   for m, r in methods.items()} for task, methods in results.items()}


def test_exported_labels_are_meds_labels_and_read_back_identically(run_dir, tmp_path):
    """--write_labels: LabelSchema-valid files per task and split that, read back through
    labels_dir, give the built-in evaluation's results exactly; both evaluations stay apart."""
    import meds
    import pyarrow.parquet as pq

    path, config = run_dir
    config = config.copy_and_resolve_references()
    config.eval.max_train_cases = 25
    builtin = runner.evaluate(str(path), config, config.data.prepared_dir)["builtin"]
    assert builtin["mortality"]["probe"]["n_train_cases"] == 25
    counts = runner.write_labels(config, config.data.prepared_dir, str(tmp_path / "cohort"))
    for task in ("mortality", "long_stay"):
        for split in ("train", "tuning", "held_out"):
            table = pq.read_table(tmp_path / "cohort" / task / split / "0.parquet")
            meds.LabelSchema.validate(table)  # raises on any deviation
            assert table.num_rows == counts[task][split]
    config.eval.labels_dir = str(tmp_path / "cohort")
    read_back = runner.evaluate(str(path), config, config.data.prepared_dir)
    assert set(read_back) == {"cohort"}  # named after the labels' folder
    assert _comparable(read_back["cohort"]) == _comparable(builtin)
    summary = json.loads((path / "summary.json").read_text())
    assert {"builtin", "cohort"} <= set(summary["evaluation"])  # neither overwrote the other
    for name in ("builtin", "cohort"):
        assert (path / "evaluation" / name / "mortality" / "probe" / "predictions.parquet").exists()


def test_user_task_mapped_to_a_builtin_rule(run_dir, tmp_path):
    path, config = run_dir
    config = config.copy_and_resolve_references()
    config.eval.tasks = ("mortality",)
    runner.write_labels(config, config.data.prepared_dir, str(tmp_path / "export"))
    labels_dir = tmp_path / "user_tasks"
    for task in ("inhospital_mortality", "unmapped"):
        (labels_dir / task).mkdir(parents=True)
        for split in ("train", "held_out"):
            shutil.copytree(tmp_path / "export" / "mortality" / split, labels_dir / task / split)
    config.eval.labels_dir = str(labels_dir)
    config.eval.tasks = ("inhospital_mortality", "unmapped")
    config.eval.task_rules = (("inhospital_mortality", "mortality"),)
    config.eval.name = "user"
    results = runner.evaluate(str(path), config, config.data.prepared_dir)["user"]
    methods = {"zero_shot", "zero_shot_resolved", "next_token", "probe"}
    assert set(results["inhospital_mortality"]) == methods
    assert all("not_run" not in r for r in results["inhospital_mortality"].values())
    assert "task_rules" in results["unmapped"]["zero_shot"]["not_run"]  # says why, and how to fix it
    assert "not_run" not in results["unmapped"]["probe"]  # the probe needs labels only


def test_task_rules_and_names_are_checked():
    from ehr_jax.errors import ConfigError
    from ehr_jax.evaluation import tasks

    rules = tasks.parse_task_rules((("a", "mortality"), ("b", "MEDS_DEATH", "", 30),
                                    ("c", "", "HOSPITAL_DISCHARGE,MEDS_DEATH", 7, True)))
    assert rules["a"] == tasks.BUILTIN_RULES["mortality"]
    assert rules["b"] == tasks.OutcomeRule(("MEDS_DEATH",), (), 30.0)
    assert rules["c"] == tasks.OutcomeRule((), ("HOSPITAL_DISCHARGE", "MEDS_DEATH"), 7.0, horizon_outcome=True)
    assert tasks.parse_task_rules({"a": "mortality"}) == {"a": rules["a"]}
    for bad in ((("a", "sepsis"),), (("a", "", "X", 0),), (("a", "X", "Y", "soon"),), (("a",),)):
        with pytest.raises(ConfigError, match="task_rules"):
            tasks.parse_task_rules(bad)
    config = base_config()
    config.eval.name = "../x"
    with pytest.raises(ConfigError, match="eval.name"):
        runner.EvalSettings.from_config(config)


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
    tx = optim.make_optimizer(config.train)
    _, state, _ = model_init.init(model_cfg, parallel.make_mesh(tuple(config.mesh.shape)), 0, tx)
    saver = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=1, use_async=False)
    saver.save(3, state, {}, {"scan_layers": True})
    saver.close()
    model = runner.restore_model(str(tmp_path), config, vocab_size)
    assert model.cfg.scan_layers and model.blocks.attn.wq[...].shape[0] == 1
    np.testing.assert_array_equal(model.blocks.attn.wq[...], state[0]["blocks"]["attn"]["wq"][...])
