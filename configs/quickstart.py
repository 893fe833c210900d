"""Quickstart: the whole scaling study on a laptop CPU in about ten minutes.

  python -m ehr_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Generates synthetic MEDS data, prepares it, trains an IsoFLOP grid of tiny decoders (several
FLOP budgets x a few sizes), fits the scaling laws and writes plots and fit.json into
runs/quickstart/analysis. Kill it at any point and rerun the same command to finish the grid.
Preset `:tiny` is a 2 x 2 grid without the analysis, for tests and kill-and-rerun checks.
Preset `:eval` also scores every run on zero-shot in-hospital mortality (slower), so the
analysis fits clinical utility against model size. Presets `:wsd_check` and `:wsd_check_cosine`
train the same six points as cooldown branches and as independent cosine runs, to compare
(`python -m ehr_jax.sweep.compare`).
"""

import ml_collections

from ehr_jax import config_files
from ehr_jax.errors import ConfigError
from ehr_jax.sweep import grid

PRESETS = ("", "tiny", "eval", "wsd_check", "wsd_check_cosine")  # values of the `:preset` suffix this file accepts


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_files.load_sibling(__file__)
    # Tiny models need a compact vocabulary (embedding + head would outweigh the blocks), short
    # windows and small batches (enough optimizer steps in a 6e10-FLOP run).
    config.data.synthetic_subjects = 1500
    config.data.min_code_count = 100  # ~450 tokens: embeddings do not dwarf the blocks
    config.data.seq_len = 128
    config.train.global_batch_size = 8
    config.train.log_every = 100
    config.train.eval_every = 0
    config.train.eval_tokens = 65536  # same windows for every run: differences are systematic
    config.train.checkpoint_every = 1000  # a kill loses at most ~10 s of a run
    config.grid = grid.default_grid()
    # Measured here: the loss-optimal rung moves from d24-l1 (3e11) through d24/d32 (6e11) to
    # d48-l2 (1.2e12), so these rungs give each budget an interior minimum; small rungs at the
    # largest budget would cost the most time and sit far from its optimum.
    config.grid.budgets = (3e11, 6e11, 1.2e12)
    config.grid.sizes = (("d16-l1", "d24-l1", "d32-l1", "d48-l2"),
                         ("d16-l1", "d24-l1", "d32-l1", "d48-l2"),
                         ("d32-l1", "d48-l2", "d64-l2", "d96-l3"))
    config.grid.min_steps = 50
    config.grid.max_epochs = 10.0
    config.grid.min_sizes = 4
    if preset == "tiny":
        config.data.synthetic_subjects = 200
        config.grid.budgets = (3e10, 1e11)
        config.grid.sizes = ("d16-l1", "d32-l1")
        config.grid.min_steps = 10
        config.grid.max_epochs = 50.0
        config.grid.min_sizes = 0
        config.grid.analysis = False  # two sizes per budget: no parabola to fit
    elif preset in ("wsd_check", "wsd_check_cosine"):
        # Cooldown branches against independent cosine runs of the same (N, D) points:
        #   python -m ehr_jax.main --config=configs/quickstart.py:wsd_check --workdir=runs/wsd
        #   python -m ehr_jax.main --config=configs/quickstart.py:wsd_check_cosine \
        #       --workdir=runs/wsd_cosine --config.data.prepared_dir=runs/wsd/prepared
        #   python -m ehr_jax.sweep.compare --a=runs/wsd --b=runs/wsd_cosine
        config.train.schedule = "wsd" if preset == "wsd_check" else "cosine"
        config.grid.budgets = (3e11, 6e11)
        config.grid.sizes = ("d24-l1", "d32-l1", "d48-l2")
        config.grid.min_sizes = 0
        config.grid.analysis = False
    elif preset == "eval":  # zero-shot mortality per run: about 20-30 s a run here (200 cases)
        config.eval.enabled = True
        config.eval.tasks = ("mortality",)
        config.eval.num_rollouts = 10
        config.eval.max_cases = 200
        config.eval.bootstrap = 200
    elif preset:
        raise ConfigError(f"configs/quickstart.py: unknown preset {preset!r}; expected one of "
                          f"{PRESETS}")
    return config
