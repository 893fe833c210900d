"""Chinchilla approach 2: IsoFLOP profiles, then N_opt(C), D_opt(C) and L_opt(C) power laws.

Per budget, loss is fitted as a parabola in ln N; its vertex is that budget's optimum. The
bootstrap resamples runs within every budget at once, refits every parabola and then the power
laws, so the exponents' intervals carry the per-budget uncertainty. A budget whose vertex lies
outside the sizes tried (or whose parabola opens downward) says only "the optimum is further
out"; it is reported and left out of the power laws rather than extrapolated.
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


@dataclasses.dataclass
class Profile:
    """One budget's IsoFLOP curve: loss = c2 u^2 + c1 u + c0 with u = ln N - center."""

    budget: float  # nominal budget (grid_point.budget or the FLOP cluster)
    c: float  # compute of the budget in the fit's FLOP count: geometric mean over its runs
    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    center: float
    coeffs: np.ndarray  # (c2, c1, c0)
    interior: bool  # opens upward and the vertex lies inside the sizes tried
    n_opt: Estimate | None
    d_opt: Estimate | None
    loss_opt: Estimate | None
    boot_n_opt: np.ndarray  # replicate minima (NaN where a replicate had no minimum)
    boot_d_opt: np.ndarray
    boot_loss_opt: np.ndarray
    note: str = ""

    def curve(self, n: np.ndarray) -> np.ndarray:
        u = np.log(n) - self.center
        return np.polyval(self.coeffs, u)

    def to_json(self) -> dict:
        est = lambda e: e.to_json() if e is not None else None  # noqa: E731
        return {"budget": self.budget, "C": self.c, "n_runs": int(len(self.n)),
                "sizes_tried": [float(self.n.min()), float(self.n.max())],
                "parabola_ln_n": {"c2": float(self.coeffs[0]), "c1": float(self.coeffs[1]),
                                  "c0": float(self.coeffs[2]), "center_ln_n": self.center},
                "opens_upward": bool(self.coeffs[0] > 0), "interior": self.interior,
                "n_opt": est(self.n_opt), "d_opt": est(self.d_opt), "loss_opt": est(self.loss_opt),
                "used_in_fit": self.interior, "note": self.note}


@dataclasses.dataclass
class IsoflopFit:
    profiles: list[Profile]
    n_opt: PowerLaw | None  # N_opt = k C^a
    d_opt: PowerLaw | None  # D_opt = k C^b
    loss_opt: PowerLaw | None  # L_opt = k C^e (e < 0)
    warnings: list[str]

    def to_json(self) -> dict:
        law = lambda p, name: p.to_json(name) if p is not None else None  # noqa: E731
        return {"profiles": [p.to_json() for p in self.profiles],
                "n_budgets_interior": sum(p.interior for p in self.profiles), "n_opt": law(self.n_opt, "a"),
                "d_opt": law(self.d_opt, "b"), "loss_opt": law(self.loss_opt, "exponent")}


def fit_parabolas(u: np.ndarray, loss: np.ndarray, weights_RxP: np.ndarray) -> np.ndarray:
    """Weighted quadratic fits of loss on u, one per weight row (bootstrap counts); NaN where singular."""
    x_Px3 = np.stack([u * u, u, np.ones_like(u)], axis=1)
    gram_Rx3x3 = np.einsum("rp,pi,pj->rij", weights_RxP, x_Px3, x_Px3)
    rhs_Rx3 = np.einsum("rp,pi,p->ri", weights_RxP, x_Px3, loss)
    distinct_u = np.unique(u)
    onehot_PxU = (u[:, None] == distinct_u[None, :]).astype(float)
    n_distinct_R = ((weights_RxP @ onehot_PxU) > 0).sum(axis=1)
    coeffs_Rx3 = np.full((len(weights_RxP), 3), np.nan)
    ok = n_distinct_R >= MIN_SIZES
    if ok.any():
        coeffs_Rx3[ok] = np.linalg.solve(gram_Rx3x3[ok], rhs_Rx3[ok][..., None])[..., 0]
    return coeffs_Rx3


def _vertex(coeffs_Rx3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u at the minimum, loss there); NaN where the parabola does not open upward."""
    c2, c1, c0 = coeffs_Rx3.T
    with np.errstate(divide="ignore", invalid="ignore"):
        u_min = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
    return u_min, np.where(c2 > 0, c0 - c1 * c1 / (4 * c2), np.nan)


def _log_d_map(n: np.ndarray, d: np.ndarray):
    """ln D as a function of ln N along one IsoFLOP curve (D = C / FLOPs-per-token(N)).

    Piecewise linear through the runs, extended by the end segments: the curve is nearly
    straight in log-log, and a polynomial would run away for a far-off bootstrap vertex.
    """
    x, inverse = np.unique(np.log(n), return_inverse=True)
    y = np.bincount(inverse, weights=np.log(d)) / np.bincount(inverse)

    def log_d(log_n):
        log_n = np.asarray(log_n, dtype=float)
        left = y[0] + (log_n - x[0]) * (y[1] - y[0]) / (x[1] - x[0])
        right = y[-1] + (log_n - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2])
        return np.where(log_n < x[0], left, np.where(log_n > x[-1], right, np.interp(log_n, x, y)))

    return log_d


def fit_profile(budget: float, points: Points, weights_RxP: np.ndarray, level: float) -> Profile:
    """One budget's parabola, its minimum, and the minimum's bootstrap interval."""
    u_raw = np.log(points.n)
    center = float(u_raw.mean())
    u = u_raw - center
    coeffs = fit_parabolas(u, points.loss, np.ones((1, len(u))))[0]
    boot = fit_parabolas(u, points.loss, weights_RxP)
    u_min, loss_min = _vertex(coeffs[None, :])
    boot_u, boot_loss = _vertex(boot)
    d_map = _log_d_map(points.n, points.d)
    to_n = lambda uu: np.exp(uu + center)  # noqa: E731
    to_d = lambda uu: np.exp(d_map(uu + center))  # noqa: E731
    with np.errstate(over="ignore"):  # a nearly flat replicate puts its vertex at +-inf: dropped later
        boot_n, boot_d = to_n(boot_u), to_d(boot_u)
    profile = Profile(
        budget=float(budget), c=float(np.exp(np.log(points.c).mean())), n=points.n, d=points.d,
        loss=points.loss, center=center, coeffs=coeffs, interior=False, n_opt=None, d_opt=None,
        loss_opt=None, boot_n_opt=boot_n, boot_d_opt=boot_d, boot_loss_opt=boot_loss)
    sizes = f"sizes tried {points.n.min():.3g}-{points.n.max():.3g}"
    if not coeffs[0] > 0:
        profile.note = f"parabola is flat or opens downward (no minimum; {sizes})"
        return profile
    u0 = float(u_min[0])
    if not u.min() < u0 < u.max():
        side = "below the smallest" if u0 <= u.min() else "above the largest"
        profile.note = (f"minimum N={to_n(u0):.3g} lies {side} size tried ({sizes}): "
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


def _resample_weights(n: np.ndarray, n_boot: int, rng: np.random.Generator, max_redraws: int = 50) -> np.ndarray:
    """Bootstrap counts over one budget's runs, redrawing resamples with < 3 distinct sizes.

    A parabola needs three sizes; conditioning on that keeps small budgets from losing most
    of their replicates (and with them, every joint replicate of the power laws).
    """
    onehot_PxU = (n[:, None] == np.unique(n)[None, :]).astype(float)
    probs = np.full(len(n), 1 / len(n))
    counts_RxP = rng.multinomial(len(n), probs, size=n_boot).astype(float)
    for _ in range(max_redraws):
        bad = ((counts_RxP @ onehot_PxU) > 0).sum(axis=1) < MIN_SIZES
        if not bad.any():
            break
        counts_RxP[bad] = rng.multinomial(len(n), probs, size=int(bad.sum()))
    return counts_RxP


def _group(points: Points) -> dict[float, Points]:
    return {float(b): points.select(points.budget == b) for b in np.unique(points.budget)}


def _fit_power_laws(fit: IsoflopFit, used: list[Profile], n_boot: int, level: float) -> None:
    """N_opt, D_opt, L_opt against C through the interior minima; replicate j uses every budget's j-th refit."""
    if len(used) == 2:
        fit.warnings.append("only 2 budgets in the power laws: they pass exactly through both minima; "
                            "the intervals reflect only each minimum's uncertainty")
    c = np.array([p.c for p in used])
    for name, attr in (("n_opt", "boot_n_opt"), ("d_opt", "boot_d_opt"), ("loss_opt", "boot_loss_opt")):
        values = np.array([getattr(p, name).value for p in used])
        boot_RxB = np.stack([getattr(p, attr) for p in used], axis=1)
        setattr(fit, name, powerlaw.from_replicates(c, values, boot_RxB, level))
    dropped = n_boot - len(fit.n_opt.boot_exponent)
    if dropped > n_boot * 0.05:
        fit.warnings.append(f"{dropped} of {n_boot} bootstrap replicates had a budget without a minimum "
                            "and were dropped: the intervals may be too narrow")
    losses = [p.loss_opt.value for p in sorted(used, key=lambda p: p.c)]
    if any(b >= a for a, b in zip(losses, losses[1:])):
        fit.warnings.append("the loss at the optimum does not fall with every budget increase")


def fit_isoflop(points: Points, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                level: float = powerlaw.DEFAULT_LEVEL) -> IsoflopFit:
    """Profiles for every budget with >= 3 sizes, then the approach-2 power laws over interior minima."""
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
        profile = fit_profile(budget, group, _resample_weights(group.n, n_boot, rng), level)
        if len(group) == MIN_SIZES and profile.interior:
            # Three runs: the parabola interpolates them, so resampling runs measures nothing.
            warnings.append(f"budget {budget:.3g}: only {MIN_SIZES} sizes, so its parabola passes exactly "
                            "through them and resampling runs cannot measure the minimum's uncertainty "
                            "(no CI; the power-law CIs understate it): use >= 5 sizes per budget")
            nan = float("nan")
            for name in ("n_opt", "d_opt", "loss_opt"):
                setattr(profile, name, Estimate(getattr(profile, name).value, nan, nan))
        profiles.append(profile)
    for p in profiles:
        if not p.interior:
            warnings.append(f"budget {p.budget:.3g}: {p.note}; excluded from the N_opt/D_opt/L_opt fits")
    used = [p for p in profiles if p.interior]
    fit = IsoflopFit(profiles, None, None, None, warnings)
    if len(used) < 2:
        have = ", ".join(f"{p.budget:.3g}" for p in used) or "none"
        warnings.append(f"N_opt(C), D_opt(C), L_opt(C) need >= 2 budgets with an interior minimum; "
                        f"have {len(used)} ({have}): add budgets or widen the sizes per budget")
    else:
        _fit_power_laws(fit, used, n_boot, level)
    for w in warnings:
        logging.warning("isoflop: %s", w)
    return fit
