"""The prepare stage as one Apache Beam job: the local tokenizer and layout at cluster scale.

    python -m ehr_jax.data.prepare --meds_dir=gs://b/meds --out_dir=gs://b/prepared --engine=beam -- \
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp --setup_file=./setup.py

Needs the `beam` extra (`pip install -e ".[beam]"`); only `--engine=beam` imports this module. The job:

    train files --(vocab.FitStats per file)--> CombineGlobally (exact merge) --> tokenizer
    every (split, file) --Reshuffle--> encode with the tokenizer (side input) --> shards + summary
    subject ids of every file, and subject_splits.parquet, in buckets --> CoGroupByKey --> subjects
        in two files or under another split's folder than the split table says (errors)

The fit is vocab.FitStats (counts plus the per-code bottom-k sample by row hash), whose merge is
order-free, so the vocabulary and quantile edges equal the local engine's exactly, and records
come from the same encoder (prepare.encoded_records). Each input file becomes its own shards,
`<split>/shard-<file>-<part>.array_record` (at most records_per_shard records each), written
under a temporary name and renamed (or uploaded whole), so a retried worker rewrites the same
files and never duplicates a record. After the job the driver joins the per-file index parts
into `<split>/index.npy` in file order, which is the local engine's record order, and writes
the manifest last: same inputs give the same records in the same order as the local engine
(only the shard boundaries differ), so training on either reads identical batches.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from absl import logging
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from ehr_jax.data import meds, shards, tokenize, vocab
from ehr_jax.data import prepare as prep
from ehr_jax.errors import DataError, EhrJaxError

TMP_DIR = "_beam_tmp"  # under out_dir: per-file index parts and the job's summaries, removed at the end
DEFAULT_ARGS = ("--runner=DirectRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={os.cpu_count() or 1}")
_SPLITS_CACHE: dict = {}  # flat layout: subject_splits.parquet per worker process (read once, not per file)
_PROBLEMS = ("subjects_in_two_files", "subjects_in_another_split", "subjects_listed_twice")
_BUCKETS = 1024  # keys of the subject checks' shuffle (arrays of ids per key and file)


def prepare(meds_dir: str, out_dir: str, *, min_code_count: int = 10, num_quantiles: int = 10,
            records_per_shard: int = 2000, max_text_values: int = prep.MAX_TEXT_VALUES,
            pipeline_args: list[str] | tuple = DEFAULT_ARGS) -> dict:
    """Tokenizes a MEDS dataset with Beam; returns the manifest (reused when up to date).

    meds_dir and out_dir are local paths or URLs Beam's filesystems know (gs://, s3://).
    """
    settings = prep.check_settings(min_code_count, num_quantiles, records_per_shard, max_text_values)
    ds = open_dataset(meds_dir)
    out = _Out(out_dir)
    hashes = {"settings_hash": prep.settings_hash(settings), "input_fingerprint": _fingerprint(ds)}
    existing = out.reusable(hashes)
    if existing is not None:
        logging.info("Reusing %s: same inputs and settings (tokenizer %s)", out.root, existing["tokenizer_hash"])
        return existing
    out.clear()
    start = time.perf_counter()
    _run_job(ds, out, settings, list(pipeline_args))
    manifest = _finish(ds, out, settings, hashes)
    prep.log_done(out.root, manifest, time.perf_counter() - start)
    return manifest


def open_dataset(root: str) -> meds.MedsDataset:
    """A local root is opened (and every file checked) as the local engine does; an object-store
    root is listed with Beam's filesystems, and its files are checked by the workers."""
    if FileSystems.get_scheme(root) is None:
        return meds.open_dataset(root)
    root = root.rstrip("/")
    listed = FileSystems.match([f"{root}/data/**.parquet"])[0].metadata_list
    relative = sorted((m.path[len(root) + len("/data/"):] for m in listed), key=lambda p: tuple(p.split("/")))
    if not relative:
        raise DataError(f"{root}/data: no parquet files; expected data/{{train,tuning,held_out}}/*.parquet "
                        "or data/*.parquet")
    metadata_path = f"{root}/metadata/dataset.json"
    metadata = (meds.parse_dataset_json(metadata_path, _read_bytes(metadata_path))
                if FileSystems.exists(metadata_path) else {})
    has_splits = FileSystems.exists(f"{root}/metadata/subject_splits.parquet")
    if any(p.split("/")[0] in meds.SPLITS for p in relative):
        files = {s: [f"{root}/data/{p}" for p in relative if p.split("/")[0] == s] for s in meds.SPLITS}
        ignored = [f"{root}/data/{p}" for p in relative if p.split("/")[0] not in meds.SPLITS]
        return meds.MedsDataset(root, metadata, files, None, "split_dirs", ignored)
    if not has_splits:
        raise DataError(f"{root}: no split information; expected data/{{train,tuning,held_out}}/ "
                        "folders or metadata/subject_splits.parquet")
    flat = [f"{root}/data/{p}" for p in relative]
    return meds.MedsDataset(root, metadata, {s: flat for s in meds.SPLITS}, None, "flat")


def _fingerprint(ds: meds.MedsDataset) -> str:
    """The local engine's fingerprint for local inputs (so either engine reuses the other's
    output); for object stores, the same hash over (path, size, last-updated time)."""
    if isinstance(ds.root, Path):
        return prep.input_fingerprint(ds.input_files())
    data = sorted({f for fs in ds.files.values() for f in fs})
    meta = [f"{ds.root}/metadata/{n}" for n in ("dataset.json", "subject_splits.parquet")]
    entries = [(m.path, m.size_in_bytes, m.last_updated_in_seconds)
               for r in FileSystems.match(data + meta) for m in r.metadata_list]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _run_job(ds: meds.MedsDataset, out: "_Out", settings: dict, pipeline_args: list[str]) -> None:
    splits_path = f"{ds.root}/metadata/subject_splits.parquet"
    splits_path = splits_path if FileSystems.exists(splits_path) else None
    # Workers hold the split table only where they need it to pick rows (flat layout); the
    # split-folder layout checks it against the folders as a pipeline step instead.
    read = _ReadSpec(splits_path if ds.layout == "flat" else None, ds.layout)
    table = splits_path if ds.layout == "split_dirs" else None
    files = [(split, i, str(path)) for split in meds.SPLITS for i, path in enumerate(ds.files[split])]
    try:
        _pipeline(files, read, table, out, settings, pipeline_args)
    except Exception as e:  # a worker's DataError reaches the driver inside the runner's error text
        found = re.search(r"ehr_jax\.errors\.(?:DataError|ConfigError): (.*?)(?: \[while running|$)", str(e), re.M)
        if found is None:
            raise
        raise DataError(found.group(1)) from e


def _pipeline(files: list[tuple], read: "_ReadSpec", table: str | None, out: "_Out", settings: dict,
              pipeline_args: list[str]) -> None:
    with beam.Pipeline(options=PipelineOptions(pipeline_args)) as p:
        tokenizer = (p | "TrainFiles" >> beam.Create([f for f in files if f[0] == "train"])
                     | "FitFile" >> beam.ParDo(_FitFile(read, settings["max_text_values"]))
                     | "Fit" >> beam.CombineGlobally(_FitCombine(settings["min_code_count"],
                                                                 settings["num_quantiles"],
                                                                 settings["max_text_values"])))
        encoded = (p | "Files" >> beam.Create(files) | beam.Reshuffle()
                   | "Encode" >> beam.ParDo(_EncodeFile(read, out.root, settings["records_per_shard"]),
                                            beam.pvalue.AsSingleton(tokenizer))
                   .with_outputs("subjects", main="summary"))
        listed = (p | "SplitTable" >> beam.Create([table] if table else []) | beam.FlatMap(_split_table_rows))
        problems = ({"data": encoded.subjects, "table": listed} | beam.CoGroupByKey()
                    | beam.Map(_subject_problems) | "Problems" >> beam.CombineGlobally(_add_problems))
        lines = (encoded.summary,
                 tokenizer | "TokJson" >> beam.Map(lambda t: json.dumps({"tokenizer": t})),
                 problems | "ProblemsJson" >> beam.Map(lambda n: json.dumps({"problems": n})))
        _ = lines | beam.Flatten() | beam.io.WriteToText(out.path(TMP_DIR, "summary"), file_name_suffix=".jsonl")


def _split_table_rows(path: str) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """subject_splits.parquet as (bucket, (subject ids, split indices)), streamed in batches."""
    with _open(path) as source:
        parquet = pq.ParquetFile(source)
        if not {"subject_id", "split"} <= set(parquet.schema_arrow.names):
            raise DataError(f"{path}: missing column 'subject_id' or 'split'; expected subject_id int64, split string")
        for batch in parquet.iter_batches(columns=["subject_id", "split"]):
            ids = batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
            names = np.asarray(batch.column(1).cast(pa.string()).to_pylist(), object)
            splits = np.select([names == s for s in meds.SPLITS], range(len(meds.SPLITS)), -1)
            yield from _by_bucket(ids, splits)


def _by_bucket(ids: np.ndarray, splits: np.ndarray) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """Subject ids (with their split index) grouped into _BUCKETS keys: the checks shuffle
    arrays of ids, not one element per subject."""
    bucket = ids % _BUCKETS
    order = np.argsort(bucket, kind="stable")
    keys, starts = np.unique(bucket[order], return_index=True)
    for key, part in zip(keys.tolist(), np.split(order, starts[1:])):
        yield key, (ids[part], splits[part])


def _subject_problems(item) -> tuple[int, int, int]:
    """A bucket's subjects (in two files, under another split's folder, listed twice in the table)."""
    _, found = item
    data, table = list(found["data"]), list(found["table"])
    data_ids = np.concatenate([ids for ids, _ in data]) if data else np.zeros(0, np.int64)
    data_splits = np.concatenate([s for _, s in data]) if data else np.zeros(0, np.int64)
    in_two_files = int((np.unique(data_ids, return_counts=True)[1] > 1).sum())
    table_ids = np.concatenate([ids for ids, _ in table]) if table else np.zeros(0, np.int64)
    table_splits = np.concatenate([s for _, s in table]) if table else np.zeros(0, np.int64)
    unique_ids, first, counts = np.unique(table_ids, return_index=True, return_counts=True)
    wrong = np.zeros(0, np.int64)
    if len(unique_ids):
        at = np.minimum(np.searchsorted(unique_ids, data_ids), len(unique_ids) - 1)
        listed = unique_ids[at] == data_ids
        wrong = data_ids[listed][table_splits[first[at[listed]]] != data_splits[listed]]
    return in_two_files, int(len(np.unique(wrong))), int((counts > 1).sum())


def _add_problems(counts) -> tuple[int, ...]:
    return tuple(sum(column) for column in zip((0,) * len(_PROBLEMS), *counts))


class _ReadSpec:
    """What a worker needs to read one file as the local engine does (besides the file)."""

    def __init__(self, splits_path: str | None, layout: str):
        self.splits_path, self.layout = splits_path, layout

    def frames(self, split: str, path: str, dropped: collections.Counter) -> Iterator:
        subject_splits = None
        if self.splits_path is not None:
            if self.splits_path not in _SPLITS_CACHE:
                _SPLITS_CACHE[self.splits_path] = _subject_splits(self.splits_path)
            subject_splits = _SPLITS_CACHE[self.splits_path]
        with _open(path) as source:
            yield from meds.file_split_frames(path, split, subject_splits, self.layout, dropped, None, source)


class _FitFile(beam.DoFn):
    """The fit's partial statistics of one train file."""

    def __init__(self, read: _ReadSpec, max_text_values: int):
        self.read, self.max_text_values = read, max_text_values

    def process(self, element):
        split, _, path = element
        stats = vocab.FitStats(self.max_text_values)
        for frame in self.read.frames(split, path, collections.Counter()):
            stats.add_frame(frame)
        yield stats


class _FitCombine(beam.CombineFn):
    """Merges partial fits (order-free) and returns the fitted tokenizer as JSON."""

    def __init__(self, min_code_count: int, num_quantiles: int, max_text_values: int):
        self.min_code_count, self.num_quantiles = min_code_count, num_quantiles
        self.max_text_values = max_text_values

    def create_accumulator(self):
        return vocab.FitStats(self.max_text_values)

    def add_input(self, accumulator, stats):
        return accumulator.merge(stats)

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)
        for other in accumulators:
            first.merge(other)
        return first

    def extract_output(self, accumulator):
        return accumulator.tokenizer(min_code_count=self.min_code_count,
                                     num_quantiles=self.num_quantiles).to_json()


class _EncodeFile(beam.DoFn):
    """Encodes one file's subjects into its own shards and index part; yields its summary."""

    def __init__(self, read: _ReadSpec, out_root: str, records_per_shard: int):
        self.read, self.out_root, self.records_per_shard = read, out_root, records_per_shard
        self._tok = None

    def process(self, element, tokenizer_json):
        if self._tok is None:
            self._tok = tokenize.Tokenizer.from_json(tokenizer_json)
        split, index, path = element
        out = _Out(self.out_root)
        stats, dropped, subjects = prep.new_split_stats(), collections.Counter(), []

        def frames():
            for frame in self.read.frames(split, path, dropped):
                subjects.append(frame["subject_id"].unique().to_numpy())
                yield frame

        records = prep.encoded_records(self._tok, frames(), stats, dropped)
        name = lambda part: f"shard-{index:05d}-{part:05d}.array_record"  # noqa: E731
        with tempfile.TemporaryDirectory() as tmp:
            entries, lengths = shards.write_shards(records, lambda part: Path(tmp) / name(part),
                                                   self.records_per_shard)
            for part, entry in enumerate(entries):
                entry["path"] = f"{split}/{name(part)}"
                out.publish(Path(tmp) / name(part), entry["path"])
            buffer = io.BytesIO()
            np.save(buffer, shards.index_array(lengths))
            out.write_bytes(f"{TMP_DIR}/index/{split}-{index:05d}.npy", buffer.getvalue())
        yield json.dumps({"split": split, "file": index, "stats": stats, "dropped": dict(dropped),
                          "shards": entries})
        ids = np.concatenate(subjects) if subjects else np.zeros(0, np.int64)
        for bucket in _by_bucket(ids, np.full(len(ids), meds.SPLITS.index(split))):
            yield beam.pvalue.TaggedOutput("subjects", bucket)


def _finish(ds: meds.MedsDataset, out: "_Out", settings: dict, hashes: dict) -> dict:
    """Joins the job's per-file outputs into the prepared layout; the manifest is written last."""
    tokenizer_json, problems, files = None, {}, collections.defaultdict(list)
    for line in out.read_lines(TMP_DIR, "summary"):
        obj = json.loads(line)
        if "tokenizer" in obj:
            tokenizer_json = obj["tokenizer"]
        elif "problems" in obj:
            problems = dict(zip(_PROBLEMS, obj["problems"]))
        else:
            files[obj["split"]].append(obj)
    expected = {"subjects_in_two_files": "have rows in more than one file; expected each subject's rows in "
                                         "exactly one file",
                "subjects_in_another_split": "are under one data/<split>/ folder but metadata/subject_splits.parquet "
                                             "puts them in another split; expected a subject in exactly one split",
                "subjects_listed_twice": "are listed more than once in metadata/subject_splits.parquet; expected "
                                         "a subject in exactly one split"}
    for problem, n in problems.items():
        if n:
            raise DataError(f"{ds.root}: column 'subject_id': {n} subjects {expected[problem]}")
    tok = tokenize.Tokenizer.from_json(tokenizer_json)
    splits = {}
    for split in meds.SPLITS:
        parts = sorted(files[split], key=lambda f: f["file"])
        stats, dropped = prep.new_split_stats(), collections.Counter()
        for part in parts:
            stats = {k: stats[k] + part["stats"][k] for k in stats}
            dropped.update(part["dropped"])
        index = [np.load(io.BytesIO(out.read_bytes(f"{TMP_DIR}/index/{split}-{p['file']:05d}.npy")))
                 for p in parts]
        buffer = io.BytesIO()
        np.save(buffer, np.concatenate(index) if index else shards.index_array([]))
        out.write_bytes(f"{split}/{shards.INDEX}", buffer.getvalue())
        entries = [entry for part in parts for entry in part["shards"]]
        splits[split] = prep.split_summary(split, stats, dropped, entries)
    if splits["train"]["num_subjects"] == 0:
        raise DataError(f"{ds.root}: the train split has no subjects with timed events; "
                        "expected at least one to fit the vocabulary")
    out.write_json(shards.VOCAB, {"tokens": tok.tokens})
    out.write_json(tokenize.TOKENIZER_FILE, tok.to_json())
    manifest = prep.manifest_of(tok, settings, hashes, ds, splits)
    out.write_json(shards.MANIFEST, manifest)
    out.remove_tree(TMP_DIR)
    return manifest


class _Out:
    """The prepared dir through Beam's filesystems (local or object store); local writes are
    atomic (temp name, then rename), object-store writes are atomic by nature."""

    def __init__(self, root: str):
        self.local = FileSystems.get_scheme(str(root)) is None
        self.root = str(Path(root).expanduser().resolve()) if self.local else str(root).rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def publish(self, local_file: Path, rel: str) -> None:
        """Moves a finished local file to `rel`."""
        dest = self.path(rel)
        if self.local:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
            shutil.move(local_file, tmp)  # a rename on one filesystem, else a copy to the temp name
            os.replace(tmp, dest)
        else:
            with open(local_file, "rb") as src, FileSystems.create(dest) as dst:
                while block := src.read(1 << 24):
                    dst.write(block)

    def write_bytes(self, rel: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(data)
        self.publish(Path(f.name), rel)

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_bytes(self, rel: str) -> bytes:
        return _read_bytes(self.path(rel))

    def read_lines(self, *prefix: str) -> Iterator[str]:
        for match in FileSystems.match([self.path(*prefix) + "*"]):
            for meta in sorted(match.metadata_list, key=lambda m: m.path):
                yield from _read_bytes(meta.path).decode().splitlines()

    def exists(self, rel: str) -> bool:
        return FileSystems.exists(self.path(rel))

    def reusable(self, hashes: dict) -> dict | None:
        if not self.exists(shards.MANIFEST):
            return None
        try:
            manifest = json.loads(self.read_bytes(shards.MANIFEST))
        except (json.JSONDecodeError, EhrJaxError):
            return None
        return prep.reusable(manifest, hashes["input_fingerprint"], hashes["settings_hash"], self.exists, self.root)

    def clear(self) -> None:
        """Removes our own outputs (the manifest first), so a stale shard is never reused."""
        for name in (shards.MANIFEST, shards.VOCAB, tokenize.TOKENIZER_FILE):
            if self.exists(name):
                FileSystems.delete([self.path(name)])
        for name in (*meds.SPLITS, TMP_DIR):
            self.remove_tree(name)

    def remove_tree(self, rel: str) -> None:
        if self.local:
            shutil.rmtree(self.path(rel), ignore_errors=True)
            return
        listed = FileSystems.match([self.path(rel, "**")])[0].metadata_list
        if listed:
            FileSystems.delete([m.path for m in listed])


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _read_bytes(path: str) -> bytes:
    with _open(path) as f:
        return f.read()


def _subject_splits(path: str):
    with _open(path) as source:
        return meds.parse_subject_splits(path, io.BytesIO(source.read()))
