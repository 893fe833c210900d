"""Packed runs: one vmapped step over stacked states equals each run's own step."""

import jax
import ml_collections
import numpy as np
import pytest

from ehr_jax import parallel
from ehr_jax.model import init as model_init
from ehr_jax.model import transformer
from ehr_jax.train import optim, packed, trainer

VOCAB, SEQ, BATCH = 40, 16, 4


def _setup():
    train = ml_collections.ConfigDict({"b2": 0.95, "grad_clip": 1.0, "weight_decay": 0.1,
                                       "schedule": "cosine", "cooldown_shape": "linear"})
    model_cfg = transformer.model_config(ml_collections.ConfigDict({"size": "d16-l1"}), VOCAB, SEQ)
    mesh = parallel.make_mesh((1, 1, 1)) if jax.device_count() == 1 else jax.sharding.Mesh(
        np.asarray(jax.devices()[:1]).reshape(1, 1, 1), parallel.MESH_AXES)
    return model_cfg, mesh, optim.make_optimizer(train)


def _batch(seed):
    tokens = np.random.default_rng(seed).integers(4, VOCAB, (BATCH, SEQ + 1), dtype=np.int32)
    return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
            "mask": np.ones((BATCH, SEQ), np.float32)}


@pytest.mark.slow
def test_packed_step_equals_each_runs_own_step():
    model_cfg, mesh, tx = _setup()
    graphdef, shardings, create = model_init.make_init(model_cfg, mesh, tx)
    seeds, peaks = (0, 1, 2), (1e-3, 3e-3, 1e-2)  # other inits, other learning rates
    schedules = [optim.Schedule("cosine", peak, 10, 1, 1, 0.1).inputs() for peak in peaks]
    batches = [_batch(seed) for seed in seeds]
    single = trainer.make_train_step(graphdef, shardings, parallel.batch_sharding(mesh), "cosine")
    expected = []
    for seed, batch, inputs in zip(seeds, batches, schedules):
        state = create(seed)
        for _ in range(3):
            state, step_metrics = single(state, batch, inputs)
        expected.append((jax.device_get(state), jax.device_get(step_metrics)))

    step = packed.make_packed_train_step(graphdef, "cosine")
    state = packed.stack([jax.device_get(create(seed)) for seed in seeds])
    for _ in range(3):
        state, step_metrics = step(state, packed.stack(batches), packed.stack(schedules))
    runs = packed.unstack(jax.device_get(state), len(seeds))
    for i, (want_state, want_metrics) in enumerate(expected):
        np.testing.assert_allclose(step_metrics["loss"][i], want_metrics["loss"], rtol=1e-5)
        np.testing.assert_allclose(step_metrics["lr"][i], want_metrics["lr"], rtol=1e-6)
        for got, want in zip(jax.tree.leaves(runs[i]), jax.tree.leaves(want_state)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
    # The runs really differ (seeds and rates), so equality above is per run, not by accident.
    assert len({float(v) for v in step_metrics["loss"]}) == len(seeds)
