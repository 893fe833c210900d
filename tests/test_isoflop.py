"""IsoFLOP (approach 2) fits, their bootstrap intervals, the planner, and degenerate grids."""

import math

import numpy as np
import pytest

from analysis import isoflop, planner, powerlaw, results
from analysis.synthetic_results import Law, law_summaries
from ehr_jax.errors import DataError

LAW = Law()
BUDGETS = (1e15, 1e16, 1e17, 1e18)


def _fit(rows, n_boot=200, seed=0):
    return isoflop.fit_isoflop(results.to_dataset("mem.jsonl", rows).points, n_boot=n_boot, seed=seed)


def test_recovers_exponents_without_noise():
    fit = _fit(law_summaries(LAW, BUDGETS, sizes_per_budget=9, span_dex=1.0))
    assert fit.n_opt.exponent == pytest.approx(LAW.a, abs=0.01)
    assert fit.d_opt.exponent == pytest.approx(LAW.b, abs=0.01)
    for profile in fit.profiles:
        assert profile.interior
        # A parabola in ln N approximates the true profile: its vertex is within a few percent.
        assert profile.n_opt.value == pytest.approx(LAW.n_opt(profile.c), rel=0.05)
        assert profile.loss_opt.value == pytest.approx(
            LAW.loss(LAW.n_opt(profile.c), profile.c / (6 * LAW.n_opt(profile.c))), rel=0.01)
    assert fit.loss_opt.exponent < 0
    assert not fit.warnings


def test_recovers_exponents_with_noise_inside_ci():
    fit = _fit(law_summaries(LAW, BUDGETS, sizes_per_budget=9, span_dex=1.0, noise=0.005, seed=3), n_boot=300)
    assert fit.n_opt.exponent == pytest.approx(LAW.a, abs=0.08)
    assert fit.n_opt.exponent_ci.covers(LAW.a)
    assert fit.d_opt.exponent_ci.covers(LAW.b)
    lo, hi = fit.n_opt.exponent_ci.lo, fit.n_opt.exponent_ci.hi
    assert 0 < hi - lo < 0.5  # an interval, neither degenerate nor meaningless


def _parabola_runs(rng, n_star=1e6, sizes=9, noise=0.01):
    u = np.linspace(-1.5, 1.5, sizes)
    n = n_star * np.exp(u)
    loss = 3.0 + 0.1 * u ** 2 + noise * rng.standard_normal(sizes)
    return [{"run_name": f"r{i}", "n_params": x, "n_params_non_embedding": x, "tokens_seen": 1e15 / (6 * x),
             "flops": 1e15, "flops_6nd": 1e15, "val_loss": y, "grid_point": {"budget": 1e15, "size": str(i)}}
            for i, (x, y) in enumerate(zip(n, loss))]


def test_bootstrap_coverage_near_nominal():
    """40 draws x 100 resamples: the 95% intervals cover the truth at roughly the nominal rate."""
    rng = np.random.default_rng(0)
    covered_min = covered_exp = 0
    draws = 40
    for i in range(draws):
        fit = _fit(_parabola_runs(rng), n_boot=100, seed=i)
        covered_min += fit.profiles[0].n_opt.covers(1e6)
        x = np.geomspace(1e10, 1e14, 8)
        law = powerlaw.bootstrap_pairs(x, 2 * x ** 0.5 * np.exp(0.1 * rng.standard_normal(8)), 100, rng)
        covered_exp += law.exponent_ci.covers(0.5)
    # Percentile bootstraps under-cover a little on 8-9 points; nonsense CIs would be far off.
    assert 0.75 <= covered_min / draws <= 1.0
    assert 0.75 <= covered_exp / draws <= 1.0


def test_approach2_exponent_coverage_near_nominal():
    """The joint bootstrap (runs resampled in every budget, then the power law) covers the true a."""
    draws = 40
    covered = sum(
        _fit(law_summaries(LAW, BUDGETS, sizes_per_budget=9, span_dex=1.0, noise=0.005, seed=100 + i),
             n_boot=100, seed=i).n_opt.exponent_ci.covers(LAW.a)
        for i in range(draws))
    assert 0.75 <= covered / draws <= 1.0


def test_one_budget_says_so():
    fit = _fit(law_summaries(LAW, (1e16,), sizes_per_budget=7))
    assert fit.n_opt is None and fit.d_opt is None
    assert any("share one budget" in w for w in fit.warnings)
    assert len(fit.profiles) == 1 and fit.profiles[0].interior
    with pytest.raises(DataError, match="could not be fitted"):
        planner.plan(fit, 1e17)


def test_minimum_on_edge_is_reported_and_excluded():
    rows = law_summaries(LAW, BUDGETS, sizes_per_budget=7, span_dex=1.0)
    # Shift one budget's sizes far above its optimum: its vertex falls below the smallest size.
    rows = [r for r in rows if r["grid_point"]["budget"] != 1e16]
    rows += law_summaries(LAW, (1e16,), sizes_per_budget=7, span_dex=1.0, offset_dex=1.2)
    fit = _fit(rows)
    edge = next(p for p in fit.profiles if p.budget == 1e16)
    assert not edge.interior
    assert any("1e+16" in w and "size tried" in w and "excluded" in w for w in fit.warnings)
    assert len(fit.n_opt.x) == 3  # fitted on the three interior budgets only
    assert fit.n_opt.exponent == pytest.approx(LAW.a, abs=0.02)


def test_too_few_points_per_budget():
    rows = law_summaries(LAW, BUDGETS, sizes_per_budget=7)
    rows = [r for r in rows if r["grid_point"]["budget"] != 1e15] + law_summaries(LAW, (1e15,), sizes_per_budget=2)
    fit = _fit(rows)
    assert any("1e+15" in w and "only 2 distinct size(s)" in w for w in fit.warnings)
    assert sorted(p.budget for p in fit.profiles) == [1e16, 1e17, 1e18]


def test_nan_losses_excluded_and_counted():
    rows = law_summaries(LAW, BUDGETS, sizes_per_budget=7)
    rows[0]["val_loss"] = float("nan")
    rows[1]["val_loss"] = float("inf")
    rows[2]["val_loss"] = None
    dataset = results.to_dataset("mem.jsonl", rows)
    assert dataset.excluded["non_finite_loss"] == 3
    assert len(dataset.points) == len(rows) - 3
    assert any("3 run(s) with NaN/inf/missing val_loss excluded" in w for w in dataset.warnings)
    assert np.isfinite(dataset.points.loss).all()


def test_planner_predicts_and_warns_about_epochs():
    fit = _fit(law_summaries(LAW, BUDGETS, sizes_per_budget=9, span_dex=1.0, noise=0.002, seed=1))
    budget = 1e19
    truth_n = LAW.n_opt(budget)
    plan = planner.plan(fit, budget, available_tokens=1e9)
    assert plan.n_opt.lo <= plan.n_opt.value <= plan.n_opt.hi
    assert plan.n_opt.value == pytest.approx(truth_n, rel=0.3)
    assert plan.epochs == pytest.approx(plan.d_opt.value / 1e9)
    assert plan.epochs > 1 and any("epochs" in w for w in plan.warnings)
    quiet = planner.plan(fit, budget, available_tokens=plan.d_opt.value * 10)
    assert not any("epochs" in w for w in quiet.warnings)
    far = planner.plan(fit, 1e22)
    assert any("extrapolation" in w for w in far.warnings)


def test_budgets_grouped_from_flops_without_grid_points():
    rows = law_summaries(LAW, BUDGETS, sizes_per_budget=5)
    for r in rows:
        del r["grid_point"]
        r["flops"] *= 1 + 0.02 * math.sin(len(r["run_name"]))  # step rounding jitters the count
    budgets = np.unique(results.to_dataset("mem.jsonl", rows).points.budget)
    assert len(budgets) == len(BUDGETS)
    assert np.allclose(budgets, BUDGETS, rtol=0.03)


def test_three_sizes_give_no_ci_but_keep_the_power_law_replicates():
    rows = law_summaries(LAW, BUDGETS[1:], sizes_per_budget=7, noise=0.003, seed=4)
    rows += law_summaries(LAW, BUDGETS[:1], sizes_per_budget=3, noise=0.003, seed=5)
    fit = _fit(rows, n_boot=200)
    small = next(p for p in fit.profiles if p.budget == BUDGETS[0])
    assert small.interior and np.isnan(small.n_opt.lo)
    assert any("only 3 sizes" in w and "no CI" in w for w in fit.warnings)
    # Resamples are redrawn until they hold 3 sizes; without that only 2/9 of this budget's
    # resamples (all three runs drawn) could be fitted, and each joint replicate needs all four.
    assert len(fit.n_opt.boot_exponent) >= 120


def _seeded_runs(rng, seeds=4, noise=0.004, noisy_size=None, sizes=7):
    """One budget, a known parabola in ln N (minimum at 1e6), several seeds per size."""
    rows = []
    for i, u in enumerate(np.linspace(-1.5, 1.5, sizes)):
        n = 1e6 * math.exp(u)
        for s in range(seeds):
            sd, shift = (0.3, 0.5) if i == noisy_size else (noise, 0.0)
            loss = 3.0 + 0.1 * u ** 2 + shift + sd * rng.standard_normal()
            rows.append({"run_name": f"r{i}", "n_params": n, "n_params_non_embedding": n, "tokens_seen": 1e15 / (6 * n),
                         "flops": 1e15, "flops_6nd": 1e15, "val_loss": loss, "seed": s,
                         "grid_point": {"budget": 1e15, "size": str(i)}})
    return rows


def test_seeds_are_read_and_kept_apart():
    rows = _seeded_runs(np.random.default_rng(0), seeds=3)
    rows[1] = {**rows[1], "grid_point": {**rows[1]["grid_point"], "seed": 7}}  # grid_point.seed wins
    rows[2] = {k: v for k, v in rows[2].items() if k != "seed"} | {"run_name": "lone"}  # no seed: seed 0
    rows.append(dict(rows[0]))  # a rerun of (r0, seed 0): the last line wins
    dataset = results.to_dataset("mem.jsonl", rows)
    assert dataset.excluded["duplicate"] == 1
    assert len(dataset.points) == 21  # same run names, different seeds: different runs
    assert dataset.points.seed[:3].tolist() == [0, 7, 0]
    with pytest.raises(DataError, match="mem.jsonl:1: seed='x'"):
        results.to_dataset("mem.jsonl", [{**rows[0], "seed": "x"}])


def test_seed_means_are_weighted_by_their_standard_error():
    """A size whose seeds disagree wildly (and whose mean is off) barely moves the weighted minimum."""
    fit = _fit(_seeded_runs(np.random.default_rng(1), noisy_size=5), n_boot=200)
    profile = fit.profiles[0]
    assert profile.sizes.noise_model == "seed_spread" and fit.noise_model == "seed_spread"
    assert profile.sizes.seeds.tolist() == [4] * 7
    assert profile.sizes.se[5] > 10 * np.delete(profile.sizes.se, 5).max()
    assert profile.n_opt.value == pytest.approx(1e6, rel=0.05)
    u = np.log(profile.sizes.n) - profile.center
    unweighted = isoflop.fit_parabolas(u, profile.sizes.mean, np.ones(7))[0]
    assert abs(-unweighted[1] / (2 * unweighted[0])) > 0.2  # the plain fit's vertex is pulled > 20% off
    # That size's mean is off by more than its seeds explain: the misfit is flagged, not hidden.
    assert profile.chi2_dof > isoflop.MAX_CHI2_DOF and any("misses the seed means" in w for w in fit.warnings)


def test_agreeing_seeds_do_not_get_infinite_weight():
    rows = _seeded_runs(np.random.default_rng(2), seeds=2)
    rows[1]["val_loss"] = rows[0]["val_loss"]  # size 0's two seeds agree exactly
    sizes = isoflop.collapse_seeds(*(np.array([r[k] for r in rows]) for k in ("n_params", "val_loss")))
    assert sizes.se[0] > 0.3 * np.median(sizes.se)  # shrunk toward the pooled spread, not 0


def test_seed_bootstrap_tracks_the_seed_noise():
    """Ten times the seed noise gives about ten times the interval; every replicate keeps every size."""
    widths = []
    for noise in (0.002, 0.02):
        profile = _fit(_seeded_runs(np.random.default_rng(3), noise=noise), n_boot=400).profiles[0]
        widths.append(np.log(profile.n_opt.hi / profile.n_opt.lo))
    assert 5 < widths[1] / widths[0] < 20


def test_seed_bootstrap_coverage_near_nominal():
    rng = np.random.default_rng(5)
    draws = 40
    covered = sum(_fit(_seeded_runs(rng, seeds=3, noise=0.01), n_boot=100, seed=i).profiles[0].n_opt.covers(1e6)
                  for i in range(draws))
    assert 0.75 <= covered / draws <= 1.0


def test_dropped_replicates_are_counted_and_reported():
    """A nearly flat, noisy grid loses minima in some replicates: counted, in fit.json and a warning."""
    rows = law_summaries(LAW, BUDGETS, sizes_per_budget=7, span_dex=0.6, noise=0.01, seed=2)
    fit = _fit(rows, n_boot=300)
    assert fit.noise_model == "residual"
    assert fit.boot_dropped == 300 - len(fit.n_opt.boot_exponent) > 15
    assert fit.boot_dropped >= max(p.boot_dropped for p in fit.profiles if p.interior)
    out = fit.to_json()["bootstrap"]
    assert out["dropped"] == fit.boot_dropped and out["dropped_fraction"] == pytest.approx(fit.boot_dropped / 300)
    assert any(f"{fit.boot_dropped} of 300 bootstrap replicates" in w for w in fit.warnings)
    clean = _fit(law_summaries(LAW, BUDGETS, sizes_per_budget=9, span_dex=1.0, noise=0.002, seed=2), n_boot=300)
    assert clean.boot_dropped == 0 and clean.to_json()["bootstrap"]["dropped_fraction"] == 0
