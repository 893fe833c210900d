"""Figures of a Study: IsoFLOP curves, N_opt and D_opt against C, the loss frontier, utility, repetition.

Each plot_* returns a matplotlib Figure (the notebook shows it); save_all writes PNG and SVG.
Only aggregate numbers appear: run summaries carry no patient identifiers, and plots add none.
"""

from __future__ import annotations

import os
import sys

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless for the CLI and tests; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis import constrained  # noqa: E402
from analysis.isoflop import IsoflopFit  # noqa: E402
from analysis.powerlaw import PowerLaw  # noqa: E402
from analysis.study import Study  # noqa: E402

N_LABELS = {"n_params_non_embedding": "non-embedding parameters N", "n_params": "parameters N (total)"}


def _colors(count: int):
    return plt.cm.viridis(np.linspace(0.0, 0.9, max(count, 1)))


def _pct(study: Study) -> str:
    return f"{100 * study.settings['ci_level']:.0f}%"


def plot_isoflop(study: Study) -> plt.Figure:
    """Loss against N per budget, the fitted parabolas, and each minimum with its CI."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = study.dataset.points
    points = points.select(points.dataset == study.isoflop.unique_tokens)  # the headline dataset's runs
    budgets = sorted(set(points.budget.tolist()))
    profiles = {p.budget: p for p in study.isoflop.profiles}
    for color, budget in zip(_colors(len(budgets)), budgets):
        mask = points.budget == budget
        profile = profiles.get(budget)
        ax.scatter(points.n[mask], points.loss[mask], color=color, s=18, label=f"C = {budget:.2g}")
        if profile is not None and profile.sizes.noise_model == "seed_spread":
            ax.errorbar(profile.sizes.n, profile.sizes.mean, yerr=profile.sizes.se, fmt="none", color=color,
                        capsize=2, lw=0.8)
        if profile is None:
            continue
        grid = np.geomspace(profile.n.min() / 1.3, profile.n.max() * 1.3, 100)
        ax.plot(grid, profile.curve(grid), color=color, lw=1.2, ls="-" if profile.interior else ":")
        if profile.n_opt is not None:
            est = profile.n_opt
            xerr = [[max(est.value - est.lo, 0)], [max(est.hi - est.value, 0)]] if np.isfinite(est.lo) else None
            ax.errorbar([est.value], [profile.loss_opt.value], xerr=xerr, color=color, capsize=3,
                        marker="*" if profile.interior else "x", ms=11, mec="black", mew=0.6)
    ax.set_xscale("log")
    ax.set_xlabel(N_LABELS.get(points.n_key, points.n_key))
    ax.set_ylabel("validation loss")
    data = f"U={study.isoflop.unique_tokens:.3g}; " if study.isoflop.unique_tokens else ""
    ax.set_title(f"IsoFLOP profiles ({data}stars: minima with {_pct(study)} CI; x/dotted: not interior)", fontsize=9)
    ax.legend(fontsize=8, title=f"budget ({points.flops_key})", title_fontsize=8)
    fig.tight_layout()
    return fig


def _law_panel(ax, law: PowerLaw, values, c, extra_c, label: str, exponent_name: str) -> None:
    span = np.geomspace(min(c) / 1.5, max(list(c) + list(extra_c)) * 1.5, 60)
    fit, lo, hi = law.band(span)
    est = law.exponent_ci
    ax.fill_between(span, lo, hi, color="tab:blue", alpha=0.2, lw=0, label=f"{100 * law.level:.0f}% CI")
    ax.plot(span, fit, color="tab:blue",
            label=f"{exponent_name} = {est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]")
    yerr = np.array([[v.value - v.lo for v in values], [v.hi - v.value for v in values]])
    ax.errorbar(c, [v.value for v in values], yerr=np.clip(np.nan_to_num(yerr), 0, None), fmt="o",
                color="black", capsize=3, ms=4, label="IsoFLOP minima")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(label)
    ax.legend(fontsize=8)


def plot_optimal(study: Study) -> plt.Figure | None:
    """N_opt(C) and D_opt(C) with their power laws, CI bands, and the planner's budgets."""
    iso: IsoflopFit = study.isoflop
    if iso.n_opt is None:
        return None
    used = [p for p in iso.profiles if p.interior]
    c = [p.c for p in used]
    extra = [p.budget for p in study.plans]
    fig, (ax_n, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    _law_panel(ax_n, iso.n_opt, [p.n_opt for p in used], c, extra,
               "N_opt (" + N_LABELS.get(study.dataset.points.n_key, "N") + ")", "a")
    _law_panel(ax_d, iso.d_opt, [p.d_opt for p in used], c, extra, "D_opt (tokens)", "b")
    for plan in study.plans:
        ax_n.scatter([plan.budget], [plan.n_opt.value], marker="D", color="tab:orange", zorder=3)
        ax_d.scatter([plan.budget], [plan.d_opt.value], marker="D", color="tab:orange", zorder=3)
    if study.available_tokens:
        ax_d.axhline(study.available_tokens, color="tab:red", ls="--", lw=1, label="training tokens (1 epoch)")
        ax_d.legend(fontsize=8)
    fig.suptitle("Compute-optimal allocation (approach 2; diamonds: planner budgets)")
    fig.tight_layout()
    return fig


def plot_frontier(study: Study) -> plt.Figure:
    """Every run's loss against its compute, and the frontier L_opt(C) (the headline dataset's runs)."""
    points = study.dataset.points
    points = points.select(points.dataset == study.isoflop.unique_tokens)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sc = ax.scatter(points.c, points.loss, c=np.log10(points.n), cmap="viridis", s=18)
    fig.colorbar(sc, ax=ax, label="log10 N")
    law = study.isoflop.loss_opt
    if law is not None:
        used = [p for p in study.isoflop.profiles if p.interior]
        span = np.geomspace(min(p.c for p in used) / 1.5,
                            max([p.c for p in used] + [p.budget for p in study.plans]) * 1.5, 60)
        fit, lo, hi = law.band(span)
        ax.fill_between(span, lo, hi, color="tab:red", alpha=0.2, lw=0)
        est = law.exponent_ci
        ax.plot(span, fit, color="tab:red", label=f"L_opt ~ C^{est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]")
        ax.plot([p.c for p in used], [p.loss_opt.value for p in used], "*", color="tab:red", ms=10, mec="black")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"training compute C ({points.flops_key})")
    ax.set_ylabel("validation loss")
    ax.set_title("Loss frontier")
    fig.tight_layout()
    return fig


def plot_utility(study: Study) -> plt.Figure | None:
    """AUROC against N and against validation loss, with the fitted gap power laws."""
    if not study.utility:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = sorted({(u.task, u.method) for u in study.utility})
    colors = dict(zip(keys, _colors(len(keys))))
    for u in study.utility:
        ax = axes[0] if u.against == "n" else axes[1]
        color = colors[(u.task, u.method)]
        span = np.geomspace(u.law.x.min(), u.law.x.max(), 60)
        fit, lo, hi = u.law.band(span)
        ax.scatter(u.law.x, 1 - u.law.y, color=color, s=14)
        est = u.law.exponent_ci
        label = f"{u.task}/{u.method}: exp {est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]"
        ax.plot(span, 1 - fit, color=color, label=label)
        ax.fill_between(span, 1 - hi, 1 - lo, color=color, alpha=0.15, lw=0)
    for ax, label in zip(axes, (N_LABELS.get(study.dataset.points.n_key, "N"), "validation loss")):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("AUROC")
        ax.legend(fontsize=7)
    axes[0].set_title("Clinical utility vs model size (1 - AUROC = k N^e)")
    axes[1].set_title("Clinical utility vs validation loss")
    fig.tight_layout()
    return fig


def _repetition_panel(ax, study: Study) -> None:
    """Each run's loss less the fitted model-size term, against tokens: every size falls on its dataset's curve.

    The curves are B / D'^beta for each dataset and B / D^beta had every token been new; runs that
    repeated their data sit on their dataset's curve where it parts from the dotted one.
    """
    fit, points = study.constrained, study.dataset.points
    est = fit.estimates()
    d_grid = np.geomspace(points.d.min() / 1.5, points.d.max() * 1.5, 120)
    data_term = lambda d_eff: est["B"].value / d_eff ** est["beta"].value  # noqa: E731
    for color, u in zip(_colors(len(fit.unique_tokens)), fit.unique_tokens):
        mask = points.dataset == u
        size_term = est["E"].value + est["A"].value / points.n[mask] ** est["alpha"].value
        ax.scatter(points.d[mask], points.loss[mask] - size_term, color=color, s=12, alpha=0.7)
        ax.plot(d_grid, data_term(constrained.effective_data(d_grid, u, est["R_star_D"].value)), color=color,
                lw=1.4, label=f"U = {u:.3g} tokens")
        ax.axvline(u, color=color, lw=0.8, ls="--")
    ax.plot(d_grid, data_term(d_grid), color="gray", lw=1, ls=":", label="every token new")
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen D (dashed: one epoch of each dataset)")
    ax.set_ylabel("loss - E - A/N^alpha (fitted)")
    ax.set_title("The data term of the loss, against tokens seen", fontsize=9)
    ax.legend(fontsize=8)


def _effective_panel(ax, study: Study) -> None:
    """D'/U against epochs: how much a repeated epoch is worth, with the R*_D interval (D'/U rises with R*_D)."""
    fit = study.constrained
    epochs = np.geomspace(1, max(fit.max_epochs, 2) * 1.5, 80)
    r_star = fit.estimates()["R_star_D"]
    ax.plot(epochs, constrained.effective_data(epochs, 1.0, r_star.value), color="tab:blue",
            label=f"R*_D = {_fmt_ci(r_star)}")
    if np.isfinite(r_star.lo):
        ax.fill_between(epochs, constrained.effective_data(epochs, 1.0, r_star.lo),
                        constrained.effective_data(epochs, 1.0, r_star.hi), color="tab:blue", alpha=0.2, lw=0,
                        label=f"{_pct(study)} CI")
    ax.plot(epochs, epochs, color="gray", lw=0.8, ls=":", label="every token new")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("epochs over the data (D / U)")
    ax.set_ylabel("effective epochs D' / U")
    ax.set_title("What repeated epochs are worth", fontsize=9)
    ax.legend(fontsize=8)


def _fmt_ci(est) -> str:
    return f"{est.value:.3g} [{est.lo:.3g}, {est.hi:.3g}]" if np.isfinite(est.lo) else f"{est.value:.3g}"


def plot_repetition(study: Study) -> plt.Figure | None:
    """The data-constrained law against the runs, when some of them repeated their data."""
    if study.constrained is None or not study.constrained.max_epochs > 1:
        return None
    fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2))
    _repetition_panel(ax_l, study)
    _effective_panel(ax_e, study)
    fig.suptitle("Repeated data (Muennighoff et al. 2023 law, fitted)")
    fig.tight_layout()
    return fig


def save_all(study: Study, out_dir: str) -> list[str]:
    """Write every available figure as PNG and SVG; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    figures = {"isoflop": plot_isoflop(study), "optimal": plot_optimal(study),
               "frontier": plot_frontier(study), "utility": plot_utility(study),
               "repetition": plot_repetition(study)}
    for name, fig in figures.items():
        if fig is None:
            continue
        for ext in ("png", "svg"):
            path = os.path.join(out_dir, f"{name}.{ext}")
            fig.savefig(path, dpi=130)
            written.append(path)
        plt.close(fig)
    return written
