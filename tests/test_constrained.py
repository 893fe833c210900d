"""Data-constrained L(N, D) (Muennighoff et al. 2023): the law, its recovery, the planner, the report."""

import json

import numpy as np
import pytest

from analysis import constrained, planner, report, results, study
from analysis.synthetic_results import (
    CONSTRAINED_BUDGETS,
    CONSTRAINED_UNIQUE_TOKENS,
    ConstrainedLaw,
    Law,
    constrained_summaries,
    law_summaries,
    write_jsonl,
)
from ehr_jax.errors import DataError

LAW = ConstrainedLaw(Law(), r_star_d=15.0)


def _points(rows):
    return results.to_dataset("mem.jsonl", rows).points


def _fit(points, n_boot=0, seed=0):
    return constrained.fit_data_constrained(points.n, points.d, points.dataset, points.loss, n_boot=n_boot, seed=seed)


def test_effective_data_follows_the_paper():
    u, r_star = 1e9, 15.0
    # Within the first epoch every token is new.
    assert constrained.effective_data(5e8, u, r_star) == pytest.approx(5e8)
    assert constrained.effective_data(u, u, r_star) == pytest.approx(u)
    # A second epoch is worth almost a full one; infinitely many saturate at U (1 + R*).
    assert constrained.effective_data(2 * u, u, r_star) == pytest.approx(u * (1 + 15 * (1 - np.exp(-1 / 15))))
    assert 1.9 * u < constrained.effective_data(2 * u, u, r_star) < 2 * u
    assert constrained.effective_data(1e6 * u, u, r_star) == pytest.approx(u * (1 + r_star))
    # More tokens never hurt, and a larger R* makes repeats worth more.
    d = np.geomspace(1e8, 1e11, 50)  # beyond ~100 epochs D' is U (1 + R*) to float precision
    assert (np.diff(constrained.effective_data(d, u, r_star)) > 0).all()
    assert constrained.effective_data(1e11, u, 30.0) > constrained.effective_data(1e11, u, 15.0)


def test_gradient_matches_finite_differences():
    rows = constrained_summaries(LAW, CONSTRAINED_BUDGETS[:2], CONSTRAINED_UNIQUE_TOKENS, sizes_per_budget=4,
                                 noise=0.01, seed=0)
    p = _points(rows)
    assert (p.epochs < 1).any() and (p.epochs > 1).any()  # both branches of min(D, U)
    args = (np.log(p.n), np.log(p.d), np.log(p.dataset), np.log(p.loss), np.ones(len(p.n)))
    theta = np.array([0.3, 3.0, 0.3, 4.0, 0.25, np.log(8.0)])
    _, grad = constrained.objective(theta, *args)
    eps = 1e-6
    numeric = [(constrained.objective(theta + eps * e, *args)[0] - constrained.objective(theta - eps * e, *args)[0])
               / (2 * eps) for e in np.eye(6)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("noise_seed", [0, 1, 2])
def test_recovers_planted_law(noise_seed):
    """Acceptance: two dataset sizes, up to ~100 epochs, 0.3% noise: R*_D within 20%, exponents within 0.05."""
    p = _points(constrained_summaries(LAW, CONSTRAINED_BUDGETS, CONSTRAINED_UNIQUE_TOKENS, noise=0.003,
                                      seed=noise_seed))
    assert p.epochs.max() > 50 and len(np.unique(p.dataset)) == 2
    fit = _fit(p, n_boot=20, seed=noise_seed)
    est = fit.estimates()
    assert est["R_star_D"].value == pytest.approx(LAW.r_star_d, rel=0.2)
    assert est["alpha"].value == pytest.approx(LAW.law.alpha, abs=0.05)
    assert est["beta"].value == pytest.approx(LAW.law.beta, abs=0.05)
    assert est["R_star_D"].lo < est["R_star_D"].value < est["R_star_D"].hi
    assert fit.unique_tokens == pytest.approx(sorted(CONSTRAINED_UNIQUE_TOKENS))
    assert not fit.warnings


def test_exact_recovery_without_noise():
    fit = _fit(_points(constrained_summaries(LAW, CONSTRAINED_BUDGETS, CONSTRAINED_UNIQUE_TOKENS)))
    est = fit.estimates()
    for name, truth in (("E", 1.5), ("A", 25.0), ("alpha", 0.34), ("B", 60.0), ("beta", 0.28), ("R_star_D", 15.0)):
        assert est[name].value == pytest.approx(truth, rel=1e-3), name
    assert fit.predict(1e7, 5e9, 1e8).value == pytest.approx(LAW.loss(1e7, 5e9, 1e8), rel=1e-4)


@pytest.mark.slow
def test_repeats_as_good_as_new_put_r_star_on_its_bound():
    """Chinchilla's law with no repetition penalty, runs repeating up to 10 epochs: R*_D is unbounded."""
    rows = law_summaries(Law(), (1e15, 1e16, 1e17), sizes_per_budget=7, span_dex=1.2)
    for r in rows:
        r["unique_tokens"] = 3e8
    fit = _fit(_points(rows))
    assert fit.estimates()["R_star_D"].value > 1e3
    assert any("upper bound" in w and "as much as new ones" in w for w in fit.warnings)


def test_no_repetition_or_no_dataset_size_is_a_clear_error():
    rows = law_summaries(Law(), (1e15, 1e16, 1e17), sizes_per_budget=5)  # 1e12 tokens per epoch: < 1 epoch
    with pytest.raises(DataError, match="no run repeats its data"):
        _fit(_points(rows))
    for r in rows:
        del r["epochs_over_data"]
    assert (_points(rows).dataset == 0).all()
    with pytest.raises(DataError, match="needs >= 7 runs with a known dataset size"):
        _fit(_points(rows))


@pytest.mark.slow
def test_planner_answers_for_a_dataset_and_a_budget():
    p = _points(constrained_summaries(LAW, CONSTRAINED_BUDGETS, CONSTRAINED_UNIQUE_TOKENS, noise=0.003, seed=4))
    fit = _fit(p, n_boot=30)
    span = planner.run_span(p)
    budget = 1e19
    small, large = (planner.plan_data_constrained(fit, budget, u, span) for u in CONSTRAINED_UNIQUE_TOKENS)
    for plan in (small, large):
        truth_n = LAW.n_opt(budget, plan.unique_tokens)
        assert plan.n_opt.value == pytest.approx(truth_n, rel=0.3)
        assert plan.loss.value == pytest.approx(LAW.loss(truth_n, budget / (6 * truth_n), plan.unique_tokens), rel=0.01)
        assert plan.epochs.value == pytest.approx(plan.d_opt.value / plan.unique_tokens)
        for est in (plan.n_opt, plan.d_opt, plan.epochs, plan.loss):
            assert est.lo <= est.value <= est.hi
        assert plan.loss_unconstrained.value < plan.loss.value  # a data limit costs loss
        assert not plan.warnings
    # Less data: spend the compute on a larger model, repeat more, and lose more.
    assert small.n_opt.value > large.n_opt.value
    assert small.epochs.value > large.epochs.value
    assert small.loss.value > large.loss.value
    tiny = planner.plan_data_constrained(fit, 1e21, 1e6, span)
    assert any("R*_D is extrapolated" in w for w in tiny.warnings)
    assert any("10x outside the dataset sizes" in w for w in tiny.warnings)
    assert any("long extrapolation" in w for w in tiny.warnings)


@pytest.mark.slow
def test_report_on_two_datasets_with_seeds(tmp_path):
    """The two-dataset, multi-seed experiment end to end: fit.json, report.txt and the repetition figure."""
    path = tmp_path / "results.jsonl"
    write_jsonl(constrained_summaries(LAW, CONSTRAINED_BUDGETS, CONSTRAINED_UNIQUE_TOKENS, seeds=2, noise=0.004,
                                      seed=0), str(path))
    s = study.analyze(str(path), n_boot=100, n_boot_parametric=8, budgets=[3e18], unique_tokens=[1e8, 3e8, 1e9])
    written = report.write_report(s, str(tmp_path / "out"))
    assert any(w.endswith("repetition.png") for w in written)
    fit = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert [d["unique_tokens"] for d in fit["data"]["datasets"]] == [1e9, 1e8]
    assert fit["data"]["seeds"] == [0, 1]
    assert fit["isoflop"]["unique_tokens"] == 1e9 and len(fit["isoflop_other_datasets"]) == 1
    assert fit["settings"]["noise_model"] == fit["isoflop"]["noise_model"] == "seed_spread"
    profile = fit["isoflop"]["profiles"][0]
    assert profile["seeds_per_size"] == [2] * 7 and all(se > 0 for se in profile["size_se"])
    assert profile["n_runs"] == 14
    assert fit["isoflop"]["bootstrap"]["n_boot"] == 100
    dc = fit["data_constrained"]
    assert dc["R_star_D"]["value"] == pytest.approx(15.0, rel=0.3) and dc["R_star_N"] is None
    assert dc["n_boot_used"] + dc["n_boot_failed"] == 8
    assert fit["headline"]["R_star_D"] == dc["R_star_D"]
    plans = fit["planner_data_constrained"]
    assert [p["unique_tokens"] for p in plans] == [1e8, 3e8, 1e9]
    assert plans[0]["epochs"]["value"] > plans[1]["epochs"]["value"] > plans[2]["epochs"]["value"]
    text = (tmp_path / "out" / "report.txt").read_text()
    assert "2 seeds/size, SE" in text and "per size N: seeds, mean loss +- SE" in text
    assert "R_star_D = " in text and "U=1e+08, C=3e+18" in text
    assert "dataset U=1e+08" in text and "joint replicates dropped" in text
