"""Entry point: one command trains a run, or a whole sweep when the config has a grid.

  python -m ehr_jax.main --config=configs/smoke.py --workdir=runs/smoke
  python -m ehr_jax.main --config=configs/base.py --workdir=runs/x --config.train.steps=100

The only place that wires the stages: data (synthetic MEDS when no dataset is given, then
prepare) -> train one run, or sweep a grid of them -> evaluate -> analysis. Each stage gets paths
and config groups, never another stage. Every process of a multi-host job runs this same
command; rerunning it resumes from the workdir.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from ehr_jax import parallel, rundir
from ehr_jax.errors import EhrJaxError


def define_flags() -> None:
    """Flags exist only when this module is the program, so importing run() defines none."""
    config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run (or sweep) directory; resumes if it exists.")
    flags.DEFINE_bool("dry_run", False, "Sweeps: print one `ehr_jax.main` command per run "
                      "(for launchers) instead of training; same as --config.grid.dry_run=True.")
    flags.mark_flags_as_required(["config", "workdir"])


def run(config: ml_collections.ConfigDict, workdir: str, *, dry_run: bool = False,
        command_line: tuple[str, dict] | None = None) -> dict:
    """Sweep if the config has a grid, else train one run (and evaluate it when enabled)."""
    from ehr_jax import sweep

    parallel.initialize_distributed()  # also logs this process and its devices
    workdir = os.path.abspath(workdir)
    if "grid" in config:
        sweep.check_config(config)
    prepared_dir = prepare_data(config.data, workdir)
    if "grid" in config:
        return run_sweep(config, workdir, prepared_dir, dry_run=dry_run, command_line=command_line)
    from ehr_jax.train import trainer

    summary = trainer.run(config, workdir, prepared_dir)
    if config.eval.enabled:
        from ehr_jax import evaluation

        summary["evaluation"] = evaluation.evaluate(workdir, config, prepared_dir)
    return summary


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
    outcome = sweep.run(config, workdir, prepared_dir, trainer.run, evaluate_fn, dry_run=dry_run,
                        command_line=command_line)
    if "commands" in outcome:
        return outcome
    if config.grid.analysis and not config.grid.only and jax.process_index() == 0:
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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config_flag = flags.FLAGS["config"]
    command_line = (config_flags.get_config_filename(config_flag),
                    config_flags.get_override_values(config_flag))
    try:
        run(flags.FLAGS.config, flags.FLAGS.workdir, dry_run=flags.FLAGS.dry_run,
            command_line=command_line)
    except EhrJaxError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
