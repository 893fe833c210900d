"""The sweep: every grid point trained in turn by the single-run trainer, safe to kill and rerun.

  python -m ehr_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

A run dir with summary.json is done and never retrained; an interrupted run resumes from its own
checkpoints (the trainer does that); a failing run is recorded in failures.jsonl and the others
go on. results.jsonl holds one line per finished run, exactly once, whenever the sweep is killed:
it is only ever replaced whole (temp file, fsync, rename) under a lock, and every start re-adds
the runs whose summary.json landed after the last update.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import time
import traceback
from pathlib import Path
from typing import Callable

import ml_collections
from absl import flags, logging

from ehr_jax import grid as grid_lib
from ehr_jax.data import shards
from ehr_jax.errors import ConfigError, EhrJaxError

if "dry_run" not in flags.FLAGS:
    flags.DEFINE_bool("dry_run", False, "Sweeps: print one `ehr_jax.main` command per run "
                      "(for launchers) instead of training; same as --config.grid.dry_run=True.")

RESULTS = "results.jsonl"
FAILURES = "failures.jsonl"
SKIPPED = "skipped.json"
COMMANDS = "commands.txt"
SUMMARY = "summary.json"
# Overrides a per-run launcher command must not repeat: it sets them itself.
_LAUNCH_OWNED_KEYS = ("grid.dry_run", "grid.only", "data.prepared_dir")


class SweepFailed(EhrJaxError):
    """Some runs failed; the others finished. Rerunning the command retries only the failed."""


def run(config: ml_collections.ConfigDict, workdir: str, *, train_fn: Callable | None = None,
        evaluate_fn: Callable | None = None, prepare_fn: Callable | None = None,
        report_fn: Callable | None = None) -> dict:
    """Runs (or, with dry_run, prints) every kept grid point; returns what happened.

    The *_fn arguments default to the real stages (imported lazily); tests inject fakes.
    Raises SweepFailed at the end when any run failed.
    """
    _check_grid(config)
    workdir = os.path.abspath(workdir)
    prepare_fn = prepare_fn or _default_prepare
    prepared_dir = os.path.abspath(prepare_fn(config, workdir))
    points = _plan(config, workdir, prepared_dir)
    if _dry_run(config):
        return {"commands": print_commands(points, workdir, prepared_dir)}
    train_fn = train_fn or _default_train
    if config.grid.get("compilation_cache", False):
        _enable_compilation_cache(workdir)
    if config.eval.enabled and evaluate_fn is None:
        evaluate_fn = _default_evaluate
    sync_results(workdir, points)
    meds_dir = shards.read_manifest(prepared_dir).get("meds_dir", "")
    outcome = _run_points(config, workdir, (prepared_dir, meds_dir), points, train_fn,
                          evaluate_fn)
    if config.grid.analysis and not config.grid.only and _is_writer():
        _write_analysis(workdir, report_fn, outcome)
    if outcome["failed"]:
        raise SweepFailed(
            f"{len(outcome['failed'])} of {len(points)} runs failed "
            f"({', '.join(outcome['failed'])}); errors in {Path(workdir) / FAILURES}. "
            f"Rerun the same command to retry them (finished runs are kept).")
    return outcome


def _check_grid(config: ml_collections.ConfigDict) -> None:
    if "grid" not in config:
        raise ConfigError("sweep.run needs a config.grid (budgets, sizes, min_steps, max_epochs)")
    for key in ("budgets", "sizes", "min_steps", "max_epochs", "only", "dry_run", "analysis"):
        if key not in config.grid:
            raise ConfigError(f"config.grid.{key} is missing; see configs/quickstart.py")
    if not config.data.meds_dir and config.data.synthetic_subjects <= 0:
        raise ConfigError(
            "config.data.meds_dir is empty and config.data.synthetic_subjects is 0: pass your "
            "MEDS dataset root, e.g. --config.data.meds_dir=/path/to/MIMIC-IV-MEDS")


def _plan(config: ml_collections.ConfigDict, workdir: str, prepared_dir: str) -> list:
    """Expands the grid, logs and files the skipped points, applies grid.only."""
    manifest = shards.read_manifest(prepared_dir)
    train_tokens = manifest["splits"]["train"]["num_tokens"]
    points = grid_lib.expand(config, vocab_size=manifest["vocab_size"], train_tokens=train_tokens)
    skipped = [p for p in points if p.skip_reason]
    for p in skipped:
        logging.warning("Sweep: leaving out %s: %s", p.name, p.skip_reason)
    if _is_writer():
        os.makedirs(workdir, exist_ok=True)
        shards.write_json_atomic(Path(workdir) / SKIPPED, [p.as_dict() for p in skipped])
    kept = [p for p in points if not p.skip_reason]
    if config.grid.only:
        wanted = [name.strip() for name in config.grid.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {p.name for p in kept})
        if unknown:
            raise ConfigError(
                f"config.grid.only names {', '.join(unknown)}, not runs of this grid; the grid "
                f"has {', '.join(p.name for p in kept)}")
        kept = [p for p in kept if p.name in wanted]
    logging.info("Sweep: %d runs (%.3g training FLOPs), %d left out (listed in %s)", len(kept),
                 sum(p.budget for p in kept), len(skipped), Path(workdir) / SKIPPED)
    return kept


def _run_points(config, workdir, data_dirs, points, train_fn, evaluate_fn) -> dict:
    """Every point in order; finished ones skipped, failures recorded, progress with ETA.

    data_dirs: (prepared_dir, meds_dir) shared by every run.
    """
    outcome = {"finished": [], "trained": [], "failed": [], "skipped": []}
    total_flops = sum(p.budget for p in points)
    done_flops, timings = 0.0, []  # timings: (budget, seconds) of runs trained now
    start = time.monotonic()
    for i, point in enumerate(points, 1):
        run_dir = os.path.join(workdir, "runs", point.name)
        already_done = os.path.exists(os.path.join(run_dir, SUMMARY))
        logging.info("Sweep run %d/%d %s: C=%.3g FLOPs, N=%d, D=%.3g tokens, %d steps, "
                     "%.2f epochs%s", i, len(points), point.name, point.budget, point.n_params,
                     point.tokens, point.steps, point.epochs,
                     " (finished before, skipping)" if already_done else "")
        cfg = grid_lib.run_config(config, point, *data_dirs)
        try:
            if not already_done:
                run_start = time.monotonic()
                train_fn(cfg, run_dir)
                timings.append((point.budget, time.monotonic() - run_start))
                outcome["trained"].append(point.name)
            summary = _evaluated_summary(run_dir, cfg, evaluate_fn)
            if _is_writer():
                record_result(workdir, summary, point.name)
            outcome["finished"].append(point.name)
        except Exception as e:  # one run failing must not stop the others  # noqa: BLE001
            logging.exception("Sweep run %s failed; going on with the others", point.name)
            if _is_writer():
                record_failure(workdir, point.name, e)
            outcome["failed"].append(point.name)
        done_flops += point.budget
        eta = _eta_seconds(timings, [p.budget for p in points[i:]])
        logging.info("Sweep progress: %d/%d runs, %.1f%% of FLOPs, %s elapsed%s", i, len(points),
                     100.0 * done_flops / total_flops if total_flops else 100.0,
                     _clock(time.monotonic() - start), f", ETA {_clock(eta)}" if eta else "")
    return outcome


def _enable_compilation_cache(workdir: str) -> None:
    """Runs of one size share their init and eval programs, and a rerun shares everything:
    JAX's persistent cache turns those recompiles (seconds each on CPU) into file reads."""
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user chose one (JAX_COMPILATION_CACHE_DIR)
        return
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _eta_seconds(timings: list[tuple[float, float]], remaining: list[float]) -> float | None:
    """Seconds left, from a fit seconds = overhead + budget / rate over this session's runs.

    The overhead term (set-up, compile, final validation) matters: small runs are mostly
    overhead, so a FLOPs-only rate would overstate the time left after them.
    """
    if not timings or not remaining:
        return None
    budgets, seconds = zip(*timings)
    per_flop = sum(seconds) / sum(budgets)
    overhead = 0.0
    if len(set(budgets)) > 1:
        mean_c, mean_s = sum(budgets) / len(budgets), sum(seconds) / len(seconds)
        cov = sum((c - mean_c) * (t - mean_s) for c, t in timings)
        var = sum((c - mean_c) ** 2 for c in budgets)
        slope = cov / var
        if slope > 0 and mean_s - slope * mean_c > 0:
            per_flop, overhead = slope, mean_s - slope * mean_c
    return sum(overhead + per_flop * c for c in remaining)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _evaluated_summary(run_dir: str, cfg: ml_collections.ConfigDict,
                       evaluate_fn: Callable | None) -> dict:
    """summary.json, with evaluation merged in (once) when it is asked for and not there yet."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        raise RuntimeError(f"{path}: the trainer returned without writing its summary")
    summary = json.loads(path.read_text())
    if evaluate_fn is not None and not summary.get("evaluation"):
        evaluation = evaluate_fn(run_dir, cfg)
        summary = json.loads(path.read_text())  # the evaluator may have merged it itself
        if not summary.get("evaluation"):
            summary["evaluation"] = evaluation
            if _is_writer():
                shards.write_json_atomic(path, summary)
    return summary


# --- results registry -------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(workdir: str):
    """An exclusive lock on the sweep's registry (launchers may run several runs at once)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, ".registry.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_results(workdir: str) -> list[dict]:
    """results.jsonl as a list of summaries (empty when there is none yet)."""
    path = Path(workdir) / RESULTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _replace_file(path: Path, text: str) -> None:
    """Write-then-rename with fsyncs: after a crash the file is the old one or the new one."""
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


def record_result(workdir: str, summary: dict, name: str) -> bool:
    """Puts a run's summary into results.jsonl: one line per run, replaced when the summary
    changed (an evaluation merged after training); returns whether the file changed."""
    summary = dict(summary)
    summary.setdefault("run_name", name)
    with _locked(workdir):
        results = read_results(workdir)
        index = next((i for i, line in enumerate(results) if _line_name(line) == name), None)
        if index is None:
            results.append(summary)
        elif results[index] == summary:
            return False
        else:
            results[index] = summary
        lines = [json.dumps(line, sort_keys=True) for line in results]
        _replace_file(Path(workdir) / RESULTS, "\n".join(lines) + "\n")
    return True


def _line_name(line: dict) -> str:
    point = line.get("grid_point") or (line.get("config") or {}).get("grid_point") or {}
    if point.get("size") and point.get("budget"):
        return grid_lib.run_name(point["budget"], point["size"])
    return line.get("run_name", "")


def sync_results(workdir: str, points: list) -> int:
    """Brings results.jsonl in line with the runs' summary.json files (a kill between the two).

    Runs that still need evaluation are updated again by the loop once evaluated.
    """
    if not _is_writer():
        return 0
    added = 0
    for point in points:
        path = Path(workdir) / "runs" / point.name / SUMMARY
        if path.exists():
            summary = json.loads(path.read_text())
            added += record_result(workdir, summary, point.name)
    if added:
        logging.info("Sweep: brought %d finished runs up to date in %s", added, Path(workdir) / RESULTS)
    return added


def record_failure(workdir: str, name: str, error: BaseException) -> None:
    """Appends one line per failed attempt: run, error type, message, the last frames."""
    frames = traceback.format_exception(type(error), error, error.__traceback__)
    line = {"run_name": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "error": type(error).__name__, "message": str(error),
            "traceback": "".join(frames)[-4000:]}
    with _locked(workdir):
        with open(Path(workdir) / FAILURES, "a") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


# --- launchers --------------------------------------------------------------------------------


def launch_command(name: str, workdir: str, prepared_dir: str, config_file: str,
                   overrides: dict) -> str:
    """The `ehr_jax.main` command that trains one run of this sweep (same grid, grid.only=name).

    It goes through the sweep (not a bare single run) so the run lands in <workdir>/runs/<name>,
    is skipped when finished, and its summary reaches results.jsonl exactly once.
    """
    args = ["python", "-m", "ehr_jax.main", f"--config={config_file}", f"--workdir={workdir}"]
    for key, value in overrides.items():
        if key not in _LAUNCH_OWNED_KEYS:
            args.append(f"--config.{key}={value}")
    args += [f"--config.data.prepared_dir={prepared_dir}", f"--config.grid.only={name}"]
    return " ".join(shlex.quote(a) for a in args)


def print_commands(points: list, workdir: str, prepared_dir: str,
                   config_file: str | None = None, overrides: dict | None = None) -> list[str]:
    """Prints one command per run (and writes them to <workdir>/commands.txt)."""
    if config_file is None:
        config_file, overrides = _config_flag()
    commands = [launch_command(p.name, workdir, prepared_dir, config_file, overrides or {})
                for p in points]
    for command in commands:
        print(command, flush=True)
    if _is_writer():
        _replace_file(Path(workdir) / COMMANDS, "".join(c + "\n" for c in commands))
    return commands


def _config_flag() -> tuple[str, dict]:
    """The --config file (with its :preset) and command-line overrides main was started with."""
    from ml_collections import config_flags

    if "config" not in flags.FLAGS or not flags.FLAGS.is_parsed():
        raise ConfigError("dry_run prints `ehr_jax.main --config=...` commands, so it needs the "
                          "sweep started from `python -m ehr_jax.main --config=FILE`")
    flag = flags.FLAGS["config"]
    return config_flags.get_config_filename(flag), config_flags.get_override_values(flag)


def _dry_run(config: ml_collections.ConfigDict) -> bool:
    from_flag = "dry_run" in flags.FLAGS and flags.FLAGS.is_parsed() and flags.FLAGS.dry_run
    return bool(config.grid.dry_run or from_flag)


# --- default stages (imported lazily: tests inject fakes) -------------------------------------


def _is_writer() -> bool:
    """Only process 0 writes the sweep's files (every process trains every run together)."""
    import jax

    return jax.process_index() == 0


def _default_prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    from ehr_jax import prepare

    return prepare.ensure_prepared(config, workdir)


def _default_train(config: ml_collections.ConfigDict, run_dir: str) -> dict:
    from ehr_jax.train import trainer

    return trainer.run(config, run_dir)


def _default_evaluate(run_dir: str, config: ml_collections.ConfigDict) -> dict:
    from ehr_jax.evaluation import runner

    return runner.evaluate(run_dir, config)


def _write_analysis(workdir: str, report_fn: Callable | None, outcome: dict) -> None:
    """Fits and plots into <workdir>/analysis; a failure here is recorded like a failed run."""
    results = Path(workdir) / RESULTS
    if not results.exists():
        logging.warning("Sweep: no finished runs, so no analysis")
        return
    out_dir = Path(workdir) / "analysis"
    try:
        if report_fn is None:
            from analysis import report  # analysis sits above the sweep: import only when used

            report_fn = report.main_report
        report_fn(str(results), str(out_dir))
        logging.info("Sweep: analysis written to %s", out_dir)
    except Exception as e:  # noqa: BLE001 - the runs are done; say why the report is not
        logging.exception("Sweep: the analysis report failed")
        record_failure(workdir, "analysis", e)
        outcome["failed"].append("analysis")
