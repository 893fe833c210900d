"""More sweep processes on one host: config.grid.workers - 1 copies of the sweep's own command.

A grid of tiny models leaves a multi-core CPU mostly idle (XLA:CPU runs their small matmuls on
one core), so the quickstart trains two runs at a time. The copies share the workdir exactly as
two sweeps started by hand do (ehr_jax/sweep/loop.py): each run is trained under its run dir's
lock, a run another process holds is left for last, so every run trains once; the first process
waits for the others' runs, writes the analysis, and stops the copies if it is interrupted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ml_collections
from absl import logging

from ehr_jax.errors import ConfigError
from ehr_jax.sweep import commands

LOG_DIR = "workers"  # <workdir>/workers/worker-<k>.log


def start(config: ml_collections.ConfigDict, workdir: str, prepared_dir: str,
          command_line: tuple[str, dict] | None) -> list[subprocess.Popen]:
    """grid.workers - 1 sweep processes on the prepared data, without analysis; [] for one."""
    count = int(config.grid.workers)
    if count <= 1 or config.grid.only:
        return []
    import jax

    if jax.process_count() > 1:
        raise ConfigError(f"config.grid.workers={count} starts sweep processes on one host; a "
                          f"multi-process job ({jax.process_count()} processes) trains one run at "
                          "a time over all its devices: leave grid.workers at 1")
    if command_line is None:
        raise ConfigError(f"config.grid.workers={count} starts copies of `python -m ehr_jax.main "
                          "--config=FILE ...`, so the sweep must be started from that command")
    os.makedirs(Path(workdir) / LOG_DIR, exist_ok=True)
    args = commands.sweep_args(sys.executable, os.path.abspath(workdir), *command_line,
                               {"data.prepared_dir": os.path.abspath(prepared_dir),
                                "grid.workers": 1, "grid.analysis": False})
    processes = []
    for k in range(1, count):
        log = Path(workdir) / LOG_DIR / f"worker-{k}.log"
        with open(log, "w") as out:
            processes.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
        logging.info("Sweep: worker %d of %d started (pid %d, log %s)", k + 1, count,
                     processes[-1].pid, log)
    return processes


def wait(processes: list[subprocess.Popen], workdir: str) -> None:
    """Waits for the copies; one that failed is reported (its runs' errors are in
    failures.jsonl, and the first process has already retried what it left unfinished)."""
    for k, process in enumerate(processes, start=1):
        code = process.wait()
        if code:
            logging.warning("Sweep: worker %d exited with code %d; see %s", k + 1, code,
                            Path(workdir) / LOG_DIR / f"worker-{k}.log")


def stop(processes: list[subprocess.Popen]) -> None:
    """Terminates the copies (the first process was interrupted); their runs resume on rerun."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
