"""Parametric L(N, D) (approach 3): recovery of a known law, intervals, degenerate inputs."""

import numpy as np
import pytest

from analysis import parametric, results, utility
from analysis.synthetic_results import Law, example_summaries, law_summaries
from ehr_jax.errors import DataError

LAW = Law()
BUDGETS = (1e15, 1e16, 1e17, 1e18)


def _arrays(rows):
    return (np.array([r[k] for r in rows]) for k in ("n_params", "tokens_seen", "val_loss"))


def test_recovers_law_without_noise():
    n, d, loss = _arrays(law_summaries(LAW, BUDGETS, sizes_per_budget=7, span_dex=1.5))
    fit = parametric.fit_parametric(n, d, loss, n_boot=0)
    est = fit.estimates()
    for name in ("E", "A", "alpha", "B", "beta"):
        assert est[name].value == pytest.approx(getattr(LAW, name), rel=1e-3), name
    assert est["a"].value == pytest.approx(LAW.a, abs=1e-3)
    assert est["b"].value == pytest.approx(LAW.b, abs=1e-3)
    assert est["a"].value + est["b"].value == pytest.approx(1.0)
    assert fit.predict(1e8, 1e10).value == pytest.approx(LAW.loss(1e8, 1e10), rel=1e-4)


def test_recovers_law_with_noise_inside_ci():
    n, d, loss = _arrays(law_summaries(LAW, BUDGETS, sizes_per_budget=7, span_dex=1.5, noise=0.005, seed=2))
    fit = parametric.fit_parametric(n, d, loss, n_boot=60, seed=0)
    est = fit.estimates()
    assert est["alpha"].value == pytest.approx(LAW.alpha, abs=0.1)
    assert est["beta"].value == pytest.approx(LAW.beta, abs=0.1)
    assert est["a"].value == pytest.approx(LAW.a, abs=0.08)
    for name in ("alpha", "beta", "a", "b"):
        assert est[name].lo < est[name].hi, name
    assert est["a"].covers(LAW.a) and est["b"].covers(LAW.b)


def test_huber_ignores_one_outlier():
    n, d, loss = _arrays(law_summaries(LAW, BUDGETS, sizes_per_budget=7, span_dex=1.5))
    loss = loss.copy()
    loss[5] *= 1.5  # one diverged run
    est = parametric.fit_parametric(n, d, loss, n_boot=0).estimates()
    assert est["alpha"].value == pytest.approx(LAW.alpha, abs=0.03)
    assert est["beta"].value == pytest.approx(LAW.beta, abs=0.03)


def test_gradient_matches_finite_differences():
    n, d, loss = _arrays(law_summaries(LAW, BUDGETS[:2], sizes_per_budget=5, noise=0.01))
    args = (np.log(n), np.log(d), np.log(loss), np.ones(len(n)))
    theta = np.array([0.3, 3.0, 0.3, 4.0, 0.25])
    _, grad = parametric.objective(theta, *args)
    eps = 1e-6
    numeric = [(parametric.objective(theta + eps * e, *args)[0] - parametric.objective(theta - eps * e, *args)[0])
               / (2 * eps) for e in np.eye(5)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-8)


def test_too_few_runs_is_a_clear_error():
    n, d, loss = _arrays(law_summaries(LAW, (1e16,), sizes_per_budget=4))
    with pytest.raises(DataError, match=r"needs >= 6 runs .* have 4 runs"):
        parametric.fit_parametric(n, d, loss)


def test_utility_power_law_recovers_exponent():
    dataset = results.to_dataset("mem.jsonl", example_summaries(seed=1))
    fits, _ = utility.fit_utility(dataset, n_boot=200)
    by_n = {u.task: u for u in fits if u.against == "n"}
    assert set(by_n) == {"mortality", "icu_admission"}
    # example_summaries draws 1 - AUROC = k N^-gamma with gamma 0.05 (mortality) and 0.06 (ICU).
    assert by_n["mortality"].law.exponent == pytest.approx(-0.05, abs=0.015)
    assert by_n["icu_admission"].law.exponent == pytest.approx(-0.06, abs=0.015)
    for u in by_n.values():
        assert u.law.exponent_ci.lo < u.law.exponent < u.law.exponent_ci.hi < 0
    assert {u.against for u in fits} == {"n", "val_loss"}


def test_utility_skips_tasks_with_too_few_runs():
    rows = example_summaries(seed=0)
    for r in rows[2:]:
        r.pop("evaluation")
    fits, warnings = utility.fit_utility(results.to_dataset("mem.jsonl", rows), n_boot=50)
    assert not fits
    assert any("not fitted" in w for w in warnings)
