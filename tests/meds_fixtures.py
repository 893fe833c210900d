"""Tiny hand-written MEDS datasets for the data tests (rows spelled out, so failures are readable)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl

BASE = dt.datetime(2020, 1, 1)
MEDS_SCHEMA = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String,
               "numeric_value": pl.Float32}


def frame(rows: list[tuple]) -> pl.DataFrame:
    """Rows of (subject_id, time as datetime/None, code, numeric_value/None)."""
    return pl.DataFrame(rows, schema=MEDS_SCHEMA, orient="row")


def patient(subject_id: int, events: list[tuple], birth_years_before: float | None = 60,
            static: tuple = ("GENDER//F",)) -> list[tuple]:
    """Static rows, MEDS_BIRTH, then (seconds after BASE, code, value) events."""
    rows = [(subject_id, None, code, None) for code in static]
    if birth_years_before is not None:
        rows.append((subject_id, BASE - dt.timedelta(days=365.25 * birth_years_before), "MEDS_BIRTH", None))
    rows += [(subject_id, BASE + dt.timedelta(seconds=s), code, value) for s, code, value in events]
    return rows


def write_meds(root: Path, splits: dict[str, pl.DataFrame], *, flat: bool = False,
               metadata: dict | None = None, subject_splits: bool = True) -> Path:
    """Writes data/<split>/0.parquet (or flat data/<i>.parquet) plus metadata files."""
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    for i, (split, df) in enumerate(splits.items()):
        path = root / "data" / (f"{i}.parquet" if flat else f"{split}/0.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(path)
    meta = {"etl_name": "test_fixture", "etl_version": "1.0", "meds_version": "0.4.1"}
    (root / "metadata" / "dataset.json").write_text(json.dumps(metadata if metadata is not None else meta))
    if subject_splits:
        table = pl.concat([df.select("subject_id").unique().with_columns(split=pl.lit(split))
                           for split, df in splits.items()])
        table.write_parquet(root / "metadata" / "subject_splits.parquet")
    return root


def small_dataset(root: Path, n_train: int = 6, flat: bool = False) -> Path:
    """A few patients per split with labs, diagnoses, admissions and a held-out-only code."""
    def rows(first_id: int, n: int, extra_code: str | None = None) -> list[tuple]:
        out = []
        for s in range(first_id, first_id + n):
            events = [(0, "HOSPITAL_ADMISSION//EMERGENCY", None), (0, "LAB//50912//mg/dL", 0.5 + s % 5),
                      (3600, "DIAGNOSIS//ICD//10//I5021", None), (7200, "LAB//50912//mg/dL", 1.0 + s % 3),
                      (86400 * 3, "HOSPITAL_DISCHARGE//HOME", None)]
            if extra_code:
                events.append((86400 * 4, extra_code, None))
            out += patient(s, events, birth_years_before=40 + s)
        return out
    return write_meds(root, {"train": frame(rows(1, n_train)), "tuning": frame(rows(100, 2)),
                             "held_out": frame(rows(200, 2, extra_code="HELDOUT_ONLY_CODE"))}, flat=flat)
