"""Per-device memory and compile time of the product's train step, without the hardware.

  python benchmarks/aot_memory.py --target=cpu8 --sizes=d1024-l14,d2048-l20 --mesh=1,8,1
  python benchmarks/aot_memory.py --target=v5p:4x4x2 --sizes=d2048-l20 --mesh=1,64,1
  python benchmarks/aot_memory.py --target=v5e:8x8 --sizes=d2048-l20 --mesh=1,64,1

The trainer's own step (ehr_jax.train.trainer.make_train_step, its shardings and donation) is
traced on abstract state (nothing is allocated) and compiled ahead of time:
- `cpu8`: 8 fake CPU devices (set XLA_FLAGS=--xla_force_host_platform_device_count=8, done here
  when the flag is missing): XLA:CPU's buffer assignment per device, the stand-in for a GPU node
  (this machine cannot compile for CUDA; bf16 compute is asked for explicitly).
- `local`: this host's own devices (a GPU node); with --execute the step then runs twice on
  initialised state and the device's measured peak_bytes_in_use is printed beside the prediction.
- `v5p:AxBxC`, `v5e:AxB`, ...: real TPU programs through libtpu's compile-only client
  (`pip install libtpu==0.0.42.*`, the version jax 0.10.2's [tpu] extra pins; add its folder
  with --libtpu_path when it is not importable).
Prints per size: parameters, per-device bytes (arguments, outputs, temporaries, peak = args +
outputs - aliased + temps), compile seconds, and whether it fits --device_gib. With --choose it
runs the trainer's own pre-flight (ehr_jax.train.trainer.fit_memory, train.memory_fit=auto,
train.device_memory_gib=--device_gib) and prints each setting it tried and the one it keeps.
"""

import os
import sys
import time

from absl import app, flags

_TARGET = flags.DEFINE_string("target", "cpu8", "cpu8, local (this host's devices), or a TPU "
                              "topology like v5p:4x4x2.")
_EXECUTE = flags.DEFINE_bool("execute", False, "target=local: also run two real steps and print "
                             "the device's peak_bytes_in_use beside the prediction.")
_SIZES = flags.DEFINE_list("sizes", ["d1024-l14", "d1280-l16", "d2048-l20"], "Ladder names.")
_MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "(data, fsdp, tensor); one -1 takes the rest.")
_BATCH = flags.DEFINE_integer("batch", 64, "Global batch (windows per step).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "Tokens per window.")
_VOCAB = flags.DEFINE_integer("vocab", 8192, "Vocabulary size.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype.")
_REMAT = flags.DEFINE_bool("remat", False, "Rematerialise each block.")
_ATTENTION = flags.DEFINE_string("attention", "auto", "config.model.attention. auto resolves for "
                                 "THIS host's backend; chunked (pure-JAX flash, no [L, L] scores "
                                 "kept) stands in for cuDNN / splash when compiling for others.")
_SCAN = flags.DEFINE_enum("scan_layers", "on", ["on", "off"], "config.model.scan_layers: on is "
                           "what auto picks on GPU/TPU (one compiled block, not one per layer).")
_ACCUM = flags.DEFINE_integer("accum", 1, "Gradient-accumulation steps (micro-batches per step).")
_CHOOSE = flags.DEFINE_bool("choose", False, "Run the trainer's memory pre-flight instead (from "
                            "--remat, accumulation auto) against --device_gib; print every try.")
_DEVICE_GIB = flags.DEFINE_float("device_gib", 80.0, "Memory of one device, for the fits column "
                                  "(--choose: 0 reads the device's bytes_limit, as training does).")
_LIBTPU = flags.DEFINE_string("libtpu_path", "", "Folder holding the libtpu package (pip --target).")


def _devices_and_kind():
    """The devices to compile for: fake CPU devices, or a compile-only TPU topology."""
    import jax

    if _TARGET.value == "cpu8":
        if jax.device_count() < 8:
            raise app.UsageError("cpu8 needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
        return jax.devices()[:8], "8 fake CPU devices"
    if _TARGET.value == "local":
        return jax.devices(), f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(topology_name=_TARGET.value, platform="tpu")
    return topology.devices, f"{len(topology.devices)} x {topology.devices[0].device_kind}"


def memory_usable_gib() -> float:
    from ehr_jax.train import memory

    return _DEVICE_GIB.value * memory.USABLE_FRACTION


def _mesh(devices):
    import jax
    import numpy as np

    from ehr_jax import parallel

    shape = parallel.mesh_shape([int(s) for s in _MESH.value], len(devices))
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), parallel.MESH_AXES,
                             axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _config(size_name: str):
    """configs/base.py with this benchmark's flags, and the ModelConfig they resolve to."""
    from ehr_jax import config_files
    from ehr_jax.model import transformer

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_files.load_sibling(os.path.join(repo, "configs", "base.py"))
    config.model.size, config.model.dtype, config.model.remat = size_name, _DTYPE.value, _REMAT.value
    config.model.attention, config.model.scan_layers = _ATTENTION.value, _SCAN.value
    config.data.seq_len, config.train.global_batch_size = _SEQ_LEN.value, _BATCH.value
    return config, transformer.model_config(config.model, _VOCAB.value, _SEQ_LEN.value)


def measure(size_name: str, mesh) -> dict:
    """Compile the train step for abstract (sharded) state and batch; read its memory use."""
    import jax
    import numpy as np

    from ehr_jax import parallel
    from ehr_jax.model import init as model_init
    from ehr_jax.train import optim, trainer

    config, model_cfg = _config(size_name)
    plan = trainer.make_plan(config, model_cfg)
    tx = optim.make_optimizer(config.train)
    graphdef, abstract_state = model_init.abstract(model_cfg, mesh, tx)
    state_sharding = jax.tree.map(lambda x: x.sharding, abstract_state)
    batch_sharding = parallel.batch_sharding(mesh)
    schedule = optim.make_schedule(config.train, plan.peak_lr, plan.steps)
    step = trainer.make_train_step(graphdef, state_sharding, batch_sharding, schedule.kind,
                                   accum_steps=_ACCUM.value)
    schedule_inputs = {key: jax.ShapeDtypeStruct((), np.float32) for key in schedule.inputs()}
    shape = (_BATCH.value, _SEQ_LEN.value)
    batch = {"tokens": jax.ShapeDtypeStruct(shape, np.int32),
             "targets": jax.ShapeDtypeStruct(shape, np.int32),
             "mask": jax.ShapeDtypeStruct(shape, np.float32)}
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.trace(abstract_state, batch, schedule_inputs).lower().compile()
    compile_s = time.perf_counter() - start
    m = compiled.memory_analysis()
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes)
    measured = (_execute(model_cfg, tx, mesh, compiled, schedule.inputs()) if _EXECUTE.value
                else None)
    return {"size": size_name, "n_params": plan.n_params, "args": m.argument_size_in_bytes,
            "outputs": m.output_size_in_bytes, "alias": m.alias_size_in_bytes,
            "temps": m.temp_size_in_bytes, "peak": peak, "compile_s": compile_s,
            "measured_peak": measured}


def _execute(model_cfg, tx, mesh, compiled, schedule_inputs: dict) -> int | None:
    """Two real steps of the compiled program; the first device's peak_bytes_in_use after them."""
    import jax
    import numpy as np

    from ehr_jax import parallel
    from ehr_jax.model import init as model_init
    from ehr_jax.train import trainer

    _, state, _ = model_init.init(model_cfg, mesh, 0, tx)
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, _VOCAB.value, (_BATCH.value, _SEQ_LEN.value + 1), dtype=np.int32)
    batch = trainer.local_batch_to_global(
        {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
         "mask": np.ones((_BATCH.value, _SEQ_LEN.value), np.float32)},
        parallel.batch_sharding(mesh), _BATCH.value)
    for _ in range(2):
        state, metrics = compiled(state, batch, schedule_inputs)
    jax.block_until_ready(metrics)
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def choose(size_name: str, mesh) -> None:
    """The trainer's pre-flight for this size: every setting it compiles, and its choice."""
    from ehr_jax.errors import ConfigError
    from ehr_jax.train import optim, trainer

    config, model_cfg = _config(size_name)
    config.train.device_memory_gib = _DEVICE_GIB.value
    plan = trainer.make_plan(config, model_cfg)
    settings = optim.static_settings(config.train, optim.make_schedule(config.train, 1e-3, 10))
    try:
        fit = trainer.fit_memory(config.train, model_cfg, mesh, settings, _BATCH.value)
    except ConfigError as error:
        print(f"{size_name:>10} {plan.n_params:>14,}  error: {error}", flush=True)
        return
    if not fit.tried:
        print(f"{size_name:>10} {plan.n_params:>14,}  pre-flight skipped: the device reports no "
              "memory limit (pass --device_gib)", flush=True)
    for entry in fit.summary()["tried"]:
        chosen = (entry["remat"], entry["grad_accum_steps"]) == (fit.setting.remat,
                                                                  fit.setting.accum_steps)
        print(f"{size_name:>10} {plan.n_params:>14,} {str(entry['remat']):>6} "
              f"{entry['grad_accum_steps']:>6} {entry['step_gib_per_device']:>9.2f} "
              f"{entry['compile_s']:>9.1f} {'chosen' if chosen else 'no'}", flush=True)


def main(argv) -> None:
    del argv
    if _LIBTPU.value:
        sys.path.insert(0, _LIBTPU.value)
    import jax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import machine

    devices, kind = _devices_and_kind()
    mesh = _mesh(devices)
    print(f"{machine.describe()}; jax {jax.__version__}; compiling for {kind}, mesh "
          f"{dict(mesh.shape)}; batch {_BATCH.value} x seq {_SEQ_LEN.value}, vocab {_VOCAB.value},"
          f" {_DTYPE.value}, {_ATTENTION.value} attention, scan_layers {_SCAN.value}, remat {_REMAT.value}, "
          f"accumulation "
          f"{'auto' if _CHOOSE.value else _ACCUM.value}", flush=True)
    if _CHOOSE.value:
        from absl import logging

        logging.set_verbosity(logging.WARNING)
        print(f"{'size':>10} {'params':>14} {'remat':>6} {'accum':>6} {'peak GiB':>9} "
              f"{'compile s':>9} pre-flight (usable: {memory_usable_gib():.1f} of "
              f"{_DEVICE_GIB.value:g} GiB; 0: the device's own bytes_limit)", flush=True)
        for name in _SIZES.value:
            choose(name, mesh)
        return
    print(f"{'size':>10} {'params':>14} {'args GiB':>9} {'temps GiB':>9} {'peak GiB':>9} "
          f"{'compile s':>9} fits {_DEVICE_GIB.value:g} GiB")
    for name in _SIZES.value:
        r = measure(name, mesh)
        gib = 2.0**30
        measured = ("" if r["measured_peak"] is None
                    else f"  measured peak {r['measured_peak'] / gib:.2f} GiB")
        print(f"{r['size']:>10} {r['n_params']:>14,} {r['args'] / gib:>9.2f} "
              f"{r['temps'] / gib:>9.2f} {r['peak'] / gib:>9.2f} {r['compile_s']:>9.1f} "
              f"{'yes' if r['peak'] <= _DEVICE_GIB.value * gib else 'NO'}{measured}", flush=True)


if __name__ == "__main__":
    if "--target=cpu8" in sys.argv or not any(a.startswith("--target") for a in sys.argv):
        if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_force_host_platform_device_count=8").strip()
    app.run(main)
