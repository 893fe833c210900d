"""The sweep: every grid point trained in turn by the single-run trainer, safe to kill and rerun.

  python -m ehr_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

A run dir with summary.json is done and never retrained; an interrupted run resumes from its own
checkpoints (the trainer does that); a failing run is recorded in failures.jsonl and the others
go on; results.jsonl holds one line per finished run (ehr_jax.sweep.registry). The stages come in
as functions (main passes the trainer and the evaluator), so the sweep imports neither.

With train.schedule='wsd' each (size, seed) first trains its stable run (runs/stable-<size>, no
results line), then its points as cooldown branches from it (ehr_jax.sweep.grid.branches); a
stable run that a grown grid needs longer is continued from its last checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import ml_collections
from absl import logging

from ehr_jax import rundir
from ehr_jax.data import shards
from ehr_jax.errors import ConfigError, EhrJaxError
from ehr_jax.sweep import commands, placement, registry
from ehr_jax.sweep import grid as grid_lib

TrainFn = Callable[[ml_collections.ConfigDict, str, str], dict]  # (config, run_dir, prepared_dir)
EvaluateFn = Callable[[str, ml_collections.ConfigDict, str], dict]  # (run_dir, config, prepared)


class SweepFailed(EhrJaxError):
    """Some runs failed; the others finished. Rerunning the command retries only the failed."""


def check_config(config: ml_collections.ConfigDict) -> None:
    """The grid keys a sweep reads (all of grid.default_grid's), checked before any data is made."""
    for key in grid_lib.default_grid():
        if key not in config.grid:
            raise ConfigError(f"config.grid.{key} is missing; see configs/quickstart.py")
    if not config.data.meds_dir and config.data.synthetic_subjects <= 0:
        raise ConfigError(
            "config.data.meds_dir is empty and config.data.synthetic_subjects is 0: pass your "
            "MEDS dataset root, e.g. --config.data.meds_dir=/path/to/MIMIC-IV-MEDS")


def run(config: ml_collections.ConfigDict, workdir: str, prepared_dir: str, train_fn: TrainFn,
        evaluate_fn: EvaluateFn | None = None, *, dry_run: bool = False,
        command_line: tuple[str, dict] | None = None) -> dict:
    """Trains (or, with dry_run, prints a command for) every kept grid point.

    Returns {"finished", "trained", "failed", "skipped"} run names, or {"commands"} for a dry
    run. command_line: the --config file and its overrides, which dry-run commands repeat.
    """
    check_config(config)
    workdir, prepared_dir = os.path.abspath(workdir), os.path.abspath(prepared_dir)
    points, stables, plan = _plan(config, workdir, prepared_dir)
    if dry_run or config.grid.dry_run:
        if _is_writer():
            print("\n".join(["Sweep plan (sizes kept per budget, [expected optimum]):", *plan]),
                  flush=True)
        if command_line is None:
            raise ConfigError("a dry run prints `ehr_jax.main --config=...` commands, so it needs "
                              "the sweep started from `python -m ehr_jax.main --config=FILE`")
        # Stable runs first: a launcher must finish one before its branches start.
        names = [s.name for s in stables] + [p.name for p in points]
        return {"commands": commands.print_commands(names, workdir, prepared_dir, *command_line,
                                                    write=_is_writer())}
    if config.grid.compilation_cache:
        _enable_compilation_cache(workdir)
    if _is_writer():
        registry.sync_results(workdir, [p.name for p in points])
    meds_dir = shards.read_manifest(prepared_dir).get("meds_dir", "")
    return _run_points(config, workdir, (prepared_dir, meds_dir), _jobs(points, stables),
                       train_fn, evaluate_fn)


def raise_if_failed(outcome: dict, workdir: str) -> None:
    """SweepFailed naming the failed runs (and where their errors are), if any failed."""
    if outcome.get("failed"):
        total = len(outcome["finished"]) + len(outcome["failed"])
        raise SweepFailed(
            f"{len(outcome['failed'])} of {total} runs failed "
            f"({', '.join(outcome['failed'])}); errors in {Path(workdir) / rundir.FAILURES}. "
            f"Rerun the same command to retry them (finished runs are kept).")


def _plan(config: ml_collections.ConfigDict, workdir: str, prepared_dir: str
          ) -> tuple[list[grid_lib.GridRun], list[grid_lib.StableRun], list[str]]:
    """Expands the grid, logs and files the skipped points, applies grid.only; returns the kept
    points, (wsd) the stable runs they branch from, and the plan's description."""
    manifest = shards.read_manifest(prepared_dir)
    train_tokens = manifest["splits"]["train"]["num_tokens"]
    points = grid_lib.expand(config, vocab_size=manifest["vocab_size"], train_tokens=train_tokens)
    points, stables = grid_lib.branches(config, points)
    skipped = [p for p in points if p.skip_reason]
    for p in skipped:
        logging.warning("Sweep: leaving out %s: %s", p.name, p.skip_reason)
    if _is_writer():
        os.makedirs(workdir, exist_ok=True)
        rundir.write_json_atomic(Path(workdir) / rundir.SKIPPED, [p.as_dict() for p in skipped])
    plan = placement.describe(points, stables)
    logging.info("Sweep plan (sizes kept per budget, [expected optimum]):\n%s", "\n".join(plan))
    kept = [p for p in points if not p.skip_reason]
    if config.grid.only:
        wanted = [name.strip() for name in config.grid.only.split(",") if name.strip()]
        known = {p.name for p in kept} | {s.name for s in stables}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise ConfigError(
                f"config.grid.only names {', '.join(unknown)}, not runs of this grid; the grid "
                f"has {', '.join(sorted(known))}")
        kept = [p for p in kept if p.name in wanted]
        needed = {p.stable for p in kept} | set(wanted)
        stables = [s for s in stables if s.name in needed]
    logging.info("Sweep: %d runs (%.3g training FLOPs), %d left out (listed in %s)", len(kept),
                 sum(p.budget for p in kept), len(skipped), Path(workdir) / rundir.SKIPPED)
    return kept, stables, plan


def _jobs(points: list[grid_lib.GridRun], stables: list[grid_lib.StableRun]) -> list:
    """Points in grid order; with stable runs, each stable run followed by its branches, the
    costliest stable run first (sweeps sharing a workdir then finish close together)."""
    if not stables:
        return list(points)
    jobs = []
    for stable in sorted(stables, key=lambda s: -s.cost):
        jobs.append(stable)
        jobs += [p for p in points if p.stable == stable.name]
    return jobs


def _run_points(config, workdir, data_dirs, jobs, train_fn, evaluate_fn) -> dict:
    """Every job in order (grid points, and wsd stable runs before their branches); finished
    ones skipped, failures recorded, progress with ETA.

    Each run is trained under its run dir's lock, so sweeps sharing a workdir (a second
    invocation, launcher jobs) never train one run twice: a run another process holds is left
    for last (with the branches of a held stable run), then waited for, and skipped when that
    process finished it.
    data_dirs: (prepared_dir, meds_dir) shared by every run.
    """
    outcome = {"finished": [], "trained": [], "failed": [], "skipped": []}
    total_flops = sum(job.cost for job in jobs)
    done_flops, timings = 0.0, []  # timings: (cost, seconds) of runs trained now
    failed_stables: set[str] = set()
    start = time.monotonic()
    queue = [(job, False) for job in jobs]  # (job, wait for its lock)
    deferred: set[str] = set()  # held by another process: done last (and branches after them)
    i = 0
    while queue:
        job, wait = queue.pop(0)
        run_dir = os.path.join(workdir, rundir.RUNS, job.name)
        lock = rundir.Lock(run_dir, rundir.RUN_LOCK, f"sweep run {job.name}")
        stable = getattr(job, "stable", "")
        if (not wait and stable in deferred) or not _take(lock, wait):
            logging.info("Sweep run %s is in use by %s; doing the other runs first", job.name,
                         f"its stable run {stable}" if stable in deferred else
                         lock.holder() or "another process")
            deferred.add(job.name)
            queue.append((job, True))
            continue
        i += 1
        run_start = time.monotonic()
        try:
            if isinstance(job, grid_lib.StableRun):
                trained = _run_stable(config, job, run_dir, data_dirs, train_fn, workdir, i,
                                      len(jobs))
                if trained is None:
                    failed_stables.add(job.name)
            else:
                trained = _run_point(config, job, run_dir, data_dirs, train_fn, evaluate_fn,
                                     workdir, outcome, failed_stables, f"{i}/{len(jobs)}")
        finally:
            lock.release()
        if trained:
            timings.append((job.cost, time.monotonic() - run_start))
        done_flops += job.cost
        eta = _eta_seconds(timings, [j.cost for j, _ in queue])
        logging.info("Sweep progress: %d/%d runs, %.1f%% of FLOPs, %s elapsed%s", i, len(jobs),
                     100.0 * done_flops / total_flops if total_flops else 100.0,
                     _clock(time.monotonic() - start), f", ETA {_clock(eta)}" if eta else "")
    return outcome


def _take(lock: rundir.Lock, wait: bool) -> bool:
    """Process 0 takes the run's lock (waiting or not); every process learns whether it did."""
    from ehr_jax import parallel

    return parallel.agree(lock.acquire(wait=wait) if _is_writer() else True)


def _run_stable(config, stable, run_dir, data_dirs, train_fn, workdir, i, total) -> bool | None:
    """Trains (or continues) a stable run up to stable.steps; whether it trained now, or None
    when it failed. A stable run has no results line: its summary only marks how far it went."""
    summary = rundir.read_summary(run_dir)
    done = summary is not None and summary.get("steps", 0) >= stable.steps
    logging.info("Sweep run %d/%d %s: stable phase of %s (seed %d) to step %d, branches at "
                 "%s%s", i, total, stable.name, stable.size, stable.seed, stable.steps,
                 list(stable.keep_steps), " (done before, skipping)" if done else "")
    if done:
        return False
    if summary is not None and _is_writer():  # the grid grew: continue from its last checkpoint
        os.remove(os.path.join(run_dir, rundir.SUMMARY))
    try:
        train_fn(grid_lib.stable_config(config, stable, *data_dirs), run_dir, data_dirs[0])
        return True
    except Exception as e:  # its branches fail with it; other sizes go on  # noqa: BLE001
        logging.exception("Sweep: stable run %s failed; its branches are skipped", stable.name)
        if _is_writer():
            registry.record_failure(workdir, stable.name, e)
        return None


def _run_point(config, point, run_dir, data_dirs, train_fn, evaluate_fn, workdir, outcome,
               failed_stables, position) -> bool:
    """Trains (unless finished) and evaluates one grid point, recording it in results.jsonl or
    failures.jsonl; returns whether it trained now."""
    already_done = os.path.exists(os.path.join(run_dir, rundir.SUMMARY))
    branch = (f", cooldown branch from {point.stable} at step {point.branch_step}"
              if point.stable else "")
    logging.info("Sweep run %s %s: C=%.3g FLOPs, N=%d, D=%.3g tokens, %d steps, %.2f epochs%s%s",
                 position, point.name, point.budget, point.n_params, point.tokens, point.steps,
                 point.epochs, branch, " (finished before, skipping)" if already_done else "")
    stable_dir = os.path.join(workdir, rundir.RUNS, point.stable) if point.stable else ""
    cfg = grid_lib.run_config(config, point, *data_dirs, stable_dir=stable_dir)
    trained = False
    try:
        if not already_done:
            if point.stable in failed_stables:
                raise RuntimeError(f"its stable run {point.stable} failed (see {rundir.FAILURES})")
            train_fn(cfg, run_dir, data_dirs[0])
            trained = True
            outcome["trained"].append(point.name)
        summary = _evaluated_summary(run_dir, cfg, data_dirs[0], evaluate_fn)
        if _is_writer():
            registry.record_result(workdir, summary, point.name)
        outcome["finished"].append(point.name)
    except Exception as e:  # one run failing must not stop the others  # noqa: BLE001
        logging.exception("Sweep run %s failed; going on with the others", point.name)
        if _is_writer():
            registry.record_failure(workdir, point.name, e)
        outcome["failed"].append(point.name)
    return trained


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


def _evaluated_summary(run_dir: str, cfg: ml_collections.ConfigDict, prepared_dir: str,
                       evaluate_fn: EvaluateFn | None) -> dict:
    """summary.json, with evaluation merged in (once) when it is asked for and not there yet."""
    summary = rundir.read_summary(run_dir)
    if summary is None:
        raise RuntimeError(f"{Path(run_dir) / rundir.SUMMARY}: the trainer returned without "
                           "writing its summary")
    if evaluate_fn is not None and not summary.get("evaluation"):
        evaluation = evaluate_fn(run_dir, cfg, prepared_dir)
        summary = rundir.read_summary(run_dir)  # the evaluator may have merged it itself
        if not summary.get("evaluation"):
            summary["evaluation"] = evaluation
            if _is_writer():
                rundir.merge_into_summary(run_dir, evaluation=evaluation)
    return summary


def _is_writer() -> bool:
    """Only process 0 writes the sweep's files (every process trains every run together)."""
    import jax

    return jax.process_index() == 0
