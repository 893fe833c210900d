"""The planner: for a compute budget, the size, token count and loss to expect, with intervals.

Predictions come from the approach-2 power laws (each interval is the spread of the bootstrap
replicates' predictions at that budget, so the correlation of k and the exponent is kept).
When the parametric fit exists, its L(N_opt, D_opt) is a second opinion on the loss. The
warnings say when the answer leans on extrapolation or on more data than the runs had.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from analysis.isoflop import IsoflopFit
from analysis.parametric import ParametricFit
from analysis.powerlaw import Estimate
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
    if budget > FAR_EXTRAPOLATION * largest:
        warnings.append(f"budget {budget:.3g} is {budget / largest:.0f}x the largest fitted budget "
                        f"({largest:.3g}): a long extrapolation, trust the intervals less than they say")
    epochs = None
    if available_tokens:
        epochs = d_opt.value / available_tokens
        if epochs > 1:
            warnings.append(f"budget {budget:.3g}: D_opt = {d_opt.value:.3g} tokens is {epochs:.1f} epochs of the "
                            f"{available_tokens:.3g} training tokens available: data, not compute, limits this "
                            "run (repeated tokens are worth less than new ones), so the predicted loss is optimistic")
    loss_parametric = parametric.predict(n_opt.value, d_opt.value) if parametric is not None else None
    return Plan(budget, n_opt, d_opt, fit.loss_opt.predict(budget), loss_parametric, epochs, warnings)


def default_budgets(fit: IsoflopFit, factors=(3.0, 10.0, 100.0)) -> list[float]:
    """A few budgets above the largest fitted one: what the user asks next."""
    if fit.n_opt is None:
        return []
    largest = float(np.max(fit.n_opt.x))
    return [largest * f for f in factors]
