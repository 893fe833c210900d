"""Quickstart: the whole scaling study on a laptop CPU in about ten minutes.

  python -m ehr_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Generates synthetic MEDS data, prepares it, trains an IsoFLOP grid of tiny decoders (seven FLOP
budgets over 1.2 decades x five to seven sizes: one warmup-stable-decay run per size, a cooldown
branch per budget), fits the scaling laws and writes plots and fit.json into
runs/quickstart/analysis. Kill it at any point and rerun the same command to finish the grid.
Preset `:tiny` is a 2 x 2 grid without the analysis, for tests and kill-and-rerun checks.
Preset `:eval` trains the earlier 12-run grid (three budgets, cosine runs) and also scores every
run on zero-shot in-hospital mortality (slower), so the analysis fits clinical utility against
model size. Presets `:wsd_check` and `:wsd_check_cosine` train the same six points as cooldown
branches and as independent cosine runs, to compare (`python -m ehr_jax.sweep.compare`)."""

import ml_collections

from ehr_jax import config_files
from ehr_jax.errors import ConfigError
from ehr_jax.sweep import grid

PRESETS = ("", "tiny", "eval", "wsd_check", "wsd_check_cosine")  # values of the `:preset` suffix this file accepts


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_files.load_sibling(__file__)
    # Tiny models need a compact vocabulary (embedding + head would outweigh the blocks), short
    # windows and small batches (enough optimizer steps in a 6e10-FLOP run).
    config.data.synthetic_subjects = 3000  # 4.7M train tokens: every grid point sees < 1.4 epochs
    config.data.min_code_count = 100  # ~610 tokens: embeddings do not dwarf the blocks
    config.data.seq_len = 128
    config.train.global_batch_size = 8
    config.train.log_every = 100
    config.train.eval_every = 0
    config.train.eval_tokens = 65536  # same windows for every run: differences are systematic
    config.train.checkpoint_every = 1000  # a kill loses at most ~10 s of a run
    # One stable (constant-rate) run per size to its largest budget, and a cooldown branch over
    # the last 10% of the steps at every budget (Hagele et al. 2024 find 10-20% cooldowns match
    # cosine; 20% measured within 1% here, TRAINING.md). 0.1 instead of 0.2 trains about 19%
    # fewer steps (6 min 19 s on 2 quiet cores) with the same 7 interior minima and a, b interval
    # widths within 0.015 of 0.2's.
    config.train.schedule = "wsd"
    config.train.cooldown_frac = 0.1
    config.grid = grid.default_grid()
    # Seven budgets 1.585x (10^0.2) apart, 6e10 to 9.51e11 (1.2 decades): N_opt(C) rests on
    # seven minima.
    config.grid.budgets = tuple(6e10 * 1.585 ** k for k in range(7))
    # Measured here (3,000 subjects): the loss-optimal rung moves from about d16-d24 (6e10) to
    # d32-l2/d48-l2 (9.5e11). Small budgets are cheap and their profiles are the flattest, so they
    # get seven sizes; the larger ones five around their optimum.
    small = ("d8-l1", "d12-l1", "d16-l1", "d24-l1", "d32-l1", "d32-l2", "d48-l2")
    config.grid.sizes = (small, small, small,
                         ("d12-l1", "d16-l1", "d24-l1", "d32-l1", "d32-l2", "d48-l2", "d64-l2"),
                         ("d16-l1", "d24-l1", "d32-l1", "d32-l2", "d48-l2"),
                         ("d24-l1", "d32-l1", "d32-l2", "d48-l2", "d64-l2"),
                         ("d24-l1", "d32-l1", "d32-l2", "d48-l2", "d64-l2"))
    config.grid.min_steps = 50
    config.grid.max_epochs = 4.0
    config.grid.min_sizes = 5
    # At these sizes the output head is most of each token's FLOPs (2 d V against ~24 d^2 per
    # block), so C ~ 6 N D holds for the total count and not for the non-embedding one (off by
    # 1.3x at d64-l2 and 4x at d8-l1): fit in total N.
    config.grid.analysis_n = "total"
    # XLA:CPU runs these tiny models' matmuls on one core: two sweep processes train two runs at
    # a time on a 2-core laptop (each run still trains once, under its run dir's lock).
    config.grid.workers = 2
    if preset == "tiny":
        config.data.synthetic_subjects = 200
        config.train.schedule = "cosine"  # four independent runs: kill-and-rerun checks resume one
        config.grid.budgets = (3e10, 1e11)
        config.grid.sizes = ("d16-l1", "d32-l1")
        config.grid.min_steps = 10
        config.grid.max_epochs = 50.0
        config.grid.min_sizes = 0
        config.grid.analysis = False  # two sizes per budget: no parabola to fit
        config.grid.workers = 1  # one process: kill-and-rerun checks follow one sweep's log
    elif preset in ("wsd_check", "wsd_check_cosine"):
        # Cooldown branches against independent cosine runs of the same (N, D) points:
        #   python -m ehr_jax.main --config=configs/quickstart.py:wsd_check --workdir=runs/wsd
        #   python -m ehr_jax.main --config=configs/quickstart.py:wsd_check_cosine \
        #       --workdir=runs/wsd_cosine --config.data.prepared_dir=runs/wsd/prepared
        #   python -m ehr_jax.sweep.compare --a=runs/wsd --b=runs/wsd_cosine
        config.train.schedule = "wsd" if preset == "wsd_check" else "cosine"
        config.data.synthetic_subjects = 1500  # the data docs/TRAINING.md's table was measured on
        config.train.cooldown_frac = 0.2  # and the cooldown it was measured with
        config.grid.budgets = (3e11, 6e11)
        config.grid.sizes = ("d24-l1", "d32-l1", "d48-l2")
        config.grid.min_sizes = 0
        config.grid.analysis = False
    elif preset == "eval":  # zero-shot mortality per run: about 20-30 s a run here (200 cases)
        # The earlier 12-run grid (independent cosine runs, three budgets; docs/EVALUATION.md's
        # runs): scoring all 43 runs of the default grid would take about 20 minutes more.
        config.data.synthetic_subjects = 1500
        config.train.schedule = "cosine"
        config.grid.budgets = (3e11, 6e11, 1.2e12)
        config.grid.sizes = (("d16-l1", "d24-l1", "d32-l1", "d48-l2"),
                             ("d16-l1", "d24-l1", "d32-l1", "d48-l2"),
                             ("d32-l1", "d48-l2", "d64-l2", "d96-l3"))
        config.grid.max_epochs = 10.0  # d16-l1 passes over 1,500 subjects' tokens 3 times at 6e11
        config.grid.min_sizes = 4
        config.eval.enabled = True
        config.eval.tasks = ("mortality",)
        config.eval.num_rollouts = 10
        config.eval.max_cases = 200
        config.eval.bootstrap = 200
    elif preset:
        raise ConfigError(f"configs/quickstart.py: unknown preset {preset!r}; expected one of "
                          f"{PRESETS}")
    return config
