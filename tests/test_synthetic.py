"""Synthetic MEDS generator: schema validity, determinism, splits, ordering, realism contracts."""

import json
import subprocess
import sys

import meds
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from ehr_jax import synthetic
from ehr_jax.errors import ConfigError, DataError

N_SUBJECTS = 600
SPLITS = ("train", "tuning", "held_out")


def read_all(root) -> pl.DataFrame:
    files = sorted((root / "data").glob("*/*.parquet"))
    return pl.concat([pl.read_parquet(f).with_columns(pl.lit(f.parent.name).alias("split"),
                                                      pl.lit(str(f)).alias("file")) for f in files])


def stay_outcomes(df: pl.DataFrame) -> pl.DataFrame:
    """One row per hospital stay, found by code prefix as the evaluation tasks do."""
    timed = df.filter(pl.col("time").is_not_null())
    adm = (timed.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//"))
           .select("subject_id", pl.col("time").alias("start"))
           .with_columns(pl.int_range(pl.len()).over("subject_id").alias("k")))
    dis = (timed.filter(pl.col("code").str.starts_with("HOSPITAL_DISCHARGE//"))
           .select("subject_id", pl.col("time").alias("end"),
                   (pl.col("code") == "HOSPITAL_DISCHARGE//DIED").alias("died"))
           .with_columns(pl.int_range(pl.len()).over("subject_id").alias("k")))
    stays = adm.join(dis, on=["subject_id", "k"], how="inner")
    icu = (timed.filter(pl.col("code").str.starts_with("ICU_ADMISSION//"))
           .select("subject_id", pl.col("time").alias("icu_time")))
    in_icu = (stays.join(icu, on="subject_id").filter(pl.col("icu_time").is_between(pl.col("start"), pl.col("end")))
              .select("subject_id", "k").unique().with_columns(pl.lit(True).alias("icu")))
    stays = stays.join(in_icu, on=["subject_id", "k"], how="left").with_columns(pl.col("icu").fill_null(False))
    stays = stays.sort("subject_id", "k").with_columns(
        pl.col("start").shift(-1).over("subject_id").alias("next_start"))
    return stays.with_columns(
        ((pl.col("end") - pl.col("start")) > pl.duration(days=7)).alias("long_stay"),
        ((pl.col("next_start") - pl.col("end")) <= pl.duration(days=30)).fill_null(False).alias("readmit_30d"),
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("meds")
    counts = synthetic.generate(root, N_SUBJECTS, seed=3, subjects_per_shard=200)
    return root, counts, read_all(root)


def test_output_validates_against_meds_schemas(dataset):
    root, counts, _ = dataset
    files = sorted((root / "data").glob("*/*.parquet"))
    assert {f.parent.name for f in files} == set(SPLITS)
    for f in files:
        meds.DataSchema.validate(pq.read_table(f))
    codes = pq.read_table(root / meds.code_metadata_filepath)
    meds.CodeMetadataSchema.validate(codes)
    meds.SubjectSplitSchema.validate(pq.read_table(root / meds.subject_splits_filepath))
    metadata = json.loads((root / meds.dataset_metadata_filepath).read_text())
    meds.DatasetMetadataSchema.validate(metadata)
    assert metadata["etl_name"] == "ehr_jax.synthetic" and metadata["meds_version"] == meds.__version__
    assert counts["subjects"] == N_SUBJECTS and counts["events"] == sum(pq.read_metadata(f).num_rows for f in files)
    data_codes = set(read_all(root)["code"].unique())
    assert data_codes <= set(codes["code"].to_pylist())


def test_splits_are_disjoint_whole_subjects_80_10_10(dataset):
    root, counts, df = dataset
    per_subject = df.group_by("subject_id").agg(pl.col("split").n_unique(), pl.col("file").n_unique(),
                                                pl.col("split").first().alias("s"))
    assert per_subject["split"].max() == 1 and per_subject["file"].max() == 1
    splits = pl.read_parquet(root / meds.subject_splits_filepath)
    joined = per_subject.join(splits, on="subject_id")
    assert len(joined) == N_SUBJECTS == splits["subject_id"].n_unique()
    assert (joined["s"] == joined["split_right"]).all()  # per_subject's "split" column is its count
    sizes = splits.group_by("split").len().sort("split")
    assert dict(sizes.iter_rows()) == {"train": 480, "tuning": 60, "held_out": 60}
    assert counts["splits"]["train"]["files"] == 3  # 480 subjects, 200 per file


def test_rows_sorted_by_subject_then_time_with_static_first(dataset):
    _, _, df = dataset
    for _, part in df.group_by("file"):
        sid = part["subject_id"].to_numpy()
        assert (np.diff(sid) >= 0).all()
        key = part.with_columns(pl.col("time").cast(pl.Int64).fill_null(np.iinfo(np.int64).min).alias("t"))
        t = key["t"].to_numpy()
        same = sid[1:] == sid[:-1]
        assert (t[1:][same] >= t[:-1][same]).all()
    static = df.filter(pl.col("time").is_null())
    assert set(static["code"].str.split("//").list.first().unique()) == {"GENDER", "RACE"}
    births = df.filter(pl.col("code") == "MEDS_BIRTH")
    assert births["subject_id"].n_unique() == N_SUBJECTS == len(births)


def test_same_seed_same_rows_for_any_sharding(tmp_path, dataset):
    _, _, df = dataset
    synthetic.generate(tmp_path / "a", N_SUBJECTS, seed=3, subjects_per_shard=1000)
    other = read_all(tmp_path / "a")
    cols = ["subject_id", "time", "code", "numeric_value", "text_value"]
    def rows(frame):
        return frame.sort("subject_id", maintain_order=True).select(cols)

    assert rows(other).equals(rows(df))
    synthetic.generate(tmp_path / "b", 50, seed=4)
    synthetic.generate(tmp_path / "c", 50, seed=4)
    synthetic.generate(tmp_path / "d", 50, seed=5)
    for split in SPLITS:
        b, c, d = ((tmp_path / x / "data" / split / "0.parquet").read_bytes() for x in "bcd")
        assert b == c and b != d


def test_task_prevalences_in_clinical_ranges(dataset):
    _, _, df = dataset
    stays = stay_outcomes(df)
    alive = stays.filter(~pl.col("died"))
    assert 0.02 <= stays["died"].mean() <= 0.12
    assert 0.12 <= stays["icu"].mean() <= 0.35
    assert 0.07 <= stays["long_stay"].mean() <= 0.3
    assert 0.07 <= alive["readmit_30d"].mean() <= 0.25
    deaths = df.filter(pl.col("code") == "MEDS_DEATH")
    assert deaths["subject_id"].n_unique() == len(deaths)
    died_in = stays.filter(pl.col("died")).join(deaths, on="subject_id")
    assert (died_in["time"] == died_in["end"]).all()  # MEDS_DEATH at the in-hospital death time


def test_timelines_are_consistent(dataset):
    """Stays do not overlap, ICU stays sit inside hospital stays, nothing happens after death."""
    _, _, df = dataset
    stays = stay_outcomes(df)
    assert (stays["end"] > stays["start"]).all()
    assert (stays.drop_nulls("next_start").select(pl.col("next_start") > pl.col("end")).to_series()).all()
    n_admissions = df["code"].str.starts_with("HOSPITAL_ADMISSION//").sum()
    assert len(stays) == n_admissions == df["code"].str.starts_with("HOSPITAL_DISCHARGE//").sum()
    timed = df.filter(pl.col("time").is_not_null())
    icu_in = timed.filter(pl.col("code").str.starts_with("ICU_ADMISSION//")).sort("subject_id", "time")
    icu_out = timed.filter(pl.col("code").str.starts_with("ICU_DISCHARGE//")).sort("subject_id", "time")
    assert len(icu_in) == len(icu_out) > 0
    assert (icu_in["code"].str.replace("ICU_ADMISSION", "ICU_DISCHARGE") == icu_out["code"]).all()
    assert (icu_out["time"] >= icu_in["time"]).all()
    death = timed.filter(pl.col("code") == "MEDS_DEATH").select("subject_id", pl.col("time").alias("death"))
    after = timed.join(death, on="subject_id").filter(pl.col("time") > pl.col("death"))
    assert len(death) > 0 and len(after) == 0


def test_drugs_move_labs_within_a_stay(dataset):
    """INR measured after a warfarin dose in the same stay runs higher than INR without warfarin."""
    _, _, df = dataset
    timed = df.filter(pl.col("time").is_not_null()).sort("subject_id", "time")
    admissions = (timed.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//"))
                  .select("subject_id", pl.col("time").alias("stay_start")))

    def with_stay(frame):
        return frame.join_asof(admissions, left_on="time", right_on="stay_start", by="subject_id", strategy="backward",
                               check_sortedness=False)

    inr = with_stay(timed.filter(pl.col("code") == "LAB//51237//UNK").select("subject_id", "time", "numeric_value"))
    dose = with_stay(timed.filter(pl.col("code") == "MEDICATION//Warfarin//Administered").select("subject_id", "time"))
    first = dose.group_by("subject_id", "stay_start").agg(pl.col("time").min().alias("first_dose"))
    inr = inr.drop_nulls("stay_start").join(first, on=["subject_id", "stay_start"], how="left").with_columns(
        (pl.col("first_dose") <= pl.col("time")).fill_null(False).alias("on_warfarin"))
    means = dict(inr.group_by("on_warfarin").agg(pl.col("numeric_value").log().mean()).iter_rows())
    assert (inr["on_warfarin"].sum() > 30) and means[True] > means[False] + 0.1


def test_code_frequencies_are_heavy_tailed(dataset):
    _, counts, df = dataset
    freq = np.sort(df["code"].value_counts()["count"].to_numpy())[::-1]
    assert counts["codes"] == len(freq) >= 1500
    assert freq[: len(freq) // 100].sum() > 0.5 * freq.sum()  # top 1% of codes carry most events
    assert (freq <= 3).mean() > 0.3  # and many codes are rare
    for prefix in ("DIAGNOSIS//ICD//10//", "DIAGNOSIS//ICD//9//", "PROCEDURE//ICD//", "LAB//", "MEDICATION//",
                   "DRG//HCFA//", "ICU_ADMISSION//"):
        assert df["code"].str.starts_with(prefix).any(), prefix


def test_events_per_subject_and_values(dataset):
    _, counts, df = dataset
    assert 200 <= counts["events"] / N_SUBJECTS <= 1200
    labs = df.filter(pl.col("code").str.starts_with("LAB//"))
    assert labs["numeric_value"].null_count() == 0
    assert df.filter(pl.col("code") == "Blood Pressure")["text_value"].str.contains(r"^\d+/\d+$").all()
    assert df.filter(pl.col("code").str.starts_with("DIAGNOSIS//"))["numeric_value"].null_count() > 0


def test_outcomes_depend_on_history(dataset):
    """Patients coded earlier with a severe chronic condition die more in later stays."""
    _, _, df = dataset
    stays = stay_outcomes(df)
    severe = ([f"DIAGNOSIS//ICD//10//{c}" for c in ("C7", "K7", "I50", "N18")]
              + [f"DIAGNOSIS//ICD//9//{c}" for c in ("197", "198", "571", "572", "428", "585")])
    marker = (df.filter(pl.any_horizontal([pl.col("code").str.starts_with(p) for p in severe]))
              .group_by("subject_id").agg(pl.col("time").min().alias("first_marker")))
    later = stays.join(marker, on="subject_id", how="left").with_columns(
        (pl.col("first_marker") < pl.col("start")).fill_null(False).alias("sick_history"))
    by = later.group_by("sick_history").agg(pl.col("died").mean(), pl.col("readmit_30d").mean(), pl.len())
    rates = {row["sick_history"]: row for row in by.iter_rows(named=True)}
    assert rates[True]["len"] > 100 and rates[False]["len"] > 100
    assert rates[True]["died"] > 1.4 * rates[False]["died"]
    assert rates[True]["readmit_30d"] > 1.2 * rates[False]["readmit_30d"]


def test_bad_arguments_and_existing_output(tmp_path):
    with pytest.raises(ConfigError, match="num_subjects"):
        synthetic.generate(tmp_path / "x", 2)
    synthetic.generate(tmp_path / "y", 10)
    with pytest.raises(DataError, match="overwrite"):
        synthetic.generate(tmp_path / "y", 10)
    assert synthetic.generate(tmp_path / "y", 12, overwrite=True)["subjects"] == 12


@pytest.mark.slow
def test_cli_writes_dataset(tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "ehr_jax.synthetic", f"--out={out}", "--num_subjects=20", "--seed=1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["subjects"] == 20
    assert (out / meds.dataset_metadata_filepath).exists()
    assert len(pl.read_parquet(out / meds.subject_splits_filepath)) == 20
