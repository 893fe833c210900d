"""Reads and validates a MEDS v0.4 dataset, one parquet file at a time.

Real MEDS datasets come in two layouts: MEDS-Extract (MIMIC-IV) writes
data/{train,tuning,held_out}/N.parquet, other tools write flat data/N.parquet and keep the
splits only in metadata/subject_splits.parquet. Both are accepted. Every problem raises a
DataError naming the file and column; rows we cannot use (null codes, subjects missing from
the split table) are counted, never dropped silently. Error messages give row numbers, never
subject ids, because users paste them into issues.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow.parquet as pq
from absl import logging

from ehr_jax.errors import DataError

SPLITS = ("train", "tuning", "held_out")
REQUIRED_COLUMNS = ("subject_id", "time", "code")
OUTPUT_COLUMNS = ("subject_id", "time", "code", "numeric_value", "text_value")
BATCH_ROWS = 1 << 17  # rows read at once from a parquet file (whole subjects are carried over);
# measured peak RSS on a 6.3M-row file: 2^17 -> 260 MB, 2^20 -> 580 MB, at the same speed


@dataclasses.dataclass
class MedsDataset:
    """A validated MEDS root: its metadata, its files per split and (flat layout) the split table."""

    root: Path
    metadata: dict  # dataset.json ({} when absent)
    files: dict[str, list[Path]]  # split -> parquet files holding that split's rows
    subject_splits: pl.DataFrame | None  # subject_id, split (None when absent)
    layout: str  # "split_dirs" or "flat"
    ignored_files: list[str] = dataclasses.field(default_factory=list)
    _file_of_subject: dict = dataclasses.field(default_factory=dict, repr=False)

    def input_files(self) -> list[Path]:
        """Every file whose content decides the prepared output (for the idempotence check)."""
        data = sorted({f for fs in self.files.values() for f in fs})
        meta = [self.root / "metadata" / n for n in ("dataset.json", "subject_splits.parquet")]
        return data + [m for m in meta if m.exists()]


def open_dataset(root: str | Path) -> MedsDataset:
    """Finds the data files, reads the metadata and checks every file's schema (no rows read)."""
    root = Path(root).expanduser().resolve()
    data_dir = root / "data"
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: missing; a MEDS dataset keeps its events in <root>/data/*.parquet")
    metadata = _read_dataset_json(root / "metadata" / "dataset.json")
    subject_splits = _read_subject_splits(root / "metadata" / "subject_splits.parquet")
    split_dirs = [data_dir / s for s in SPLITS if (data_dir / s).is_dir()]
    if split_dirs:
        files = {s: sorted((data_dir / s).rglob("*.parquet")) for s in SPLITS}
        ignored = [str(p) for p in sorted(data_dir.rglob("*.parquet"))
                   if p.relative_to(data_dir).parts[0] not in SPLITS]
        layout = "split_dirs"
    else:
        flat = sorted(data_dir.rglob("*.parquet"))
        if flat and subject_splits is None:
            raise DataError(f"{root}: no split information; expected data/{{train,tuning,held_out}}/ "
                            "folders or metadata/subject_splits.parquet")
        files = {s: flat for s in SPLITS}
        ignored, layout = [], "flat"
    all_files = sorted({f for fs in files.values() for f in fs})
    if not all_files:
        raise DataError(f"{data_dir}: no parquet files; expected data/{{train,tuning,held_out}}/*.parquet "
                        "or data/*.parquet")
    for path in ignored:
        logging.warning("Ignoring %s: not under data/{train,tuning,held_out}/", path)
    total_rows = sum(_check_schema(f) for f in all_files)
    if total_rows == 0:
        raise DataError(f"{data_dir}: empty dataset; all {len(all_files)} parquet files have 0 rows")
    return MedsDataset(root, metadata, files, subject_splits, layout, ignored)


def provenance(ds: MedsDataset) -> dict:
    """Which ETL made the data: code spelling drifts between ETL releases, so runs record it."""
    return {k: ds.metadata.get(k) for k in ("etl_name", "etl_version", "meds_version")}


def iter_split_frames(ds: MedsDataset, split: str,
                      dropped: collections.Counter | None = None) -> Iterator[pl.DataFrame]:
    """Yields validated frames of `split`'s rows (whole subjects, about BATCH_ROWS rows each).

    Frames come file by file; within a subject, static rows (null time) come first, then
    non-decreasing times. Rows dropped here are added to
    `dropped` by reason (null_code; subject_not_in_subject_splits, counted on the train pass).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    dropped = collections.Counter() if dropped is None else dropped
    for path in ds.files[split]:
        yield from file_split_frames(path, split, ds.subject_splits, ds.layout, dropped, ds._file_of_subject)


def file_split_frames(path: str | Path, split: str, subject_splits: pl.DataFrame | None, layout: str,
                      dropped: collections.Counter, owners: dict | None = None,
                      source=None) -> Iterator[pl.DataFrame]:
    """`split`'s validated frames of one data file (what iter_split_frames yields per file).

    `owners` (subject -> file) catches a subject in two files across calls; None skips that
    check (the Beam engine checks it as a pipeline step). `source`, an open seekable binary
    file, is read instead of `path` (object stores); `path` still names the file in errors.
    """
    for frame in _iter_file_frames(path, source):
        frame = _assign_split(path, frame, split, subject_splits, layout, dropped, owners)
        n_null = frame["code"].null_count()
        if n_null:
            dropped["null_code"] += n_null
            logging.warning("%s: dropped %d rows with a null code", path, n_null)
            frame = frame.filter(pl.col("code").is_not_null())
        if frame.height:
            yield frame


def _read_dataset_json(path: Path) -> dict:
    return parse_dataset_json(path, path.read_bytes()) if path.exists() else {}


def parse_dataset_json(path: str | Path, data: bytes) -> dict:
    """dataset.json's object; `path` names the file in errors."""
    try:
        metadata = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(metadata, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(metadata).__name__}")
    return metadata


def _read_subject_splits(path: Path) -> pl.DataFrame | None:
    return parse_subject_splits(path) if path.exists() else None


def parse_subject_splits(path: str | Path, source=None) -> pl.DataFrame:
    """subject_splits.parquet as (subject_id int64, split string); `source` is read instead of `path`."""
    try:
        table = pl.read_parquet(path if source is None else source)
    except Exception as e:  # polars raises several types for a corrupt file
        raise DataError(f"{path}: cannot read parquet ({e})") from None
    for column in ("subject_id", "split"):
        if column not in table.columns:
            raise DataError(f"{path}: missing column {column!r}; expected subject_id int64, split string")
    if not table["subject_id"].dtype.is_integer():
        raise DataError(f"{path}: column 'subject_id' is {table['subject_id'].dtype}; expected int64")
    table = table.select(pl.col("subject_id").cast(pl.Int64), pl.col("split").cast(pl.String))
    if table["subject_id"].is_duplicated().any():
        raise DataError(f"{path}: a subject is listed in more than one split (column 'subject_id')")
    return table


def _check_schema(path: str | Path, source=None) -> int:
    """Checks column names and types from the parquet footer; returns the row count."""
    try:
        schema, num_rows = _polars_schema(pq.ParquetFile(path if source is None else source))
    except Exception as e:
        raise DataError(f"{path}: cannot read parquet ({e})") from None
    for column in REQUIRED_COLUMNS:
        if column not in schema:
            raise DataError(f"{path}: missing required column {column!r}; MEDS needs "
                            "subject_id int64, time timestamp, code string")
    expectations = {"subject_id": (lambda d: d.is_integer(), "an integer type (int64)"),
                    "time": (lambda d: isinstance(d, pl.Datetime), "a timestamp (datetime[us])"),
                    "code": (lambda d: d in (pl.String, pl.Categorical) or isinstance(d, pl.Enum),
                             "a string"),
                    "numeric_value": (lambda d: d.is_numeric() or d == pl.Null, "a float (float32)"),
                    "text_value": (lambda d: d in (pl.String, pl.Categorical, pl.Null) or isinstance(d, pl.Enum),
                                   "a string")}
    for column, (ok, expected) in expectations.items():
        if column in schema and not ok(schema[column]):
            raise DataError(f"{path}: column {column!r} has type {schema[column]}; expected {expected}")
    return num_rows


def _polars_schema(parquet: pq.ParquetFile) -> tuple[pl.Schema, int]:
    """The file's columns as polars types (from its footer only) and its row count."""
    return pl.from_arrow(parquet.schema_arrow.empty_table()).schema, parquet.metadata.num_rows


def _iter_file_frames(path: str | Path, source=None) -> Iterator[pl.DataFrame]:
    """Reads one file in batches of about BATCH_ROWS rows, each holding whole subjects.

    A subject's trailing rows are carried into the next batch, so memory is bounded by the
    batch size (or the largest subject), never by the file: MEDS-Extract writes files with
    tens of millions of rows.
    """
    _check_schema(path, source)  # the file may have changed since open_dataset
    finished: set[int] = set()
    carry, rows_before = None, 0
    try:
        parquet = pq.ParquetFile(path if source is None else source)
        schema = _polars_schema(parquet)[0]
        columns = [c for c in OUTPUT_COLUMNS if c in schema]
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)
        batch = next(batches, None)
        while batch is not None:
            following = next(batches, None)
            frame = _canonical(path, schema, pl.from_arrow(batch))
            frame = frame if carry is None else pl.concat([carry, frame])
            carry = None
            if following is not None:  # the last subject may continue in the next batch
                subject = frame["subject_id"]
                tail = int((subject.reverse() != subject[-1]).arg_max() or frame.height)
                carry, frame = frame.slice(frame.height - tail), frame.slice(0, frame.height - tail)
            if frame.height:
                yield _validated(path, frame, finished, rows_before)
                rows_before += frame.height
            batch = following
    except (OSError, pl.exceptions.ComputeError, ValueError) as e:
        raise DataError(f"{path}: cannot read parquet ({e})") from None


def _canonical(path: Path, schema, frame: pl.DataFrame) -> pl.DataFrame:
    """The contract's columns and types: subject_id int64, time datetime[us], code str, value f32,
    text_value str (null when the file has none)."""
    time = pl.col("time")
    if schema["time"].time_zone is not None:  # MEDS times are naive; read aware ones as UTC
        time = time.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    value = pl.col("numeric_value") if "numeric_value" in schema else pl.lit(None)
    text = pl.col("text_value") if "text_value" in schema else pl.lit(None)
    frame = frame.select(pl.col("subject_id").cast(pl.Int64), time.dt.cast_time_unit("us"),
                         pl.col("code").cast(pl.String), value.cast(pl.Float32).alias("numeric_value"),
                         text.cast(pl.String).alias("text_value"))
    if frame["subject_id"].null_count():
        raise DataError(f"{path}: column 'subject_id' has {frame['subject_id'].null_count()} nulls; "
                        "expected every row to name its subject")
    return frame


def _validated(path: Path, frame: pl.DataFrame, finished: set[int], rows_before: int) -> pl.DataFrame:
    """Checks that each subject's rows are contiguous in the file and sorted by time."""
    subject = frame["subject_id"]
    run_starts = subject.ne_missing(subject.shift(1)).fill_null(True)
    run_subjects = subject.filter(run_starts)
    if run_subjects.n_unique() != run_subjects.len() or not finished.isdisjoint(run_subjects.to_list()):
        raise DataError(f"{path}: column 'subject_id' is not grouped: a subject's rows are split by other "
                        "subjects' rows; expected rows sorted by subject_id, then time")
    finished.update(run_subjects.to_list())
    _check_time_order(path, frame, rows_before)
    return frame


def _check_time_order(path: Path, frame: pl.DataFrame, rows_before: int) -> None:
    """Static rows (null time) first, then non-decreasing times, within every subject."""
    same_subject = pl.col("subject_id") == pl.col("subject_id").shift(1)
    prev_time = pl.col("time").shift(1)
    bad = frame.with_row_index("row").filter(
        same_subject & prev_time.is_not_null()
        & (pl.col("time").is_null() | (pl.col("time") < prev_time)))
    if bad.height:
        row = bad.row(0, named=True)
        problem = ("a null (static) time after timed rows" if row["time"] is None
                   else "a time earlier than the row before it")
        raise DataError(f"{path}: column 'time' is not sorted within a subject: row {rows_before + row['row']} has "
                        f"{problem} ({bad.height} such rows); expected static rows first, then "
                        "non-decreasing times per subject")


def _assign_split(path: str | Path, frame: pl.DataFrame, split: str, subject_splits: pl.DataFrame | None,
                  layout: str, dropped: collections.Counter, owners: dict | None) -> pl.DataFrame:
    """Checks that no subject spans files or splits; keeps only `split`'s rows."""
    subjects = frame["subject_id"].unique()
    if owners is not None:
        for subject in subjects.to_list():
            owner = owners.setdefault(subject, path)
            if owner != path:
                raise DataError(f"{path}: column 'subject_id': a subject also has rows in {owner}; "
                                "expected each subject's rows in exactly one file")
    if subject_splits is None:
        return frame
    splits = pl.DataFrame({"subject_id": subjects}).join(subject_splits, on="subject_id", how="left")
    if layout == "split_dirs":
        wrong = splits.filter(pl.col("split").is_not_null() & (pl.col("split") != split))
        if wrong.height:
            raise DataError(f"{path}: column 'subject_id': {wrong.height} subjects are under data/{split}/ "
                            f"but metadata/subject_splits.parquet puts them in another split; "
                            "expected a subject in exactly one split")
        return frame
    if split == "train":
        n_missing = frame.filter(~pl.col("subject_id").is_in(subject_splits["subject_id"].implode())).height
        if n_missing:
            dropped["subject_not_in_subject_splits"] += n_missing
            logging.warning("%s: dropped %d rows of subjects absent from subject_splits.parquet", path, n_missing)
    keep = splits.filter(pl.col("split") == split)["subject_id"]
    return frame.filter(pl.col("subject_id").is_in(keep.implode()))
