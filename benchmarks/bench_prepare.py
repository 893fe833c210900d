"""Tokenize+shard throughput (events/s) and peak RSS of `ehr_jax.data.prepare` at two dataset sizes.

    python benchmarks/bench_prepare.py --subjects=10000,100000 --workdir=/tmp/bench_prepare

Data come from ehr_jax.synthetic (generated once per size and cached in --workdir). Each
prepare runs in a fresh child process, so its peak RSS is its own: if peak memory stays flat
while the dataset grows 10x, the pipeline streams. Results go to docs/PERFORMANCE.md by hand.
events/cpu-s (user+system time of the child, all threads) is the steadier number on a shared machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

import machine

_SUBJECTS = flags.DEFINE_list("subjects", ["10000", "100000"], "Dataset sizes (subjects) to time.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/bench_prepare", "Cache of generated MEDS data and outputs.")
_SEED = flags.DEFINE_integer("seed", 0, "Synthetic generator seed.")

_CHILD = r"""
import json, resource, sys, time
from absl import logging
logging.set_verbosity(logging.WARNING)
from ehr_jax.data import prepare
start = time.perf_counter()
manifest = prepare.prepare(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - start
events = sum(s["num_events"] for s in manifest["splits"].values())
tokens = sum(s["num_tokens"] for s in manifest["splits"].values())
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "events": events, "tokens": tokens, "vocab_size": manifest["vocab_size"],
                  "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def ensure_data(root: Path, num_subjects: int, seed: int) -> Path:
    """Generates the synthetic MEDS dataset once (in a child process, so its memory is not counted)."""
    meds_dir = root / f"meds-{num_subjects}-{seed}"
    marker = meds_dir / "metadata" / "bench_done"
    if not marker.exists():
        code = ("import sys; from ehr_jax import synthetic; "
                "synthetic.generate(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, str(meds_dir), str(num_subjects), str(seed)], check=True)
        print(f"generated {num_subjects} subjects in {time.perf_counter() - start:.1f}s", flush=True)
        marker.write_text("ok")
    return meds_dir


def run_prepare(meds_dir: Path, out_dir: Path) -> dict:
    if out_dir.exists():
        subprocess.run(["rm", "-rf", str(out_dir)], check=True)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(meds_dir), str(out_dir)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    del argv
    root = Path(_WORKDIR.value)
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine.describe()} (shared machine: numbers are noisy)")
    for n in (int(s) for s in _SUBJECTS.value):
        meds_dir = ensure_data(root, n, _SEED.value)
        result = run_prepare(meds_dir, root / f"prepared-{n}")
        print(f"subjects={n:>7}  events={result['events']:>11,}  tokens={result['tokens']:>11,}  "
              f"time={result['seconds']:6.1f}s  events/s={result['events'] / result['seconds']:>10,.0f}  "
              f"events/cpu-s={result['events'] / result['cpu_seconds']:>10,.0f}  "
              f"peak_rss={result['peak_rss_mb']:6.0f} MB  vocab={result['vocab_size']}", flush=True)


if __name__ == "__main__":
    app.run(main)
