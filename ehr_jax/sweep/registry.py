"""results.jsonl and failures.jsonl of a sweep: one line per finished run, exactly once.

results.jsonl is only ever replaced whole (rundir.write_text_atomic) under the sweep's registry
lock, so launchers running several runs at once, and kills at any moment, never lose or double a
line; every sweep start re-adds the runs whose summary.json landed after the last update.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

from absl import logging

from ehr_jax import rundir
from ehr_jax.sweep import grid as grid_lib

_LOCK = ".registry.lock"


def read_results(workdir: str) -> list[dict]:
    """results.jsonl as a list of summaries (empty when there is none yet)."""
    path = Path(workdir) / rundir.RESULTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_result(workdir: str, summary: dict, name: str) -> bool:
    """Puts a run's summary into results.jsonl: one line per run, replaced when the summary
    changed (an evaluation merged after training); returns whether the file changed."""
    summary = dict(summary)
    summary.setdefault("run_name", name)
    with rundir.locked(workdir, _LOCK):
        results = read_results(workdir)
        index = next((i for i, line in enumerate(results) if _line_name(line) == name), None)
        if index is None:
            results.append(summary)
        elif results[index] == summary:
            return False
        else:
            results[index] = summary
        lines = [json.dumps(line, sort_keys=True) for line in results]
        rundir.write_text_atomic(Path(workdir) / rundir.RESULTS, "\n".join(lines) + "\n")
    return True


def _line_name(line: dict) -> str:
    """The run a line belongs to: its run_name (the run dir's name), else its grid point's name
    (a sweep of one seed names runs without the seed)."""
    if line.get("run_name"):
        return line["run_name"]
    point = line.get("grid_point") or (line.get("config") or {}).get("grid_point") or {}
    if point.get("size") and point.get("budget"):
        return grid_lib.run_name(point["budget"], point["size"])
    return ""


def sync_results(workdir: str, names: list[str]) -> int:
    """Brings results.jsonl in line with the runs' summary.json files (a kill between the two).

    Runs that still need evaluation are updated again by the loop once evaluated.
    """
    added = 0
    for name in names:
        summary = rundir.read_summary(Path(workdir) / rundir.RUNS / name)
        if summary is not None:
            added += record_result(workdir, summary, name)
    if added:
        logging.info("Sweep: brought %d finished runs up to date in %s", added,
                     Path(workdir) / rundir.RESULTS)
    return added


def record_failure(workdir: str, name: str, error: BaseException) -> None:
    """Appends one line per failed attempt: run, error type, message, the last frames."""
    frames = traceback.format_exception(type(error), error, error.__traceback__)
    line = {"run_name": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "error": type(error).__name__, "message": str(error),
            "traceback": "".join(frames)[-4000:]}
    with rundir.locked(workdir, _LOCK):
        with open(Path(workdir) / rundir.FAILURES, "a") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
