"""A GPU/TPU IsoFLOP grid on synthetic MEDS data at MIMIC-IV size (300k patients).

  python -m ehr_jax.main --config=configs/synthetic_large.py --workdir=runs/synthetic_large

For a GPU node or TPU slice (launch/README.md); the same code path as configs/mimic_iv.py, so
it rehearses a real study without credentialed data. `--dry_run` prints one command per run.
"""

import ml_collections

from ehr_jax import config_files
from ehr_jax.sweep import grid


def get_config() -> ml_collections.ConfigDict:
    config = config_files.load_sibling(__file__)
    config.data.synthetic_subjects = 300_000  # MIMIC-IV has about 300k patients
    config.data.seq_len = 2048
    config.data.num_workers = 4
    config.data.records_per_shard = 10000
    config.train.global_batch_size = 64
    config.train.log_every = 100
    config.train.eval_every = 1000
    config.train.eval_tokens = 2**21
    config.train.checkpoint_every = 1000
    # Cooldown branches (docs/TRAINING.md): one constant-rate run per size, each budget's point a
    # branch cooling down over its last 20% of steps; `--dry_run` prints the FLOPs and H100-hours
    # this saves against independent cosine runs.
    config.train.schedule = "wsd"
    config.train.cooldown_frac = 0.2
    config.grid = grid.default_grid()
    config.grid.budgets = (1e16, 3e16, 1e17, 3e17, 1e18)  # --dry_run prints the H100-hours
    config.grid.sizes_per_budget = 6
    config.grid.min_steps = 500
    config.grid.max_epochs = 4.0
    return config
