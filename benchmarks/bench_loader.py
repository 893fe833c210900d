"""Loader throughput: training batches per second from ArrayRecord shards, in tokens/s.

  python benchmarks/bench_loader.py --num_patients=4000 --seq_len=256 --batch_size=16

Writes synthetic patient records (log-normal lengths, a 4-token prefix) to a temp dir, then
times `train_loader` after a warm-up, in-process and with Grain worker processes. Reports
window tokens/s (batch x seq_len per batch), target tokens/s (mask sum, i.e. excluding
padding and carried prefixes) and window tokens per CPU-second of the main process (less
sensitive to other jobs on a shared machine; with workers it counts only the main process's
share). Numbers go to docs/PERFORMANCE.md with the machine.
"""

import os
import tempfile
import time

import grain
import numpy as np
from absl import app, flags

from ehr_jax import rundir
from ehr_jax.data import loader, shards

import machine

_NUM_PATIENTS = flags.DEFINE_integer("num_patients", 4000, "synthetic patients in the train split")
_MEAN_TOKENS = flags.DEFINE_integer("mean_tokens", 800, "mean tokens per patient")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "tokens per window")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "global batch size (one process)")
_SECONDS = flags.DEFINE_float("seconds", 3.0, "timed seconds per setting")
_WORKERS = flags.DEFINE_list("workers", ["0", "1"], "num_workers settings to time")


def _write_synthetic(root: str, num_patients: int, mean_tokens: int) -> int:
    rng = np.random.default_rng(0)
    lengths = np.maximum(rng.lognormal(np.log(mean_tokens) - 0.5, 1.0, num_patients), 8)
    lengths = lengths.astype(np.int64)
    records = (shards.PatientRecord(k, rng.integers(4, 2048, n, dtype=np.int32),
                                    np.arange(n, dtype=np.int64), 4)
               for k, n in enumerate(lengths))
    entries = shards.write_split(records, root, "train", records_per_shard=1000)
    rundir.write_json_atomic(os.path.join(root, shards.MANIFEST),
                             {"splits": {"train": {"shards": entries}}})
    return int(lengths.sum())


def _time_loader(root: str, num_workers: int) -> tuple[float, float, float, int]:
    iterator = loader.train_loader(root, seq_len=_SEQ_LEN.value,
                                   global_batch_size=_BATCH_SIZE.value, seed=0,
                                   process_index=0, process_count=1, num_workers=num_workers)
    for _ in range(20):  # warm-up: worker start, file handles, prefetch buffers
        next(iterator)
    batches, targets = 0, 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < _SECONDS.value:
        batch = next(iterator)
        targets += float(batch["mask"].sum())
        batches += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start  # this process's threads only, not its workers
    iterator.close()
    window_tokens = batches * _BATCH_SIZE.value * _SEQ_LEN.value
    return window_tokens / elapsed, targets / elapsed, window_tokens / cpu, batches


def main(argv) -> None:
    del argv
    version = getattr(grain, "__version__", "?")
    print(f"machine: {machine.describe()}, grain {version}")
    with tempfile.TemporaryDirectory() as root:
        total = _write_synthetic(root, _NUM_PATIENTS.value, _MEAN_TOKENS.value)
        windows = loader.num_windows(root, "train", _SEQ_LEN.value)
        print(f"data: {_NUM_PATIENTS.value} patients, {total} tokens, {windows} windows of "
              f"{_SEQ_LEN.value}; batch {_BATCH_SIZE.value}")
        for workers in map(int, _WORKERS.value):
            window_rate, target_rate, cpu_rate, batches = _time_loader(root, workers)
            print(f"num_workers={workers}: {window_rate / 1e6:.2f}M window tokens/s, "
                  f"{target_rate / 1e6:.2f}M target tokens/s, {cpu_rate / 1e6:.2f}M window "
                  f"tokens per CPU-second of the main process ({batches} batches)")


if __name__ == "__main__":
    app.run(main)
