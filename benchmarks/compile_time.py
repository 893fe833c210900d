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
from absl import app, flags

from ehr_jax import config_files, parallel
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


def _rung() -> sizes.ModelSize:
    return next(s for s in sizes.LADDER.values() if s.d_model == _WIDTH.value)


def _size(depth: int) -> sizes.ModelSize:
    return dataclasses.replace(_rung(), name=f"d{_WIDTH.value}-l{depth}", n_layers=depth)


def compile_seconds(depth: int, scan: str) -> tuple[float, float]:
    """(trace + lower, XLA compile) seconds of one train step."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_files.load_sibling(os.path.join(repo, "configs", "base.py"))
    config.model.size, config.model.scan_layers = _rung().name, scan
    config.data.seq_len, config.train.global_batch_size = _SEQ_LEN.value, _BATCH.value
    model_cfg = transformer.model_config(config.model, _VOCAB.value, _SEQ_LEN.value)
    model_cfg = dataclasses.replace(model_cfg, size=_size(depth))
    plan = trainer.make_plan(config, model_cfg)
    mesh = parallel.make_mesh((-1, 1, 1))
    graphdef, state = model_init.abstract(model_cfg, mesh, optim.make_optimizer(config.train))
    batch_sharding = parallel.batch_sharding(mesh)
    schedule = optim.make_schedule(config.train, plan.peak_lr, plan.steps)
    step = trainer.make_train_step(graphdef, jax.tree.map(lambda x: x.sharding, state),
                                   batch_sharding, schedule.kind)
    inputs = {key: jax.ShapeDtypeStruct((), jnp.float32) for key in schedule.inputs()}
    shape = (_BATCH.value, _SEQ_LEN.value)
    batch = {key: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
             for key, dtype in (("tokens", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))}
    start = time.perf_counter()
    with jax.set_mesh(mesh):  # trace as the trainer does (activation constraints apply)
        lowered = step.lower(state, batch, inputs)
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
