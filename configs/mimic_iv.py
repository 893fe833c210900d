"""The paper's IsoFLOP grid (about 1M to 1B parameters) on your MIMIC-IV MEDS dataset.

  python -m ehr_jax.main --config=configs/mimic_iv.py --workdir=runs/mimic_iv \
      --config.data.meds_dir=/path/to/MIMIC-IV-MEDS

Needs a GPU node or TPU slice (see launch/README.md); data.meds_dir is required (the MEDS root
with data/ and metadata/, e.g. the output of the MIMIC-IV MEDS ETL). `--dry_run` prints one
command per run for launchers. Preset `:eval` also evaluates every finished run.
"""

import ml_collections

from ehr_jax import config_files
from ehr_jax.errors import ConfigError
from ehr_jax.sweep import grid

PRESETS = ("", "eval")  # values of the `:preset` suffix this file accepts


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_files.load_sibling(__file__)
    config.data.meds_dir = ""  # required: your MIMIC-IV MEDS root (the sweep refuses "")
    config.data.synthetic_subjects = 0  # never fall back to synthetic data
    config.data.seq_len = 2048  # ETHOS context length
    config.data.num_workers = 4
    config.data.records_per_shard = 10000
    config.train.global_batch_size = 64  # 131k tokens per step
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
    # 3e15..1e19 FLOPs; auto sizes put the 7 rungs around D = 20 N at each budget, which spans
    # about 1M to 1B parameters over the grid (the paper's range).
    config.grid.budgets = (3e15, 1e16, 3e16, 1e17, 3e17, 1e18, 3e18, 1e19)
    config.grid.sizes_per_budget = 7
    config.grid.min_steps = 500
    config.grid.max_epochs = 4.0
    if preset == "eval":
        config.eval.enabled = True
    elif preset:
        raise ConfigError(f"configs/mimic_iv.py: unknown preset {preset!r}; expected one of "
                          f"{PRESETS}")
    return config
