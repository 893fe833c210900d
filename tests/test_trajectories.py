"""Rollouts as MEDS: codes rebuilt from their tokens, times from interval tokens, values from
bins, and files that pass the meds schemas and our own MEDS reader."""

import datetime as dt
import json

import meds
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from ehr_jax.data import meds as meds_reader
from ehr_jax.data import tokenize
from ehr_jax.evaluation import trajectories

CODES = ["HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", "DIAGNOSIS//ICD//10//I5023", "PROCEDURE//ICD//10//0DTJ4ZZ",
         "DIAGNOSIS//ICD//9//4280", "DIAGNOSIS//ICD//9//E8889", "PROCEDURE//ICD//9//3961",
         "MEDICATION//ATC//A10BA02//Administered", "MEDS_DEATH", "HOSPITAL_DISCHARGE//HOME", "URINE//COLOR"]
NUMERIC = "LAB//50912//mg/dL"


def _tokenizer() -> tokenize.Tokenizer:
    words = sorted({t for code in CODES for t in tokenize.split_code(code)} | {NUMERIC, "TXT//RED"})
    return tokenize.Tokenizer(tokenize.fixed_tokens(4) + words, 4, frozenset({NUMERIC}),
                              {NUMERIC: np.array([1.0, 2.0, 4.0], np.float32)}, frozenset({"URINE//COLOR"}))


def _ids(tok, strings):
    return np.array([tok.token_id[s] for s in strings], np.int32)


@pytest.mark.parametrize("code", CODES)
def test_codes_survive_a_round_trip_through_their_tokens(code):
    tok = _tokenizer()
    (row,) = trajectories.Decoder(tok).rows(_ids(tok, tokenize.split_code(code)))
    assert row == (0, code, None, None)


def test_rollouts_become_a_valid_meds_dataset(tmp_path):
    tok = _tokenizer()
    first = (tokenize.split_code(CODES[0]) + ["TIME//1h", NUMERIC, "Q//2", NUMERIC, "Q//4"]
             + tokenize.split_code("URINE//COLOR") + ["TXT//RED", "TIME//1d", "[UNK]"] + tokenize.split_code(CODES[1])
             + ["HOSPITAL_DISCHARGE", "HOSPITAL_DISCHARGE//HOME"])
    second = ["TIME//2h", "MEDS_DEATH"]
    tokens = np.zeros((1, 2, 32), np.int32)
    tokens[0, 0, :len(first)] = _ids(tok, first)
    tokens[0, 1, :len(second)] = _ids(tok, second)
    start = int(dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp())
    labels = pl.DataFrame({"subject_id": [777], "prediction_time": [dt.datetime(2020, 1, 1)]})
    n_rows = trajectories.write(tmp_path, tok, tokens, np.array([start]), labels, "mortality rollouts")
    table = pq.read_table(tmp_path / "data" / "held_out" / "0.parquet")
    meds.DataSchema.validate(table)
    meds.SubjectSplitSchema.validate(pq.read_table(tmp_path / "metadata" / "subject_splits.parquet"))
    assert json.loads((tmp_path / "metadata" / "dataset.json").read_text())["meds_version"] == meds.__version__
    data = pl.from_arrow(table)
    t0 = dt.datetime(2020, 1, 1)
    assert n_rows == data.height
    assert data.rows() == [
        (0, t0, CODES[0], None, None),
        (0, t0 + dt.timedelta(hours=1), NUMERIC, 1.5, None),  # bin 2: between edges 1 and 2
        (0, t0 + dt.timedelta(hours=1), NUMERIC, 4.0, None),  # the open last bin: its edge
        (0, t0 + dt.timedelta(hours=1), "URINE//COLOR", None, "RED"),
        (0, t0 + dt.timedelta(hours=25), CODES[1], None, None),  # [UNK] dropped
        (0, t0 + dt.timedelta(hours=25), "HOSPITAL_DISCHARGE//HOME", None, None),
        (1, t0 + dt.timedelta(hours=2), "MEDS_DEATH", None, None)]
    side = pl.read_parquet(tmp_path / "rollout_subjects.parquet")
    assert side["trajectory"].to_list() == ["0-0", "0-1"] and side["case_subject_id"].to_list() == [777, 777]
    ds = meds_reader.open_dataset(tmp_path)  # our own reader: sorted, grouped, typed
    assert sum(f.height for f in meds_reader.iter_split_frames(ds, "held_out")) == n_rows
