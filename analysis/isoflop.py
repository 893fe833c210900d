"""Chinchilla approach 2: IsoFLOP profiles, then N_opt(C), D_opt(C) and L_opt(C) power laws.

Per budget, loss is fitted as a parabola in ln N; its vertex is that budget's optimum. Runs of
one size that differ only in seed are one point: their mean, weighted by its standard error
("seed_spread" noise model); with one seed per size the points weigh the same ("residual").
The bootstrap never drops a size: it redraws seeds within each size (seed_spread) or the
parabola's residuals around it (residual), refits every parabola and then the power laws, so
the exponents' intervals carry the per-budget noise. A replicate whose parabola has no finite
minimum is dropped and counted. A budget whose vertex lies outside the sizes tried (or whose
parabola opens downward) says only "the optimum is further out"; it is reported and left out of
the power laws rather than extrapolated.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from analysis import powerlaw
from analysis.powerlaw import Estimate, PowerLaw
from analysis.results import Points

MIN_SIZES = 3  # distinct model sizes a parabola needs
DEFAULT_BOOT = 1000
# A size's variance is its seeds' sample variance shrunk toward the budget's typical one with this
# many prior degrees of freedom: two seeds that happen to agree must not get near-infinite weight.
PRIOR_DOF = 2.0
# Parabola misfit (weighted residuals over seed noise, per degree of freedom) above which the
# seed-only intervals are called too narrow.
MAX_CHI2_DOF = 4.0
NOISE_MODELS = ("seed_spread", "residual")


@dataclasses.dataclass(frozen=True)
class SizePoints:
    """One budget's runs collapsed to one point per size (seeds averaged)."""

    n: np.ndarray  # distinct sizes, ascending
    mean: np.ndarray  # mean loss over the size's seeds
    se: np.ndarray  # standard error of the mean (seed_spread); NaN under the residual model
    seeds: np.ndarray  # runs (seeds) per size
    deviations: tuple[np.ndarray, ...]  # each size's losses minus its mean
    noise_model: str


def collapse_seeds(n: np.ndarray, loss: np.ndarray) -> SizePoints:
    """Mean and standard error per size; the noise model is seed_spread when seeds vary at all.

    A size's variance is shrunk toward the median of the budget's per-size variances (robust to
    one size whose seeds disagree wildly, which should lose weight, not spread it to the others).
    """
    sizes, inverse = np.unique(n, return_inverse=True)
    seeds = np.bincount(inverse)
    mean = np.bincount(inverse, weights=loss) / seeds
    deviations = tuple(loss[inverse == i] - mean[i] for i in range(len(sizes)))
    sum_sq = np.array([float(dev @ dev) for dev in deviations])
    replicated = seeds > 1
    typical = float(np.median(sum_sq[replicated] / (seeds[replicated] - 1))) if replicated.any() else 0.0
    if not typical > 0:  # one seed per size, or seeds that agree exactly: nothing to weigh by
        return SizePoints(sizes, mean, np.full(len(sizes), np.nan), seeds, deviations, "residual")
    variance = (sum_sq + PRIOR_DOF * typical) / (seeds - 1 + PRIOR_DOF)
    return SizePoints(sizes, mean, np.sqrt(variance / seeds), seeds, deviations, "seed_spread")


def fit_parabolas(u: np.ndarray, loss_RxP: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares quadratics in u, one per row of losses (bootstrap replicates)."""
    x_Px3 = np.stack([u * u, u, np.ones_like(u)], axis=1)
    gram_3x3 = x_Px3.T @ (weights[:, None] * x_Px3)
    rhs_Rx3 = np.atleast_2d(loss_RxP) @ (weights[:, None] * x_Px3)
    return np.linalg.solve(gram_3x3, rhs_Rx3.T).T


def _seed_replicates(sizes: SizePoints, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Replicate means: each size's seeds redrawn with replacement, a lone seed's from the pooled spread.

    Deviations are scaled by sqrt(k / (k - 1)) so a k-seed mean varies as much as a fresh one
    would (plain resampling shrinks its variance by (k - 1) / k).
    """
    scaled = [dev * np.sqrt(len(dev) / (len(dev) - 1)) for dev in sizes.deviations if len(dev) > 1]
    pooled = np.concatenate(scaled)
    out_RxP = np.empty((n_boot, len(sizes.n)))
    for i, dev in enumerate(sizes.deviations):
        k = len(dev)
        source = dev * np.sqrt(k / (k - 1)) if k > 1 else pooled
        out_RxP[:, i] = sizes.mean[i] + rng.choice(source, size=(n_boot, k)).mean(axis=1)
    return out_RxP


def _residual_replicates(u: np.ndarray, sizes: SizePoints, coeffs: np.ndarray, n_boot: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Replicate means: the fitted parabola plus its residuals redrawn with replacement.

    Residuals are leverage-adjusted (r / sqrt(1 - h)) and centred, the usual regression
    bootstrap; every replicate keeps every size. Three sizes leave no residual to draw.
    """
    x_Px3 = np.stack([u * u, u, np.ones_like(u)], axis=1)
    fitted = x_Px3 @ coeffs
    leverage = np.einsum("pi,ij,pj->p", x_Px3, np.linalg.inv(x_Px3.T @ x_Px3), x_Px3)
    with np.errstate(divide="ignore", invalid="ignore"):
        adjusted = np.where(leverage < 1 - 1e-9, (sizes.mean - fitted) / np.sqrt(1 - leverage), 0.0)
    adjusted = adjusted - adjusted.mean()
    return fitted + rng.choice(adjusted, size=(n_boot, len(u)))


def _vertex(coeffs_Rx3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u at the minimum, loss there); NaN where the parabola does not open upward."""
    c2, c1, c0 = coeffs_Rx3.T
    with np.errstate(divide="ignore", invalid="ignore"):
        u_min = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
    return u_min, np.where(c2 > 0, c0 - c1 * c1 / (4 * c2), np.nan)


@dataclasses.dataclass
class Profile:
    """One budget's IsoFLOP curve: loss = c2 u^2 + c1 u + c0 with u = ln N - center."""

    budget: float  # nominal budget (grid_point.budget or the FLOP cluster)
    c: float  # compute of the budget in the fit's FLOP count: geometric mean over its runs
    n: np.ndarray  # every run (all seeds)
    d: np.ndarray
    loss: np.ndarray
    sizes: SizePoints  # what the parabola is fitted to
    center: float
    coeffs: np.ndarray  # (c2, c1, c0)
    chi2_dof: float  # weighted residuals per degree of freedom (seed_spread; NaN otherwise)
    interior: bool  # opens upward and the vertex lies inside the sizes tried
    n_opt: Estimate | None
    d_opt: Estimate | None
    loss_opt: Estimate | None
    boot_n_opt: np.ndarray  # replicate minima (NaN/inf where a replicate had no finite minimum)
    boot_d_opt: np.ndarray
    boot_loss_opt: np.ndarray
    note: str = ""

    @property
    def boot_dropped(self) -> int:
        """Replicates whose parabola had no finite minimum."""
        ok = np.isfinite(self.boot_n_opt) & np.isfinite(self.boot_d_opt) & np.isfinite(self.boot_loss_opt)
        return int((~ok).sum())

    def curve(self, n: np.ndarray) -> np.ndarray:
        u = np.log(n) - self.center
        return np.polyval(self.coeffs, u)

    def to_json(self) -> dict:
        est = lambda e: e.to_json() if e is not None else None  # noqa: E731
        clean = lambda v: [float(x) if np.isfinite(x) else None for x in v]  # noqa: E731
        return {"budget": self.budget, "C": self.c, "n_runs": int(len(self.n)),
                "sizes_tried": [float(self.n.min()), float(self.n.max())],
                "noise_model": self.sizes.noise_model, "seeds_per_size": self.sizes.seeds.tolist(),
                "size_mean_loss": clean(self.sizes.mean), "size_se": clean(self.sizes.se),
                "chi2_per_dof": self.chi2_dof if np.isfinite(self.chi2_dof) else None,
                "parabola_ln_n": {"c2": float(self.coeffs[0]), "c1": float(self.coeffs[1]),
                                  "c0": float(self.coeffs[2]), "center_ln_n": self.center},
                "opens_upward": bool(self.coeffs[0] > 0), "interior": self.interior,
                "n_opt": est(self.n_opt), "d_opt": est(self.d_opt), "loss_opt": est(self.loss_opt),
                "bootstrap_dropped": self.boot_dropped, "used_in_fit": self.interior, "note": self.note}


@dataclasses.dataclass
class IsoflopFit:
    profiles: list[Profile]
    n_opt: PowerLaw | None  # N_opt = k C^a
    d_opt: PowerLaw | None  # D_opt = k C^b
    loss_opt: PowerLaw | None  # L_opt = k C^e (e < 0)
    warnings: list[str]
    n_boot: int = 0
    boot_dropped: int = 0  # joint replicates left out of the power laws (a budget without a minimum)
    unique_tokens: float = 0.0  # the dataset these runs trained on (0.0: unknown)

    @property
    def noise_model(self) -> str:
        """seed_spread or residual when every budget agrees, else mixed (see each profile)."""
        models = {p.sizes.noise_model for p in self.profiles}
        return models.pop() if len(models) == 1 else "mixed"

    def to_json(self) -> dict:
        law = lambda p, name: p.to_json(name) if p is not None else None  # noqa: E731
        return {"unique_tokens": self.unique_tokens or None, "noise_model": self.noise_model,
                "bootstrap": {"method": BOOTSTRAP_METHOD, "n_boot": self.n_boot,
                              "dropped": self.boot_dropped,
                              "dropped_fraction": self.boot_dropped / self.n_boot if self.n_boot else None},
                "profiles": [p.to_json() for p in self.profiles],
                "n_budgets_interior": sum(p.interior for p in self.profiles), "n_opt": law(self.n_opt, "a"),
                "d_opt": law(self.d_opt, "b"), "loss_opt": law(self.loss_opt, "exponent")}


BOOTSTRAP_METHOD = ("every size kept; seeds redrawn within each size (seed_spread) or parabola residuals "
                    "redrawn (residual); replicates with a budget without a finite minimum dropped")


def _chi2_dof(u: np.ndarray, sizes: SizePoints, coeffs: np.ndarray) -> float:
    dof = len(u) - 3
    if sizes.noise_model != "seed_spread" or dof < 1:
        return float("nan")
    r = (sizes.mean - np.polyval(coeffs, u)) / sizes.se
    return float(r @ r / dof)


def fit_profile(budget: float, points: Points, n_boot: int, rng: np.random.Generator, level: float) -> Profile:
    """One budget's parabola, its minimum, and the minimum's bootstrap interval."""
    sizes = collapse_seeds(points.n, points.loss)
    center = float(np.log(sizes.n).mean())
    u = np.log(sizes.n) - center
    weights = 1 / sizes.se ** 2 if sizes.noise_model == "seed_spread" else np.ones(len(u))
    coeffs = fit_parabolas(u, sizes.mean, weights)[0]
    if sizes.noise_model == "seed_spread":
        replicates_RxP = _seed_replicates(sizes, n_boot, rng)
    else:
        replicates_RxP = _residual_replicates(u, sizes, coeffs, n_boot, rng)
    boot = fit_parabolas(u, replicates_RxP, weights)
    u_min, loss_min = _vertex(coeffs[None, :])
    boot_u, boot_loss = _vertex(boot)
    d_map = powerlaw.loglog_interp(points.n, points.d)
    to_n = lambda uu: np.exp(uu + center)  # noqa: E731
    to_d = lambda uu: np.exp(d_map(uu + center))  # noqa: E731
    with np.errstate(over="ignore"):  # a nearly flat replicate puts its vertex at +-inf: dropped later
        boot_n, boot_d = to_n(boot_u), to_d(boot_u)
    profile = Profile(
        budget=float(budget), c=float(np.exp(np.log(points.c).mean())), n=points.n, d=points.d,
        loss=points.loss, sizes=sizes, center=center, coeffs=coeffs, chi2_dof=_chi2_dof(u, sizes, coeffs),
        interior=False, n_opt=None, d_opt=None, loss_opt=None, boot_n_opt=boot_n, boot_d_opt=boot_d,
        boot_loss_opt=boot_loss)
    range_note = f"sizes tried {points.n.min():.3g}-{points.n.max():.3g}"
    if not coeffs[0] > 0:
        profile.note = f"parabola is flat or opens downward (no minimum; {range_note})"
        return profile
    u0 = float(u_min[0])
    if not u.min() < u0 < u.max():
        side = "below the smallest" if u0 <= u.min() else "above the largest"
        profile.note = (f"minimum N={to_n(u0):.3g} lies {side} size tried ({range_note}): "
                        "the grid does not bracket the optimum")
        # An extrapolated vertex has no meaningful interval: report the point only.
        nan = float("nan")
        profile.n_opt = Estimate(float(to_n(u0)), nan, nan)
        profile.d_opt = Estimate(float(to_d(u0)), nan, nan)
        profile.loss_opt = Estimate(float(loss_min[0]), nan, nan)
        return profile
    profile.interior = True
    profile.n_opt = powerlaw.interval(float(to_n(u0)), profile.boot_n_opt, level)
    profile.d_opt = powerlaw.interval(float(to_d(u0)), profile.boot_d_opt, level)
    profile.loss_opt = powerlaw.interval(float(loss_min[0]), boot_loss, level)
    return profile


def _group(points: Points) -> dict[float, Points]:
    return {float(b): points.select(points.budget == b) for b in np.unique(points.budget)}


def _fit_power_laws(fit: IsoflopFit, used: list[Profile], level: float) -> None:
    """N_opt, D_opt, L_opt against C through the interior minima; replicate j uses every budget's j-th refit.

    A replicate in which any budget lost its minimum is dropped from all three laws alike.
    """
    if len(used) == 2:
        fit.warnings.append("only 2 budgets in the power laws: they pass exactly through both minima; "
                            "the intervals reflect only each minimum's uncertainty")
    c = np.array([p.c for p in used])
    stacked = {attr: np.stack([getattr(p, attr) for p in used], axis=1)
               for attr in ("boot_n_opt", "boot_d_opt", "boot_loss_opt")}
    ok = np.all([np.isfinite(v).all(axis=1) for v in stacked.values()], axis=0)
    for name, attr in (("n_opt", "boot_n_opt"), ("d_opt", "boot_d_opt"), ("loss_opt", "boot_loss_opt")):
        values = np.array([getattr(p, name).value for p in used])
        setattr(fit, name, powerlaw.from_replicates(c, values, stacked[attr][ok], level))
    fit.boot_dropped = int((~ok).sum())
    if fit.boot_dropped > fit.n_boot * 0.05:
        fit.warnings.append(f"{fit.boot_dropped} of {fit.n_boot} bootstrap replicates had a budget without a "
                            "finite minimum and were dropped: the intervals may be too narrow")
    losses = [p.loss_opt.value for p in sorted(used, key=lambda p: p.c)]
    if any(b >= a for a, b in zip(losses, losses[1:])):
        fit.warnings.append("the loss at the optimum does not fall with every budget increase")


def _profile_warnings(profile: Profile) -> list[str]:
    """What a reader must know about one budget's minimum and its interval."""
    notes = []
    if profile.interior and profile.sizes.noise_model == "residual" and len(profile.sizes.n) == MIN_SIZES:
        # Three sizes: the parabola interpolates them, leaving no residual to redraw.
        notes.append(f"budget {profile.budget:.3g}: only {MIN_SIZES} sizes and one seed each, so its parabola "
                     "passes exactly through them and the bootstrap cannot measure the minimum's uncertainty "
                     "(no CI; the power-law CIs understate it): use >= 5 sizes per budget or several seeds")
        nan = float("nan")
        for name in ("n_opt", "d_opt", "loss_opt"):
            setattr(profile, name, Estimate(getattr(profile, name).value, nan, nan))
    if profile.chi2_dof > MAX_CHI2_DOF:
        notes.append(f"budget {profile.budget:.3g}: the parabola misses the seed means by {profile.chi2_dof:.1f}x "
                     "their seed variance: the sizes span more than a parabola fits, and the interval "
                     "(seed noise only) is too narrow")
    if not profile.interior:
        notes.append(f"budget {profile.budget:.3g}: {profile.note}; excluded from the N_opt/D_opt/L_opt fits")
    return notes


def fit_isoflop(points: Points, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                level: float = powerlaw.DEFAULT_LEVEL) -> IsoflopFit:
    """Profiles for every budget with >= 3 sizes, then the approach-2 power laws over interior minima.

    The points should come from one dataset (fit_by_dataset splits them).
    """
    rng = np.random.default_rng(seed)
    warnings: list[str] = []
    profiles = []
    groups = _group(points)
    if len(groups) == 1:
        warnings.append(f"all {len(points)} runs share one budget ({next(iter(groups)):.3g}): one IsoFLOP "
                        "profile can be fitted, but scaling laws in C need >= 2 budgets")
    for budget, group in groups.items():
        n_sizes = len(np.unique(group.n))
        if n_sizes < MIN_SIZES:
            warnings.append(f"budget {budget:.3g}: only {n_sizes} distinct size(s) with a finite loss "
                            f"(a parabola needs >= {MIN_SIZES}); budget skipped")
            continue
        profiles.append(fit_profile(budget, group, n_boot, rng, level))
        warnings += _profile_warnings(profiles[-1])
    used = [p for p in profiles if p.interior]
    fit = IsoflopFit(profiles, None, None, None, warnings, n_boot=n_boot)
    if len(used) < 2:
        have = ", ".join(f"{p.budget:.3g}" for p in used) or "none"
        warnings.append(f"N_opt(C), D_opt(C), L_opt(C) need >= 2 budgets with an interior minimum; "
                        f"have {len(used)} ({have}): add budgets or widen the sizes per budget")
    else:
        _fit_power_laws(fit, used, level)
    for w in warnings:
        logging.warning("isoflop: %s", w)
    return fit


def fit_by_dataset(points: Points, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                   level: float = powerlaw.DEFAULT_LEVEL) -> list[IsoflopFit]:
    """One approach-2 fit per dataset (runs on different data do not share an IsoFLOP curve), largest first."""
    fits = []
    for label in sorted(np.unique(points.dataset), reverse=True):
        fit = fit_isoflop(points.select(points.dataset == label), n_boot=n_boot, seed=seed, level=level)
        fit.unique_tokens = float(label)
        if len(np.unique(points.dataset)) > 1:
            name = f"dataset U={label:.3g}" if label else "dataset with unknown U"
            fit.warnings[:] = [f"{name}: {w}" for w in fit.warnings]
        fits.append(fit)
    return fits
