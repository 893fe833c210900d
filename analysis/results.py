"""Load a sweep's results.jsonl and turn run summaries into the points the fits use.

Each line is one run summary (see ARCHITECTURE: run_name, n_params, n_params_non_embedding,
tokens_seen, flops, flops_6nd, val_loss, epochs_over_data, grid_point {budget, size, seed},
optional seed, unique_tokens and evaluation). A line without a seed is seed 0 of a single-seed
study; a line without unique_tokens takes its dataset's size from tokens_seen / epochs_over_data.
Malformed input raises DataError naming the file and line; runs that
cannot enter a fit (failed, non-finite loss, repeated) are excluded and counted, not guessed at.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os

import numpy as np

from ehr_jax.errors import DataError

# Model size used by the fits. Non-embedding is the default because the small models of a CPU
# quickstart are embedding-dominated (2 V d outweighs the blocks), which bends log-log laws in
# total N (Kaplan et al. 2020 sec. 3.1); "total" matches Chinchilla and the paper's tables.
N_KEYS = {"non_embedding": "n_params_non_embedding", "total": "n_params"}
DEFAULT_N = "non_embedding"
# Compute used by the fits: "flops" is the trainer's own count (3 x forward, causal attention
# at half; the grid's budgets are in this unit); "flops_6nd" is the 6 N D approximation.
FLOPS_KEYS = ("flops", "flops_6nd")
DEFAULT_FLOPS = "flops"
REQUIRED_FIELDS = ("n_params", "n_params_non_embedding", "tokens_seen", "flops")
# Runs without a grid_point are grouped by compute: a new group starts where sorted
# log10(FLOPs) jumps by more than this (0.1 dex = 26%); sweeps space budgets wider than that.
BUDGET_GAP_DEX = 0.1
# Runs whose unique-token counts differ by less than this (in log10) trained on the same dataset.
DATASET_GAP_DEX = 0.01


@dataclasses.dataclass(frozen=True)
class Points:
    """One row per usable run, as arrays; budget is the IsoFLOP group's nominal compute."""

    run_name: tuple[str, ...]
    n: np.ndarray  # parameters, per N_KEYS
    d: np.ndarray  # training tokens seen
    c: np.ndarray  # training FLOPs of the run, per flops_key
    budget: np.ndarray  # nominal IsoFLOP budget of the run's group
    loss: np.ndarray  # validation loss
    seed: np.ndarray  # training seed (0 when the line names none)
    unique_tokens: np.ndarray  # tokens in one epoch of the run's training data (NaN: unknown)
    dataset: np.ndarray  # the run's dataset: its unique-token cluster, 0.0 when unknown
    n_key: str
    flops_key: str

    def __len__(self) -> int:
        return len(self.run_name)

    def select(self, mask: np.ndarray) -> "Points":
        keep = np.flatnonzero(mask)
        return dataclasses.replace(
            self,
            run_name=tuple(self.run_name[i] for i in keep),
            n=self.n[keep], d=self.d[keep], c=self.c[keep], budget=self.budget[keep],
            loss=self.loss[keep], seed=self.seed[keep], unique_tokens=self.unique_tokens[keep],
            dataset=self.dataset[keep])

    @property
    def epochs(self) -> np.ndarray:
        """Passes over the training data (NaN where its size is unknown)."""
        return self.d / self.unique_tokens


@dataclasses.dataclass
class Dataset:
    """Usable points, the summaries behind them and what was left out, with why."""

    path: str
    summaries: list[dict]  # usable runs only, same order as points
    points: Points
    excluded: dict[str, int]
    warnings: list[str]


def load_results(path: str) -> list[dict]:
    """Parse results.jsonl; every line must be a JSON object (blank lines are skipped)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: results file not found (expected a sweep's results.jsonl)")
    summaries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno}); "
                                "expected one run summary object per line") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object (a run summary), "
                                f"got {type(record).__name__}")
            record["_line"] = line_no
            summaries.append(record)
    if not summaries:
        raise DataError(f"{path}: no run summaries (the file is empty); run a sweep first")
    return summaries


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_fields(path: str, record: dict, n_field: str, flops_key: str) -> None:
    needed = REQUIRED_FIELDS + (n_field, flops_key)
    missing = [k for k in dict.fromkeys(needed) if k not in record]
    if missing:
        raise DataError(f"{path}:{record['_line']}: run summary lacks {', '.join(missing)} "
                        f"(run_name={record.get('run_name', '?')}); expected the fields of summary.json")
    for key in dict.fromkeys(needed):
        if not _finite_positive(record[key]):
            raise DataError(f"{path}:{record['_line']}: {key}={record[key]!r} in run "
                            f"{record.get('run_name', '?')}; expected a positive number")


def _is_failed(record: dict) -> bool:
    return bool(record.get("error")) or record.get("status", "finished") not in ("finished", "done", "ok")


def _grid_point(record: dict) -> dict:
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    point = record.get("grid_point") or config.get("grid_point")
    return point if isinstance(point, dict) else {}


def _budget_of(record: dict) -> float | None:
    budget = _grid_point(record).get("budget")
    return float(budget) if _finite_positive(budget) else None


def seed_of(record: dict, path: str = "") -> int:
    """The run's training seed: grid_point.seed, else seed, else 0 (a single-seed study)."""
    seed = _grid_point(record).get("seed", record.get("seed", 0))
    if isinstance(seed, bool) or not isinstance(seed, (int, float)) or seed != int(seed):
        raise DataError(f"{path}:{record.get('_line', '?')}: seed={seed!r} in run {record.get('run_name', '?')}; "
                        "expected an integer")
    return int(seed)


def unique_tokens_of(record: dict) -> float:
    """Tokens in one epoch of the run's data: unique_tokens, else tokens_seen / epochs_over_data; NaN if neither."""
    if _finite_positive(record.get("unique_tokens")):
        return float(record["unique_tokens"])
    if _finite_positive(record.get("epochs_over_data")) and _finite_positive(record.get("tokens_seen")):
        return float(record["tokens_seen"]) / float(record["epochs_over_data"])
    return float("nan")


def group_by_compute(flops: np.ndarray, gap_dex: float = BUDGET_GAP_DEX) -> np.ndarray:
    """Nominal budget per run from FLOPs alone: cluster sorted log10 FLOPs, name each by its geometric mean.

    The same clustering names datasets by their unique-token counts (dataset_labels).
    """
    log_c = np.log10(flops)
    order = np.argsort(log_c)
    budgets = np.empty_like(log_c)
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or log_c[order[i]] - log_c[order[i - 1]] > gap_dex:
            members = order[start:i]
            budgets[members] = 10 ** float(np.mean(log_c[members]))
            start = i
    return budgets


def dataset_labels(unique_tokens: np.ndarray) -> np.ndarray:
    """One label per run naming its dataset: the geometric mean of its unique-token cluster, 0.0 when unknown."""
    labels = np.zeros_like(unique_tokens)
    known = np.isfinite(unique_tokens)
    if known.any():
        labels[known] = group_by_compute(unique_tokens[known], DATASET_GAP_DEX)
    return labels


def _dedupe(path: str, summaries: list[dict], warnings: list[str]) -> tuple[list[dict], int]:
    """A sweep rerun may append a run twice; the last line wins.

    Two seeds, or two datasets, of one grid point may share a run name: they are different runs.
    """
    by_name: dict = collections.OrderedDict()
    for record in summaries:
        name = record.get("run_name", f"<line {record['_line']}>")
        key = (name, seed_of(record, path), str(record.get("unique_tokens")))
        by_name[key] = record
    duplicates = len(summaries) - len(by_name)
    if duplicates:
        warnings.append(f"{duplicates} repeated run_name line(s); kept the last of each")
    return list(by_name.values()), duplicates


def to_dataset(path: str, summaries: list[dict], n: str = DEFAULT_N, flops_key: str = DEFAULT_FLOPS) -> Dataset:
    """Validate summaries and keep the runs a fit can use; count each reason for leaving one out."""
    if n not in N_KEYS:
        raise DataError(f"n={n!r}: expected one of {sorted(N_KEYS)}")
    if flops_key not in FLOPS_KEYS:
        raise DataError(f"flops_key={flops_key!r}: expected one of {FLOPS_KEYS}")
    warnings: list[str] = []
    # In-memory summaries (tests, notebooks) have no file line; number them as if they had.
    summaries = [{"_line": i, **r} for i, r in enumerate(summaries, start=1)]
    summaries, duplicates = _dedupe(path, summaries, warnings)
    excluded = {"failed": 0, "non_finite_loss": 0, "duplicate": duplicates}
    usable = []
    for record in summaries:
        if _is_failed(record):
            excluded["failed"] += 1
            continue
        loss = record.get("val_loss")
        if loss is None or not isinstance(loss, (int, float)) or not math.isfinite(loss):
            excluded["non_finite_loss"] += 1
            continue
        _check_fields(path, record, N_KEYS[n], flops_key)
        usable.append(record)
    if excluded["failed"]:
        warnings.append(f"{excluded['failed']} failed run(s) excluded")
    if excluded["non_finite_loss"]:
        warnings.append(f"{excluded['non_finite_loss']} run(s) with NaN/inf/missing val_loss excluded")
    if not usable:
        raise DataError(f"{path}: none of {len(summaries)} run(s) has a finite val_loss; nothing to fit")
    c = np.array([float(r[flops_key]) for r in usable])
    budgets = np.array([_budget_of(r) or np.nan for r in usable])
    if np.isnan(budgets).any():
        # Without grid points the groups come from the FLOP count; with them, the grid decides.
        if not np.isnan(budgets).all():
            warnings.append(f"{int(np.isnan(budgets).sum())} run(s) without grid_point.budget "
                            "grouped by their FLOP count")
        # Group by the trainer's own count: the grid holds it fixed, flops_6nd varies within a group.
        own_flops = np.array([float(r["flops"]) for r in usable])
        budgets[np.isnan(budgets)] = group_by_compute(own_flops[np.isnan(budgets)])
    unique_tokens = np.array([unique_tokens_of(r) for r in usable])
    points = Points(
        run_name=tuple(str(r.get("run_name", f"line{r['_line']}")) for r in usable),
        n=np.array([float(r[N_KEYS[n]]) for r in usable]),
        d=np.array([float(r["tokens_seen"]) for r in usable]),
        c=c, budget=budgets,
        loss=np.array([float(r["val_loss"]) for r in usable]),
        seed=np.array([seed_of(r, path) for r in usable], dtype=int), unique_tokens=unique_tokens,
        dataset=dataset_labels(unique_tokens), n_key=N_KEYS[n], flops_key=flops_key)
    return Dataset(path=path, summaries=usable, points=points, excluded=excluded, warnings=warnings)


def read_dataset(path: str, n: str = DEFAULT_N, flops_key: str = DEFAULT_FLOPS) -> Dataset:
    """load_results + to_dataset: the one call most users need."""
    return to_dataset(path, load_results(path), n=n, flops_key=flops_key)

