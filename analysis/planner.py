"""The planner: for a compute budget, the size, token count and loss to expect, with intervals.

plan() answers from the approach-2 power laws (each interval is the spread of the bootstrap
replicates' predictions at that budget, so the correlation of k and the exponent is kept).
When the parametric fit exists, its L(N_opt, D_opt) is a second opinion on the loss.
plan_data_constrained() answers for a dataset of U unique tokens: it minimises the
data-constrained law along the budget's IsoFLOP curve, once per bootstrap refit, so N, the
epochs and the loss come with intervals. The warnings say when an answer leans on
extrapolation or on more data than the runs had.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from analysis import constrained, powerlaw
from analysis.constrained import DataConstrainedFit
from analysis.isoflop import IsoflopFit
from analysis.parametric import ParametricFit
from analysis.powerlaw import Estimate
from analysis.results import Points
from ehr_jax.errors import DataError

FAR_EXTRAPOLATION = 100.0  # budgets this many times beyond the largest fitted one get a warning


@dataclasses.dataclass
class Plan:
    budget: float
    n_opt: Estimate
    d_opt: Estimate
    loss: Estimate  # L_opt(C) power law
    loss_parametric: Estimate | None  # L(N_opt, D_opt) from approach 3
    epochs: float | None  # D_opt / training tokens available
    warnings: list[str]

    def to_json(self) -> dict:
        return {"budget": self.budget, "n_opt": self.n_opt.to_json(), "d_opt": self.d_opt.to_json(),
                "loss": self.loss.to_json(),
                "loss_parametric": self.loss_parametric.to_json() if self.loss_parametric else None,
                "epochs": self.epochs, "warnings": self.warnings}


def far_budget_warning(budget: float, largest: float) -> list[str]:
    """A budget far beyond the fitted ones rests on a long extrapolation."""
    if budget <= FAR_EXTRAPOLATION * largest * (1 + 1e-9):  # the default 100x budget is not beyond
        return []
    return [f"budget {budget:.3g} is {budget / largest:.0f}x the largest fitted budget ({largest:.3g}): "
            "a long extrapolation, trust the intervals less than they say"]


def plan(fit: IsoflopFit, budget: float, available_tokens: float | None = None,
         parametric: ParametricFit | None = None) -> Plan:
    """Compute-optimal N, D and loss at `budget` (in the fit's FLOP count)."""
    if fit.n_opt is None or fit.d_opt is None or fit.loss_opt is None:
        raise DataError("planner: the N_opt(C)/D_opt(C) power laws could not be fitted ("
                        + "; ".join(fit.warnings[-1:]) + ")")
    if not budget > 0:
        raise DataError(f"planner: budget={budget!r}; expected a positive FLOP count")
    n_opt, d_opt = fit.n_opt.predict(budget), fit.d_opt.predict(budget)
    warnings = []
    largest = float(np.max(fit.n_opt.x))
    warnings += far_budget_warning(budget, largest)
    epochs = None
    if available_tokens:
        epochs = d_opt.value / available_tokens
        if epochs > 1:
            warnings.append(f"budget {budget:.3g}: D_opt = {d_opt.value:.3g} tokens is {epochs:.1f} epochs of the "
                            f"{available_tokens:.3g} training tokens available: data, not compute, limits this "
                            "run (repeated tokens are worth less than new ones), so the predicted loss is optimistic")
    loss_parametric = parametric.predict(n_opt.value, d_opt.value) if parametric is not None else None
    return Plan(budget, n_opt, d_opt, fit.loss_opt.predict(budget), loss_parametric, epochs, warnings)


def default_budgets(largest: float, factors=(3.0, 10.0, 100.0)) -> list[float]:
    """A few budgets above the largest fitted one: what the user asks next."""
    return [largest * f for f in factors]


# The search for a constrained optimum spans these factors below the smallest and above the largest
# size the runs tried; an optimum on the edge is reported, not trusted.
SEARCH_BELOW, SEARCH_ABOVE, SEARCH_POINTS = 1e2, 1e4, 2000


@dataclasses.dataclass(frozen=True)
class RunSpan:
    """What the runs covered: the constrained planner searches from it and warns beyond it."""

    log_flops_per_token: Callable  # ln N -> ln(training FLOPs per token), in the fit's FLOP count
    n_min: float
    n_max: float
    largest_budget: float


def run_span(points: Points) -> RunSpan:
    """FLOPs per token as a function of N, read off the runs (C / D), so plans use the fit's FLOP count."""
    return RunSpan(powerlaw.loglog_interp(points.n, points.c / points.d), float(points.n.min()),
                   float(points.n.max()), float(points.budget.max()))


@dataclasses.dataclass
class ConstrainedPlan:
    budget: float
    unique_tokens: float
    n_opt: Estimate
    d_opt: Estimate  # tokens to train on (repeats included)
    epochs: Estimate  # d_opt / unique_tokens
    loss: Estimate  # the data-constrained law at (n_opt, d_opt; U)
    loss_unconstrained: Estimate  # the same law's optimum had every token been new: the cost of U
    warnings: list[str]

    def to_json(self) -> dict:
        return {"budget": self.budget, "unique_tokens": self.unique_tokens, "n_opt": self.n_opt.to_json(),
                "d_opt": self.d_opt.to_json(), "epochs": self.epochs.to_json(), "loss": self.loss.to_json(),
                "loss_unconstrained": self.loss_unconstrained.to_json(), "warnings": self.warnings}


def _optima(theta_Sx6: np.ndarray, log_c: float, log_u: float, log_n_G: np.ndarray,
            log_d_G: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per parameter row: (ln N, ln L) at the minimum over the grid, and whether it sits on an edge."""
    log_l_SxG = constrained.predict_log_loss(theta_Sx6, log_n_G, log_d_G, np.full_like(log_n_G, log_u))
    best = np.argmin(log_l_SxG, axis=1)
    rows = np.arange(len(best))
    edge = (best == 0) | (best == len(log_n_G) - 1)
    return log_n_G[best], log_l_SxG[rows, best], edge


def plan_data_constrained(fit: DataConstrainedFit, budget: float, unique_tokens: float,
                          span: RunSpan) -> ConstrainedPlan:
    """Best N, tokens, epochs and loss for `budget` FLOPs on a dataset of `unique_tokens` tokens.

    Along the budget's IsoFLOP curve D = C / FLOPs-per-token(N), with FLOPs per token from the
    runs (span), so the budget is in the fit's FLOP count.
    """
    if not budget > 0 or not unique_tokens > 0:
        raise DataError(f"planner: budget={budget!r}, unique_tokens={unique_tokens!r}; expected positive numbers")
    log_n_G = np.linspace(np.log(span.n_min / SEARCH_BELOW), np.log(span.n_max * SEARCH_ABOVE), SEARCH_POINTS)
    log_flops_per_token = span.log_flops_per_token
    log_d_G = np.log(budget) - log_flops_per_token(log_n_G)
    thetas = np.vstack([fit.theta[None, :], fit.boot_theta])
    log_n, log_l, edge = _optima(thetas, np.log(budget), np.log(unique_tokens), log_n_G, log_d_G)
    _, log_l_free, _ = _optima(thetas, np.log(budget), np.inf, log_n_G, log_d_G)
    log_d = np.log(budget) - log_flops_per_token(log_n)
    est = lambda v: powerlaw.interval(float(v[0]), v[1:], fit.level)  # noqa: E731
    epochs = np.exp(log_d) / unique_tokens
    plan = ConstrainedPlan(budget, unique_tokens, est(np.exp(log_n)), est(np.exp(log_d)), est(epochs),
                           est(np.exp(log_l)), est(np.exp(log_l_free)), [])
    plan.warnings = _constrained_warnings(fit, plan, edge, span.largest_budget)
    return plan


def _constrained_warnings(fit: DataConstrainedFit, plan: ConstrainedPlan, edge: np.ndarray,
                          largest_budget: float) -> list[str]:
    where = f"budget {plan.budget:.3g}, U={plan.unique_tokens:.3g}"
    notes = []
    if edge[0] or (len(edge) > 1 and edge[1:].mean() > 0.05):
        notes.append(f"{where}: the optimum sits at the edge of the sizes searched "
                     f"({100 * edge.mean():.0f}% of refits): the law has no interior optimum there")
    if plan.epochs.value > fit.max_epochs:
        notes.append(f"{where}: {plan.epochs.value:.1f} epochs is beyond the {fit.max_epochs:.1f} any run "
                     "repeated its data: R*_D is extrapolated")
    notes += far_budget_warning(plan.budget, largest_budget)
    lo, hi = min(fit.unique_tokens), max(fit.unique_tokens)
    if not lo / 10 <= plan.unique_tokens <= hi * 10:
        notes.append(f"{where}: U is more than 10x outside the dataset sizes fitted ({lo:.3g}-{hi:.3g})")
    return notes
