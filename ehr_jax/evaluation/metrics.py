"""Discrimination and calibration metrics with subject-level bootstrap confidence intervals.

Written out by hand (sklearn is not a dependency) and tested against hand computations.
AUPRC is average precision (the step-wise area meds-evaluation and sklearn report), not the
trapezoid area and not ETHOS-ARES's helper, which returns -(1 - AUROC).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats

Metric = Callable[[np.ndarray, np.ndarray], float]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney U).

    NaN when only one class is present (the area is undefined there).
    """
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)  # ties get their average rank, which scores them one half
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over distinct score thresholds, highest first.

    Tied scores form one threshold (so a tie is never broken in the model's favour). NaN
    without positives.
    """
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    true_pos = np.cumsum(sorted_labels)
    # The last index of each run of equal scores closes one threshold.
    last_of_threshold = np.r_[np.nonzero(np.diff(sorted_scores))[0], labels.size - 1]
    tp = true_pos[last_of_threshold].astype(np.float64)
    predicted_pos = last_of_threshold + 1.0
    precision = tp / predicted_pos
    recall = tp / n_pos
    recall_step = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_step * precision))


def brier(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared error of the predicted probability: calibration and sharpness together."""
    labels = np.asarray(labels, np.float64)
    probabilities = np.asarray(probabilities, np.float64)
    if labels.size == 0:
        return float("nan")
    return float(np.mean((probabilities - labels) ** 2))


METRICS: dict[str, Metric] = {"auroc": auroc, "auprc": average_precision, "brier": brier}


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray, subject_ids: np.ndarray,
                 metric: Metric, *, num_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile CI from resampling subjects with replacement (all of a subject's cases).

    Resampling by subject, not by case, keeps one patient's correlated admissions together.
    Resamples where the metric is undefined (a single class) are dropped; (nan, nan) if
    none is defined or num_resamples is 0.
    """
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    if num_resamples <= 0 or labels.size == 0:
        return float("nan"), float("nan")
    _, subject_index = np.unique(np.asarray(subject_ids), return_inverse=True)
    n_subjects = int(subject_index.max()) + 1
    case_index = np.arange(labels.size)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_resamples):
        # A subject drawn k times contributes each of its cases k times.
        draws_per_subject = np.bincount(rng.integers(0, n_subjects, n_subjects), minlength=n_subjects)
        rows = np.repeat(case_index, draws_per_subject[subject_index])
        value = metric(labels[rows], scores[rows])
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def summarize(labels: np.ndarray, probabilities: np.ndarray, subject_ids: np.ndarray, *,
              num_resamples: int = 1000, seed: int = 0) -> dict:
    """The per-task, per-method result block of summary.json["evaluation"]."""
    labels = np.asarray(labels, bool)
    probabilities = np.asarray(probabilities, np.float64)
    result: dict = {}
    for name, metric in METRICS.items():
        result[name] = _finite_or_none(metric(labels, probabilities))
        low, high = bootstrap_ci(labels, probabilities, subject_ids, metric,
                                 num_resamples=num_resamples, seed=seed)
        result[f"{name}_ci"] = [_finite_or_none(low), _finite_or_none(high)]
    n_cases = int(labels.size)
    n_positive = int(labels.sum())
    result.update(n_cases=n_cases, n_positive=n_positive,
                  prevalence=_finite_or_none(n_positive / n_cases if n_cases else float("nan")))
    return result


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: undefined metrics are written as null."""
    return float(value) if np.isfinite(value) else None
