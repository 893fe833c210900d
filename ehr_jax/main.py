"""Entry point: one command trains a run, or a whole sweep when the config has a grid.

  python -m ehr_jax.main --config=configs/smoke.py --workdir=runs/smoke
  python -m ehr_jax.main --config=configs/base.py --workdir=runs/x --config.train.steps=100

Every process of a multi-host job runs this same command; rerunning it resumes from the workdir.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from ehr_jax import parallel
from ehr_jax import sweep  # noqa: F401  defines --dry_run before flags are parsed
from ehr_jax.errors import EhrJaxError


def _define_flags() -> None:
    """Flags exist only when this module is the program, so importing run() defines none."""
    config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run (or sweep) directory; resumes if it exists.")
    flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> dict:
    """Sweep if the config has a grid, else train one run (and evaluate it when enabled)."""
    parallel.initialize_distributed()  # also logs this process and its devices
    if "grid" in config:
        return sweep.run(config, workdir)
    from ehr_jax.train import trainer

    summary = trainer.run(config, workdir)
    if config.eval.enabled:
        from ehr_jax.evaluation import runner

        summary["evaluation"] = runner.evaluate(workdir, config)  # also merged into summary.json
    return summary


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        run(flags.FLAGS.config, flags.FLAGS.workdir)
    except EhrJaxError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
