"""The run and sweep directory contract: which files a run or sweep dir holds, written one way.

A run dir holds config.json, metrics.jsonl, tensorboard/, checkpoints/, evaluation/ and, once
training finished, summary.json (written last: its presence marks the run done). A sweep dir
holds meds/ and prepared/ (when it made them), runs/<name>/ (one run dir per grid point),
results.jsonl, failures.jsonl, skipped.json, commands.txt and analysis/. Every file that another
stage reads is replaced whole (temp file, fsync, rename), so a kill leaves the old file or the new.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

CONFIG = "config.json"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
EVALUATION = "evaluation"
RUNS = "runs"
RESULTS = "results.jsonl"
FAILURES = "failures.jsonl"
SKIPPED = "skipped.json"
COMMANDS = "commands.txt"
ANALYSIS = "analysis"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write-then-rename with fsyncs: after a crash `path` is the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """JSON (indented, sorted keys) through write_text_atomic."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def read_summary(run_dir: str | os.PathLike) -> dict | None:
    """A run's summary.json, or None while the run is not finished."""
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def merge_into_summary(run_dir: str | os.PathLike, **fields) -> dict | None:
    """Adds fields (e.g. evaluation=...) to summary.json; never creates it (that marks done)."""
    summary = read_summary(run_dir)
    if summary is not None:
        summary.update(fields)
        write_json_atomic(Path(run_dir) / SUMMARY, summary)
    return summary


@contextlib.contextmanager
def locked(directory: str | os.PathLike, name: str = ".lock") -> Iterator[None]:
    """An exclusive flock on directory/name, held for the `with` block (waits for other holders)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
