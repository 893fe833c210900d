"""Where a budget's sizes go: around its expected loss-optimal size, or the budget is left out.

An IsoFLOP profile shows its minimum only when the budget's kept sizes surround that minimum,
so each budget needs sizes on both sides of where the optimum is expected. The expected optimum
is the rung nearest N_opt(C) of a fitted law (`grid.optimum_law`: an earlier sweep's fit.json,
N_opt = k C^a) or, without one, the rung whose D/N is nearest `grid.tokens_per_param` (20:
Chinchilla's rule). A rung that fails a filter (fewer than min_steps steps, more than
max_epochs passes over the data) is not kept. With auto sizes (grid.sizes = ()), a budget keeps
the sizes_per_budget consecutive kept rungs around its expected optimum, at least two on each
side; when the filters leave fewer (typically: the optimum itself would repeat the data more
than max_epochs times), the whole budget is left out with that reason in skipped.json. With
sizes named in the config, a budget with fewer than grid.min_sizes kept sizes is left out, and
an optimum the kept sizes do not bracket is reported (`describe`), not enforced.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

import ml_collections

from ehr_jax.errors import ConfigError
from ehr_jax.model import sizes as sizes_lib
from ehr_jax.train import metrics as train_metrics

# The dry run's cost in H100-hours: bf16 dense peak at an assumed model FLOP utilisation.
H100_PEAK_FLOPS = train_metrics.DEVICE_PEAK_FLOPS["H100"]
ASSUMED_MFU = 0.4
SIDE = 2  # kept sizes wanted on each side of the expected optimum


@dataclasses.dataclass(frozen=True)
class Law:
    """N_opt = k C^a from an earlier sweep's fit.json, N in its n_key (total/non_embedding)."""

    k: float
    a: float
    n_key: str
    path: str

    def n_opt(self, budget: float) -> float:
        return self.k * budget ** self.a


def read_law(path: str) -> Law | None:
    """grid.optimum_law: the isoflop N_opt law of fit.json at `path` ("" -> None)."""
    if not path:
        return None
    try:
        with open(path) as handle:
            fit = json.load(handle)
        n_opt, settings = fit["isoflop"]["n_opt"], fit["settings"]
        law = Law(float(n_opt["k"]["value"]), float(n_opt["a"]["value"]),
                  settings.get("n_key", "non_embedding"), path)
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"config.grid.optimum_law={path!r}: expected an analysis fit.json with "
                          f"isoflop.n_opt (k, a); {type(error).__name__}: {error}") from error
    if settings.get("flops_key", "flops") != "flops":
        raise ConfigError(f"config.grid.optimum_law={path!r} was fitted with C = "
                          f"{settings['flops_key']}; the grid's budgets are in our own FLOP count "
                          f"(refit with --flops_key=flops)")
    return law


def expected_index(budget: float, rungs: Sequence[Any], grid: ml_collections.ConfigDict,
                   law: Law | None) -> tuple[int, str]:
    """(index of the rung nearest the expected optimum among `rungs` (GridRuns of one budget,
    any order), how it was found)."""
    if law is not None:
        target = law.n_opt(budget)
        key = "n_params" if law.n_key == "total" else "n_params_non_embedding"
        distance = [abs(math.log(getattr(r, key) / target)) for r in rungs]
        how = f"N_opt = {law.k:.3g} C^{law.a:.3f} ({law.n_key} N, {law.path})"
    else:
        ratio = float(grid.tokens_per_param)
        if ratio <= 0:
            raise ConfigError(f"config.grid.tokens_per_param must be positive; got {ratio}")
        distance = [abs(math.log(r.tokens / r.n_params / ratio)) for r in rungs]
        how = f"D/N = {ratio:g}"
    return min(range(len(rungs)), key=distance.__getitem__), how


def auto_window(budget: float, ladder: list[Any], grid: ml_collections.ConfigDict,
                law: Law | None) -> tuple[list[Any], str]:
    """(chosen rungs, reason to leave the budget out or "") from the whole ladder's GridRuns of
    one budget, sorted by size."""
    k = int(grid.sizes_per_budget)
    if k < 1:
        raise ConfigError(f"config.grid.sizes_per_budget must be >= 1; got {k}")
    centre, how = expected_index(budget, ladder, grid, law)
    side = min(SIDE, k // 2)
    start = min(max(centre - k // 2, 0), max(len(ladder) - k, 0))
    window = ladder[start:start + k]
    if ladder[centre].skip_reason:
        return window, (
            f"its expected optimum {ladder[centre].size} ({how}) is left out: "
            f"{ladder[centre].skip_reason}")
    lo = centre
    while lo > 0 and not ladder[lo - 1].skip_reason:
        lo -= 1
    hi = centre
    while hi < len(ladder) - 1 and not ladder[hi + 1].skip_reason:
        hi += 1
    start = min(max(centre - k // 2, lo), hi - k + 1)
    if start < lo or centre - start < side or start + k - 1 - centre < side:
        return ladder[lo:hi + 1], (
            f"only {centre - lo} kept sizes below and {hi - centre} above its expected optimum "
            f"{ladder[centre].size} ({how}); it needs {k} in all with {side} on each side. "
            f"Filters (min_steps, max_epochs) leave out the rest")
    return ladder[start:start + k], ""


def explicit_reason(points: list[Any], grid: ml_collections.ConfigDict) -> str:
    """Why a budget of configured sizes is left out ("" to keep it): too few kept sizes."""
    need = int(grid.min_sizes)
    kept = [p for p in points if not p.skip_reason]
    if len(kept) < need:
        return (f"only {len(kept)} of its sizes are kept (< config.grid.min_sizes={need}); an "
                f"IsoFLOP parabola needs sizes on both sides of the optimum")
    return ""


def describe(points: list[Any], stables: list[Any]) -> list[str]:
    """The dry run's (and the log's) plan: sizes kept per budget around the expected optimum,
    and for wsd sweeps the FLOPs and H100-hours the cooldown branches save."""
    order = {name: i for i, name in enumerate(sizes_lib.LADDER)}
    lines = []
    for budget in sorted({p.budget for p in points}):
        mine = [p for p in points if p.budget == budget and p.seed == points[0].seed]
        kept = [p for p in mine if not p.skip_reason]
        expected = mine[0].expected
        if not kept:
            marker = "budget left out: "
            reasons = sorted({p.skip_reason.split(marker, 1)[-1] for p in mine})
            lines.append(f"  C={budget:.3g}: left out: {'; '.join(reasons)}")
            continue
        below = sum(order[p.size] < order[expected] for p in kept)
        above = sum(order[p.size] > order[expected] for p in kept)
        names = " ".join(f"[{p.size}]" if p.size == expected else p.size for p in kept)
        note = "" if min(below, above) >= SIDE else (
            f"; expected optimum {expected} has {below} kept sizes below and {above} above")
        lines.append(f"  C={budget:.3g}: {len(kept)} sizes kept: {names}{note}")
    kept = [p for p in points if not p.skip_reason]
    independent = sum(p.budget for p in kept)
    unit = 3600 if independent >= 360 * H100_PEAK_FLOPS * ASSUMED_MFU else 1
    h100 = lambda flops: (f"{flops / (H100_PEAK_FLOPS * ASSUMED_MFU) / unit:.3g} "  # noqa: E731
                          f"H100-{'hours' if unit > 1 else 'seconds'}")
    lines.append(f"  {len(kept)} runs, {independent:.3g} training FLOPs as independent runs "
                 f"({h100(independent)})")
    if stables:
        branched = sum(s.cost for s in stables) + sum(p.cost for p in kept)
        lines.append(
            f"  wsd cooldown branches from {len(stables)} stable runs: {branched:.3g} FLOPs "
            f"({h100(branched)}), saving {independent - branched:.3g} "
            f"FLOPs = {h100(independent - branched)} "
            f"({100 * (1 - branched / independent):.0f}%; H100 bf16 dense peak "
            f"{H100_PEAK_FLOPS / 1e12:.0f} TFLOP/s at an assumed {100 * ASSUMED_MFU:.0f}% MFU)")
    return lines
