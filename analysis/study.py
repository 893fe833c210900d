"""The whole analysis of one results.jsonl: every fit, the planner, and fit.json's content.

analyze() is what the CLI and the notebook call; each fit that the runs cannot support is
left out with a warning saying why, so one missing piece does not hide the others. Runs on
different datasets (unique_tokens) get one IsoFLOP fit each; the largest dataset's is the
headline's, and all of them feed the data-constrained law.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from analysis import constrained, isoflop, parametric, planner, powerlaw, results, utility
from ehr_jax.errors import DataError


@dataclasses.dataclass
class Study:
    dataset: results.Dataset
    settings: dict
    isoflop: isoflop.IsoflopFit  # the largest dataset's (the least repeated data)
    isoflop_other: list[isoflop.IsoflopFit]  # the other datasets', largest first
    parametric: parametric.ParametricFit | None
    constrained: constrained.DataConstrainedFit | None
    utility: list[utility.UtilityFit]
    plans: list[planner.Plan]
    constrained_plans: list[planner.ConstrainedPlan]
    available_tokens: float | None
    warnings: list[str]

    def to_json(self) -> dict:
        """fit.json: every number with its interval, and the settings that produced it."""
        points = self.dataset.points
        return {
            "headline": self.headline(),
            "settings": self.settings,
            "data": {"results": self.dataset.path, "runs_used": len(points),
                     "excluded": self.dataset.excluded, "budgets": sorted(set(points.budget.tolist())),
                     "available_tokens": self.available_tokens, "datasets": self.datasets(),
                     "seeds": sorted(set(points.seed.tolist()))},
            "isoflop": self.isoflop.to_json(),
            "isoflop_other_datasets": [f.to_json() for f in self.isoflop_other],
            "parametric": self.parametric.to_json() if self.parametric else None,
            "data_constrained": self.constrained.to_json() if self.constrained else None,
            "utility": [u.to_json() for u in self.utility],
            "planner": [p.to_json() for p in self.plans],
            "planner_data_constrained": [p.to_json() for p in self.constrained_plans],
            "warnings": self.warnings,
        }


    def datasets(self) -> list[dict]:
        """Each dataset's size, runs and most repeated epoch count (U unknown: unique_tokens null)."""
        p = self.dataset.points
        out = []
        for label in sorted(np.unique(p.dataset), reverse=True):
            mask = p.dataset == label
            epochs = p.epochs[mask]
            out.append({"unique_tokens": float(label) or None, "runs": int(mask.sum()),
                        "max_epochs": float(np.nanmax(epochs)) if np.isfinite(epochs).any() else None})
        return out

    def headline(self) -> dict:
        """The numbers a reader looks for first (also in the sections below)."""
        iso, used = self.isoflop, [p for p in self.isoflop.profiles if p.interior]
        losses = [p.loss_opt.value for p in sorted(used, key=lambda p: p.c)]
        est = self.parametric.estimates() if self.parametric else {}
        dc = self.constrained.estimates() if self.constrained else {}
        return {
            "a": iso.n_opt.exponent_ci.to_json() if iso.n_opt else None,
            "b": iso.d_opt.exponent_ci.to_json() if iso.d_opt else None,
            "a_parametric": est["a"].to_json() if est else None,
            "b_parametric": est["b"].to_json() if est else None,
            "R_star_D": dc["R_star_D"].to_json() if dc else None,
            "noise_model": iso.noise_model,
            "n_budgets": len(iso.profiles),
            "n_budgets_interior": len(used),
            "loss_opt_falls_with_c": bool(len(losses) >= 2 and all(b < a for a, b in zip(losses, losses[1:]))),
        }


def analyze(results_path: str, n: str = results.DEFAULT_N, flops_key: str = results.DEFAULT_FLOPS,
            n_boot: int = isoflop.DEFAULT_BOOT, n_boot_parametric: int = parametric.DEFAULT_BOOT,
            seed: int = 0, level: float = powerlaw.DEFAULT_LEVEL, budgets: list[float] | None = None,
            unique_tokens: list[float] | None = None) -> Study:
    """Load, fit (approaches 2 and 3, data-constrained, utility) and plan; DataError only when nothing can be fitted.

    budgets and unique_tokens are the planner's questions (default: 3x, 10x, 100x the largest
    fitted budget, on each dataset of the study).
    """
    dataset = results.read_dataset(results_path, n=n, flops_key=flops_key)
    settings = {"n": n, "n_key": dataset.points.n_key, "flops_key": flops_key, "n_boot": n_boot,
                "n_boot_parametric": n_boot_parametric, "seed": seed, "ci_level": level,
                "ci_method": "percentile bootstrap: IsoFLOP per isoflop.bootstrap.method; parametric fits "
                             "resample runs",
                "huber_delta": parametric.HUBER_DELTA,
                "utility_form": "1 - AUROC = k * x^exponent (x = N or val_loss)"}
    warnings = list(dataset.warnings)
    p = dataset.points
    iso_fits = isoflop.fit_by_dataset(p, n_boot=n_boot, seed=seed, level=level)
    for fit in iso_fits:
        warnings += fit.warnings
    iso = iso_fits[0]
    settings["noise_model"] = iso.noise_model
    if not any(f.profiles for f in iso_fits):
        raise DataError(f"{results_path}: no budget has >= {isoflop.MIN_SIZES} sizes with a finite loss; "
                        "nothing to fit (" + "; ".join(iso.warnings) + ")")
    param = _try(warnings, parametric.fit_parametric, p.n, p.d, p.loss, n_boot=n_boot_parametric, seed=seed,
                 level=level)
    dc = _try(warnings, constrained.fit_data_constrained, p.n, p.d, np.where(p.dataset > 0, p.dataset, np.nan),
              p.loss, n_boot=n_boot_parametric, seed=seed, level=level)
    utility_fits, utility_warnings = utility.fit_utility(dataset, n_boot=n_boot, seed=seed, level=level)
    warnings += utility_warnings
    tokens = iso.unique_tokens or None
    budgets = budgets or planner.default_budgets(float(np.max(iso.n_opt.x)) if iso.n_opt else float(p.budget.max()))
    plans = [planner.plan(iso, b, tokens, param) for b in budgets] if iso.n_opt is not None else []
    if plans and tokens is None:
        warnings.append("no unique_tokens or epochs_over_data in the summaries: the planner cannot check D_opt "
                        "against the training tokens available")
    constrained_plans = []
    if dc is not None:
        span = planner.run_span(p)
        constrained_plans = [planner.plan_data_constrained(dc, b, u, span)
                             for u in (unique_tokens or dc.unique_tokens[::-1]) for b in budgets]
    for plan in plans + constrained_plans:
        warnings += plan.warnings
    warnings = list(dict.fromkeys(warnings))  # both planners flag a far budget
    for w in warnings:
        logging.info("analysis warning: %s", w)
    return Study(dataset, settings, iso, iso_fits[1:], param, dc, utility_fits, plans, constrained_plans,
                 tokens, warnings)


def _try(warnings: list[str], fit, *args, **kwargs):
    """fit(*args, **kwargs), or None with its DataError's message added to warnings."""
    try:
        result = fit(*args, **kwargs)
    except DataError as e:
        warnings.append(str(e))
        return None
    warnings += result.warnings
    return result
