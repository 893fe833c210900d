"""Clinical evaluation of a trained run, from its checkpoint.

  python -m ehr_jax.evaluate --workdir=runs/smoke
  python -m ehr_jax.evaluate --workdir=runs/smoke --eval.num_rollouts=5 --eval.max_cases=100

Reads RUN_DIR/config.json (the run's own config), applies --eval.* overrides, and merges the
results into RUN_DIR/summary.json["evaluation"] (see ehr_jax.evaluation.runner).
"""

import json
import os
import sys

import ml_collections
from absl import app, flags, logging

from ehr_jax.errors import ConfigError, EhrJaxError

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding config.json and checkpoints/.")
_TASKS = flags.DEFINE_list("eval.tasks", None, "Override config.eval.tasks.")
_LABELS = flags.DEFINE_string("eval.labels_dir", None, "Override config.eval.labels_dir.")
_INTS = {key: flags.DEFINE_integer(f"eval.{key}", None, f"Override config.eval.{key}.")
         for key in ("num_rollouts", "max_cases", "max_new_tokens", "bootstrap")}
_PROBE = flags.DEFINE_boolean("eval.probe", None, "Override config.eval.probe.")
flags.mark_flags_as_required(["workdir"])


def load_run_config(run_dir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (written by the trainer as config.json)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{path}: missing; --workdir must be a run directory made by ehr_jax.main")
    try:
        return ml_collections.ConfigDict(json.loads(open(path).read()))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from ehr_jax.evaluation import runner  # after flag parsing: keeps --help fast

    try:
        config = load_run_config(_WORKDIR.value)
        if _TASKS.value is not None:
            config.eval.tasks = tuple(_TASKS.value)
        if _LABELS.value is not None:
            config.eval.labels_dir = _LABELS.value
        for key, flag in _INTS.items():
            if flag.value is not None:
                config.eval[key] = flag.value
        if _PROBE.value is not None:
            config.eval.probe = _PROBE.value
        results = runner.evaluate(_WORKDIR.value, config)
    except EhrJaxError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    logging.info("evaluation written to %s", os.path.join(_WORKDIR.value, "summary.json"))
    print(json.dumps({task: {m: {k: v[k] for k in ("auroc", "auroc_ci", "n_cases")}
                             for m, v in methods.items()} for task, methods in results.items()},
                     indent=1))


if __name__ == "__main__":
    app.run(main)
