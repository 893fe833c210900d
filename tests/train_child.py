"""Runs one tiny training in a fresh process (for kill, device-count and multi-process tests).

  python tests/train_child.py PREPARED_DIR WORKDIR STEPS [SLOW_AFTER_STEP [GROUP.KEY=JSON ...]]

Device count comes from XLA_FLAGS in the environment; several processes are joined through
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (ehr_jax.parallel).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

from ehr_jax import parallel  # noqa: E402
from ehr_jax.train import trainer  # noqa: E402

import train_fixtures  # noqa: E402


def main() -> None:
    prepared_dir, workdir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    slow_after = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    config = train_fixtures.tiny_config(prepared_dir, steps=steps)
    for override in sys.argv[5:]:  # e.g. train.branch_step=6
        key, value = override.split("=", 1)
        group, name = key.split(".")
        config[group][name] = json.loads(value)
    parallel.initialize_distributed()
    if slow_after:  # give the parent time to kill us between checkpoints
        record = trainer.TrainLoop.record

        def slow_record(self, step, step_metrics):
            record(self, step, step_metrics)
            if step > slow_after:
                time.sleep(0.5)

        trainer.TrainLoop.record = slow_record
    trainer.run(config, workdir, prepared_dir)


if __name__ == "__main__":
    main()
