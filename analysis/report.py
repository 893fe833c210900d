"""Scaling-law report for a sweep: fit.json, plots (PNG, SVG) and a short text report.

  python -m analysis.report --results=DIR/results.jsonl --out=DIR/analysis

Writes OUT/fit.json (every number with its CI and the settings used), OUT/{isoflop,optimal,
frontier,utility}.{png,svg}, OUT/report.md and OUT/report.txt, and prints the text report.
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


def _isoflop_lines(s: study.Study) -> list[str]:
    iso = s.isoflop
    interior = sum(p.interior for p in iso.profiles)
    lines = [f"IsoFLOP profiles (approach 2; {interior} of {len(iso.profiles)} budgets with an interior minimum): "
             f"N_opt, D_opt, L at the minimum [{100 * s.settings['ci_level']:.0f}% CI]"]
    for p in iso.profiles:
        state = "interior" if p.interior else "EXCLUDED: " + p.note
        lines.append(f"  C={p.budget:.3g}: {len(p.n)} runs, N_opt {_ci(p.n_opt)}, D_opt {_ci(p.d_opt)}, "
                     f"L {_ci(p.loss_opt)} ({state})")
    if iso.n_opt is not None:
        lines += [f"  N_opt = k C^a: a = {_ci(iso.n_opt.exponent_ci)}, k = {_ci(iso.n_opt.k)}",
                  f"  D_opt = k C^b: b = {_ci(iso.d_opt.exponent_ci)}, k = {_ci(iso.d_opt.k)}",
                  f"  L_opt = k C^e: e = {_ci(iso.loss_opt.exponent_ci)}"]
    else:
        lines.append("  N_opt(C), D_opt(C): not fitted (see warnings)")
    return lines


def _other_lines(s: study.Study) -> list[str]:
    lines = ["Parametric L(N, D) = E + A/N^alpha + B/D^beta (approach 3, Huber on log loss):"]
    if s.parametric is not None:
        est = s.parametric.estimates()
        lines.append("  " + ", ".join(f"{k} = {_ci(est[k])}" for k in ("E", "alpha", "beta")))
        lines.append(f"  implied a = beta/(alpha+beta) = {_ci(est['a'])}, b = alpha/(alpha+beta) = {_ci(est['b'])}")
    else:
        lines.append("  not fitted (see warnings)")
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
            f"bootstrap CIs ({s.settings['n_boot']} resamples)"]
    warnings = ["Warnings:"] + [f"  - {w}" for w in s.warnings] if s.warnings else ["Warnings: none"]
    return "\n".join(head + [""] + _isoflop_lines(s) + [""] + _other_lines(s) + [""] + warnings) + "\n"


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


def main(argv) -> None:
    del argv
    args = flags.FLAGS
    if not args.results:
        sys.exit("--results=DIR/results.jsonl is required")
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(args.results)), "analysis")
    try:
        budgets = [float(b) for b in args.budgets] or None
        s = study.analyze(args.results, n=args.n, flops_key=args.flops_key, n_boot=args.n_boot,
                          n_boot_parametric=args.n_boot_parametric, seed=args.seed, level=args.ci_level,
                          budgets=budgets)
        write_report(s, out_dir)
    except (EhrJaxError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(text_report(s), end="")
    print(f"wrote {out_dir}/fit.json, report.md, report.txt and plots")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
