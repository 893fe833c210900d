"""Synthetic MIMIC-IV-like MEDS data: the built-in default dataset of ehr-jax.

  python -m ehr_jax.synthetic --out=/tmp/meds --num_subjects=5000 --seed=0

Writes a MEDS v0.4 dataset (data/{train,tuning,held_out}/<k>.parquet, metadata/dataset.json,
codes.parquet, subject_splits.parquet) whose codes are spelled like the MIMIC-IV MEDS ETL's, so
the tokenizer rules and the clinical tasks serve real data unchanged. The generative model
(latent factors -> chronic conditions -> stays -> codes and values) lives in the
timeline / events / measure modules of this package and is described in
docs/SYNTHETIC.md. Patients are generated in fixed blocks of BLOCK_SUBJECTS, each with its own
random stream, so the data of a seed does not depend on subjects_per_shard, and memory stays
bounded by one block plus one open parquet row group per split.

Code prefixes emitted (CODE_PREFIXES), with examples:
  MEDS_BIRTH, MEDS_DEATH (at the death time; in-hospital deaths also get HOSPITAL_DISCHARGE//DIED)
  GENDER//F, GENDER//M, RACE//WHITE (static rows, null time, first)
  HOSPITAL_ADMISSION//EMERGENCY//EMERGENCY ROOM, HOSPITAL_ADMISSION//ELECTIVE//PHYSICIAN REFERRAL
  HOSPITAL_DISCHARGE//HOME, HOSPITAL_DISCHARGE//SKILLED NURSING FACILITY, HOSPITAL_DISCHARGE//DIED
  ICU_ADMISSION//Medical Intensive Care Unit (MICU), ICU_DISCHARGE//<same careunit>
  DIAGNOSIS//ICD//10//I5023, DIAGNOSIS//ICD//9//42823 (timed at discharge)
  PROCEDURE//ICD//10//5A1955Z, PROCEDURE//ICD//9//9672
  LAB//50912//mg/dL (hospital labs), LAB//220045//bpm (ICU charted vitals), numeric_value set
  MEDICATION//Furosemide//Administered
  DRG//HCFA//291
  MARITAL_STATUS//MARRIED, INSURANCE//Medicare (at admission)
  Blood Pressure (text_value "128/82"), Weight (Lbs), BMI (kg/m2) (outpatient OMR)
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import os
import shutil
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from absl import logging

from ehr_jax import rundir
from ehr_jax.errors import ConfigError, DataError
from ehr_jax.synthetic import events as E
from ehr_jax.synthetic import measure as M
from ehr_jax.synthetic.timeline import sample_subjects, simulate
from ehr_jax.synthetic.vocab import build_vocab

CODE_PREFIXES = (
    "MEDS_BIRTH", "MEDS_DEATH", "GENDER//", "RACE//", "MARITAL_STATUS//", "INSURANCE//",
    "HOSPITAL_ADMISSION//", "HOSPITAL_DISCHARGE//", "ICU_ADMISSION//", "ICU_DISCHARGE//",
    "DIAGNOSIS//ICD//10//", "DIAGNOSIS//ICD//9//", "PROCEDURE//ICD//10//", "PROCEDURE//ICD//9//",
    "LAB//", "MEDICATION//", "DRG//HCFA//", "Blood Pressure", "Weight (Lbs)", "BMI (kg/m2)",
)
ETL_NAME = "ehr_jax.synthetic"
DATASET_NAME = "ehr_jax_synthetic"
BLOCK_SUBJECTS = 500  # patients per random stream; fixed so data never depends on sharding (< 2**9)
SUBJECT_ID_BASE = 10_000_000
SPLIT_FRACTIONS = (("train", 0.8), ("tuning", 0.1), ("held_out", 0.1))
DATA_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                         ("numeric_value", pa.float32()), ("text_value", pa.large_string())])
_US_PER_MINUTE = 60_000_000


def package_version() -> str:
    try:
        return importlib.metadata.version("ehr-jax")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def assign_splits(num_subjects: int, seed: int) -> np.ndarray:
    """Split index (0 train, 1 tuning, 2 held_out) per subject: 80/10/10, at least one each."""
    n_tune = max(1, round(0.1 * num_subjects))
    n_held = max(1, round(0.1 * num_subjects))
    split = np.zeros(num_subjects, np.int8)
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(num_subjects)
    split[order[:n_tune]] = 1
    split[order[n_tune:n_tune + n_held]] = 2
    return split


def block_events(seed: int, block: int, num_subjects: int) -> tuple[np.ndarray, ...]:
    """Sorted event columns of one block: (subject index in block, minute or -1 static, code, value, text)."""
    vocab = build_vocab()
    arrays = vocab.arrays
    rng = np.random.default_rng([seed, block])
    subjects = sample_subjects(rng, num_subjects, arrays)
    timeline = simulate(rng, subjects, arrays)
    personal = E.personal_codes(rng, subjects, arrays)
    events = M.Events()
    E.static_and_admin(rng, events, subjects, timeline, arrays, vocab.code_id)
    E.diagnoses(rng, events, timeline.stays, personal, arrays)
    E.procedures(rng, events, timeline.stays, arrays)
    first_dose = E.medications(rng, events, timeline.stays, arrays)
    M.inpatient_labs(rng, events, subjects, timeline.stays, arrays, first_dose)
    M.icu_vitals(rng, events, subjects, timeline.stays, arrays, first_dose)
    M.outpatient_visits(rng, events, subjects, timeline, arrays)
    subj, day, code, value, prio, text = events.columns()
    minute = np.where(np.isnan(day), -1, np.floor(np.nan_to_num(day) * 1440.0)).astype(np.int64)
    assert num_subjects < 2**9 and len(vocab.codes) < 2**13, "sort key fields overflow"
    # One int64 sort key (subject | minute | priority | code) sorts 3-4x faster than lexsort;
    # quicksort is deterministic, and rows with equal keys differ at most in value order.
    key = ((subj.astype(np.int64) << 45) | (np.clip(minute + 1, 0, 2**28 - 1) << 17)
           | (prio.astype(np.int64) << 13) | code)
    order = np.argsort(key)
    return subj[order], minute[order], code[order], value[order], text[order]


def _text_column(text: np.ndarray) -> pa.Array:
    """OMR blood pressure text values "systolic/diastolic"; null elsewhere."""
    where = np.flatnonzero(text >= 0)
    values = text[where]
    strings = pc.binary_join_element_wise(pc.cast(pa.array(values // 1000), pa.large_string()),
                                          pc.cast(pa.array(values % 1000), pa.large_string()),
                                          pa.scalar("/", pa.large_string()))
    index = np.zeros(len(text), np.int64)
    index[where] = np.arange(len(where))
    return strings.take(pa.array(index, mask=text < 0))


def to_table(subject_id: np.ndarray, minute: np.ndarray, code: np.ndarray, value: np.ndarray,
             text: np.ndarray, codes: pa.Array) -> pa.Table:
    time = pa.array(minute * _US_PER_MINUTE, pa.timestamp("us"), mask=minute < 0)
    return pa.Table.from_arrays([
        pa.array(subject_id, pa.int64()), time, codes.take(pa.array(code)),
        pa.array(value, pa.float32(), mask=np.isnan(value)), _text_column(text),
    ], schema=DATA_SCHEMA)


class _SplitWriter:
    """Writes one split's rows into data/<split>/<k>.parquet, whole subjects per file."""

    def __init__(self, root: Path, split: str, subjects_per_shard: int):
        self.dir = root / meds.data_subdirectory / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.split, self.limit = split, subjects_per_shard
        self.writer: pq.ParquetWriter | None = None
        self.files, self.in_file, self.subjects, self.events = 0, 0, 0, 0

    def write(self, table: pa.Table, subject_id: np.ndarray) -> None:
        """Append rows (sorted by subject); start a new file after subjects_per_shard subjects."""
        while table.num_rows:
            if self.writer is None:
                path = self.dir / f"{self.files}.parquet"
                self.writer = pq.ParquetWriter(path, DATA_SCHEMA, compression="snappy")
                self.files += 1
            starts = np.flatnonzero(np.r_[True, subject_id[1:] != subject_id[:-1]])
            room = self.limit - self.in_file
            cut = len(subject_id) if len(starts) <= room else int(starts[room])
            self.writer.write_table(table.slice(0, cut))
            taken = min(len(starts), room)
            self.in_file += taken
            self.subjects += taken
            self.events += cut
            table, subject_id = table.slice(cut), subject_id[cut:]
            if self.in_file >= self.limit:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.in_file = None, 0


def _write_parts(writers: list[_SplitWriter], parts: list) -> None:
    for writer, (table, subject_id) in zip(writers, parts):
        writer.write(table, subject_id)


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    owned = [out_dir / meds.data_subdirectory, out_dir / "metadata"]
    existing = [p for p in owned if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{out_dir}: already holds {', '.join(p.name for p in existing)}/; "
                        "pass overwrite=True (--overwrite) to replace the dataset")
    for path in existing:
        shutil.rmtree(path)
    (out_dir / "metadata").mkdir(parents=True)


def _write_metadata(out_dir: Path, vocab, counts: np.ndarray, split: np.ndarray, seed: int) -> None:
    """codes.parquet (observed codes), subject_splits.parquet, then dataset.json last."""
    seen = np.flatnonzero(counts)
    codes = pa.table({
        "code": pa.array([vocab.codes[i] for i in seen], pa.string()),
        "description": pa.array([vocab.descriptions[i] for i in seen], pa.string()),
        "parent_codes": pa.array([vocab.parents[i] for i in seen], pa.list_(pa.string())),
    })
    pq.write_table(codes, out_dir / meds.code_metadata_filepath)
    names = np.array([name for name, _ in SPLIT_FRACTIONS])
    splits = pa.table({"subject_id": pa.array(SUBJECT_ID_BASE + np.arange(len(split)), pa.int64()),
                       "split": pa.array(names[split], pa.string())})
    pq.write_table(splits, out_dir / meds.subject_splits_filepath)
    metadata = {"dataset_name": DATASET_NAME, "dataset_version": f"seed={seed},subjects={len(split)}",
                "etl_name": ETL_NAME, "etl_version": package_version(), "meds_version": meds.__version__}
    rundir.write_json_atomic(out_dir / meds.dataset_metadata_filepath, metadata)


def _block_parts(seed: int, block: int, first: int, n: int, split: np.ndarray, code_strings: pa.Array,
                 counts: np.ndarray) -> list:
    """One block's rows as one (table, subject ids) pair per split; adds its code counts."""
    subj, minute, code, value, text = block_events(seed, block, n)
    counts += np.bincount(code, minlength=len(counts))
    row_split = split[first + subj]
    parts = []
    for s in range(len(SPLIT_FRACTIONS)):
        keep = np.flatnonzero(row_split == s)
        sid = SUBJECT_ID_BASE + first + subj[keep].astype(np.int64)
        parts.append((to_table(sid, minute[keep], code[keep], value[keep], text[keep], code_strings), sid))
    return parts


def _write_blocks(writers: list[_SplitWriter], split: np.ndarray, seed: int, code_strings: pa.Array,
                  counts: np.ndarray) -> None:
    """Generation (numpy) and parquet encoding (pyarrow, GIL released) overlap: one write in flight."""
    num_subjects = len(split)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for block, first in enumerate(range(0, num_subjects, BLOCK_SUBJECTS)):
            n = min(BLOCK_SUBJECTS, num_subjects - first)
            parts = _block_parts(seed, block, first, n, split, code_strings, counts)
            if pending is not None:
                pending.result()
            pending = pool.submit(_write_parts, writers, parts)
            if block % 20 == 19:
                logging.info("synthetic: %d/%d subjects, %d events", first + n, num_subjects, counts.sum())
        if pending is not None:
            pending.result()


def generate(out_dir: str | os.PathLike, num_subjects: int, seed: int = 0, subjects_per_shard: int = 10_000,
             overwrite: bool = False) -> dict:
    """Write a synthetic MEDS dataset; returns counts {subjects, events, codes, splits: {...}}.

    Same seed and num_subjects give the same rows for any subjects_per_shard.
    """
    if num_subjects < 3:
        raise ConfigError(f"num_subjects: expected at least 3 (one per split), got {num_subjects}")
    if subjects_per_shard < 1:
        raise ConfigError(f"subjects_per_shard: expected a positive integer, got {subjects_per_shard}")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    vocab = build_vocab()
    code_strings = pa.array(vocab.codes, pa.string())
    counts = np.zeros(len(vocab.codes), np.int64)
    split = assign_splits(num_subjects, seed)
    writers = [_SplitWriter(out, name, subjects_per_shard) for name, _ in SPLIT_FRACTIONS]
    try:
        _write_blocks(writers, split, seed, code_strings, counts)
    finally:
        for writer in writers:
            writer.close()
    _write_metadata(out, vocab, counts, split, seed)
    return {"subjects": num_subjects, "events": int(counts.sum()), "codes": int((counts > 0).sum()),
            "splits": {w.split: {"subjects": w.subjects, "events": w.events, "files": w.files} for w in writers}}
