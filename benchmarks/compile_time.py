"""Train-step compile time with and without layer scan, by depth.

  python benchmarks/compile_time.py --width=512 --depths=6,12,20 --repeats=2

Traces, lowers and compiles the trainer's own jit'd step (model/init.py's abstract state: nothing
is initialised or run) for d{width}-l{depth} with config.model.scan_layers off and on,
alternating A/B. Depths outside the ladder keep the width's rung and change only n_layers.
Prints seconds to trace + lower and to compile, and the load average (the CPU VM is shared).
Results: docs/PERFORMANCE.md, "Compile time with and without layer scan".
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from ehr_jax import parallel
from ehr_jax.model import init as model_init
from ehr_jax.model import sizes, transformer
from ehr_jax.train import optim, trainer

import machine

_WIDTH = flags.DEFINE_integer("width", 512, "d_model (its ladder rung sets heads and MLP width).")
_DEPTHS = flags.DEFINE_list("depths", ["6", "12", "20"], "Numbers of layers to compile.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Alternating off/on rounds per depth (best kept).")
_BATCH = flags.DEFINE_integer("batch", 16, "Global batch (windows per step).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per window.")
_VOCAB = flags.DEFINE_integer("vocab", 2048, "Vocabulary size.")


def _size(depth: int) -> sizes.ModelSize:
    rung = next(s for s in sizes.LADDER.values() if s.d_model == _WIDTH.value)
    return dataclasses.replace(rung, name=f"d{_WIDTH.value}-l{depth}", n_layers=depth)


def compile_seconds(depth: int, scan: str) -> tuple[float, float]:
    """(trace + lower, XLA compile) seconds of one train step."""
    model_cfg = transformer.model_config(
        ml_collections.ConfigDict({"size": f"d{_WIDTH.value}-l8", "scan_layers": scan}),
        _VOCAB.value, _SEQ_LEN.value)
    model_cfg = dataclasses.replace(model_cfg, size=_size(depth))
    mesh = parallel.make_mesh((-1, 1, 1))
    tx = optim.make_optimizer(ml_collections.ConfigDict(dict(
        grad_clip=1.0, warmup_frac=0.05, min_lr_ratio=0.1, b2=0.95, weight_decay=0.1)), 1e-3, 100)
    graphdef, state = model_init.abstract(model_cfg, mesh, tx)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = parallel.batch_sharding(mesh)
    schedule = optim.learning_rate_schedule(1e-3, 100, 0.05, 0.1)
    step = trainer.make_train_step(graphdef, shardings, batch_sharding, schedule)
    shape = (_BATCH.value, _SEQ_LEN.value)
    batch = {"tokens": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding),
             "targets": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding),
             "mask": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch_sharding)}
    start = time.perf_counter()
    with jax.set_mesh(mesh):  # trace as the trainer does (activation constraints apply)
        lowered = step.lower(state, batch)
    lowered_at = time.perf_counter()
    lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at


def main(argv) -> None:
    del argv
    device = jax.devices()[0]
    print(f"{machine.describe()}; jax {jax.__version__} on {jax.device_count()} x "
          f"{device.device_kind} ({device.platform}); batch {_BATCH.value} x seq "
          f"{_SEQ_LEN.value}, vocab {_VOCAB.value}")
    print(f"{'size':>10} {'scan':>4} {'lower s':>8} {'compile s':>9} {'total s':>8} {'load':>5}")
    for depth in map(int, _DEPTHS.value):
        best: dict[str, tuple[float, float]] = {}
        for _ in range(_REPEATS.value):
            for scan in ("off", "on"):
                seconds = compile_seconds(depth, scan)
                if scan not in best or sum(seconds) < sum(best[scan]):
                    best[scan] = seconds
        for scan, (lower_s, compile_s) in best.items():
            print(f"{_size(depth).name:>10} {scan:>4} {lower_s:>8.2f} {compile_s:>9.2f} "
                  f"{lower_s + compile_s:>8.2f} {os.getloadavg()[0]:>5.1f}", flush=True)


if __name__ == "__main__":
    app.run(main)
