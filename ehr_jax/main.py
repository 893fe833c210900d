"""Entry point: one command trains a run, or a whole sweep when the config has a grid.

  python -m ehr_jax.main --config=configs/smoke.py --workdir=runs/smoke
  python -m ehr_jax.main --config=configs/base.py --workdir=runs/x --config.train.steps=100
  python -m ehr_jax.main --config=configs/quickstart.py --workdir=runs/q --validate_only

The only place that wires the stages: data (synthetic MEDS when no dataset is given, then
prepare) -> train one run, or sweep a grid of them -> evaluate -> analysis. Each stage gets paths
and config groups, never another stage. Every process of a multi-host job runs this same
command; rerunning it resumes from the workdir. Every user mistake (flags, config, workdir)
is reported before any work as `error: ...` with exit status 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from ehr_jax import cli, config_check, parallel, rundir
from ehr_jax.errors import ConfigError, EhrJaxError


def define_flags() -> None:
    """Flags exist only when this module is the program, so importing run() defines none."""
    config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run (or sweep) directory; resumes if it exists.")
    flags.DEFINE_bool("dry_run", False, "Sweeps: print one `ehr_jax.main` command per run "
                      "(for launchers) instead of training; same as --config.grid.dry_run=True.")
    flags.DEFINE_bool("validate_only", False, "Check the config, the flags and the workdir "
                      "(would this rerun be accepted?), write nothing, and exit.")
    flags.DEFINE_list("allow_changes", [], "Keys (or groups: eval, grid) that may differ from "
                      "the config this workdir's runs were made with; see docs/TRAINING.md.")
    flags.mark_flags_as_required(["config", "workdir"])


def run(config: ml_collections.ConfigDict, workdir: str, *, dry_run: bool = False,
        command_line: tuple[str, dict] | None = None, validate_only: bool = False,
        allow_changes: tuple[str, ...] = ()) -> dict:
    """Sweep if the config has a grid, else train one run (and evaluate it when enabled).

    Everything the user chose is checked first (config_check), then the workdir is claimed:
    its fingerprint must match (rundir), and one process at a time sets up its data.
    """
    import jax

    parallel.initialize_distributed()  # also logs this process and its devices
    workdir = os.path.abspath(workdir)
    config_check.check(config, workdir, jax.device_count())
    rundir.check_allowed(allow_changes)
    fingerprint = rundir.config_fingerprint(config, workdir)
    problem, _ = rundir.fingerprint_problem(workdir, fingerprint, allow_changes)
    if problem:
        raise ConfigError(problem)
    if validate_only:
        print(f"ok: the config is valid and --workdir={workdir} accepts it", flush=True)
        return {}
    claim = rundir.WorkdirClaim(workdir)
    try:
        _on_process_zero(lambda: claim.open(fingerprint, allow_changes))
        prepared_dir = prepare_data(config.data, workdir)
        _on_process_zero(lambda: claim.data_prepared(_manifest(prepared_dir)))
        if "grid" in config:
            return run_sweep(config, workdir, prepared_dir, dry_run=dry_run,
                             command_line=command_line)
        return run_single(config, workdir, prepared_dir)
    finally:
        claim.close()


def run_single(config: ml_collections.ConfigDict, workdir: str, prepared_dir: str) -> dict:
    """Trains one run under its lock (a finished one is kept as it is), then evaluates it."""
    from ehr_jax.train import trainer

    lock = rundir.Lock(workdir, rundir.RUN_LOCK, f"the run in {workdir}")
    try:
        _on_process_zero(lock.acquire)
        summary = rundir.read_summary(workdir)
        if not parallel.agree(summary is not None):
            summary = trainer.run(config, workdir, prepared_dir)
        else:  # never retrained, and its summary never rewritten with today's config
            logging.info("%s finished before; its summary.json is kept", workdir)
            summary = summary or {}  # a process without the shared file system
        if parallel.agree(config.eval.enabled and not summary.get("evaluation")):
            from ehr_jax import evaluation

            summary["evaluation"] = evaluation.evaluate(workdir, config, prepared_dir)
        return summary
    finally:
        lock.release()


def prepare_data(data: ml_collections.ConfigDict, workdir: str) -> str:
    """The prepared dir for `data`, generating the synthetic MEDS dataset first when no
    data.meds_dir is given."""
    from ehr_jax import synthetic
    from ehr_jax.data import prepare

    def write_synthetic(meds_dir: Path) -> None:
        synthetic.write_meds(meds_dir, data.synthetic_subjects, data.synthetic_seed)

    return prepare.ensure_prepared(data, workdir, write_meds=write_synthetic)


def run_sweep(config: ml_collections.ConfigDict, workdir: str, prepared_dir: str, *,
              dry_run: bool = False, command_line: tuple[str, dict] | None = None) -> dict:
    """Every grid point (trained, evaluated when enabled), then the scaling-law analysis."""
    import jax

    from ehr_jax import evaluation, sweep
    from ehr_jax.train import trainer

    evaluate_fn = evaluation.evaluate if config.eval.enabled else None
    helpers = [] if dry_run or config.grid.dry_run else sweep.workers.start(
        config, workdir, prepared_dir, command_line)
    try:
        outcome = sweep.run(config, workdir, prepared_dir, trainer.run, evaluate_fn,
                            dry_run=dry_run, command_line=command_line)
    except BaseException:
        sweep.workers.stop(helpers)
        raise
    sweep.workers.wait(helpers, workdir)
    if "commands" in outcome:
        return outcome
    if config.grid.analysis and not config.grid.only and jax.process_index() == 0:
        with rundir.Lock(workdir, rundir.ANALYSIS_LOCK, f"the analysis of {workdir}"):
            write_analysis(workdir, outcome, n=config.grid.analysis_n)
    sweep.raise_if_failed(outcome, workdir)
    return outcome


def write_analysis(workdir: str, outcome: dict, n: str = "non_embedding") -> None:
    """Fits (with model size `n`: config.grid.analysis_n) and plots into <workdir>/analysis; a
    failure is recorded like a failed run."""
    from ehr_jax.sweep import registry

    results = Path(workdir) / rundir.RESULTS
    if not results.exists():
        logging.warning("Sweep: no finished runs, so no analysis")
        return
    out_dir = Path(workdir) / rundir.ANALYSIS
    try:
        from analysis import report

        report.main_report(str(results), str(out_dir), n=n)
        logging.info("Sweep: analysis written to %s", out_dir)
    except Exception as e:  # noqa: BLE001 - the runs are done; say why the report is not
        logging.exception("Sweep: the analysis report failed")
        registry.record_failure(workdir, "analysis", e)
        outcome["failed"].append("analysis")


def _manifest(prepared_dir: str) -> dict:
    from ehr_jax.data import shards

    return shards.read_manifest(prepared_dir)


def _on_process_zero(fn: Callable[[], object]) -> None:
    """Runs fn on process 0 only; the other processes of the job learn whether it failed."""
    import jax

    error = None
    if jax.process_index() == 0:
        try:
            fn()
        except EhrJaxError as e:
            error = e
    if not parallel.agree(error is None):
        raise error or ConfigError("process 0 refused this workdir; its log says why")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config_flag = flags.FLAGS["config"]
    overrides = config_flags.get_override_values(config_flag)
    command_line = (config_flags.get_config_filename(config_flag), overrides)
    config = flags.FLAGS.config
    config_check.command_line_durations(config, overrides)
    try:
        run(config, flags.FLAGS.workdir, dry_run=flags.FLAGS.dry_run, command_line=command_line,
            validate_only=flags.FLAGS.validate_only,
            allow_changes=tuple(flags.FLAGS.allow_changes))
    except EhrJaxError as error:
        cli.fail(error)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
