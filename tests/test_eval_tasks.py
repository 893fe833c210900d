"""Task labels: built-in definitions on hand-written MEDS rows, user label files, bad inputs,
and the history cut that decides what the model may see (no future event leaks)."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

from ehr_jax.data.shards import PatientRecord
from ehr_jax.errors import DataError
from ehr_jax.evaluation import tasks

T0 = dt.datetime(2020, 1, 1)
MEDS = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String}


def at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


def epoch_plus_hours(hours: float) -> dt.datetime:
    """A naive UTC datetime `hours` after 1e9 seconds since the epoch (where record() timelines start)."""
    return dt.datetime.fromtimestamp(10**9 + int(hours * 3600), dt.UTC).replace(tzinfo=None)


def meds_frame() -> pl.DataFrame:
    rows = [
        # 1: ICU on day 3, dies in hospital on day 9 (MIMIC spelling: DIED discharge + MEDS_DEATH)
        (1, None, "GENDER//F"), (1, at(0), "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM"),
        (1, at(0.2), "LAB//50912//mg/dL"), (1, at(3), "ICU_ADMISSION//MICU"),
        (1, at(9), "HOSPITAL_DISCHARGE//DIED"), (1, at(9), "MEDS_DEATH"),
        # 2: short stay, readmitted on day 20 straight into the ICU (within the first day)
        (2, at(0), "HOSPITAL_ADMISSION//ELECTIVE"), (2, at(2), "HOSPITAL_DISCHARGE//HOME"),
        (2, at(20), "HOSPITAL_ADMISSION//URGENT"), (2, at(20.5), "ICU_ADMISSION//CVICU"),
        (2, at(23), "HOSPITAL_DISCHARGE//HOME"),
        # 3: discharged after 12 hours (no prediction at +24h), readmitted on day 50 (> 30 days)
        (3, at(0), "HOSPITAL_ADMISSION//X"), (3, at(0.5), "HOSPITAL_DISCHARGE//HOME"),
        (3, at(50), "HOSPITAL_ADMISSION//X"), (3, at(51.5), "HOSPITAL_DISCHARGE//HOME"),
        # 4: admission without a discharge: ambiguous, never a case
        (4, at(0), "HOSPITAL_ADMISSION//X"), (4, at(3), "LAB//1"),
        # 5: dies on day 10 of a stay without any discharge row (ETLs that write none)
        (6, at(0), "HOSPITAL_ADMISSION//X"), (6, at(4), "LAB//1"), (6, at(10), "MEDS_DEATH"),
    ]
    return pl.DataFrame(rows, schema=MEDS, orient="row")


def as_rows(labels: pl.DataFrame) -> list[tuple]:
    return [(r["subject_id"], (r["prediction_time"] - T0).total_seconds() / 86_400, r["boolean_value"])
            for r in labels.iter_rows(named=True)]


def test_mortality():
    labels = tasks.derive_labels("mortality", [meds_frame()])
    assert labels.schema == pl.Schema(tasks.LABEL_COLUMNS)
    assert as_rows(labels) == [(1, 1.0, True), (2, 1.0, False), (2, 21.0, False), (3, 51.0, False),
                               (6, 1.0, True)]  # a death without a discharge closes the stay


def test_icu_admission_at_admission_excludes_stays_already_in_icu():
    frame = pl.concat([meds_frame(), pl.DataFrame(
        [(5, at(0), "HOSPITAL_ADMISSION//X"), (5, at(0), "ICU_ADMISSION//MICU"),
         (5, at(4), "HOSPITAL_DISCHARGE//HOME")],
        schema=MEDS, orient="row")])
    assert as_rows(tasks.derive_labels("icu_admission", [frame])) == [
        (1, 0.0, True), (2, 0.0, False), (2, 20.0, True), (3, 0.0, False), (3, 50.0, False), (6, 0.0, False)]


def test_long_stay():
    assert as_rows(tasks.derive_labels("long_stay", [meds_frame()])) == [
        (1, 1.0, True), (2, 1.0, False), (2, 21.0, False), (3, 51.0, False), (6, 1.0, True)]


def test_readmission_excludes_in_hospital_deaths():
    assert as_rows(tasks.derive_labels("readmission_30d", [meds_frame()])) == [
        (2, 2.0, True), (2, 23.0, False), (3, 0.5, False), (3, 51.5, False)]


def test_labels_stream_over_several_frames_and_unknown_task():
    frame = meds_frame()
    split = [frame.filter(pl.col("subject_id") <= 2), frame.filter(pl.col("subject_id") > 2)]
    assert tasks.derive_labels("mortality", split).equals(tasks.derive_labels("mortality", [frame]))
    with pytest.raises(DataError, match="config.eval.tasks"):
        tasks.derive_labels("sepsis", [frame])


def _write_labels(path, frame):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


def _aces_frame(subjects, **extra):
    frame = pl.DataFrame({"subject_id": subjects, "prediction_time": [at(1)] * len(subjects),
                          "boolean_value": [True] * len(subjects)})
    return frame.with_columns(**{k: pl.lit(v) for k, v in extra.items()})


def test_read_aces_labels_with_null_value_columns(tmp_path):
    frame = _aces_frame([1, 2]).with_columns(integer_value=pl.lit(None, pl.Int64),
                                             float_value=pl.lit(None, pl.Float64),
                                             categorical_value=pl.lit(None, pl.String))
    _write_labels(tmp_path / "mortality" / "held_out" / "0.parquet", frame)
    _write_labels(tmp_path / "mortality" / "train" / "0.parquet", _aces_frame([3]))
    labels = tasks.read_labels(tmp_path, "mortality")
    assert labels.columns == ["subject_id", "prediction_time", "boolean_value", "source"]
    assert labels["subject_id"].to_list() == [1, 2, 3]
    splits = tasks.split_labels(labels, pl.DataFrame({"subject_id": [1, 2, 3],
                                                      "split": ["held_out", "held_out", "train"]}))
    assert splits["held_out"].height == 2 and splits["train"].height == 1


@pytest.mark.parametrize("frame, column", [
    (pl.DataFrame({"subject_id": [1], "boolean_value": [True]}), "prediction_time"),
    (pl.DataFrame({"subject_id": ["1"], "prediction_time": [at(1)], "boolean_value": [True]}), "subject_id"),
    (pl.DataFrame({"subject_id": [1], "prediction_time": [at(1)], "boolean_value": [1]}), "boolean_value"),
    (_aces_frame([1], float_value=0.3), "float_value"),
])
def test_wrong_label_schema_names_file_and_column(tmp_path, frame, column):
    path = _write_labels(tmp_path / "task" / "held_out" / "0.parquet", frame)
    with pytest.raises(DataError, match=f"{path}.*'{column}'"):
        tasks.read_labels(tmp_path, "task")


def test_missing_label_dir(tmp_path):
    with pytest.raises(DataError, match="no label files"):
        tasks.read_labels(tmp_path, "mortality")


def test_labels_for_unknown_or_misfiled_subjects(tmp_path):
    splits = pl.DataFrame({"subject_id": [1, 2], "split": ["held_out", "train"]})
    _write_labels(tmp_path / "a" / "held_out" / "0.parquet", _aces_frame([1, 99]))
    with pytest.raises(DataError, match="not in the dataset"):
        tasks.split_labels(tasks.read_labels(tmp_path, "a"), splits)
    path = _write_labels(tmp_path / "b" / "held_out" / "0.parquet", _aces_frame([1, 2]))
    with pytest.raises(DataError, match=f"{path}.*train split"):
        tasks.split_labels(tasks.read_labels(tmp_path, "b"), splits)


VOCAB = ["[PAD]", "[UNK]", "[TIMELINE_START]", "[TIMELINE_END]", "TIME//1h", "TIME//1d", "GENDER//F",
         "HOSPITAL_ADMISSION", "LAB", "HOSPITAL_DISCHARGE", "MEDS_DEATH", "FUTURE"]
V = {t: i for i, t in enumerate(VOCAB)}


def record(subject_id=1) -> PatientRecord:
    """Prefix, admission at hour 0, labs at hours 1..30, then FUTURE-only events after hour 30."""
    hour = 3600
    tokens, times = [V["[TIMELINE_START]"], V["GENDER//F"], V["HOSPITAL_ADMISSION"]], [0, 0, 0]
    for h in range(1, 41):
        tokens += [V["TIME//1h"], V["LAB"] if h <= 30 else V["FUTURE"]]
        times += [h * hour, h * hour]
    return PatientRecord(subject_id, np.array(tokens, np.int32), np.array(times, np.int64) + 10**9, 2)


def test_no_future_event_leaks_into_the_prompt():
    """Prediction at hour 30: every token at or before it is usable, nothing after it."""
    labels = pl.DataFrame({"subject_id": [1, 1], "prediction_time": [epoch_plus_hours(30)] * 2,
                           "boolean_value": [True, False]})
    cases = tasks.build_cases(labels, [record(7), record(1)], VOCAB, prompt_len=1000)
    full = cases.prompts[0]
    assert V["FUTURE"] not in full
    assert full[-1] == V["LAB"] and (full == V["LAB"]).sum() == 30  # the event at exactly t is in
    assert cases.last_event_s[0] == 10**9 + 30 * 3600
    short = tasks.build_cases(labels, [record(1)], VOCAB, prompt_len=8).prompts[0]
    np.testing.assert_array_equal(short, [V["[TIMELINE_START]"], V["GENDER//F"]] + [V["TIME//1h"], V["LAB"]] * 3)
    assert cases.last_admission_s[0] == 10**9


def test_horizon_counts_from_the_last_event():
    labels = pl.DataFrame({"subject_id": [1], "prediction_time": [epoch_plus_hours(30.5)],
                           "boolean_value": [True]})
    cases = tasks.build_cases(labels, [record(1)], VOCAB, prompt_len=64)
    long_stay = cases.horizon_seconds(tasks.BUILTIN_RULES["long_stay"])  # admission + 7 days
    np.testing.assert_allclose(long_stay, [7 * 86_400 - 30 * 3600])
    readmit = cases.horizon_seconds(tasks.BUILTIN_RULES["readmission_30d"])  # prediction + 30 days
    np.testing.assert_allclose(readmit, [30 * 86_400 + 1800])
    assert np.isinf(cases.horizon_seconds(tasks.BUILTIN_RULES["mortality"])).all()


@pytest.mark.parametrize("hours", [-1, 41])
def test_prediction_time_outside_timeline(hours):
    labels = pl.DataFrame({"subject_id": [1], "prediction_time": [epoch_plus_hours(hours)],
                           "boolean_value": [True]})
    with pytest.raises(DataError, match="'prediction_time'.*outside"):
        tasks.build_cases(labels, [record(1)], VOCAB, prompt_len=16)


def test_labelled_subject_without_record():
    labels = pl.DataFrame({"subject_id": [5], "prediction_time": [T0], "boolean_value": [True]})
    with pytest.raises(DataError, match="no prepared record"):
        tasks.build_cases(labels, [record(1)], VOCAB, prompt_len=16)


def test_prompt_states_the_age_at_the_prediction_time():
    """Prefix [START, AGE//40-44] carries the birth time; a prediction 12 years after the first
    event sees AGE//50-54 (band 10), as a training window starting then would."""
    year = int(365.25 * 86_400)
    first_age = 100  # id of AGE//0-4 in this made-up vocabulary
    birth, first = 0, 42 * year
    tokens = np.array([V["[TIMELINE_START]"], first_age + 8, V["HOSPITAL_ADMISSION"], V["LAB"], V["LAB"]], np.int32)
    times = np.array([birth, birth, first, first + 12 * year, first + 13 * year], np.int64)
    rec = PatientRecord(1, tokens, times, 2)
    when = dt.datetime.fromtimestamp(first + 12 * year, dt.UTC).replace(tzinfo=None)
    labels = pl.DataFrame({"subject_id": [1], "prediction_time": [when], "boolean_value": [True]})
    vocab = VOCAB + [f"X{i}" for i in range(200)]
    (prompt,) = tasks.build_cases(labels, [rec], vocab, prompt_len=8, first_age=first_age).prompts
    assert prompt.tolist() == [V["[TIMELINE_START]"], first_age + 10, V["HOSPITAL_ADMISSION"], V["LAB"]]
    (unchanged,) = tasks.build_cases(labels, [rec], vocab, prompt_len=8).prompts  # older prepared dirs
    assert unchanged[1] == first_age + 8
