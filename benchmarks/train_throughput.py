"""Training-step throughput and MFU per model size, with the trainer's own jit'd step.

  python benchmarks/train_throughput.py --sizes=d128-l4,d256-l6,d320-l6 --steps=10

Random tokens (no input pipeline), one device, AdamW, the study's FLOP count. Prints the machine,
the matmul peak measured on it (the MFU denominator on CPUs, see ehr_jax.train.metrics) and, per
size: parameters, compile seconds, step seconds, tokens/s, model GFLOP/s, MFU, the load
average (the CPU VM is shared) and the attention kernel config.model.attention resolved to.
--pack gives every row 8 segments (segment ids and positions, as data.pack does).
benchmarks/pytorch_reference.py is the same model in PyTorch eager, to run alternately with this
one (docs/PERFORMANCE.md, "Side by side").
"""

import os
import time

import jax
import numpy as np
from absl import app, flags

from ehr_jax import config_files, parallel
from ehr_jax.model import init as model_init
from ehr_jax.model import transformer
from ehr_jax.train import metrics as train_metrics
from ehr_jax.train import optim, trainer

import machine

_SIZES = flags.DEFINE_list("sizes", ["d64-l2", "d128-l4", "d256-l6", "d320-l6"],
                           "Ladder names to measure (those that fit the machine).")
_BATCH = flags.DEFINE_integer("batch", 16, "Global batch (windows per step).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per window.")
_VOCAB = flags.DEFINE_integer("vocab", 2048, "Vocabulary size.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per size (after 2 warm-up steps).")
_DTYPE = flags.DEFINE_string("dtype", "auto", "Compute dtype: auto, float32, bfloat16.")
_SCAN = flags.DEFINE_string("scan_layers", "auto", "config.model.scan_layers: auto, on, off.")
_ATTENTION = flags.DEFINE_string("attention", "auto", "config.model.attention: auto, xla, chunked, ...")
_PACK = flags.DEFINE_bool("pack", False, "Packed rows: 8 segments per row (segment ids and "
                          "positions in the batch, as data.pack gives).")


def machine_line() -> str:
    device = jax.devices()[0]
    return (f"{machine.describe()}; jax {jax.__version__} on {jax.device_count()} x "
            f"{device.device_kind} ({device.platform}); "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def _config(size_name: str):
    config = trainer_config()
    config.model.size = size_name
    config.model.dtype = _DTYPE.value
    config.model.scan_layers = _SCAN.value
    config.model.attention = _ATTENTION.value
    config.data.seq_len = _SEQ_LEN.value
    config.train.global_batch_size = _BATCH.value
    config.train.steps = _STEPS.value + 2
    return config


def trainer_config():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return config_files.load_sibling(os.path.join(repo, "configs", "base.py"))


def measure(size_name: str, peak: float) -> dict:
    """Compile time, then the mean of timed steps (dispatched back to back, one block)."""
    config = _config(size_name)
    mesh = parallel.make_mesh((-1, 1, 1))
    model_cfg = transformer.model_config(config.model, _VOCAB.value, _SEQ_LEN.value,
                                         packed=_PACK.value)
    plan = trainer.make_plan(config, model_cfg)
    tx = optim.make_optimizer(config.train)
    graphdef, state, state_sharding = model_init.init(model_cfg, mesh, 0, tx)
    batch_sharding = parallel.batch_sharding(mesh)
    schedule = optim.make_schedule(config.train, plan.peak_lr, plan.steps)
    train_step = trainer.make_train_step(graphdef, state_sharding, batch_sharding, schedule.kind)
    inputs = jax.device_put(schedule.inputs(), parallel.replicated(mesh))

    def step(state, batch):
        return train_step(state, batch, inputs)

    rng = np.random.default_rng(0)
    tokens = rng.integers(4, _VOCAB.value, (_BATCH.value, _SEQ_LEN.value + 1), dtype=np.int32)
    local = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
             "mask": np.ones((_BATCH.value, _SEQ_LEN.value), np.float32)}
    if _PACK.value:
        segment = np.arange(_SEQ_LEN.value) * 8 // _SEQ_LEN.value  # 8 equal segments
        local["segment_ids"] = np.broadcast_to(segment + 1, tokens[:, :-1].shape).astype(np.int32)
        starts = np.searchsorted(segment, segment)  # each position's segment start
        local["positions"] = np.broadcast_to(np.arange(_SEQ_LEN.value) - starts,
                                             tokens[:, :-1].shape).astype(np.int32)
    batch = trainer.local_batch_to_global(local, batch_sharding, _BATCH.value)
    start = time.perf_counter()
    with jax.set_mesh(mesh):  # trace as the trainer does (activation constraints apply)
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / _STEPS.value
    if jax.devices()[0].platform == "cpu":
        peak = (peak + train_metrics.measure_matmul_peak()) / 2  # the peak around the timed steps
    flops_per_s = plan.tokens_per_step * plan.flops_per_token / step_s
    return {"size": size_name, "attention": model_cfg.attention, "n_params": plan.n_params,
            "n_params_non_embedding": plan.n_params_non_embedding, "compile_s": compile_s,
            "step_s": step_s, "tokens_per_s": plan.tokens_per_step / step_s,
            "gflops_per_s": flops_per_s / 1e9, "mfu": flops_per_s / peak, "peak": peak,
            "loss": float(metrics["loss"])}


def main(argv) -> None:
    del argv
    print(machine_line())
    peak = train_metrics.peak_flops(jax.devices()[0]) * jax.device_count()
    print(f"peak: {peak / 1e9:.1f} GFLOP/s "
          f"({'table' if train_metrics.known_peak(jax.devices()[0].device_kind) else 'measured matmul'})")
    print(f"batch {_BATCH.value} x seq {_SEQ_LEN.value}, vocab {_VOCAB.value}, "
          f"dtype {_DTYPE.value}, attention {_ATTENTION.value}, scan_layers {_SCAN.value}, "
          f"{'packed (8 segments per row)' if _PACK.value else 'unpacked'}, "
          f"{_STEPS.value} timed steps")
    print(f"{'size':>9} {'params':>10} {'non-emb':>10} {'compile s':>9} {'step ms':>8} "
          f"{'tokens/s':>9} {'GFLOP/s':>8} {'peak':>6} {'MFU':>6} {'load':>5} {'attention':>9}")
    for name in _SIZES.value:
        cpu = jax.devices()[0].platform == "cpu"
        r = measure(name, train_metrics.measure_matmul_peak() if cpu else peak)
        print(f"{r['size']:>9} {r['n_params']:>10,} {r['n_params_non_embedding']:>10,} "
              f"{r['compile_s']:>9.1f} {1e3 * r['step_s']:>8.1f} {r['tokens_per_s']:>9,.0f} "
              f"{r['gflops_per_s']:>8.1f} {r['peak'] / 1e9:>6.1f} {100 * r['mfu']:>5.1f}% "
              f"{os.getloadavg()[0]:>5.1f} {r['attention']:>9}", flush=True)


if __name__ == "__main__":
    app.run(main)
