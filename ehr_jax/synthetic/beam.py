"""The synthetic generator as one Apache Beam job, for datasets too large for one process.

    python -m ehr_jax.synthetic --out=gs://b/meds --num_subjects=10000000 --engine=beam -- \
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp --setup_file=./setup.py

Needs the `beam` extra. Patients are independent given (seed, block), so each worker generates
a group of blocks (about subjects_per_shard subjects) and writes that group's rows of each split
to data/<split>/<group>.parquet; the driver then writes metadata/ (code counts summed by the job,
the split table, dataset.json last). The rows are those of `generate` with the same seed and
size (same blocks, same splits), in the same order; only the files they are cut into differ (a
group holds its range's subjects of all three splits, where `generate` fills each split's files
in turn). A retried worker rewrites its group's files whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import apache_beam as beam
import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from ehr_jax.errors import ConfigError, DataError
from ehr_jax.synthetic.generate import (
    BLOCK_SUBJECTS,
    DATA_SCHEMA,
    SPLIT_FRACTIONS,
    _block_parts,
    _prepare_out_dir,
    _write_metadata,
    assign_splits,
)
from ehr_jax.synthetic.vocab import build_vocab

DEFAULT_ARGS = ("--runner=DirectRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={os.cpu_count() or 1}")
_JOB_DIR = "_beam_job"  # under out_dir while the job runs: its summed counts
_SPLITS_CACHE: dict = {}  # (num_subjects, seed) -> split of every subject, once per worker process


def generate_beam(out_dir: str, num_subjects: int, seed: int = 0, subjects_per_shard: int = 10_000,
                  overwrite: bool = False, pipeline_args: list[str] | tuple = DEFAULT_ARGS) -> dict:
    """Writes the synthetic MEDS dataset with a Beam job; returns counts like `generate`.

    out_dir is a local path or a URL Beam's filesystems know (gs://, s3://).
    """
    if num_subjects < 3:
        raise ConfigError(f"num_subjects: expected at least 3 (one per split), got {num_subjects}")
    if subjects_per_shard < 1:
        raise ConfigError(f"subjects_per_shard: expected a positive integer, got {subjects_per_shard}")
    local = FileSystems.get_scheme(str(out_dir)) is None
    out_dir = str(Path(out_dir).expanduser().resolve()) if local else str(out_dir).rstrip("/")
    _clear(out_dir, local, overwrite)
    blocks_per_group = max(1, subjects_per_shard // BLOCK_SUBJECTS)
    num_groups = -(-num_subjects // (blocks_per_group * BLOCK_SUBJECTS))
    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as p:
        _ = (p | beam.Create(range(num_groups)) | beam.Reshuffle()
             | beam.ParDo(_WriteGroup(out_dir, num_subjects, seed, blocks_per_group))
             | beam.CombineGlobally(_add_totals) | beam.Map(json.dumps)
             | beam.io.WriteToText(f"{out_dir}/{_JOB_DIR}/totals", file_name_suffix=".json"))
    totals = json.loads(_read(FileSystems.match([f"{out_dir}/{_JOB_DIR}/totals*"])[0].metadata_list[0].path))
    _remove(f"{out_dir}/{_JOB_DIR}", local)
    counts = np.asarray(totals["counts"], np.int64)
    with tempfile.TemporaryDirectory() as tmp:  # written here, then copied (object stores)
        (Path(tmp) / "metadata").mkdir()
        _write_metadata(Path(tmp), build_vocab(), counts, assign_splits(num_subjects, seed), seed)
        for name in (meds.code_metadata_filepath, meds.subject_splits_filepath, meds.dataset_metadata_filepath):
            _copy(Path(tmp) / name, f"{out_dir}/{name}")  # dataset.json last
    splits = {name: {k: totals[k][s] for k in ("subjects", "events", "files")}
              for s, (name, _) in enumerate(SPLIT_FRACTIONS)}
    return {"subjects": num_subjects, "events": int(counts.sum()), "codes": int((counts > 0).sum()),
            "splits": splits}


class _WriteGroup(beam.DoFn):
    """Generates one group of blocks and writes its rows of each split to one file per split."""

    def __init__(self, out_dir: str, num_subjects: int, seed: int, blocks_per_group: int):
        self.out_dir, self.num_subjects, self.seed, self.blocks_per_group = (
            out_dir, num_subjects, seed, blocks_per_group)

    def process(self, group: int):
        key = (self.num_subjects, self.seed)
        if key not in _SPLITS_CACHE:
            _SPLITS_CACHE[key] = assign_splits(*key)
        vocab = build_vocab()
        code_strings = pa.array(vocab.codes, pa.string())
        counts = np.zeros(len(vocab.codes), np.int64)
        n_splits = len(SPLIT_FRACTIONS)
        files, writers = [None] * n_splits, [None] * n_splits
        totals = {"subjects": [0] * n_splits, "events": [0] * n_splits, "files": [0] * n_splits}
        try:
            for block in range(group * self.blocks_per_group, (group + 1) * self.blocks_per_group):
                first = block * BLOCK_SUBJECTS
                if first >= self.num_subjects:
                    break
                n = min(BLOCK_SUBJECTS, self.num_subjects - first)
                parts = _block_parts(self.seed, block, first, n, _SPLITS_CACHE[key], code_strings, counts)
                for s, (table, subject_id) in enumerate(parts):
                    if not table.num_rows:
                        continue
                    if writers[s] is None:
                        path = f"{self.out_dir}/data/{SPLIT_FRACTIONS[s][0]}/{group}.parquet"
                        files[s] = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
                        writers[s] = pq.ParquetWriter(files[s], DATA_SCHEMA, compression="snappy")
                        totals["files"][s] = 1
                    writers[s].write_table(table)
                    totals["subjects"][s] += len(np.unique(subject_id))
                    totals["events"][s] += table.num_rows
        finally:
            for writer, file in zip(writers, files):
                if writer is not None:
                    writer.close()
                    file.close()
        yield {"counts": counts.tolist(), **totals}


def _add_totals(items) -> dict | None:
    """Sums the groups' code counts and per-split subjects, events and files."""
    total = None
    for item in items:
        total = item if total is None else {k: [a + b for a, b in zip(total[k], item[k])] for k in total}
    return total


def _clear(out_dir: str, local: bool, overwrite: bool) -> None:
    if local:
        _prepare_out_dir(Path(out_dir), overwrite)
        return
    owned = [f"{out_dir}/{meds.data_subdirectory}", f"{out_dir}/metadata"]
    existing = [p for p in owned if FileSystems.match([f"{p}/**"])[0].metadata_list]
    if existing and not overwrite:
        raise DataError(f"{out_dir}: already holds {', '.join(p.rsplit('/', 1)[1] for p in existing)}/; "
                        "pass overwrite=True (--overwrite) to replace the dataset")
    for path in existing:
        _remove(path, local)


def _remove(path: str, local: bool) -> None:
    if local:
        shutil.rmtree(path, ignore_errors=True)
        return
    listed = FileSystems.match([f"{path}/**"])[0].metadata_list
    if listed:
        FileSystems.delete([m.path for m in listed])


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def _copy(src: Path, dest: str) -> None:
    with open(src, "rb") as f, FileSystems.create(dest, compression_type=CompressionTypes.UNCOMPRESSED) as g:
        shutil.copyfileobj(f, g, 1 << 24)
