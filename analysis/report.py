"""Scaling-law report for a sweep: fit.json, plots (PNG, SVG) and a short text report.

  python -m analysis.report --results=DIR/results.jsonl --out=DIR/analysis

Writes OUT/fit.json (every number with its CI and the settings used), OUT/{isoflop,optimal,
frontier,utility,repetition}.{png,svg}, OUT/report.md and OUT/report.txt, and prints the text report.
Fits use non-embedding N and the trainer's FLOP count unless --n / --flops_key say otherwise.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from analysis import isoflop, parametric, plots, powerlaw, results, study
from ehr_jax.errors import EhrJaxError


def _ci(est) -> str:
    if est is None:
        return "n/a"
    if est.lo == est.lo:  # not NaN
        return f"{est.value:.3g} [{est.lo:.3g}, {est.hi:.3g}]"
    return f"{est.value:.3g} [no CI]"


def _noise_text(p: isoflop.Profile) -> str:
    sizes = p.sizes
    low, high = sizes.seeds.min(), sizes.seeds.max()
    seeds = f"{low}" if low == high else f"{low}-{high}"
    if sizes.noise_model == "residual":
        return f"{seeds} seed(s)/size, residual noise"
    return f"{seeds} seeds/size, SE {sizes.se.min():.2g}-{sizes.se.max():.2g}"


def _bootstrap_line(iso: isoflop.IsoflopFit) -> str:
    per_budget = ", ".join(f"{p.budget:.3g}: {p.boot_dropped}" for p in iso.profiles if p.boot_dropped)
    return (f"  bootstrap ({iso.noise_model}): {iso.boot_dropped} of {iso.n_boot} joint replicates dropped "
            f"({100 * iso.boot_dropped / max(iso.n_boot, 1):.1f}%) for a budget without a finite minimum"
            + (f" (per budget {per_budget})" if per_budget else ""))


def _isoflop_lines(s: study.Study, iso: isoflop.IsoflopFit) -> list[str]:
    interior = sum(p.interior for p in iso.profiles)
    data = f"dataset U={iso.unique_tokens:.3g} tokens; " if iso.unique_tokens else ""
    lines = [f"IsoFLOP profiles (approach 2; {data}{interior} of {len(iso.profiles)} budgets with an interior "
             f"minimum): N_opt, D_opt, L at the minimum [{100 * s.settings['ci_level']:.0f}% CI]"]
    for p in iso.profiles:
        state = "interior" if p.interior else "EXCLUDED: " + p.note
        lines.append(f"  C={p.budget:.3g}: {len(p.n)} runs ({_noise_text(p)}), N_opt {_ci(p.n_opt)}, "
                     f"D_opt {_ci(p.d_opt)}, L {_ci(p.loss_opt)} ({state})")
        if p.sizes.noise_model == "seed_spread":
            lines.append("    per size N: seeds, mean loss +- SE: " + "; ".join(
                f"{n:.3g}: {k}, {m:.4g} +- {se:.2g}" for n, k, m, se in
                zip(p.sizes.n, p.sizes.seeds, p.sizes.mean, p.sizes.se)))
    lines.append(_bootstrap_line(iso))
    if iso.n_opt is not None:
        lines += [f"  N_opt = k C^a: a = {_ci(iso.n_opt.exponent_ci)}, k = {_ci(iso.n_opt.k)}",
                  f"  D_opt = k C^b: b = {_ci(iso.d_opt.exponent_ci)}, k = {_ci(iso.d_opt.k)}",
                  f"  L_opt = k C^e: e = {_ci(iso.loss_opt.exponent_ci)}"]
    else:
        lines.append("  N_opt(C), D_opt(C): not fitted (see warnings)")
    return lines


def _constrained_lines(s: study.Study) -> list[str]:
    lines = ["Data-constrained L(N, D) = E + A/N^alpha + B/D'^beta, D' = U_D (1 + R*_D (1 - exp(-R_D/R*_D))) "
             "(Muennighoff et al. 2023; N' = N):"]
    fit = s.constrained
    if fit is None:
        return lines + ["  not fitted (see warnings)"]
    est = fit.estimates()
    lines += ["  " + ", ".join(f"{k} = {_ci(est[k])}" for k in ("E", "alpha", "beta", "R_star_D")),
              f"  {fit.n_points} runs on U = {', '.join(f'{u:.3g}' for u in fit.unique_tokens)} tokens, up to "
              f"{fit.max_epochs:.1f} epochs; {len(fit.boot_theta)} of {fit.n_boot} bootstrap refits converged"]
    if s.constrained_plans:
        lines.append("Data-constrained planner (this dataset U and budget C: N, tokens, epochs, loss; and the loss "
                     "had every token been new):")
    for plan in s.constrained_plans:
        lines.append(f"  U={plan.unique_tokens:.3g}, C={plan.budget:.3g}: N {_ci(plan.n_opt)}, D {_ci(plan.d_opt)}, "
                     f"epochs {_ci(plan.epochs)}, loss {_ci(plan.loss)} "
                     f"(unlimited data {_ci(plan.loss_unconstrained)})")
    return lines


def _other_lines(s: study.Study) -> list[str]:
    lines = ["Parametric L(N, D) = E + A/N^alpha + B/D^beta (approach 3, Huber on log loss):"]
    if s.parametric is not None:
        est = s.parametric.estimates()
        lines.append("  " + ", ".join(f"{k} = {_ci(est[k])}" for k in ("E", "alpha", "beta")))
        lines.append(f"  implied a = beta/(alpha+beta) = {_ci(est['a'])}, b = alpha/(alpha+beta) = {_ci(est['b'])}")
    else:
        lines.append("  not fitted (see warnings)")
    lines += _constrained_lines(s)
    if s.utility:
        lines.append("Clinical utility (1 - AUROC = k x^e):")
        for u in s.utility:
            lines.append(f"  {u.task}/{u.method} vs {u.against}: e = {_ci(u.law.exponent_ci)} ({len(u.law.x)} runs)")
    lines.append("Planner (compute-optimal at budgets beyond the grid):")
    for plan in s.plans:
        epochs = f", {plan.epochs:.2f} epochs" if plan.epochs is not None else ""
        lines.append(f"  C={plan.budget:.3g}: N_opt {_ci(plan.n_opt)}, D_opt {_ci(plan.d_opt)}{epochs}, "
                     f"loss {_ci(plan.loss)}"
                     + (f" (parametric {_ci(plan.loss_parametric)})" if plan.loss_parametric else ""))
    if not s.plans:
        lines.append("  no plan: the N_opt(C) law could not be fitted")
    return lines


def text_report(s: study.Study) -> str:
    """The short report: exponents with CIs, the planner's answers, warnings."""
    points, excluded = s.dataset.points, s.dataset.excluded
    head = [f"Scaling-law report for {s.dataset.path}",
            f"{len(points)} runs used ({', '.join(f'{k}: {v}' for k, v in excluded.items() if v) or 'none excluded'}); "
            f"N = {points.n_key}, C = {points.flops_key}; {int(s.settings['ci_level'] * 100)}% percentile "
            f"bootstrap CIs ({s.settings['n_boot']} resamples)",
            f"seeds: {len(set(points.seed.tolist()))} distinct; noise model {s.isoflop.noise_model}; datasets: "
            + "; ".join(f"U={d['unique_tokens']:.3g} ({d['runs']} runs, up to {d['max_epochs']:.2g} epochs)"
                        if d["unique_tokens"] else f"U unknown ({d['runs']} runs)" for d in s.datasets())]
    iso_lines = []
    for fit in [s.isoflop] + s.isoflop_other:
        iso_lines += _isoflop_lines(s, fit) + [""]
    warnings = ["Warnings:"] + [f"  - {w}" for w in s.warnings] if s.warnings else ["Warnings: none"]
    return "\n".join(head + [""] + iso_lines + _other_lines(s) + [""] + warnings) + "\n"


def markdown_report(s: study.Study, figures: list[str]) -> str:
    images = [f"![{os.path.splitext(f)[0]}]({f})" for f in figures if f.endswith(".png")]
    return "# Scaling-law report\n\n```\n" + text_report(s) + "```\n\n" + "\n\n".join(images) + "\n"


def write_report(s: study.Study, out_dir: str) -> list[str]:
    """fit.json, figures, report.md and report.txt under out_dir; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = plots.save_all(s, out_dir)
    fit_path = os.path.join(out_dir, "fit.json")
    with open(fit_path, "w", encoding="utf-8") as f:
        json.dump(s.to_json(), f, indent=2, allow_nan=False)
    text = text_report(s)
    for name, content in (("report.txt", text),
                          ("report.md", markdown_report(s, [os.path.basename(p) for p in written]))):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write(content)
    return written + [fit_path] + [os.path.join(out_dir, n) for n in ("report.txt", "report.md")]


def main_report(results_path: str, out_dir: str, **analyze_kwargs) -> study.Study:
    """Default analysis of a sweep's results into out_dir (what ehr_jax.main calls after a sweep)."""
    s = study.analyze(results_path, **analyze_kwargs)
    write_report(s, out_dir)
    print(text_report(s), end="")
    return s


def _define_flags() -> None:
    """CLI flags, defined only when run as a program: the sweep imports this module in-process."""
    flags.DEFINE_string("results", None, "a sweep's results.jsonl")
    flags.DEFINE_string("out", None, "output directory (default: <results dir>/analysis)")
    flags.DEFINE_enum("n", results.DEFAULT_N, sorted(results.N_KEYS), "model size used by the fits")
    flags.DEFINE_enum("flops_key", results.DEFAULT_FLOPS, list(results.FLOPS_KEYS), "compute used by the fits")
    flags.DEFINE_integer("n_boot", isoflop.DEFAULT_BOOT, "bootstrap resamples for IsoFLOP, power laws, utility")
    flags.DEFINE_integer("n_boot_parametric", parametric.DEFAULT_BOOT, "bootstrap refits of L(N, D)")
    flags.DEFINE_integer("seed", 0, "bootstrap seed")
    flags.DEFINE_float("ci_level", powerlaw.DEFAULT_LEVEL, "two-sided confidence level")
    flags.DEFINE_list("budgets", [], "planner budgets in FLOPs (default: 3x, 10x, 100x the largest)")
    flags.DEFINE_list("unique_tokens", [], "data-constrained planner: dataset sizes in unique training tokens "
                      "(default: each dataset of the study)")


def main(argv) -> None:
    del argv
    args = flags.FLAGS
    if not args.results:
        sys.exit("--results=DIR/results.jsonl is required")
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(args.results)), "analysis")
    try:
        budgets = [float(b) for b in args.budgets] or None
        unique_tokens = [float(u) for u in args.unique_tokens] or None
        s = study.analyze(args.results, n=args.n, flops_key=args.flops_key, n_boot=args.n_boot,
                          n_boot_parametric=args.n_boot_parametric, seed=args.seed, level=args.ci_level,
                          budgets=budgets, unique_tokens=unique_tokens)
        write_report(s, out_dir)
    except (EhrJaxError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(text_report(s), end="")
    print(f"wrote {out_dir}/fit.json, report.md, report.txt and plots")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
