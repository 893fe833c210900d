"""IsoFLOP grids as config: budgets x sizes x seeds -> named runs, the meaningless left out.

Each (C, N) point trains size N for exactly C training FLOPs (our own count, model/sizes.py), so
its token budget is D = C / flops_per_token(N). The step count comes from the trainer's own
conversion (train/optim.num_steps), so what we filter on is what the trainer will run.

With train.schedule='wsd' the points of one (size, seed) share a stable run (`branches`): it
trains at the constant peak rate up to the largest point's cooldown start, keeping a checkpoint
at every point's cooldown start, and each point is a cooldown branch from there
(ehr_jax.train.branch), so it costs only its last cooldown_frac of the steps.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from ehr_jax.errors import ConfigError
from ehr_jax.model import sizes as sizes_lib
from ehr_jax.sweep import placement
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
    seed: int = 0
    cost: float = 0.0  # FLOPs to train it: its budget, or its cooldown's share for a branch
    stable: str = ""  # wsd: the stable run it branches from
    branch_step: int = 0  # wsd: the stable run's step it starts from (its cooldown start)
    warmup_steps: int = 0  # wsd: warmup shared with its stable run
    expected: str = ""  # the budget's expected loss-optimal rung (ehr_jax.sweep.placement)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class StableRun:
    """A wsd sweep's constant-rate run of one (size, seed): the trunk its points branch from."""

    name: str
    size: str
    seed: int
    steps: int  # the largest branch step of its points
    keep_steps: tuple[int, ...]  # every point's branch step: checkpoints kept there
    warmup_steps: int
    cost: float  # its training FLOPs


def default_grid() -> ml_collections.ConfigDict:
    """config.grid for presets to fill in: a sweep runs when a config has this group."""
    grid = ml_collections.ConfigDict()
    grid.budgets = ()  # training-FLOP budgets C, our own count (ehr_jax.model.sizes)
    grid.seeds = (0,)  # seeds per grid point (init and data order); names gain -s<seed> if > 1
    grid.sizes = ()  # ladder names tried at every budget, one tuple per budget, or () for auto
    grid.sizes_per_budget = 5  # auto sizes: kept rungs per budget around the expected optimum
    grid.tokens_per_param = 20.0  # expected optimum without a law: D/N of that rung (Chinchilla)
    grid.optimum_law = ""  # fit.json of an earlier sweep: N_opt = k C^a places the sizes instead
    grid.min_sizes = 5  # named sizes: leave out a budget with fewer kept sizes (0: keep all)
    grid.min_steps = 100  # leave out runs with fewer optimizer steps than this
    grid.max_epochs = 4.0  # leave out runs passing over the train split more often (0: no cap)
    grid.only = ""  # comma-separated run names to train ("" all): one run per launcher job
    grid.dry_run = False  # print one `ehr_jax.main` command per run instead of training
    grid.workers = 1  # sweep processes on this host, each training one run at a time (CPU grids)
    grid.analysis = True  # fit the scaling laws and plot into <workdir>/analysis at the end
    grid.analysis_n = "non_embedding"  # model size N the fits use: non_embedding or total (analysis.results.N_KEYS)
    grid.compilation_cache = True  # reuse XLA compiles across runs and reruns (<workdir>/jax_cache)
    return grid


def budget_tag(budget: float) -> str:
    """1e12 -> 'c1e12', 2.5e11 -> 'c2.5e11': short, sortable by eye, stable across runs."""
    if not budget > 0 or not math.isfinite(budget):
        raise ConfigError(f"config.grid.budgets must hold positive FLOP counts; got {budget}")
    mantissa, exponent = f"{budget:.2e}".split("e")
    return f"c{float(mantissa):g}e{int(exponent)}"


def run_name(budget: float, size: str, seed: int | None = None) -> str:
    """The run's directory name, e.g. c1e12-d64-l2 (or c1e12-d64-l2-s1 in a sweep of several
    seeds): the grid point is readable from the path."""
    return f"{budget_tag(budget)}-{size}" + ("" if seed is None else f"-s{seed}")


def stable_name(size: str, seed: int | None = None) -> str:
    """A wsd sweep's stable run of a size, e.g. stable-d64-l2 (stable-d64-l2-s1 with seeds)."""
    return f"stable-{size}" + ("" if seed is None else f"-s{seed}")


def seeds(grid: ml_collections.ConfigDict) -> list[int]:
    """config.grid.seeds as distinct ints (default: seed 0 only)."""
    values = grid.seeds
    values = [values] if isinstance(values, int) else list(values)
    if not values or len(set(values)) != len(values) or any(
            not isinstance(v, int) or v < 0 for v in values):
        raise ConfigError(f"config.grid.seeds must be distinct non-negative integers, e.g. (0, 1, "
                          f"2); got {grid.seeds!r}")
    return values


def sizes_for_budgets(grid: ml_collections.ConfigDict) -> list[list[str]]:
    """config.grid.sizes as one list per budget: shared names, per-budget lists, or [] per budget
    (auto: ehr_jax.sweep.placement picks them)."""
    budgets, sizes = list(grid.budgets), grid.sizes
    if not budgets:
        raise ConfigError("config.grid.budgets is empty; expected FLOP budgets, e.g. (1e11, 1e12)")
    if isinstance(sizes, str):
        sizes = (sizes,)
    sizes = list(sizes)
    if not sizes:
        return [[] for _ in budgets]
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
    """Every (budget, size, seed) point of config.grid, in budget, size, seed order, filters
    applied and sizes placed around each budget's expected optimum (ehr_jax.sweep.placement).

    train_tokens (the prepared train split's token count) turns a token budget into epochs.
    """
    grid, seq_len = config.grid, config.data.seq_len
    tokens_per_step = config.train.global_batch_size * seq_len
    law = placement.read_law(grid.optimum_law)
    seed_list = seeds(grid)

    def point(budget: float, name: str) -> GridRun:
        size = sizes_lib.get_size(name)
        total, non_embedding = sizes_lib.n_params(
            size, vocab_size, n_kv_heads=config.model.n_kv_heads,
            tie_embeddings=config.model.tie_embeddings)
        fpt = sizes_lib.flops_per_token(size, vocab_size, seq_len,
                                        n_kv_heads=config.model.n_kv_heads)
        train = ml_collections.ConfigDict({"steps": 0, "tokens": 0, "flops": float(budget)})
        steps = optim.num_steps(train, tokens_per_step=tokens_per_step, flops_per_token=fpt)
        run = GridRun(run_name(budget, name), float(budget), name, total, non_embedding, fpt,
                      budget / fpt, steps, steps * tokens_per_step / max(train_tokens, 1),
                      cost=float(budget))
        return dataclasses.replace(run, skip_reason=_skip_reason(run, grid))

    runs, seen = [], set()
    for budget, names in zip(grid.budgets, sizes_for_budgets(grid)):
        ladder = [point(budget, name) for name in sizes_lib.LADDER]
        expected = ladder[placement.expected_index(budget, ladder, grid, law)[0]].size
        if names:
            chosen = [point(budget, name) for name in names]
            reason = placement.explicit_reason(chosen, grid)
        else:
            chosen, reason = placement.auto_window(budget, ladder, grid, law)
        for run in chosen:
            if reason:
                run = dataclasses.replace(run, skip_reason="; ".join(
                    filter(None, [run.skip_reason, f"budget left out: {reason}"])))
            for seed in seed_list:
                name = run_name(budget, run.size, seed if len(seed_list) > 1 else None)
                if name in seen:
                    raise ConfigError(f"config.grid lists run {name} twice (budgets and "
                                      f"sizes must be distinct)")
                seen.add(name)
                runs.append(dataclasses.replace(run, name=name, seed=seed, expected=expected))
    return runs


def branches(config: ml_collections.ConfigDict,
             points: list[GridRun]) -> tuple[list[GridRun], list[StableRun]]:
    """With train.schedule='wsd': the kept points as cooldown branches, and their stable runs
    (ordered by seed, then size). Any other schedule: the points as they are, no stable runs.

    Warmup is shared by a (size, seed)'s stable run and branches: train.warmup_steps, or
    warmup_frac of its shortest point's steps. A point of S steps branches at
    optim.cooldown_start(S, cooldown_frac), the step the trainer's own schedule starts its
    cooldown at.
    """
    train = config.train
    if train.schedule != "wsd":
        return points, []
    frac = float(train.cooldown_frac)
    if not 0 < frac < 1:
        raise ConfigError(f"train.cooldown_frac must be in (0, 1) for a wsd sweep (each point "
                          f"branches a cooldown of that fraction of its steps); got {frac}")
    tokens_per_step = train.global_batch_size * config.data.seq_len
    several = len(seeds(config.grid)) > 1
    families: dict[tuple[int, str], list[GridRun]] = {}
    for point in points:
        if not point.skip_reason:
            families.setdefault((point.seed, point.size), []).append(point)
    stables, branched = [], {}
    for (seed, size), members in sorted(families.items(),
                                        key=lambda item: (item[0][0], item[1][0].n_params)):
        warmup = int(train.warmup_steps) or optim.warmup_steps(
            min(p.steps for p in members), train.warmup_frac)
        starts = {p.name: optim.cooldown_start(p.steps, frac) for p in members}
        if warmup > min(starts.values()):
            raise ConfigError(f"train.warmup_steps / warmup_frac: a {warmup}-step warmup of "
                              f"{size} ends after its shortest point's cooldown starts (step "
                              f"{min(starts.values())}); shorten it")
        top = max(starts.values())
        fpt = members[0].flops_per_token
        stable = StableRun(stable_name(size, seed if several else None), size, seed, top,
                           tuple(sorted(set(starts.values()))), warmup,
                           float(top * tokens_per_step * fpt))
        stables.append(stable)
        for p in members:
            cooldown = (p.steps - starts[p.name]) * tokens_per_step * fpt
            branched[p.name] = dataclasses.replace(
                p, cost=float(cooldown), stable=stable.name, branch_step=starts[p.name],
                warmup_steps=warmup)
    return [branched.get(p.name, p) for p in points], stables


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
               meds_dir: str = "", stable_dir: str = "") -> ml_collections.ConfigDict:
    """The single-run config of one grid point: base config + size + FLOP budget + seed + its
    point (+ for a wsd branch, its stable run's dir and branch step).

    The grid itself is dropped so the run's config.json is a plain single-run config. Both data
    dirs are pinned (absolute) so a run never regenerates synthetic data into its own run dir.
    """
    cfg = _single_run(config, point.size, point.seed, prepared_dir, meds_dir)
    with cfg.unlocked():
        cfg.train.flops = float(point.budget)
        if point.stable:
            cfg.train.warmup_steps = point.warmup_steps
            cfg.train.branch_from = stable_dir
            cfg.train.branch_step = point.branch_step
        cfg.grid_point = ml_collections.ConfigDict(
            {"budget": point.budget, "size": point.size, "seed": point.seed})
    return cfg


def stable_config(config: ml_collections.ConfigDict, stable: StableRun, prepared_dir: str,
                  meds_dir: str = "") -> ml_collections.ConfigDict:
    """The single-run config of a stable run: constant rate after warmup (a wsd schedule with no
    cooldown) for stable.steps, keeping a checkpoint at every branch step."""
    cfg = _single_run(config, stable.size, stable.seed, prepared_dir, meds_dir)
    with cfg.unlocked():
        cfg.train.steps = stable.steps
        cfg.train.cooldown_frac = 0.0
        cfg.train.warmup_steps = stable.warmup_steps
        cfg.train.keep_steps = stable.keep_steps
    return cfg


def _single_run(config: ml_collections.ConfigDict, size: str, seed: int, prepared_dir: str,
                meds_dir: str) -> ml_collections.ConfigDict:
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        del cfg["grid"]
        cfg.seed = seed
        cfg.model.size = size
        cfg.train.steps = 0
        cfg.train.tokens = 0
        cfg.train.flops = 0.0
        cfg.data.prepared_dir = prepared_dir
        cfg.data.meds_dir = meds_dir or cfg.data.meds_dir
    return cfg
