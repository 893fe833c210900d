"""Smoke run: one tiny model on a little synthetic data, checkpointing several times (< 2 min on CPU).

  python -m ehr_jax.main --config=configs/smoke.py --workdir=runs/smoke

Kill it after a checkpoint and rerun the same command: it resumes and ends with the same losses.
"""

import importlib.util
import os

import ml_collections


def _base_config() -> ml_collections.ConfigDict:
    """configs/base.py by path: config_flags loads presets as files, not as a package."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py")
    spec = importlib.util.spec_from_file_location("ehr_jax_configs_base", path)
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    return base.get_config()


def get_config() -> ml_collections.ConfigDict:
    config = _base_config()
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
