"""Clinical utility against model size and against validation loss, as power laws.

Form: the AUROC gap to a perfect ranker, 1 - AUROC = k x^e, fitted in log-log space (so
gamma = -e is the exponent in N; against validation loss e is positive). Two parameters keep
it stable on a handful of runs; a saturating form (AUROC = c - k N^-g) needs a third that few
sweeps can pin down. Saturation when data runs out then shows as the largest models sitting
above the fitted line, which the plot makes visible. Every run with an AUROC is a point.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from analysis import powerlaw
from analysis.powerlaw import PowerLaw
from analysis.results import Dataset

MIN_RUNS = 3


@dataclasses.dataclass
class UtilityFit:
    task: str
    method: str
    against: str  # "n" (the fit's N) or "val_loss"
    law: PowerLaw  # 1 - AUROC = k x^exponent

    def to_json(self) -> dict:
        out = {"task": self.task, "method": self.method, "against": self.against,
               "form": "1 - AUROC = k * x^exponent"}
        out.update(self.law.to_json("exponent"))
        return out


def _auroc_table(dataset: Dataset) -> dict[tuple[str, str], list[tuple[float, float, float]]]:
    """(task, method) -> [(n, val_loss, auroc)] over runs with a finite AUROC."""
    table: dict = {}
    for record, n, loss in zip(dataset.summaries, dataset.points.n, dataset.points.loss):
        for task, method, metrics in _evaluation_rows(record.get("evaluation")):
            auroc = metrics.get("auroc")
            if isinstance(auroc, (int, float)) and math.isfinite(auroc):
                table.setdefault((task, method), []).append((float(n), float(loss), float(auroc)))
    return table


def _evaluation_rows(evaluation) -> list[tuple[str, str, dict]]:
    """(task, method, metrics) of a summary's evaluation: {name: {task: {method: metrics}}}
    (the built-in tasks under "builtin" keep their names, others become "<name>/<task>"), or
    the flat {task: {method: metrics}} of summaries written before evaluations had names."""
    if not isinstance(evaluation, dict):
        return []
    def rows(by_task: dict, prefix: str) -> list:
        return [(prefix + task, method, metrics) for task, methods in by_task.items()
                if isinstance(methods, dict) for method, metrics in methods.items()
                if isinstance(metrics, dict)]
    flat = rows(evaluation, "")
    if any("auroc" in metrics or "not_run" in metrics for _, _, metrics in flat):
        return flat
    return [row for name, by_task in evaluation.items() if isinstance(by_task, dict)
            for row in rows(by_task, "" if name == "builtin" else f"{name}/")]


def fit_utility(dataset: Dataset, n_boot: int = 1000, seed: int = 0,
                level: float = powerlaw.DEFAULT_LEVEL) -> tuple[list[UtilityFit], list[str]]:
    """One fit per (task, method, against) with >= 3 usable runs; warnings say what was skipped."""
    rng = np.random.default_rng(seed)
    fits, warnings = [], []
    table = _auroc_table(dataset)
    for (task, method), rows in sorted(table.items()):
        n, loss, auroc = (np.array(col) for col in zip(*rows))
        usable = auroc < 1.0  # AUROC 1 has no gap to take a log of
        if (~usable).any():
            warnings.append(f"utility {task}/{method}: {int((~usable).sum())} run(s) with AUROC = 1 excluded")
        if usable.sum() < MIN_RUNS or len(np.unique(n[usable])) < 2:
            warnings.append(f"utility {task}/{method}: {int(usable.sum())} run(s) with AUROC < 1 "
                            f"(need >= {MIN_RUNS} at >= 2 sizes); not fitted")
            continue
        if (auroc[usable] <= 0.5).any():
            warnings.append(f"utility {task}/{method}: some runs rank no better than chance (AUROC <= 0.5)")
        gap = 1.0 - auroc[usable]
        for against, x in (("n", n[usable]), ("val_loss", loss[usable])):
            fits.append(UtilityFit(task, method, against, powerlaw.bootstrap_pairs(x, gap, n_boot, rng, level)))
    return fits, warnings
