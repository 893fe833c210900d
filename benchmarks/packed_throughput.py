"""Tokens/s per run: K same-shape runs packed into one vmapped step vs trained one at a time.

  python benchmarks/packed_throughput.py --sizes=d16-l1,d32-l1,d64-l2,d96-l3 --runs=4

The quickstart's shapes by default (batch 8 x seq 128, vocabulary 450): models too small to fill
a CPU. Both ways use the trainer's own step (trainer.train_step_fn); the sequential way takes K
single-run steps per round, the packed way one step of ehr_jax.train.packed. Rounds alternate
between the two (the VM is shared), and each line says the load.
"""

import os
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags

from ehr_jax import parallel
from ehr_jax.model import init as model_init
from ehr_jax.model import transformer
from ehr_jax.train import optim, packed, trainer

import machine

_SIZES = flags.DEFINE_list("sizes", ["d16-l1", "d32-l1", "d64-l2", "d96-l3"], "Ladder names.")
_RUNS = flags.DEFINE_integer("runs", 4, "Runs packed into one step (K).")
_BATCH = flags.DEFINE_integer("batch", 8, "Windows per step of one run.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Tokens per window.")
_VOCAB = flags.DEFINE_integer("vocab", 450, "Vocabulary size.")
_ROUNDS = flags.DEFINE_integer("rounds", 20, "Timed rounds per way (each: K run-steps).")


def _timed(fn, rounds: int) -> float:
    start = time.perf_counter()
    out = None
    for _ in range(rounds):
        out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - start


def measure(size_name: str) -> dict:
    train = ml_collections.ConfigDict({"b2": 0.95, "grad_clip": 1.0, "weight_decay": 0.1,
                                       "schedule": "cosine", "cooldown_shape": "linear"})
    model_cfg = transformer.model_config(ml_collections.ConfigDict({"size": size_name}),
                                         _VOCAB.value, _SEQ_LEN.value)
    mesh = parallel.make_mesh((1, 1, 1))
    tx = optim.make_optimizer(train)
    graphdef, shardings, create = model_init.make_init(model_cfg, mesh, tx)
    k = _RUNS.value
    inputs = [optim.Schedule("cosine", 1e-3 * (i + 1), 10**6, 10, 10, 0.1).inputs() for i in range(k)]
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, _VOCAB.value, (k, _BATCH.value, _SEQ_LEN.value + 1), dtype=np.int32)
    batches = [{"tokens": t[:, :-1], "targets": t[:, 1:],
                "mask": np.ones((_BATCH.value, _SEQ_LEN.value), np.float32)} for t in tokens]
    single = trainer.make_train_step(graphdef, shardings, parallel.batch_sharding(mesh), "cosine")
    states = [create(i) for i in range(k)]
    step = packed.make_packed_train_step(graphdef, "cosine")
    stacked = packed.stack([jax.device_get(s) for s in states])
    stacked_batch, stacked_inputs = packed.stack(batches), packed.stack(inputs)

    def sequential_round():
        nonlocal states
        results = [single(s, b, i) for s, b, i in zip(states, batches, inputs)]
        states = [r[0] for r in results]
        return results[-1][1]

    def packed_round():
        nonlocal stacked
        stacked, step_metrics = step(stacked, stacked_batch, stacked_inputs)
        return step_metrics

    for fn in (sequential_round, packed_round):  # compile and warm up
        _timed(fn, 2)
    seq_s = pack_s = 0.0
    for _ in range(2):  # alternate: A B A B
        seq_s += _timed(sequential_round, _ROUNDS.value // 2)
        pack_s += _timed(packed_round, _ROUNDS.value // 2)
    run_tokens = _ROUNDS.value * _BATCH.value * _SEQ_LEN.value  # tokens of one run, per way
    return {"size": size_name, "sequential": run_tokens / seq_s, "packed": run_tokens / pack_s}


def main(argv) -> None:
    del argv
    print(f"{machine.describe()}; jax {jax.__version__} on {jax.devices()[0].device_kind}; "
          f"{_RUNS.value} runs of batch {_BATCH.value} x seq {_SEQ_LEN.value}, vocab "
          f"{_VOCAB.value}", flush=True)
    print(f"{'size':>8} {'sequential tok/s/run':>21} {'packed tok/s/run':>17} {'ratio':>6} "
          f"{'load':>5}")
    for name in _SIZES.value:
        r = measure(name)
        print(f"{r['size']:>8} {r['sequential']:>21,.0f} {r['packed']:>17,.0f} "
              f"{r['packed'] / r['sequential']:>6.2f} {os.getloadavg()[0]:>5.1f}", flush=True)


if __name__ == "__main__":
    app.run(main)
