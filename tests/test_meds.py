"""MEDS reader: both layouts, other tools' datasets, and a clear DataError for every bad input."""

import collections
import datetime as dt
import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ehr_jax.data import meds  # noqa: E402
from ehr_jax.errors import DataError  # noqa: E402

from meds_fixtures import BASE, frame, patient, small_dataset, write_meds  # noqa: E402

T1 = BASE + dt.timedelta(hours=1)


def _frames(ds, split, dropped=None):
    return list(meds.iter_split_frames(ds, split, dropped))


def test_split_dir_layout_yields_canonical_sorted_frames(tmp_path):
    ds = meds.open_dataset(small_dataset(tmp_path))
    assert ds.layout == "split_dirs"
    assert meds.provenance(ds) == {"etl_name": "test_fixture", "etl_version": "1.0", "meds_version": "0.4.1"}
    (train,) = _frames(ds, "train")
    assert dict(train.schema) == {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String,
                                  "numeric_value": pl.Float32, "text_value": pl.String}
    assert train["subject_id"].is_sorted()
    assert train["subject_id"].n_unique() == 6


def test_flat_layout_uses_subject_splits(tmp_path):
    ds = meds.open_dataset(small_dataset(tmp_path, flat=True))
    assert ds.layout == "flat"
    counts = {s: sum(f["subject_id"].n_unique() for f in _frames(ds, s)) for s in meds.SPLITS}
    assert counts == {"train": 6, "tuning": 2, "held_out": 2}


def test_meds_testing_helpers_static_dataset(simple_static_MEDS):
    ds = meds.open_dataset(simple_static_MEDS)
    subjects = {s: set().union(*(set(f["subject_id"]) for f in _frames(ds, s))) for s in meds.SPLITS}
    splits = pl.read_parquet(Path(simple_static_MEDS) / "metadata/subject_splits.parquet")
    for split in meds.SPLITS:
        assert subjects[split] == set(splits.filter(pl.col("split") == split)["subject_id"])


def test_missing_numeric_value_column_and_extra_columns_are_accepted(tmp_path):
    df = frame(patient(1, [(0, "A", None), (60, "B", None)])).drop("numeric_value")
    df = df.with_columns(text_value=pl.lit("x"), extra=pl.lit(3))
    ds = meds.open_dataset(write_meds(tmp_path, {"train": df}))
    (train,) = _frames(ds, "train")
    assert train.columns == ["subject_id", "time", "code", "numeric_value", "text_value"]
    assert train["numeric_value"].null_count() == train.height
    assert set(train["text_value"].to_list()) == {"x"}  # kept for text-value tokens


def test_compatible_types_are_cast_to_the_contract(tmp_path):
    df = frame(patient(1, [(0, "A", 1.0), (60, "B", None)])).with_columns(
        pl.col("code").cast(pl.Categorical), pl.col("subject_id").cast(pl.UInt32),
        pl.col("time").dt.cast_time_unit("ns"), pl.col("numeric_value").cast(pl.Float64))
    (train,) = _frames(meds.open_dataset(write_meds(tmp_path, {"train": df})), "train")
    assert dict(train.schema) == {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String,
                                  "numeric_value": pl.Float32, "text_value": pl.String}
    assert train["code"].to_list() == ["GENDER//F", "MEDS_BIRTH", "A", "B"]


def test_timezone_aware_times_are_read_as_utc(tmp_path):
    df = frame(patient(1, [(0, "A", None)], birth_years_before=None, static=()))
    df = df.with_columns(pl.col("time").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Paris"))
    (train,) = _frames(meds.open_dataset(write_meds(tmp_path, {"train": df})), "train")
    assert train["time"].dtype == pl.Datetime("us") and train["time"][0] == BASE


def test_null_codes_are_dropped_and_counted(tmp_path):
    df = frame([(1, None, "GENDER//F", None), (1, BASE, None, None), (1, T1, "A", None), (1, T1, None, 1.0)])
    ds = meds.open_dataset(write_meds(tmp_path, {"train": df}))
    dropped = collections.Counter()
    (train,) = _frames(ds, "train", dropped)
    assert dropped == {"null_code": 2}
    assert train.height == 2


def test_subjects_missing_from_subject_splits_are_counted(tmp_path):
    root = write_meds(tmp_path, {"train": frame(patient(1, [(0, "A", None)]) + patient(2, [(0, "A", None)]))},
                      flat=True, subject_splits=False)
    pl.DataFrame({"subject_id": [1], "split": ["train"]}).write_parquet(root / "metadata/subject_splits.parquet")
    dropped = collections.Counter()
    (train,) = _frames(meds.open_dataset(root), "train", dropped)
    assert set(train["subject_id"]) == {1}
    assert dropped["subject_not_in_subject_splits"] == 3  # GENDER, MEDS_BIRTH, A of subject 2


def test_batches_hold_whole_subjects(tmp_path, monkeypatch):
    root = small_dataset(tmp_path)
    (whole,) = _frames(meds.open_dataset(root), "train")
    monkeypatch.setattr(meds, "BATCH_ROWS", 4)  # smaller than one subject's 7 rows
    batches = _frames(meds.open_dataset(root), "train")
    assert len(batches) > 1
    assert pl.concat(batches).equals(whole)
    seen = [set(b["subject_id"]) for b in batches]
    assert sum(len(s) for s in seen) == len(set().union(*seen))  # no subject split across frames


def test_subject_rows_must_be_grouped(tmp_path, monkeypatch):
    rows = patient(1, [(0, "A", None)], static=()) + patient(2, [(0, "A", None)], static=())
    interleaved = [rows[0], rows[2], rows[1], rows[3]]  # 1, 2, 1, 2
    root = write_meds(tmp_path, {"train": frame(interleaved)})
    for batch_rows in (100, 1):  # within one batch and across batches
        monkeypatch.setattr(meds, "BATCH_ROWS", batch_rows)
        with pytest.raises(DataError, match="'subject_id' is not grouped"):
            _frames(meds.open_dataset(root), "train")


def test_time_error_gives_the_row_number_in_the_file(tmp_path, monkeypatch):
    rows = patient(1, [(0, "A", None), (60, "B", None)]) + [(2, T1, "A", None), (2, BASE, "B", None)]
    root = write_meds(tmp_path, {"train": frame(rows)})
    monkeypatch.setattr(meds, "BATCH_ROWS", 2)
    with pytest.raises(DataError, match="row 5 has a time earlier"):
        _frames(meds.open_dataset(root), "train")


def _good_rows():
    return patient(1, [(0, "A", None), (60, "B", 1.0)]) + patient(2, [(0, "A", None)])


def _write_bad(tmp_path, kind):
    """Builds one malformed dataset; returns (root, text the error must contain)."""
    data = tmp_path / "data" / "train"
    if kind == "missing_data_dir":
        tmp_path.mkdir(exist_ok=True)
        return tmp_path, "data"
    if kind == "no_parquet_files":
        data.mkdir(parents=True)
        return tmp_path, "no parquet files"
    df = frame(_good_rows())
    if kind == "missing_code_column":
        df = df.drop("code")
    elif kind == "string_subject_id":
        df = df.with_columns(pl.col("subject_id").cast(pl.String))
    elif kind == "string_time":
        df = df.with_columns(pl.col("time").cast(pl.String))
    elif kind == "string_numeric_value":
        df = df.with_columns(pl.col("numeric_value").cast(pl.String))
    elif kind == "null_time_after_timed":
        df = frame([(1, BASE, "A", None), (1, None, "GENDER//F", None)])
    elif kind == "unsorted_time":
        df = frame([(987654321, T1, "A", None), (987654321, BASE, "B", None)])
    elif kind == "null_subject_id":
        df = df.with_columns(pl.when(pl.col("code") == "A").then(None).otherwise(pl.col("subject_id"))
                             .alias("subject_id"))
    elif kind == "empty_dataset":
        df = df.clear()
    if kind == "subject_in_two_splits":
        write_meds(tmp_path, {"train": df, "held_out": frame(patient(2, [(0, "C", None)]))}, subject_splits=False)
        return tmp_path, "subject_id"
    if kind == "subject_in_two_files_flat":
        write_meds(tmp_path, {"a": df, "b": frame(patient(1, [(0, "C", None)]))}, flat=True, subject_splits=False)
        pl.DataFrame({"subject_id": [1, 2], "split": ["train", "train"]}).write_parquet(
            tmp_path / "metadata/subject_splits.parquet")
        return tmp_path, "exactly one file"
    if kind in ("subject_twice_in_subject_splits", "subject_splits_without_split_column"):
        write_meds(tmp_path, {"train": df}, flat=True, subject_splits=False)
        table = (pl.DataFrame({"subject_id": [1, 1, 2], "split": ["train", "held_out", "train"]})
                 if kind == "subject_twice_in_subject_splits" else pl.DataFrame({"subject_id": [1, 2]}))
        table.write_parquet(tmp_path / "metadata/subject_splits.parquet")
        return tmp_path, "more than one split" if kind == "subject_twice_in_subject_splits" else "'split'"
    if kind == "flat_without_splits":
        write_meds(tmp_path, {"train": df}, flat=True, subject_splits=False)
        return tmp_path, "subject_splits.parquet"
    write_meds(tmp_path, {"train": df})
    if kind == "unreadable_parquet":
        (data / "0.parquet").write_bytes(b"PAR1 this is not parquet")
    return tmp_path, {"missing_code_column": "'code'", "string_subject_id": "'subject_id'",
                      "string_time": "'time'", "string_numeric_value": "'numeric_value'",
                      "null_time_after_timed": "'time'", "unsorted_time": "'time'",
                      "null_subject_id": "'subject_id'", "empty_dataset": "empty dataset",
                      "unreadable_parquet": "cannot read parquet"}[kind]


BAD_KINDS = ["missing_data_dir", "no_parquet_files", "missing_code_column", "string_subject_id", "string_time",
             "string_numeric_value", "null_time_after_timed", "unsorted_time", "null_subject_id",
             "subject_in_two_splits", "subject_in_two_files_flat", "empty_dataset", "unreadable_parquet",
             "flat_without_splits", "subject_twice_in_subject_splits", "subject_splits_without_split_column"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_raises_clear_data_error(tmp_path, kind):
    root, expected = _write_bad(tmp_path, kind)
    with pytest.raises(DataError) as info:
        ds = meds.open_dataset(root)
        for split in meds.SPLITS:
            _frames(ds, split)
    message = str(info.value)
    assert expected in message
    assert str(root) in message  # names the file or folder
    assert "987654321" not in message  # never a subject id


def test_subject_split_conflict_with_split_dirs(tmp_path):
    root = write_meds(tmp_path, {"train": frame(_good_rows())})
    pl.DataFrame({"subject_id": [1, 2], "split": ["train", "held_out"]}).write_parquet(
        root / "metadata/subject_splits.parquet")
    with pytest.raises(DataError, match="another split"):
        _frames(meds.open_dataset(root), "train")


def test_bad_dataset_json_is_a_data_error(tmp_path):
    root = write_meds(tmp_path, {"train": frame(_good_rows())})
    (root / "metadata/dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json"):
        meds.open_dataset(root)
