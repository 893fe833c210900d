"""The run and sweep directory contract: which files a run or sweep dir holds, written one way.

A run dir holds config.json, metrics.jsonl, tensorboard/, checkpoints/, evaluation/ and, once
training finished, summary.json (written last: its presence marks the run done). A sweep dir
holds meds/ and prepared/ (when it made them), runs/<name>/ (one run dir per grid point),
results.jsonl, failures.jsonl, skipped.json, commands.txt and analysis/. Every file that another
stage reads is replaced whole (temp file, fsync, rename), so a kill leaves the old file or the new.

A workdir is guarded (docs/TRAINING.md, "Workdirs are guarded"): fingerprint.json records what
defines its results (the config minus keys that only change logging, speed or evaluation, the
prepared data's tokenizer and shard digests, the code version), and a rerun whose fingerprint
differs is refused once anything was trained; locks (flock, released by the kernel when a holder
dies) give one writer per run dir and per shared file, and tell a waiting process who holds them.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from absl import logging

from ehr_jax.errors import ConfigError

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
FINGERPRINT = "fingerprint.json"
SETUP_LOCK = ".setup.lock"  # fingerprint check, synthetic data and prepare: one process at a time
USE_LOCK = ".workdir.lock"  # held shared by every invocation working in the workdir
RUN_LOCK = ".run.lock"  # in a run dir: its one trainer (and evaluator)
ANALYSIS_LOCK = ".analysis.lock"

# Keys that change logging, speed, memory or which runs this invocation does, never a result.
# (model.attention picks a kernel, and the memory keys rematerialisation and micro-batches, for
# the same function and global batch.)
IGNORED_KEYS = ("data.num_workers", "model.remat", "model.attention", "mesh.shape",
                "train.log_every", "train.eval_every", "train.checkpoint_every",
                "train.keep_checkpoints", "train.keep_steps", "train.profile_steps",
                "train.memory_fit", "train.grad_accum_steps", "train.device_memory_gib",
                "eval.enabled", "grid.only", "grid.dry_run", "grid.workers", "grid.analysis",
                "grid.analysis_n", "grid.compilation_cache")
# Keys a rerun may change with --allow_changes=KEY (or a group: eval, grid): evaluation settings
# (runs already evaluated keep their results) and the grid (runs of one (budget, size) are the
# same run in either grid, so a larger grid extends the study).
CHANGEABLE_KEYS = ("eval.", "grid.budgets", "grid.sizes", "grid.seeds", "grid.sizes_per_budget",
                   "grid.tokens_per_param", "grid.optimum_law", "grid.min_sizes",
                   "grid.min_steps", "grid.max_epochs")


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


class Lock:
    """An flock on directory/name that records its holder (pid, host, command) for waiters.

    The kernel releases an flock when its holder dies, so a killed process never leaves a stale
    lock on one host, and NFS v4 servers release a dead client's locks when its lease ends. The
    holder record is only for the message a waiting process prints.
    """

    def __init__(self, directory: str | os.PathLike, name: str, what: str = ""):
        self.path = Path(directory) / name
        self.what = what or str(self.path)
        self._handle = None

    def acquire(self, *, wait: bool = True, shared: bool = False) -> bool:
        """Takes the lock; without `wait`, returns False at once when another process holds it."""
        if self._handle is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        waited_since = None
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    handle.close()
                    raise
            if not wait:
                handle.close()
                return False
            now = time.monotonic()
            if waited_since is None or now - waited_since > 300:
                logging.warning("%s is in use by %s; waiting for it (Ctrl-C stops this one)",
                                self.what, self.holder() or "another process")
                waited_since = now
            time.sleep(0.5)
        if not shared:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": _now(), "command": " ".join(sys.argv)[:500]}))
            handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def holder(self) -> str:
        """'pid P on host H since T (command)' of the last exclusive holder, or ""."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return ""
        if not info:
            return ""
        return (f"pid {info.get('pid')} on host {info.get('host')} since {info.get('since')} "
                f"({info.get('command')})")

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def locked(directory: str | os.PathLike, name: str = ".lock") -> Iterator[None]:
    """An exclusive Lock on directory/name, held for the `with` block (waits for other holders)."""
    with Lock(directory, name):
        yield


def flatten_config(config, prefix: str = "") -> dict:
    """{"group.key": value} of a ConfigDict or dict (tuples stay values)."""
    flat = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_fingerprint(config, workdir: str | os.PathLike) -> dict:
    """The keys that define a workdir's results, JSON-ready, with data paths made absolute."""
    workdir = Path(workdir).absolute()
    flat = {k: v for k, v in flatten_config(config).items() if k not in IGNORED_KEYS}
    prepared = flat.get("data.prepared_dir") or workdir / "prepared"
    flat["data.prepared_dir"] = str(Path(prepared).expanduser().resolve())
    if flat.get("data.meds_dir"):
        flat["data.meds_dir"] = str(Path(flat["data.meds_dir"]).expanduser().resolve())
    flat["sweep"] = "grid" in config
    return json.loads(json.dumps(flat, default=str))


def data_fingerprint(manifest: dict) -> dict:
    """What the prepared data is: tokenizer hash, vocabulary size and a digest of every shard."""
    digests = [shard.get("sha256", "") for split in sorted(manifest.get("splits", {}))
               for shard in manifest["splits"][split].get("shards", [])]
    return {"tokenizer_hash": manifest.get("tokenizer_hash"),
            "vocab_size": manifest.get("vocab_size"),
            "shards_sha256": hashlib.sha256("".join(digests).encode()).hexdigest()[:16]}


def code_version() -> str:
    """The package version and git commit of this code (recorded; a change is only logged)."""
    from importlib import metadata

    try:
        version = metadata.version("ehr-jax")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def has_trained_state(workdir: str | os.PathLike) -> bool:
    """Whether anything was trained here: a summary or a checkpoint, of the run or a sweep run."""
    workdir = Path(workdir)
    run_dirs = [workdir] + (sorted((workdir / RUNS).iterdir()) if (workdir / RUNS).is_dir() else [])
    for run_dir in run_dirs:
        checkpoints = run_dir / CHECKPOINTS
        if (run_dir / SUMMARY).exists() or (checkpoints.is_dir() and any(checkpoints.iterdir())):
            return True
    return False


def has_evaluated_runs(workdir: str | os.PathLike) -> bool:
    """Whether a summary here (the run's, or a sweep run's) holds evaluation results."""
    workdir = Path(workdir)
    summaries = [workdir / SUMMARY] + sorted((workdir / RUNS).glob(f"*/{SUMMARY}"))
    return any(path.exists() and json.loads(path.read_text()).get("evaluation")
               for path in summaries)


def fingerprint_problem(workdir: str | os.PathLike, fingerprint: dict,
                        allow: Sequence[str] = ()) -> tuple[str, dict]:
    """(why a rerun with `fingerprint` must be refused or "", the changes it may record)."""
    path = Path(workdir) / FINGERPRINT
    if not path.exists():
        return "", {}
    recorded = json.loads(path.read_text())["config"]
    changed = {key: (recorded.get(key), fingerprint.get(key))
               for key in sorted(set(recorded) | set(fingerprint))
               if recorded.get(key) != fingerprint.get(key)}
    if not changed or not has_trained_state(workdir):
        return "", changed
    lines = [f"{key}: {old!r} here, {new!r} now" for key, (old, new) in changed.items()]
    fixed = [key for key in changed if not _changeable(key)]
    evaluated = has_evaluated_runs(workdir)  # before any evaluation, eval keys are free
    not_allowed = [key for key in changed if _changeable(key) and not _allowed(key, allow)
                   and (evaluated or not key.startswith("eval."))]
    if not fixed and not not_allowed:
        return "", changed
    head = (f"--workdir={workdir} holds runs trained with another config, so their results "
            f"would mix with this one's:\n    " + "\n    ".join(lines) + "\n  ")
    if fixed:
        return head + (f"{', '.join(fixed)} {'decides' if len(fixed) == 1 else 'decide'} what "
                       "was trained: use a new --workdir (or rerun with the values above)"), changed
    return head + (f"{', '.join(not_allowed)} may change (runs trained or evaluated already "
                   f"keep theirs): add --allow_changes={','.join(not_allowed)}, or use a new "
                   "--workdir"), changed


def check_allowed(allow: Sequence[str]) -> None:
    """--allow_changes names only keys (or the groups eval, grid) that may change."""
    wrong = [a for a in allow if not (a in ("eval", "grid") or _changeable(a))]
    if wrong:
        raise ConfigError(f"--allow_changes={','.join(allow)}: {', '.join(wrong)} may not change "
                          "in a workdir with runs (they decide what was trained); only eval keys "
                          f"and {', '.join(k for k in CHANGEABLE_KEYS if k.startswith('grid'))} "
                          "may")


def _changeable(key: str) -> bool:
    return any(key == c or (c.endswith(".") and key.startswith(c)) for c in CHANGEABLE_KEYS)


def _allowed(key: str, allow: Sequence[str]) -> bool:
    return any(key == a or key.startswith(f"{a}.") for a in allow)


def record_fingerprint(workdir: str | os.PathLike, fingerprint: dict, changed: dict,
                       data: dict | None = None) -> None:
    """Writes fingerprint.json: the config part (and data part), with a history of changes."""
    path = Path(workdir) / FINGERPRINT
    record = json.loads(path.read_text()) if path.exists() else {"created": _now(), "history": []}
    if changed and "config" in record:
        record["history"].append({"time": _now(), "changed": {
            key: {"was": old, "now": new} for key, (old, new) in changed.items()}})
    record["config"] = fingerprint
    if data is not None:
        record["data"] = data
    record["code_version"] = code_version()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


class WorkdirClaim:
    """This invocation's hold on a workdir (process 0 only): open() checks or records the config
    fingerprint under the set-up lock and marks the workdir in use; data_prepared() checks the
    data fingerprint and lets the next invocation set up; close() lets go of everything."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.setup = Lock(workdir, SETUP_LOCK, f"the set-up of {workdir}")
        self.in_use = Lock(workdir, USE_LOCK, f"{workdir}")
        self.fingerprint: dict = {}

    def open(self, fingerprint: dict, allow: Sequence[str] = ()) -> None:
        self.setup.acquire()
        try:
            problem, changed = fingerprint_problem(self.workdir, fingerprint, allow)
            if problem:
                raise ConfigError(problem)
            if changed and not has_trained_state(self.workdir):
                other = Lock(self.workdir, USE_LOCK)
                if not other.acquire(wait=False):
                    raise ConfigError(f"--workdir={self.workdir} is in use by another invocation "
                                      f"with another config ({', '.join(changed)} differ); wait "
                                      "for it or use a new --workdir")
                other.release()
                logging.warning("%s: nothing trained here yet, so the new config replaces the "
                                "recorded one (%s)", self.workdir, ", ".join(changed))
            elif changed:
                logging.warning("%s: recording the allowed changes %s", self.workdir,
                                ", ".join(changed))
            self.in_use.acquire(shared=True)
            record_fingerprint(self.workdir, fingerprint, changed)
            self.fingerprint = fingerprint
        except BaseException:
            self.close()
            raise

    def data_prepared(self, manifest: dict) -> None:
        """Refuses prepared data other than the runs here were trained on; records it first time."""
        try:
            data = data_fingerprint(manifest)
            recorded = json.loads((self.workdir / FINGERPRINT).read_text()).get("data")
            if recorded and recorded != data and has_trained_state(self.workdir):
                raise ConfigError(
                    f"the prepared data now differs from the data the runs in --workdir="
                    f"{self.workdir} were trained on (tokenizer {recorded.get('tokenizer_hash')} "
                    f"-> {data['tokenizer_hash']}, shards {recorded.get('shards_sha256')} -> "
                    f"{data['shards_sha256']}): the MEDS files or the tokenizer code changed. Use a "
                    "new --workdir")
            if recorded != data:
                record_fingerprint(self.workdir, self.fingerprint, {}, data)
        finally:
            self.setup.release()

    def close(self) -> None:
        self.setup.release()
        self.in_use.release()


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
