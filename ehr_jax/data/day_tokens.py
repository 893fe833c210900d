"""Tokens per busy day: how densely a patient's timeline fills a hospital day.

Prepare sums the counts over the train split into the manifest; evaluation turns the ratio into
rollout token budgets (ehr_jax.evaluation.zero_shot.token_caps) without importing prepare.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from ehr_jax.data import shards


def add_day_counts(stats: dict, record: shards.PatientRecord) -> None:
    """Adds sum(n) and sum(n^2) over the record's (subject, UTC day) token counts n.

    Their ratio is the train split's tokens per busy day (manifest "tokens_per_day"): the
    token-weighted mean count of tokens on the same subject-day as a token. A mean over a
    timeline's calendar span (months between admissions) or over days with data (many quiet
    outpatient days) would fall far below the density inside a hospital stay, where rollouts
    spend their tokens. Evaluation turns it into rollout token budgets
    (ehr_jax.evaluation.zero_shot.token_caps).
    """
    days = np.asarray(record.times[record.n_prefix:]) // 86_400
    if days.size:
        _, counts = np.unique(days, return_counts=True)
        stats["day_tokens"] += int(counts.sum())
        stats["day_tokens_sq"] += int((counts.astype(np.int64) ** 2).sum())


def tokens_per_day(prepared_dir: str | os.PathLike, max_records: int = 20_000) -> float:
    """The train split's tokens per busy day (add_day_counts): from the manifest, or (prepared
    dirs made before it was recorded) measured on up to max_records train records."""
    manifest = shards.read_manifest(prepared_dir)
    if manifest.get("tokens_per_day"):
        return float(manifest["tokens_per_day"])
    stats, n_records = {"day_tokens": 0, "day_tokens_sq": 0}, 0
    for record in shards.iter_records(prepared_dir, "train"):
        if n_records == max_records:
            break
        add_day_counts(stats, record)
        n_records += 1
    value = ratio(stats)
    logging.info("%s: no tokens_per_day in the manifest (prepared before it was recorded); "
                 "measured %.1f on %d train records", prepared_dir, value, n_records)
    return value


def ratio(stats: dict) -> float:
    """sum(n^2) / sum(n) of add_day_counts' sums (0 when no token had a time)."""
    return stats["day_tokens_sq"] / stats["day_tokens"] if stats["day_tokens"] else 0.0
