"""Fits the tokenizer on the train split in one streaming pass with bounded memory.

Per frame we add code counts and push numeric values into a per-code reservoir: a
deterministic bottom-k sample (the RESERVOIR_SIZE values with the smallest hash of their row),
which is a uniform sample that does not depend on file order. Memory is bounded by distinct
codes x RESERVOIR_SIZE, not by dataset size. Partial fits of any split of the rows merge into
the same result (FitStats.merge): the Beam engine fits file by file in parallel and gets the
local tokenizer exactly. Hashes are stable within one polars version, so refits on the same
data give the same bins.
"""

from __future__ import annotations

import collections
from typing import Iterable

import numpy as np
import polars as pl
from absl import logging

from ehr_jax.data import tokenize

RESERVOIR_SIZE = 1024  # numeric values kept per code for its quantile edges
_HASH_SEED = 20251129
_MERGE_ROWS = 1 << 18  # sampled values buffered before a reservoir merge (bounds memory)


def fit(train_frames: Iterable[pl.DataFrame], *, min_code_count: int,
        num_quantiles: int, max_text_values: int = 0) -> tokenize.Tokenizer:
    """Vocabulary (tokens seen >= min_code_count times in train), per-code quantile edges and
    the codes whose text values become tokens (at most max_text_values distinct; 0: none)."""
    stats = FitStats(max_text_values)
    for frame in train_frames:
        stats.add_frame(frame)
    return stats.tokenizer(min_code_count=min_code_count, num_quantiles=num_quantiles)


class FitStats:
    """What the fit keeps of the train rows: code counts, the per-code bottom-k sample and the
    text values of codes with few of them.

    Merging is order-free (sums, bottom-k by row hash, text counts of codes under the limit), so
    partial stats of any split of the train rows (files, frames, Beam bundles) merge into the
    same tokenizer as one pass.
    """

    def __init__(self, max_text_values: int = 0):
        self.counts: pl.DataFrame | None = None  # code (categorical), n, n_values
        self.reservoir = _Reservoir()
        self.texts = _TextValues(max_text_values)

    def add_frame(self, frame: pl.DataFrame) -> None:
        rows, _, _ = tokenize.tokenizable_rows(frame)
        # Categorical codes: a string column sliced from a batch would keep the whole batch's
        # string buffer alive in the running counts and reservoir (memory would grow per batch).
        rows = rows.with_columns(pl.col("code").cast(pl.Categorical))
        valued = pl.col("numeric_value").is_not_null() & pl.col("numeric_value").is_finite()
        self._add_counts(rows.group_by("code").agg(n=pl.len(), n_values=valued.sum()))
        self.reservoir.add(rows.filter(valued).select(
            "code", pl.col("numeric_value").alias("value"),
            pl.struct("subject_id", "time", "code", "numeric_value").hash(_HASH_SEED).alias("key")))
        self.texts.add_rows(rows)

    def merge(self, other: "FitStats") -> "FitStats":
        if other.counts is not None:
            self._add_counts(other.counts)
        other_kept = other.reservoir.result()
        if other_kept is not None:
            self.reservoir.add(other_kept)
        self.texts.merge(other.texts)
        return self

    def _add_counts(self, counts: pl.DataFrame) -> None:
        self.counts = counts if self.counts is None else _sum_counts(self.counts, counts)

    def tokenizer(self, *, min_code_count: int, num_quantiles: int) -> tokenize.Tokenizer:
        counts = self.counts
        if counts is None or counts.height == 0:
            return tokenize.Tokenizer(tokenize.fixed_tokens(num_quantiles), num_quantiles, frozenset(), {})
        counts = counts.sort("code")
        numeric = set(counts.filter(pl.col("n_values") > 0)["code"].to_list())
        token_counts: collections.Counter = collections.Counter()
        for code, n in zip(counts["code"].to_list(), counts["n"].to_list()):
            for token in tokenize.split_code(code, code in numeric):
                token_counts[token] += n
        texts = self.texts.counts.sort("code", "text_value")
        for value, n in zip(texts["text_value"].to_list(), texts["n"].to_list()):
            token_counts[tokenize.text_token(value)] += n
        fixed = tokenize.fixed_tokens(num_quantiles)
        fixed_set = set(fixed)
        kept = sorted((t for t, n in token_counts.items() if n >= min_code_count and t not in fixed_set),
                      key=lambda t: (-token_counts[t], t))
        kept_set = set(kept)
        text_codes = frozenset(c for c, v in zip(texts["code"].to_list(), texts["text_value"].to_list())
                               if tokenize.text_token(v) in kept_set)
        logging.info("Vocabulary: %d of %d code tokens seen >= %d times in train; %d numeric codes, "
                     "%d codes with text-value tokens", len(kept), len(token_counts), min_code_count,
                     len(numeric), len(text_codes))
        edges = _quantile_edges(self.reservoir.result(), {c for c in numeric if c in kept_set}, num_quantiles)
        return tokenize.Tokenizer(fixed + kept, num_quantiles, frozenset(numeric), edges, text_codes)


class _TextValues:
    """Counts of (code, text_value) over train rows without a numeric value, for codes with at
    most `limit` distinct values (0: none). A code is dropped for good once it shows more (free
    text, numbers written as text), so memory stays near codes x limit; since a code over the
    limit in any part is over it in the whole, merging parts gives the one-pass result."""

    def __init__(self, limit: int):
        self.limit = limit
        self.counts = pl.DataFrame(schema={"code": pl.String, "text_value": pl.String, "n": pl.UInt32})
        self.too_many: set[str] = set()

    def add_rows(self, rows: pl.DataFrame) -> None:
        if self.limit <= 0 or "text_value" not in rows.columns:
            return
        self._add(rows.filter(pl.col("text_value").is_not_null() & pl.col("numeric_value").is_null())
                  .group_by(pl.col("code").cast(pl.String), "text_value").agg(n=pl.len().cast(pl.UInt32)))

    def merge(self, other: "_TextValues") -> None:
        self.too_many |= other.too_many
        self._add(other.counts)

    def _add(self, counts: pl.DataFrame) -> None:
        merged = (pl.concat([self.counts, counts]).group_by("code", "text_value").agg(pl.col("n").sum())
                  .filter(~pl.col("code").is_in(sorted(self.too_many))))
        distinct = merged.group_by("code").agg(k=pl.len())
        self.too_many.update(distinct.filter(pl.col("k") > self.limit)["code"].to_list())
        self.counts = merged.filter(~pl.col("code").is_in(sorted(self.too_many)))


def _sum_counts(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([a, b]).group_by("code").agg(pl.col("n").sum(), pl.col("n_values").sum())


class _Reservoir:
    """Bottom-k sample per code, merged in large steps; once a code's sample is full, only
    values whose key beats its current k-th key are buffered (a shrinking fraction)."""

    def __init__(self):
        self.kept: pl.DataFrame | None = None
        self.pending: list[pl.DataFrame] = []
        self.thresholds: pl.DataFrame | None = None  # code -> k-th smallest key, for full codes

    def add(self, sample: pl.DataFrame) -> None:
        if self.thresholds is not None:
            sample = (sample.join(self.thresholds, on="code", how="left")
                      .filter(pl.col("threshold").is_null() | (pl.col("key") < pl.col("threshold")))
                      .drop("threshold"))
        self.pending.append(sample)
        if sum(p.height for p in self.pending) >= _MERGE_ROWS:
            self._merge()

    def _merge(self) -> None:
        parts = ([self.kept] if self.kept is not None else []) + self.pending
        self.kept = _bottom_k(pl.concat(parts))
        self.pending = []
        self.thresholds = (self.kept.group_by("code").agg(pl.col("key").max().alias("threshold"), n=pl.len())
                           .filter(pl.col("n") >= RESERVOIR_SIZE).drop("n"))

    def result(self) -> pl.DataFrame | None:
        if self.pending:
            self._merge()
        return self.kept


def _bottom_k(sample: pl.DataFrame) -> pl.DataFrame:
    """Keeps the RESERVOIR_SIZE smallest keys per code (a tie means an identical row)."""
    return sample.filter(pl.col("key").rank("ordinal").over("code") <= RESERVOIR_SIZE)


def _quantile_edges(reservoir: pl.DataFrame | None, codes: set[str], num_quantiles: int) -> dict:
    """num_quantiles - 1 ascending edges per code: value v falls in bin 1 + #(edges <= v)."""
    if reservoir is None or not codes or num_quantiles < 2:
        return {}
    probs = np.arange(1, num_quantiles) / num_quantiles
    edges = {}
    grouped = reservoir.filter(pl.col("code").is_in(sorted(codes))).group_by("code").agg("value")
    for code, values in zip(grouped["code"].to_list(), grouped["value"].to_list()):
        edges[code] = np.quantile(np.asarray(values, np.float64), probs).astype(np.float32)
    return edges
