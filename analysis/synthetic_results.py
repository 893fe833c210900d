"""Run summaries generated from a known scaling law: for tests and for example_results.jsonl.

The example file is made by `python -m analysis.synthetic_results --out=analysis/example_results.jsonl`
(seed 0): a quickstart-shaped grid (4 budgets, 7 ladder sizes each, compact vocabulary) whose
losses follow LAW evaluated at non-embedding N and tokens seen, with 0.5% multiplicative noise,
and whose AUROCs follow 1 - AUROC = k N^-gamma with noise. No run was trained to make it; the
integrator may replace it with real quickstart output.

`--kind=data_constrained` writes a planted data-constrained study instead (two dataset sizes,
runs repeating their data up to tens of epochs, `--seeds` seeds per grid point): the shape of
the two-dataset experiment, to try the report on before real runs exist.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
from absl import app, flags

from analysis.constrained import effective_data


@dataclasses.dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float = 1.5
    A: float = 25.0
    alpha: float = 0.34
    B: float = 60.0
    beta: float = 0.28

    def loss(self, n, d):
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    @property
    def a(self) -> float:
        """N_opt ~ C^a under C = 6 N D."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def n_opt(self, c: float) -> float:
        """Exact compute-optimal N under C = 6 N D (Chinchilla eq. 4)."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return g * (c / 6) ** self.a


def law_summaries(law: Law, budgets, sizes_per_budget: int = 7, span_dex: float = 1.2,
                  noise: float = 0.0, seed: int = 0, offset_dex: float = 0.0) -> list[dict]:
    """Minimal summaries with C = 6 N D exactly, sizes log-spaced around the true optimum.

    offset_dex shifts every budget's sizes off-centre (to put the optimum at the edge in tests).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        center = math.log10(law.n_opt(c)) + offset_dex
        for log_n in np.linspace(center - span_dex / 2, center + span_dex / 2, sizes_per_budget):
            n = 10 ** log_n
            d = c / (6 * n)
            loss = float(law.loss(n, d) * math.exp(noise * rng.standard_normal()))
            rows.append({"run_name": f"c{c:.0e}-n{n:.3g}", "n_params": n, "n_params_non_embedding": n,
                         "tokens_seen": d, "flops": c, "flops_6nd": 6 * n * d, "flops_per_token": 6 * n,
                         "val_loss": loss, "final_train_loss": loss, "epochs_over_data": d / 1e12,
                         "grid_point": {"budget": c, "size": f"n{n:.3g}"}})
    return rows


@dataclasses.dataclass(frozen=True)
class ConstrainedLaw:
    """law at effective data D' (Muennighoff et al. 2023): repeated tokens decay with R*_D."""

    law: Law = Law()
    r_star_d: float = 15.0

    def loss(self, n, d, u):
        return self.law.loss(n, effective_data(d, u, self.r_star_d))

    def n_opt(self, c: float, u: float) -> float:
        """Compute-optimal N under C = 6 N D for a dataset of u tokens (numerically: no closed form)."""
        grid = np.geomspace(self.law.n_opt(c) / 100, self.law.n_opt(c) * 100, 4001)
        return float(grid[np.argmin(self.loss(grid, c / (6 * grid), u))])


def constrained_summaries(law: ConstrainedLaw, budgets, unique_tokens, sizes_per_budget: int = 7,
                          span_dex: float = 1.2, seeds: int = 1, noise: float = 0.0, seed: int = 0) -> list[dict]:
    """Summaries of one IsoFLOP grid per dataset size, sizes centred on each (budget, U) optimum, C = 6 N D."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in unique_tokens:
        for c in budgets:
            center = math.log10(law.n_opt(c, u))
            for log_n in np.linspace(center - span_dex / 2, center + span_dex / 2, sizes_per_budget):
                n = 10 ** log_n
                d = c / (6 * n)
                for s in range(seeds):
                    loss = float(law.loss(n, d, u) * math.exp(noise * rng.standard_normal()))
                    rows.append({"run_name": f"u{u:.0e}-c{c:.0e}-n{n:.3g}-s{s}", "n_params": n,
                                 "n_params_non_embedding": n, "tokens_seen": d, "flops": c, "flops_6nd": 6 * n * d,
                                 "flops_per_token": 6 * n, "val_loss": loss, "final_train_loss": loss,
                                 "unique_tokens": u, "epochs_over_data": d / u, "seed": s,
                                 "grid_point": {"budget": c, "size": f"n{n:.3g}", "seed": s}})
    return rows


# A compact quickstart-like ladder: (d_model, n_layers); vocabulary and window as the CPU preset.
LADDER = ((16, 1), (24, 1), (32, 1), (32, 2), (48, 2), (64, 2), (80, 2), (96, 3), (128, 3), (160, 4),
          (192, 4), (256, 4), (256, 6), (320, 6))
VOCAB, SEQ_LEN, BATCH = 512, 128, 16
TRAIN_TOKENS = 4.0e6  # tokens in one epoch of the example's training split
TASKS = {"mortality": (0.6, 0.05), "icu_admission": (0.5, 0.06)}  # 1 - AUROC = k N^-gamma


def _ladder_counts(d_model: int, n_layers: int) -> dict:
    non_embedding = 12 * n_layers * d_model ** 2 + 2 * n_layers * d_model + d_model
    total = non_embedding + 2 * VOCAB * d_model  # untied embedding and head
    # 3 x forward matmul FLOPs; causal attention (QK^T and AV, 2 L seq d) counted at half.
    per_token = 3 * (2 * (non_embedding + VOCAB * d_model) + 2 * n_layers * SEQ_LEN * d_model)
    return {"n_params": total, "n_params_non_embedding": non_embedding, "flops_per_token": per_token}


def _evaluation(rng: np.random.Generator, n: float) -> dict:
    out = {}
    for task, (k, gamma) in TASKS.items():
        gap = k * n ** -gamma * math.exp(0.03 * rng.standard_normal())
        auroc = 1 - gap
        out[task] = {"next_token": {"auroc": auroc, "auroc_ci": [auroc - 0.03, min(auroc + 0.03, 1.0)],
                                    "auprc": 0.3 + 0.5 * (auroc - 0.5), "n_cases": 500, "n_positive": 60,
                                    "prevalence": 0.12}}
    return out


def example_summaries(seed: int = 0, law: Law = Law(), noise: float = 0.005,
                      budgets=(1e11, 3e11, 1e12, 3e12), sizes_per_budget: int = 7) -> list[dict]:
    """Summaries shaped like a real quickstart sweep (ladder sizes, our FLOP count, grid points)."""
    rng = np.random.default_rng(seed)
    ladder = [(f"d{d}-l{l}", _ladder_counts(d, l), d, l) for d, l in LADDER]
    rows = []
    for budget in budgets:
        # Centre each budget's sizes on the law's optimum along this IsoFLOP curve.
        losses = [law.loss(c["n_params_non_embedding"], budget / c["flops_per_token"]) for _, c, _, _ in ladder]
        best = int(np.argmin(losses))
        lo = min(max(best - sizes_per_budget // 2, 0), len(ladder) - sizes_per_budget)
        for name, counts, d_model, n_layers in ladder[lo:lo + sizes_per_budget]:
            tokens = budget / counts["flops_per_token"]
            loss = float(law.loss(counts["n_params_non_embedding"], tokens) * math.exp(noise * rng.standard_normal()))
            steps = max(1, round(tokens / (BATCH * SEQ_LEN)))
            rows.append({
                "run_name": f"c{budget:.0e}-{name}".replace("+", ""), **counts,
                "n_layers": n_layers, "d_model": d_model, "tokens_seen": tokens, "flops": budget,
                "flops_6nd": 6 * counts["n_params"] * tokens, "final_train_loss": loss * 0.98,
                "val_loss": loss, "epochs_over_data": tokens / TRAIN_TOKENS, "steps": steps,
                "wall_s": None, "tokens_per_s": None, "mfu": None, "device_kind": "synthetic",
                "num_devices": 1, "grid_point": {"budget": budget, "size": name},
                "evaluation": {"builtin": _evaluation(rng, counts["n_params_non_embedding"])},
                "provenance": {"etl_name": "analysis.synthetic_results", "etl_version": "0",
                               "meds_version": None, "tokenizer_hash": None}})
    return rows


def write_jsonl(rows: list[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


# The planted data-constrained study: U such that the small dataset is repeated up to ~80 times.
CONSTRAINED_BUDGETS = (1e15, 1e16, 1e17, 1e18)
CONSTRAINED_UNIQUE_TOKENS = (1e8, 1e9)


def main(argv) -> None:
    del argv
    args = flags.FLAGS
    if args.kind == "example":
        rows = example_summaries(args.seed)
    else:
        rows = constrained_summaries(ConstrainedLaw(), CONSTRAINED_BUDGETS, CONSTRAINED_UNIQUE_TOKENS,
                                     seeds=args.seeds, noise=0.005, seed=args.seed)
    write_jsonl(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    # Flags live here, not at import, so importing this module beside analysis.report cannot clash.
    flags.DEFINE_string("out", "analysis/example_results.jsonl", "where to write the example results")
    flags.DEFINE_integer("seed", 0, "noise seed")
    flags.DEFINE_enum("kind", "example", ["example", "data_constrained"],
                      "example: the quickstart-shaped example; data_constrained: two dataset sizes, repeated epochs")
    flags.DEFINE_integer("seeds", 1, "training seeds per grid point (data_constrained)")
    app.run(main)
