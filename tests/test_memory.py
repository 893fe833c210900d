"""Memory pre-flight: which remat / accumulation setting a run trains with, and why."""

import types

import pytest

from ehr_jax.errors import ConfigError
from ehr_jax.train import memory, trainer

import train_fixtures

GIB = memory.GIB


def _compiled(gib):
    analysis = types.SimpleNamespace(argument_size_in_bytes=int(gib * GIB), output_size_in_bytes=0,
                                     alias_size_in_bytes=0, temp_size_in_bytes=0)
    return types.SimpleNamespace(memory_analysis=lambda: analysis, gib=gib)


def _choose(needs, *, mode="auto", remat=False, accum=0, rows=8, limit_gib=10.0):
    """memory.choose with a fake compiler: `needs` maps a Setting to its GiB per device."""
    train = train_fixtures.base_config().train
    train.memory_fit, train.grad_accum_steps = mode, accum
    compiled = []

    def compile_step(setting):
        compiled.append(setting)
        return _compiled(needs(setting))

    fit = memory.choose(train, remat=remat, rows_per_shard=rows, compile_step=compile_step,
                        limit_bytes=None if limit_gib is None else int(limit_gib * GIB),
                        what="d2048-l20 at 8 rows")
    return fit, compiled


def _needs(setting):  # activations shrink with remat and with each halving of the micro-batch
    return 2 + (30 if not setting.remat else 12) / setting.accum_steps


def test_the_configured_setting_that_fits_is_compiled_once_and_kept():
    fit, compiled = _choose(lambda s: 5.0)
    assert compiled == [memory.Setting(False, 1)] and fit.setting == memory.Setting(False, 1)
    assert fit.compiled.gib == 5.0 and fit.summary()["step_gib_per_device"] == 5.0


def test_auto_picks_remat_then_the_fewest_accumulation_steps_that_fit():
    fit, compiled = _choose(_needs)  # 32, 14, 8 GiB: usable is 9.5 of 10
    assert compiled == [memory.Setting(False, 1), memory.Setting(True, 1), memory.Setting(True, 2)]
    assert fit.setting == memory.Setting(True, 2) and fit.compiled.gib == 8.0
    summary = fit.summary()
    assert (summary["remat"], summary["grad_accum_steps"], summary["device_gib"]) == (True, 2, 10.0)
    assert [t["step_gib_per_device"] for t in summary["tried"]] == [32.0, 14.0, 8.0]


def test_check_names_the_setting_that_would_fit():
    with pytest.raises(ConfigError, match=r"d2048-l20 at 8 rows needs 32.0 GiB per device of 9.5 "
                                          r"GiB usable; with remat, 2 accumulation steps it needs 8.0 "
                                          r"GiB: set --config.model.remat=True "
                                          r"--config.train.grad_accum_steps=2"):
        _choose(_needs, mode="check")


def test_explicit_accumulation_is_kept_and_nothing_fitting_is_an_error():
    fit, compiled = _choose(_needs, accum=4)  # 9.5 GiB without remat: just fits
    assert compiled == [memory.Setting(False, 4)] and fit.setting.accum_steps == 4
    with pytest.raises(ConfigError, match=r"does not fit 9.5 GiB per device with any setting "
                                          r"tried \(no remat, 2 accumulation steps: 19.0 GiB; "
                                          r"remat, 2 accumulation steps: 10.0 GiB\)"):
        _choose(lambda s: _needs(s) + 2, accum=2)
    with pytest.raises(ConfigError, match="fsdp"):  # 1 row per shard: nothing left to split
        _choose(_needs, rows=1)


def test_a_program_the_compiler_refuses_counts_as_not_fitting():
    """XLA's TPU compiler fails with RESOURCE_EXHAUSTED rather than return a program over the
    chip's HBM (seen compiling d2048-l20 for v5e 8x8 through libtpu): the pre-flight reads the
    size from the message and tries the next setting; any other compile error propagates."""
    def compile_step(setting):
        if not setting.remat:
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
                               "for HLO temporaries (50.34G) exceeds available HBM (15.75G).")
        return _compiled(8.0)

    train = train_fixtures.base_config().train
    fit = memory.choose(train, remat=False, rows_per_shard=8, compile_step=compile_step,
                        limit_bytes=int(10 * GIB), what="d2048-l20 at 8 rows")
    assert fit.setting == memory.Setting(True, 1) and fit.compiled.gib == 8.0
    assert [t["step_gib_per_device"] for t in fit.summary()["tried"]] == [50.34, 8.0]
    assert memory.refused_bytes("RESOURCE_EXHAUSTED: out of memory") >= 2**62

    def broken(setting):
        raise RuntimeError("INTERNAL: something else")

    with pytest.raises(RuntimeError, match="INTERNAL"):
        memory.choose(train, remat=False, rows_per_shard=8, compile_step=broken,
                      limit_bytes=int(10 * GIB), what="d2048-l20 at 8 rows")


def test_no_limit_or_off_compiles_nothing():
    for mode, limit in (("auto", None), ("off", 10.0)):
        fit, compiled = _choose(_needs, mode=mode, remat=True, accum=2, limit_gib=limit)
        assert compiled == [] and fit.compiled is None and fit.setting == memory.Setting(True, 2)


def test_candidates_split_only_what_each_shard_holds():
    assert memory.candidates(False, 0, 12) == [
        memory.Setting(False, 1), memory.Setting(True, 1), memory.Setting(True, 2),
        memory.Setting(True, 4)]
    assert memory.candidates(True, 3, 12) == [memory.Setting(True, 3)]


@pytest.mark.slow
@pytest.mark.parametrize("key,value,message", [
    ("memory_fit", "maybe", "train.memory_fit='maybe'"),
    ("grad_accum_steps", -1, "train.grad_accum_steps=-1"),
    ("grad_accum_steps", 3, "holds 2 rows"),
    ("device_memory_gib", -1.0, "train.device_memory_gib=-1.0"),
])
def test_memory_settings_are_checked_before_training(prepared_dir, tmp_path, key, value, message):
    config = train_fixtures.tiny_config(prepared_dir)
    config.train.global_batch_size = 16
    config.train[key] = value
    with pytest.raises(ConfigError, match=message):
        trainer.run(config, str(tmp_path), config.data.prepared_dir)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_the_trainer_trains_with_the_chosen_setting_and_its_compiled_step(prepared_dir, tmp_path,
                                                                          monkeypatch):
    """The first two settings "need" 100 GiB of the 1 GiB device: remat + 2 accumulation steps is
    chosen, its ahead-of-time compiled step trains, and the jitted step is never called."""
    needs = iter([100 * GIB, 100 * GIB])
    monkeypatch.setattr(memory, "step_bytes", lambda compiled: next(needs, 1024))
    calls = []
    make_train_step = trainer.make_train_step

    class Counting:  # the jitted step: lowered by the pre-flight, never called to train
        def __init__(self, step):
            self.step = step

        def lower(self, *args):
            return self.step.lower(*args)

        def __call__(self, *args):
            calls.append(args)
            return self.step(*args)

    monkeypatch.setattr(trainer, "make_train_step", lambda *a, **k: Counting(make_train_step(*a, **k)))
    trainer.compiled_programs.cache_clear()  # programs built before the patch hold plain steps
    config = train_fixtures.tiny_config(prepared_dir, steps=4)
    config.train.global_batch_size = 16  # 2 rows on each of the 8 batch shards
    config.train.device_memory_gib = 1.0
    summary = trainer.run(config, str(tmp_path), config.data.prepared_dir)
    assert (summary["memory"]["remat"], summary["memory"]["grad_accum_steps"]) == (True, 2)
    assert [t["grad_accum_steps"] for t in summary["memory"]["tried"]] == [1, 1, 2]
    assert calls == [] and summary["steps"] == 4
    losses = train_fixtures.losses_by_step(str(tmp_path))
    assert all(0 < loss < 10 for loss in losses.values())
    trainer.compiled_programs.cache_clear()
