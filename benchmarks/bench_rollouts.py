"""Zero-shot rollout throughput: prefill tokens/s and generated tokens/s of the jitted sampler.

  python benchmarks/bench_rollouts.py                       # two small sizes, CPU-friendly
  python benchmarks/bench_rollouts.py --sizes=d128-l4,d256-l6 --cases=64 --rollouts=20
  python benchmarks/bench_rollouts.py --processes=2     # the same, as 2 jax.distributed processes

With --processes=N the benchmark starts N copies of itself on localhost (jax.distributed, one
CPU device each, process i pinned to CPU core i mod cores); the rollout slots are split over
the N devices (zero_shot.RolloutSampler's mesh) and process 0 prints the global numbers.

Random weights (speed does not depend on them); the KV cache is a ring buffer of prompt_len
slots (the runner uses the training length), so a step's cost does not grow with the rollout;
a model that never stops, so every rollout
runs to max_new_tokens and the count of generated tokens is exact. Compile time is reported
apart. Prints the machine (device kind, CPU count, load average): on a shared machine the
numbers are noisy, so compare runs made side by side.
"""

import os
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

from ehr_jax import parallel
from ehr_jax.evaluation import zero_shot
from ehr_jax.evaluation.tasks import OutcomeRule
from ehr_jax.model import init as model_init
from ehr_jax.model import transformer

import machine

_SIZES = flags.DEFINE_list("sizes", ["d32-l1", "d64-l2"], "Model sizes from the ladder.")
_VOCAB = flags.DEFINE_integer("vocab", 1024, "Vocabulary size.")
_PROMPT = flags.DEFINE_integer("prompt_len", 128, "Prompt tokens per case.")
_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Generated tokens per rollout.")
_CASES = flags.DEFINE_integer("cases", 16, "Cases per batch.")
_ROLLOUTS = flags.DEFINE_integer("rollouts", 20, "Rollouts per case.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed batches after the compile.")
_PROCESSES = flags.DEFINE_integer("processes", 1, "jax.distributed processes on localhost (> 1: launcher).")


def machine_line() -> str:
    device = jax.devices()[0]
    return (f"{device.platform}:{device.device_kind} x{jax.device_count()}, jax {jax.__version__}; "
            f"{machine.describe()}")


def bench_size(size: str) -> dict:
    model_cfg = transformer.model_config(ml_collections.ConfigDict({"size": size, "dtype": "auto"}),
                                         _VOCAB.value, _PROMPT.value)
    mesh = parallel.make_mesh((-1, 1, 1))  # every device of every process on the data axis
    model = nnx.merge(*model_init.init(model_cfg, mesh, 0)[:2])
    vocab = [f"T{i}" for i in range(_VOCAB.value)]
    rule = zero_shot.resolve_rule(OutcomeRule(positive=("NEVER",), negative=("NEVER",)), vocab)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(4, _VOCAB.value, _PROMPT.value) for _ in range(_CASES.value)]
    tokens, valid = zero_shot.left_pad(prompts, _PROMPT.value)
    horizon = np.full(_CASES.value, np.inf)
    sampler = zero_shot.RolloutSampler(model, prompt_len=_PROMPT.value, max_new_tokens=_NEW.value,
                                       num_rollouts=_ROLLOUTS.value, cases_per_batch=_CASES.value,
                                       window=_PROMPT.value,  # as the runner: ring buffer of the window
                                       mesh=mesh if jax.device_count() > 1 else None)
    t0 = time.perf_counter()
    sampler.run(tokens, valid, horizon, rule, seed=0)
    compile_s = time.perf_counter() - t0
    sampler.timings.clear()
    t0 = time.perf_counter()
    generated = 0
    for repeat in range(_REPEATS.value):
        generated += int(sampler.run(tokens, valid, horizon, rule, seed=repeat + 1).new_tokens_CxR.sum())
    rollout_s = (time.perf_counter() - t0) / _REPEATS.value
    phases = {k: v / _REPEATS.value / rollout_s for k, v in sampler.timings.items()}

    # Prefill alone (the rollout's first phase), on the same prompts.
    graphdef, state = nnx.split(model)
    prefill = jax.jit(lambda s, t, v: nnx.merge(graphdef, s).prefill(t, v, max_len=t.shape[1])[0])
    place = zero_shot.batch_placer(mesh, len(tokens))
    prefill(state, place(tokens), place(valid)).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(_REPEATS.value):
        prefill(state, place(tokens), place(valid)).block_until_ready()
    prefill_s = (time.perf_counter() - t0) / _REPEATS.value
    return {"size": size, "compile_s": compile_s, "rollout_s": rollout_s,
            "generated_tok_s": generated / _REPEATS.value / rollout_s,
            "prefill_tok_s": tokens.size / prefill_s, "traces": sampler.traces, "phases": phases}


def launch(argv: list[str], n: int) -> None:
    """Runs this benchmark as n jax.distributed processes on localhost; returns when all end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [a for a in argv[1:] if not a.startswith("--processes")]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cores = sorted(os.sched_getaffinity(0))
    children = []
    for i in range(n):
        core = {cores[i % len(cores)]}
        children.append(subprocess.Popen(
            [sys.executable, argv[0], *args], stdout=None if i == 0 else subprocess.DEVNULL,
            env={**env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(n),
                 "JAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu"},
            preexec_fn=lambda core=core: os.sched_setaffinity(0, core)))
    codes = [child.wait() for child in children]
    if any(codes):
        sys.exit(f"a benchmark process failed: exit codes {codes}")


def main(argv) -> None:
    if _PROCESSES.value > 1:
        launch(sys.argv, _PROCESSES.value)
        return
    del argv
    parallel.initialize_distributed()  # a child of --processes (JAX_* variables set), else nothing
    if jax.process_index() != 0:
        for size in _SIZES.value:
            bench_size(size)
        return
    print(f"machine: {machine_line()}")
    print(f"batch: {_CASES.value} cases x {_ROLLOUTS.value} rollouts = {_CASES.value * _ROLLOUTS.value} "
          f"sequences, prompt {_PROMPT.value}, {_NEW.value} new tokens, vocab {_VOCAB.value}")
    for size in _SIZES.value:
        r = bench_size(size)
        print(f"{r['size']:>10}: generated {r['generated_tok_s']:,.0f} tok/s "
              f"({r['rollout_s']:.2f}s per batch), prefill {r['prefill_tok_s']:,.0f} tok/s, "
              f"compile {r['compile_s']:.1f}s, traces {r['traces']}; time in "
              + ", ".join(f"{k[:-2]} {100 * v:.0f}%" for k, v in sorted(r["phases"].items())), flush=True)


if __name__ == "__main__":
    app.run(main)
