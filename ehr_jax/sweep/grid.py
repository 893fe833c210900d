"""IsoFLOP grids as config: budgets x sizes -> named runs, with the meaningless ones left out.

Each (C, N) point trains size N for exactly C training FLOPs (our own count, model/sizes.py), so
its token budget is D = C / flops_per_token(N). The step count comes from the trainer's own
conversion (train/optim.num_steps), so what we filter on is what the trainer will run.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from ehr_jax.errors import ConfigError
from ehr_jax.model import sizes as sizes_lib
from ehr_jax.train import optim


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One grid point and what it costs; skip_reason is "" for runs that will be trained."""

    name: str
    budget: float
    size: str
    n_params: int
    n_params_non_embedding: int
    flops_per_token: float
    tokens: float
    steps: int
    epochs: float
    skip_reason: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_grid() -> ml_collections.ConfigDict:
    """config.grid for presets to fill in: a sweep runs when a config has this group."""
    grid = ml_collections.ConfigDict()
    grid.budgets = ()  # training-FLOP budgets C, our own count (ehr_jax.model.sizes)
    grid.sizes = ()  # ladder names tried at every budget, one tuple per budget, or () for auto
    grid.sizes_per_budget = 5  # auto sizes: rungs per budget, centred on D/N = tokens_per_param
    grid.tokens_per_param = 20.0  # auto sizes: the D/N of the centre rung (Chinchilla's 20)
    grid.min_steps = 100  # leave out runs with fewer optimizer steps than this
    grid.max_epochs = 4.0  # leave out runs passing over the train split more often (0: no cap)
    grid.only = ""  # comma-separated run names to train ("" all): one run per launcher job
    grid.dry_run = False  # print one `ehr_jax.main` command per run instead of training
    grid.analysis = True  # fit the scaling laws and plot into <workdir>/analysis at the end
    grid.compilation_cache = True  # reuse XLA compiles across runs and reruns (<workdir>/jax_cache)
    return grid


def budget_tag(budget: float) -> str:
    """1e12 -> 'c1e12', 2.5e11 -> 'c2.5e11': short, sortable by eye, stable across runs."""
    if not budget > 0 or not math.isfinite(budget):
        raise ConfigError(f"config.grid.budgets must hold positive FLOP counts; got {budget}")
    mantissa, exponent = f"{budget:.2e}".split("e")
    return f"c{float(mantissa):g}e{int(exponent)}"


def run_name(budget: float, size: str) -> str:
    """The run's directory name, e.g. c1e12-d64-l2: the grid point is readable from the path."""
    return f"{budget_tag(budget)}-{size}"


def _auto_sizes(budget: float, grid: ml_collections.ConfigDict, count_params) -> list[str]:
    """The sizes_per_budget rungs centred on the rung whose D/N is nearest tokens_per_param."""
    names = sorted(sizes_lib.LADDER, key=lambda name: count_params(name)[0])
    ratios = [abs(math.log(budget / count_params(n)[2] / count_params(n)[0])
                  - math.log(grid.tokens_per_param)) for n in names]
    centre = min(range(len(names)), key=ratios.__getitem__)
    k = int(grid.sizes_per_budget)
    if k < 1:
        raise ConfigError(f"config.grid.sizes_per_budget must be >= 1; got {k}")
    start = min(max(centre - k // 2, 0), max(len(names) - k, 0))
    return names[start:start + k]


def sizes_for_budgets(grid: ml_collections.ConfigDict, count_params) -> list[list[str]]:
    """config.grid.sizes as one list per budget: shared names, per-budget lists, or () (auto)."""
    budgets, sizes = list(grid.budgets), grid.sizes
    if not budgets:
        raise ConfigError("config.grid.budgets is empty; expected FLOP budgets, e.g. (1e11, 1e12)")
    if isinstance(sizes, str):
        sizes = (sizes,)
    sizes = list(sizes)
    if not sizes:
        return [_auto_sizes(c, grid, count_params) for c in budgets]
    if sizes and all(isinstance(s, str) for s in sizes):
        per_budget = [sizes] * len(budgets)
    elif len(sizes) == len(budgets) and all(not isinstance(s, str) for s in sizes):
        per_budget = [list(s) for s in sizes]
    else:
        raise ConfigError(
            f"config.grid.sizes must be size names shared by all budgets or one tuple of names "
            f"per budget ({len(budgets)} budgets); got {grid.sizes!r}")
    for names in per_budget:
        for name in names:
            sizes_lib.get_size(name)  # ConfigError listing the ladder
    return per_budget


def expand(config: ml_collections.ConfigDict, *, vocab_size: int,
           train_tokens: int) -> list[GridRun]:
    """Every (budget, size) point of config.grid, in budget then size order, filters applied.

    train_tokens (the prepared train split's token count) turns a token budget into epochs.
    """
    grid, seq_len = config.grid, config.data.seq_len
    tokens_per_step = config.train.global_batch_size * seq_len

    def count_params(name: str) -> tuple[int, int, float]:
        size = sizes_lib.get_size(name)
        total, non_embedding = sizes_lib.n_params(
            size, vocab_size, n_kv_heads=config.model.n_kv_heads,
            tie_embeddings=config.model.tie_embeddings)
        fpt = sizes_lib.flops_per_token(size, vocab_size, seq_len,
                                        n_kv_heads=config.model.n_kv_heads)
        return total, non_embedding, fpt

    runs, seen = [], set()
    for budget, names in zip(grid.budgets, sizes_for_budgets(grid, count_params)):
        for name in names:
            total, non_embedding, fpt = count_params(name)
            train = ml_collections.ConfigDict({"steps": 0, "tokens": 0, "flops": float(budget)})
            steps = optim.num_steps(train, tokens_per_step=tokens_per_step, flops_per_token=fpt)
            tokens = budget / fpt
            epochs = steps * tokens_per_step / max(train_tokens, 1)
            point = GridRun(run_name(budget, name), float(budget), name, total, non_embedding,
                            fpt, tokens, steps, epochs)
            if point.name in seen:
                raise ConfigError(f"config.grid lists run {point.name} twice (budgets and sizes "
                                  f"must be distinct)")
            seen.add(point.name)
            runs.append(dataclasses.replace(point, skip_reason=_skip_reason(point, grid)))
    return runs


def _skip_reason(point: GridRun, grid: ml_collections.ConfigDict) -> str:
    """Why a point would not measure anything useful, or "" to keep it."""
    # Steps are whole numbers of batches: a budget below one batch rounds up to one step.
    if point.tokens < 1 or point.steps < grid.min_steps:
        return (f"{point.steps} steps < config.grid.min_steps={grid.min_steps} "
                f"(too few for the schedule to mean anything)")
    if grid.max_epochs and point.epochs > grid.max_epochs:
        return (f"{point.epochs:.2f} epochs > config.grid.max_epochs={grid.max_epochs} "
                f"(the model would memorise the training data)")
    return ""


def run_config(config: ml_collections.ConfigDict, point: GridRun, prepared_dir: str,
               meds_dir: str = "") -> ml_collections.ConfigDict:
    """The single-run config of one grid point: base config + size + FLOP budget + its point.

    The grid itself is dropped so the run's config.json is a plain single-run config. Both data
    dirs are pinned (absolute) so a run never regenerates synthetic data into its own run dir.
    """
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        del cfg["grid"]
        cfg.model.size = point.size
        cfg.train.steps = 0
        cfg.train.tokens = 0
        cfg.train.flops = float(point.budget)
        cfg.data.prepared_dir = prepared_dir
        cfg.data.meds_dir = meds_dir or cfg.data.meds_dir
        cfg.grid_point = ml_collections.ConfigDict({"budget": point.budget, "size": point.size})
    return cfg
