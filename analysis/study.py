"""The whole analysis of one results.jsonl: every fit, the planner, and fit.json's content.

analyze() is what the CLI and the notebook call; each fit that the runs cannot support is
left out with a warning saying why, so one missing piece does not hide the others.
"""

from __future__ import annotations

import dataclasses

from absl import logging

from analysis import isoflop, parametric, planner, powerlaw, results, utility
from ehr_jax.errors import DataError


@dataclasses.dataclass
class Study:
    dataset: results.Dataset
    settings: dict
    isoflop: isoflop.IsoflopFit
    parametric: parametric.ParametricFit | None
    utility: list[utility.UtilityFit]
    plans: list[planner.Plan]
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
                     "available_tokens": self.available_tokens},
            "isoflop": self.isoflop.to_json(),
            "parametric": self.parametric.to_json() if self.parametric else None,
            "utility": [u.to_json() for u in self.utility],
            "planner": [p.to_json() for p in self.plans],
            "warnings": self.warnings,
        }


    def headline(self) -> dict:
        """The numbers a reader looks for first (also in the sections below)."""
        iso, used = self.isoflop, [p for p in self.isoflop.profiles if p.interior]
        losses = [p.loss_opt.value for p in sorted(used, key=lambda p: p.c)]
        est = self.parametric.estimates() if self.parametric else {}
        return {
            "a": iso.n_opt.exponent_ci.to_json() if iso.n_opt else None,
            "b": iso.d_opt.exponent_ci.to_json() if iso.d_opt else None,
            "a_parametric": est["a"].to_json() if est else None,
            "b_parametric": est["b"].to_json() if est else None,
            "n_budgets": len(iso.profiles),
            "n_budgets_interior": len(used),
            "loss_opt_falls_with_c": bool(len(losses) >= 2 and all(b < a for a, b in zip(losses, losses[1:]))),
        }


def analyze(results_path: str, n: str = results.DEFAULT_N, flops_key: str = results.DEFAULT_FLOPS,
            n_boot: int = isoflop.DEFAULT_BOOT, n_boot_parametric: int = parametric.DEFAULT_BOOT,
            seed: int = 0, level: float = powerlaw.DEFAULT_LEVEL, budgets: list[float] | None = None) -> Study:
    """Load, fit (approaches 2 and 3, utility) and plan; DataError only when nothing can be fitted."""
    dataset = results.read_dataset(results_path, n=n, flops_key=flops_key)
    settings = {"n": n, "n_key": dataset.points.n_key, "flops_key": flops_key, "n_boot": n_boot,
                "n_boot_parametric": n_boot_parametric, "seed": seed, "ci_level": level,
                "ci_method": "percentile bootstrap, runs resampled (within each budget for IsoFLOP)",
                "huber_delta": parametric.HUBER_DELTA,
                "utility_form": "1 - AUROC = k * x^exponent (x = N or val_loss)"}
    warnings = list(dataset.warnings)
    iso = isoflop.fit_isoflop(dataset.points, n_boot=n_boot, seed=seed, level=level)
    warnings += iso.warnings
    if not iso.profiles:
        raise DataError(f"{results_path}: no budget has >= {isoflop.MIN_SIZES} sizes with a finite loss; "
                        "nothing to fit (" + "; ".join(iso.warnings) + ")")
    param = None
    try:
        p = dataset.points
        param = parametric.fit_parametric(p.n, p.d, p.loss, n_boot=n_boot_parametric, seed=seed, level=level)
        warnings += param.warnings
    except DataError as e:
        warnings.append(str(e))
    utility_fits, utility_warnings = utility.fit_utility(dataset, n_boot=n_boot, seed=seed, level=level)
    warnings += utility_warnings
    tokens = results.available_tokens(dataset.summaries)
    plans = []
    if iso.n_opt is not None:
        for budget in budgets or planner.default_budgets(iso):
            plans.append(planner.plan(iso, budget, tokens, param))
            warnings += plans[-1].warnings
        if tokens is None:
            warnings.append("no epochs_over_data in the summaries: the planner cannot check D_opt against "
                            "the training tokens available")
    for w in warnings:
        logging.info("analysis warning: %s", w)
    return Study(dataset, settings, iso, param, utility_fits, plans, tokens, warnings)
