"""Smoke run: one tiny model on a little synthetic data, checkpointing several times (< 2 min on CPU).

  python -m ehr_jax.main --config=configs/smoke.py --workdir=runs/smoke

Kill it after a checkpoint and rerun the same command: it resumes and ends with the same losses.
"""

import ml_collections

from ehr_jax import config_files


def get_config() -> ml_collections.ConfigDict:
    config = config_files.load_sibling(__file__)
    config.data.synthetic_subjects = 200
    config.data.seq_len = 128
    config.model.size = "d32-l1"
    config.train.global_batch_size = 8
    config.train.steps = 100
    config.train.log_every = 10
    config.train.eval_every = 50
    config.train.eval_tokens = 4096
    config.train.checkpoint_every = 25
    config.train.keep_checkpoints = 2
    return config
