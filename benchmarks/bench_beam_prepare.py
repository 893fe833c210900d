"""Beam engine throughput and peak memory per worker (DirectRunner, multi_processing).

    python benchmarks/bench_beam_prepare.py --subjects=10000,100000 --workers=1,2 --workdir=/tmp/bench_prepare

Same synthetic data as bench_prepare.py (generated once per size in --workdir). Each run is a
fresh child process (the Beam driver) whose worker processes are sampled for RSS every 0.2 s:
"worker peak" is the largest RSS any one worker reached, "driver peak" the driver's own. If the
worker peak stays flat while the data grow 10x, the engine streams. events/worker-s divides the
events by wall time x workers (the cost-model number for a cluster); events/cpu-s uses the
workers' user+system time. With --local, the local engine runs first on each size (A/B on the
same load). Results go to docs/PERFORMANCE.md by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bench_prepare
from absl import app, flags

import machine

# --subjects, --workdir and --seed are bench_prepare's flags (same data cache).
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "DirectRunner worker processes to time.")
_LOCAL = flags.DEFINE_bool("local", True, "Also time the local engine on each size.")

_CHILD = r"""
import json, resource, sys, threading, time
import psutil
from absl import logging
logging.set_verbosity(logging.WARNING)
from ehr_jax.data import beam_prepare
peaks, done = {}, threading.Event()
def sample():
    me = psutil.Process()
    while not done.wait(0.2):
        for child in me.children(recursive=True):
            try:
                peaks[child.pid] = max(peaks.get(child.pid, 0), child.memory_info().rss)
            except psutil.Error:
                pass
threading.Thread(target=sample, daemon=True).start()
workers = int(sys.argv[3])
args = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
start = time.perf_counter()
manifest = beam_prepare.prepare(sys.argv[1], sys.argv[2], pipeline_args=args)
seconds = time.perf_counter() - start
done.set()
events = sum(s["num_events"] for s in manifest["splits"].values())
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": seconds, "events": events, "worker_cpu_seconds": children.ru_utime + children.ru_stime,
                  "worker_peak_mb": max(peaks.values(), default=0) / 2**20, "processes": len(peaks),
                  "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_beam(meds_dir: Path, out_dir: Path, workers: int) -> dict:
    if out_dir.exists():
        subprocess.run(["rm", "-rf", str(out_dir)], check=True)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(meds_dir), str(out_dir), str(workers)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    del argv
    root = Path(bench_prepare._WORKDIR.value)
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine.describe()} (shared machine: numbers are noisy)")
    for n in (int(s) for s in bench_prepare._SUBJECTS.value):
        meds_dir = bench_prepare.ensure_data(root, n, bench_prepare._SEED.value)
        if _LOCAL.value:
            r = bench_prepare.run_prepare(meds_dir, root / f"prepared-{n}")
            print(f"subjects={n:>7}  local          events={r['events']:>11,}  time={r['seconds']:6.1f}s  "
                  f"events/s={r['events'] / r['seconds']:>10,.0f}  "
                  f"events/cpu-s={r['events'] / r['cpu_seconds']:>10,.0f}  peak_rss={r['peak_rss_mb']:6.0f} MB",
                  flush=True)
        for workers in (int(w) for w in _WORKERS.value):
            r = run_beam(meds_dir, root / f"beam-{n}-{workers}", workers)
            print(f"subjects={n:>7}  beam workers={workers}  events={r['events']:>11,}  time={r['seconds']:6.1f}s  "
                  f"events/s={r['events'] / r['seconds']:>10,.0f}  "
                  f"events/worker-s={r['events'] / r['seconds'] / workers:>10,.0f}  "
                  f"events/cpu-s={r['events'] / r['worker_cpu_seconds']:>10,.0f}  "
                  f"worker_peak={r['worker_peak_mb']:6.0f} MB  driver_peak={r['driver_peak_mb']:6.0f} MB  "
                  f"load={os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    app.run(main)
