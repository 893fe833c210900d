"""Clinical evaluation of a trained run, from its checkpoint.

  python -m ehr_jax.evaluation --workdir=runs/smoke
  python -m ehr_jax.evaluation --workdir=runs/smoke --config.eval.num_rollouts=5 \
      --config.eval.max_cases=100
  python -m ehr_jax.evaluation --workdir=runs/smoke --write_labels=labels/   # no model needed

Reads RUN_DIR/config.json (the run's own config), applies --config.eval.* overrides (any key of
configs/base.py's eval group, type-checked by ml_collections), and merges the results into
RUN_DIR/summary.json["evaluation"][name] (see ehr_jax.evaluation.runner). With --write_labels
it only writes the built-in tasks' labels of every split as MEDS label files
(DIR/<task>/<split>/0.parquet), for ACES, meds-evaluation, another model or
--config.eval.labels_dir=DIR.
"""

import json
import os
from pathlib import Path

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from ehr_jax import cli, config_files, rundir
from ehr_jax.data import shards
from ehr_jax.errors import ConfigError, EhrJaxError

_BASE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "base.py"


def define_flags() -> None:
    """CLI flags, defined only when run as a program (like every CLI of ehr_jax)."""
    flags.DEFINE_string("workdir", None, "Run directory holding config.json and checkpoints/.")
    flags.DEFINE_string("write_labels", None, "Only write the built-in tasks' labels of every split "
                        "as MEDS label parquet under this directory (<task>/<split>/0.parquet).")
    config_flags.DEFINE_config_dict(
        "config", config_files.load_sibling(str(_BASE_CONFIG)),
        "Only --config.eval.KEY=VALUE overrides: the rest is the run's own config.json.")
    flags.mark_flags_as_required(["workdir"])


def load_run_config(run_dir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (written by the trainer as config.json), over base.py's
    defaults: a run made before a key existed behaved as its default, and the code reads every
    key directly."""
    path = os.path.join(run_dir, rundir.CONFIG)
    if not os.path.exists(path):
        raise ConfigError(f"{path}: missing; --workdir must be a run directory made by ehr_jax.main")
    try:
        saved = json.loads(open(path).read())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    config = config_files.load_sibling(str(_BASE_CONFIG))
    config.update(saved)
    return config


def with_eval_overrides(config: ml_collections.ConfigDict,
                        overrides: dict) -> ml_collections.ConfigDict:
    """The run's config with --config.eval.* values applied; any other key is refused."""
    for key, value in overrides.items():
        group, _, name = key.partition(".")
        if group != "eval":
            raise ConfigError(f"--config.{key}: evaluation uses the run's own config.json; only "
                              "--config.eval.* keys can be overridden here")
        config.eval[name] = value
    return config


def prepared_dir_of(run_dir: str, config: ml_collections.ConfigDict) -> str:
    """Where the run's tokenized data lives: the sweep's prepared dir, or <run_dir>/prepared."""
    prepared = config.data.prepared_dir or os.path.join(run_dir, "prepared")
    shards.read_manifest(prepared)  # a clear error when it is gone
    return prepared


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    from ehr_jax.evaluation import runner  # after flag parsing: keeps --help fast

    run_dir = flags.FLAGS.workdir
    try:
        config = with_eval_overrides(load_run_config(run_dir),
                                     config_flags.get_override_values(flags.FLAGS["config"]))
        if flags.FLAGS.write_labels:
            counts = runner.write_labels(config, prepared_dir_of(run_dir, config), flags.FLAGS.write_labels)
            print(json.dumps(counts, indent=1))
            return
        # The run's lock: never beside its trainer, or another evaluation, writing summary.json.
        with rundir.Lock(run_dir, rundir.RUN_LOCK, f"the run in {run_dir}"):
            evaluations = runner.evaluate(run_dir, config, prepared_dir_of(run_dir, config))
    except EhrJaxError as error:
        cli.fail(error)
    logging.info("evaluation written to %s", os.path.join(run_dir, rundir.SUMMARY))
    print(json.dumps({name: {task: {m: {k: v[k] for k in ("auroc", "auroc_ci", "n_cases", "not_run") if k in v}
                                    for m, v in methods.items()} for task, methods in results.items()}
                      for name, results in evaluations.items()}, indent=1))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
