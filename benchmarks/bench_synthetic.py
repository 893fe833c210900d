"""Synthetic MEDS generator throughput and peak memory at several dataset sizes.

  python benchmarks/bench_synthetic.py --sizes=10000,100000

Each size runs in a fresh subprocess so its peak RSS is its own. Reports wall-clock and CPU
events/s: on a shared machine the wall number depends on the load (printed alongside), the
CPU number much less so.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from ehr_jax import synthetic

import machine

_SIZES = flags.DEFINE_list("sizes", ["10000", "100000"], "Numbers of subjects to generate.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed.")
_CHILD = flags.DEFINE_integer("child", 0, "Internal: generate this many subjects and print JSON.")
_CHILD_OUT = flags.DEFINE_string("child_out", "", "Internal: output directory of the child run.")


def _child(num_subjects: int, out: str) -> None:
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    counts = synthetic.generate(out, num_subjects, seed=_SEED.value)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs) / 2**20
    print(json.dumps({"subjects": num_subjects, "events": counts["events"], "codes": counts["codes"],
                      "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "events_per_s": round(counts["events"] / wall),
                      "events_per_cpu_s": round(counts["events"] / cpu), "peak_rss_mb": round(rss_mb),
                      "disk_mb": round(size_mb), "events_per_subject": round(counts["events"] / num_subjects)}))


def main(argv) -> None:
    del argv
    if _CHILD.value:
        _child(_CHILD.value, _CHILD_OUT.value)
        return
    print(f"machine: {machine.describe()}")
    for size in _SIZES.value:
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            result = subprocess.run([sys.executable, __file__, f"--child={size}", f"--child_out={tmp}/meds",
                                     f"--seed={_SEED.value}"], capture_output=True, text=True, check=True)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            row["load_avg_1m_before"] = round(load, 1)
            print(json.dumps(row))


if __name__ == "__main__":
    app.run(main)
