"""Metrics against hand computations (no sklearn), including tied scores."""

import itertools
import math

import numpy as np
import pytest

from ehr_jax.evaluation import metrics


def _pairwise_auroc(labels, scores):
    """The definition: fraction of (pos, neg) pairs ordered right, ties count one half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _threshold_ap(labels, scores):
    """AP by sweeping every distinct threshold, highest first: sum (dRecall * Precision)."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    ap, last_recall = 0.0, 0.0
    for threshold in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= threshold
        tp = (predicted & labels).sum()
        recall = tp / labels.sum()
        ap += (recall - last_recall) * tp / predicted.sum()
        last_recall = recall
    return ap


def test_auroc_hand_example_with_ties():
    labels = [1, 0, 1, 0, 1, 0]
    scores = [0.9, 0.9, 0.5, 0.4, 0.4, 0.1]
    # pos {0.9, 0.5, 0.4} vs neg {0.9, 0.4, 0.1}: 0.5+1+1 + 0+1+1 + 0+0.5+1 = 6 of 9
    assert metrics.auroc(np.array(labels), np.array(scores)) == pytest.approx(6 / 9)


def test_average_precision_hand_example_with_ties():
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.9, 0.5, 0.4, 0.4, 0.1])
    # thresholds 0.9: P=1/2 R=1/3; 0.5: P=2/3 R=2/3; 0.4: P=3/5 R=1; 0.1: R unchanged
    expected = (1 / 3) * (1 / 2) + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 5)
    assert metrics.average_precision(labels, scores) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_definitions_on_random_tied_data(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(40) < 0.3
    labels[:2] = [True, False]
    scores = rng.integers(0, 6, 40) / 5.0  # few distinct values: many ties
    assert metrics.auroc(labels, scores) == pytest.approx(_pairwise_auroc(labels, scores))
    assert metrics.average_precision(labels, scores) == pytest.approx(_threshold_ap(labels, scores))


def test_average_precision_is_not_one_minus_auroc():
    """ETHOS-ARES's helper returns -(1 - AUROC); ours must be the precision-recall area."""
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0])
    scores = np.array([0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    ap = metrics.average_precision(labels, scores)
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 5))
    assert ap != pytest.approx(-(1 - metrics.auroc(labels, scores)))


def test_perfect_and_constant_scores():
    labels = np.array([0, 0, 1, 1])
    assert metrics.auroc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metrics.average_precision(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metrics.auroc(labels, np.full(4, 0.3)) == 0.5
    assert metrics.average_precision(labels, np.full(4, 0.3)) == pytest.approx(0.5)  # prevalence


def test_single_class_is_nan():
    assert math.isnan(metrics.auroc(np.ones(3, bool), np.arange(3.0)))
    assert math.isnan(metrics.average_precision(np.zeros(3, bool), np.arange(3.0)))


def test_brier():
    assert metrics.brier(np.array([1, 0]), np.array([0.75, 0.5])) == pytest.approx((0.0625 + 0.25) / 2)


def test_bootstrap_resamples_whole_subjects():
    """One subject with two perfectly ranked cases: every resample keeps both or neither."""
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.2, 0.8])  # subject 7 ranked right, subject 9 wrong
    subjects = np.array([7, 7, 9, 9])
    low, high = metrics.bootstrap_ci(labels, scores, subjects, metrics.auroc,
                                     num_resamples=400, seed=0)
    # Whole-subject resamples: {7,7} -> 1, {9,9} -> 0, {7,9} -> 3/4. Resampling cases
    # instead could also give e.g. 1/2 (cases 0, 2, 3).
    assert low == pytest.approx(0.0) and high == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    values = set()
    for _ in range(50):
        lo, hi = metrics.bootstrap_ci(labels, scores, subjects, metrics.auroc,
                                      num_resamples=1, seed=int(rng.integers(1 << 30)))
        values.add(lo)
    assert values <= {0.0, 0.75, 1.0}


def test_bootstrap_ci_covers_estimate_and_narrows_with_data():
    rng = np.random.default_rng(0)

    def width(n):
        labels = rng.random(n) < 0.3
        scores = labels * 0.5 + rng.random(n)
        low, high = metrics.bootstrap_ci(labels, scores, np.arange(n), metrics.auroc,
                                         num_resamples=300)
        assert low <= metrics.auroc(labels, scores) <= high
        return high - low

    assert width(2000) < width(100)


def test_summarize_fields_and_json_safety():
    result = metrics.summarize(np.array([1, 1]), np.array([0.2, 0.9]), np.array([1, 2]),
                               num_resamples=20)
    assert result["auroc"] is None and result["auroc_ci"] == [None, None]  # one class
    assert result["n_cases"] == 2 and result["n_positive"] == 2 and result["prevalence"] == 1.0
    assert result["brier"] == pytest.approx((0.64 + 0.01) / 2)
    assert set(result) == {"auroc", "auroc_ci", "auprc", "auprc_ci", "brier", "brier_ci",
                           "n_cases", "n_positive", "prevalence"}
