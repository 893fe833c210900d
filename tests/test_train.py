"""Trainer contracts: run length, schedule, run dir and summary, NaN guard, MFU peaks."""

import json
import math
import os
import time
import types

import jax
import numpy as np
import pytest

from ehr_jax.data import loader as data_loader
from ehr_jax.data import tokenize
from ehr_jax.errors import ConfigError, EhrJaxError
from ehr_jax.train import metrics, optim, trainer

import train_fixtures

SUMMARY_FIELDS = {
    "run_name", "n_params", "n_params_non_embedding", "n_layers", "d_model", "tokens_seen",
    "flops", "flops_per_token", "flops_6nd", "final_train_loss", "val_loss", "epochs_over_data",
    "steps", "wall_s", "tokens_per_s", "mfu", "device_kind", "num_devices", "config",
    "etl_name", "etl_version", "meds_version", "tokenizer_hash", "flop_convention",
    "loss_by_token_type"}


def _train(**kw):
    config = train_fixtures.base_config().train
    for key, value in kw.items():
        config[key] = value
    return config


def test_run_length_from_exactly_one_budget():
    assert optim.num_steps(_train(steps=7), tokens_per_step=100, flops_per_token=10.0) == 7
    assert optim.num_steps(_train(steps=0, tokens=1000), tokens_per_step=100,
                           flops_per_token=10.0) == 10
    assert optim.num_steps(_train(steps=0, flops=1e5), tokens_per_step=100,
                           flops_per_token=10.0) == 100
    for bad in (_train(steps=0), _train(steps=5, tokens=1000)):
        with pytest.raises(ConfigError, match="exactly one of train.steps"):
            optim.num_steps(bad, tokens_per_step=100, flops_per_token=10.0)


def test_schedule_warms_up_then_reaches_floor_on_last_step():
    steps, peak = 100, 1e-3
    schedule = optim.learning_rate_schedule(optim.make_schedule(
        _train(warmup_frac=0.1, min_lr_ratio=0.1), peak, steps))
    lrs = np.array([float(schedule(t)) for t in range(steps)])
    assert lrs[0] == pytest.approx(peak / 10)
    assert lrs[9] == pytest.approx(peak)
    assert np.all(np.diff(lrs[:10]) > 0) and np.all(np.diff(lrs[10:]) < 0)
    assert lrs[-1] == pytest.approx(peak * 0.1)


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_schedule_is_constant_until_its_cooldown(shape):
    steps, peak = 100, 1e-3
    schedule = optim.make_schedule(_train(schedule="wsd", warmup_frac=0.1, min_lr_ratio=0.1,
                                          cooldown_frac=0.2, cooldown_shape=shape), peak, steps)
    assert (schedule.warmup, schedule.decay_start) == (10, 80)
    lrs = np.array([float(optim.learning_rate_schedule(schedule)(t)) for t in range(steps)])
    assert lrs[0] == pytest.approx(peak / 10) and np.all(np.diff(lrs[:10]) > 0)
    assert np.all(lrs[10:80] == np.float32(peak))  # the stable phase: exactly the peak
    assert np.all(np.diff(lrs[80:]) < 0) and lrs[-1] == pytest.approx(peak * 0.1)
    early = lrs[85]  # a quarter into the cooldown, 1-sqrt has dropped more than half the way
    assert (early < (peak + peak * 0.1) / 2) == (shape == "1-sqrt")
    # The rate before the cooldown does not depend on the run's length: branches share it.
    longer = optim.make_schedule(_train(schedule="wsd", warmup_steps=10, cooldown_frac=0.2,
                                        cooldown_shape=shape), peak, 300)
    assert [float(optim.learning_rate_schedule(longer)(t)) for t in range(80)] == list(lrs[:80])


def test_bad_schedule_settings_are_config_errors():
    for kw, message in [({"schedule": "step"}, "train.schedule"),
                        ({"schedule": "wsd", "cooldown_shape": "cubic"}, "train.cooldown_shape"),
                        ({"schedule": "wsd", "cooldown_frac": 1.5}, "train.cooldown_frac"),
                        ({"schedule": "wsd", "warmup_steps": 95}, "must end before")]:
        with pytest.raises(ConfigError, match=message):
            optim.make_schedule(_train(**kw), 1e-3, 100)


@pytest.mark.slow
def test_runs_of_one_shape_share_one_compiled_train_step(prepared_dir, tmp_path, monkeypatch):
    """Run length and peak rate are inputs of the step: a second run of the shape traces
    nothing new (the sweep's runs of one size then cost one compile)."""
    traced = []
    learning_rate = optim.learning_rate
    monkeypatch.setattr(optim, "learning_rate",
                        lambda *args: traced.append(1) or learning_rate(*args))
    trainer.compiled_programs.cache_clear()
    first = train_fixtures.tiny_config(prepared_dir, steps=8)
    second = train_fixtures.tiny_config(prepared_dir, steps=12)
    second.train.lr = 1e-3
    trainer.run(first, str(tmp_path / "a"), prepared_dir)
    summary = trainer.run(second, str(tmp_path / "b"), prepared_dir)
    assert len(traced) == 1 and summary["steps"] == 12
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text()
                                .splitlines()) if "lr" in r]
    assert max(lrs) == pytest.approx(1e-3)  # the second run's own schedule


def test_learning_rate_from_config_or_width_rule():
    assert optim.peak_learning_rate(_train(lr=1e-4), d_model=512) == 1e-4
    narrow = optim.peak_learning_rate(_train(lr=0.0), d_model=128)
    wide = optim.peak_learning_rate(_train(lr=0.0), d_model=1024)
    assert wide < narrow
    assert optim.peak_learning_rate(_train(lr=0.0), d_model=optim.BASE_WIDTH) == optim.BASE_LR


@pytest.mark.slow
def test_run_writes_run_dir_and_summary(prepared_dir, tmp_path):
    config = train_fixtures.tiny_config(prepared_dir, steps=12)
    config.train.profile_steps = (2, 3)
    summary = trainer.run(config, str(tmp_path), config.data.prepared_dir)
    assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoints", "summary.json",
            "profile"} <= set(os.listdir(tmp_path))
    traces = [name for _, _, names in os.walk(tmp_path / "profile") for name in names]
    assert any(name.endswith(".xplane.pb") for name in traces), traces
    assert os.listdir(tmp_path / "tensorboard")
    assert SUMMARY_FIELDS <= set(summary)
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 12
    assert summary["padded_tokens_seen"] == 12 * 8 * 32
    assert summary["tokens_seen"] == _real_tokens(config, 12)  # padding is not counted
    assert summary["tokens_seen"] < summary["padded_tokens_seen"]
    epoch = data_loader.epoch_stats(prepared_dir, "train", 32)["tokens"]
    assert summary["epochs_over_data"] == pytest.approx(summary["tokens_seen"] / epoch)
    assert summary["flops"] == pytest.approx(summary["tokens_seen"] * summary["flops_per_token"])
    assert summary["flops_6nd"] == pytest.approx(6 * summary["n_params"] * summary["tokens_seen"])
    assert summary["tokenizer_hash"] == "test-hash" and summary["num_devices"] == 8
    assert summary["attention"] == "xla"  # config.model.attention "auto" on CPU
    assert "subject_id" not in (tmp_path / "summary.json").read_text()
    assert set(summary["loss_by_token_type"]) <= set(tokenize.TOKEN_TYPE_NAMES)
    assert math.isfinite(summary["val_loss"]) and 0 < summary["mfu"] < 1
    # keep-N checkpoints, the last one at the final step
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [4, 8, 12]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 6, 8, 10, 12]
    assert {"lr", "grad_norm", "tokens_per_s", "mfu", "tokens_seen", "flops_seen"} <= set(logged[0])
    assert logged[-1]["loss"] < logged[0]["loss"]  # it learns the pattern
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 8, 12]


def _real_tokens(config, steps: int) -> int:
    """Non-pad input tokens in the run's first `steps` batches, read again from its loader."""
    loader = data_loader.train_loader(
        config.data.prepared_dir, seq_len=config.data.seq_len,
        global_batch_size=config.train.global_batch_size, seed=config.seed, process_index=0,
        process_count=1, pack=config.data.pack)
    return sum(int(np.count_nonzero(next(loader)["tokens"])) for _ in range(steps))


@pytest.mark.slow
def test_packed_run_trains_on_packed_rows(prepared_dir, tmp_path):
    config = train_fixtures.tiny_config(prepared_dir, steps=4)
    config.data.pack = True
    summary = trainer.run(config, str(tmp_path), config.data.prepared_dir)
    assert summary["config"]["data"]["pack"] is True
    assert summary["tokens_seen"] == _real_tokens(config, 4)
    assert math.isfinite(summary["final_train_loss"]) and math.isfinite(summary["val_loss"])
    unpacked = data_loader.epoch_stats(prepared_dir, "train", 32)
    packed = data_loader.epoch_stats(prepared_dir, "train", 32, pack=True)
    assert packed["padding_share"] < unpacked["padding_share"]
    assert summary["tokens_seen"] / summary["padded_tokens_seen"] > 1 - unpacked["padding_share"]


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_every", [1, 100])
def test_non_finite_loss_stops_naming_the_step_and_what_was_kept(prepared_dir, tmp_path, checkpoint_every):
    """Every step checkpointed: the last good checkpoint is kept and the error says so. None yet
    (due at step 100): the error says nothing was saved and that the workdir takes new settings."""
    config = train_fixtures.tiny_config(prepared_dir, steps=12)
    config.train.lr = 1e30  # the first update blows the weights up
    config.train.warmup_frac = 0.0
    config.train.checkpoint_every = checkpoint_every
    with pytest.raises(EhrJaxError, match=r"at step (\d+) is not finite") as error:
        trainer.run(config, str(tmp_path), config.data.prepared_dir)
    message = str(error.value)
    assert "Lower train.lr" in message and "step None" not in message
    assert not (tmp_path / "summary.json").exists()
    if checkpoint_every == 100:
        assert "no checkpoint was saved yet" in message and "same --workdir accepts new settings" in message
        return
    bad_step = int(message.split("at step ")[1].split()[0])
    saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert saved and max(saved) < bad_step
    assert f"the last good checkpoint (step {max(saved)}) is kept" in message


def test_chrono_times_only_training_steps(monkeypatch):
    clock = iter([0.0, 1.0, 100.0, 102.0])  # compile, 1 step, (eval pause), 2 steps
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    chrono = metrics.Chrono(total_steps=10, flops_per_token=2e4, peak_flops_total=4e6)
    chrono.mark(1, 40)  # the compile step only sets the reference
    chrono.mark(2, 90)  # 50 real tokens in 1 s
    chrono.pause()
    chrono.mark(3, 130)
    chrono.mark(5, 230)  # 100 real tokens in 2 s
    assert (chrono.timed_steps, chrono.timed_tokens, chrono.timed_s) == (3, 150, 3.0)
    rates = chrono.rates()
    assert rates["tokens_per_s"] == pytest.approx(50.0) and rates["mfu"] == pytest.approx(0.25)
    assert chrono.eta_s(5) == pytest.approx(5.0)


@pytest.mark.parametrize("key,value,message", [
    ("train.global_batch_size", 12, "multiple of the 8 batch shards"),
    ("train.log_every", 0, "train.log_every must be >= 1"),
    ("model.size", "d7-l99", "is not a known size"),
    ("mesh.shape", (3, 1, 1), "mesh.shape"),
])
def test_config_mistakes_are_clear_errors_before_training(prepared_dir, tmp_path, key, value,
                                                          message):
    config = train_fixtures.tiny_config(prepared_dir)
    group, name = key.split(".")
    config[group][name] = value
    with pytest.raises(ConfigError, match=message):
        trainer.run(config, str(tmp_path), config.data.prepared_dir)
    assert not (tmp_path / "checkpoints").exists()


def test_peak_flops_table_and_measured_fallback():
    def kind(name):
        return types.SimpleNamespace(device_kind=name, platform="gpu")

    assert metrics.peak_flops(kind("NVIDIA H100 80GB HBM3")) == 989e12
    assert metrics.peak_flops(kind("NVIDIA H100 PCIe")) == 756e12
    assert metrics.peak_flops(kind("NVIDIA H200")) == 989e12
    assert metrics.peak_flops(kind("TPU v5 lite")) == 197e12
    assert metrics.peak_flops(kind("TPU v5p")) == 459e12
    # Longest match wins: an A100 is not an A10, an L40S not an L4.
    assert metrics.peak_flops(kind("NVIDIA A100-SXM4-80GB")) == 312e12
    assert metrics.peak_flops(kind("NVIDIA A10G")) == 125e12
    assert metrics.peak_flops(kind("NVIDIA L40S")) == 362e12
    assert metrics.peak_flops(kind("NVIDIA L4")) == 121e12
    assert metrics.peak_flops(kind("NVIDIA B200")) == 2250e12
    assert metrics.peak_flops(kind("TPU v3")) == 123e12
    assert metrics.peak_flops(kind("TPU7x")) == 2307e12
    cpu = jax.devices()[0]
    measured = metrics.peak_flops(cpu)
    start = time.perf_counter()
    assert metrics.peak_flops(cpu) == measured  # cached: measured once per process
    assert time.perf_counter() - start < 0.1
    # 8 fake devices share the host: each gets an eighth of a plausible host peak.
    assert 1e8 < measured * jax.local_device_count() < 1e13


def _one_step(accum_steps, batch, mesh, remat=False):
    """(loss, updated model parameters) of one train step from a fixed init."""
    import dataclasses

    import jax

    from ehr_jax import parallel
    from ehr_jax.model import init as model_init
    from ehr_jax.model import transformer

    cfg = transformer.model_config({"size": "d32-l1", "remat": remat}, 16, batch["tokens"].shape[1])
    cfg = dataclasses.replace(cfg, dtype="float32")
    tx = optim.make_optimizer(_train())
    graphdef, state, state_sharding = model_init.init(cfg, mesh, 0, tx)
    sharding = parallel.batch_sharding(mesh)
    step = trainer.make_train_step(graphdef, state_sharding, sharding, "cosine",
                                   accum_steps=accum_steps)
    inputs = optim.Schedule("cosine", 1e-2, 10, 0, 0, 0.1).inputs()
    with jax.set_mesh(mesh):
        state, step_metrics = step(state, trainer.full_batch_to_global(batch, sharding), inputs)
    params = [np.asarray(x) for x in jax.tree.leaves(state[0])]
    return float(step_metrics["loss"]), float(step_metrics["grad_norm"]), params


@pytest.mark.slow
def test_gradient_accumulation_keeps_the_token_weighted_loss_and_update():
    from ehr_jax import parallel

    rng = np.random.default_rng(0)
    rows, length = 32, 8
    tokens = rng.integers(0, 16, (rows, length + 1)).astype(np.int32)
    mask = (np.arange(length) < rng.integers(1, length + 1, (rows, 1))).astype(np.float32)
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}
    # Micro-batch k holds rows k, k + A, ...: their target counts differ, so a mean of
    # micro-batch means would not equal the token-weighted mean the test asks for.
    counts = mask.reshape(rows // 4, 4, length).sum(axis=(0, 2))
    assert len(set(counts.tolist())) > 1
    mesh = parallel.make_mesh((-1, 1, 1))
    loss_1, norm_1, params_1 = _one_step(1, batch, mesh)
    for accum_steps, remat in ((2, False), (4, False), (2, True)):
        loss, norm, params = _one_step(accum_steps, batch, mesh, remat)
        assert loss == pytest.approx(loss_1, rel=1e-6)
        assert norm == pytest.approx(norm_1, rel=1e-5)
        # Adam's first step is lr * g / (|g| + eps): a near-zero gradient entry moves by up to
        # lr either way on rounding, so parameters agree to 0.1% of the 1e-2 step, not to 1e-6.
        for leaf, ref in zip(params, params_1):
            np.testing.assert_allclose(leaf, ref, rtol=1e-5, atol=1e-5 * 2)
