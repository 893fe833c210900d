"""Prepared-data storage: one ArrayRecord record per patient, plus manifest.json and vocab.json.

A record holds a whole patient timeline so the loader can cut windows that never cross two
patients (the paper's boundary-preserving batching) and evaluation can cut a history at any
prediction time. Layout of one record (little-endian):

    int64 subject_id | int32 n_prefix | int32 n_tokens | int32 tokens[n] | int64 times[n]

`times` are seconds since the Unix epoch of the event each token belongs to (prefix tokens
carry the birth time, or the first timed event's time without a birth; an interval token
carries the time of the event after it), so "usable at prediction time t" is exactly
`times <= t`, and the age at any time follows from the record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from array_record.python import array_record_module

from ehr_jax.errors import DataError

MANIFEST = "manifest.json"
INDEX = "index.npy"  # per split: (n_tokens, n_prefix) of every record, in shard order
VOCAB = "vocab.json"
SPLITS = ("train", "tuning", "held_out")
_INDEX = np.dtype([("n_tokens", "<i4"), ("n_prefix", "<i4")])
_HEADER = np.dtype([("subject_id", "<i8"), ("n_prefix", "<i4"), ("n_tokens", "<i4")])


@dataclasses.dataclass
class PatientRecord:
    """One patient's token timeline; `n_prefix` static tokens come first."""

    subject_id: int
    tokens: np.ndarray  # int32[n]
    times: np.ndarray  # int64[n], seconds since epoch
    n_prefix: int


def encode_record(record: PatientRecord) -> bytes:
    header = np.array([(record.subject_id, record.n_prefix, len(record.tokens))], dtype=_HEADER)
    return (header.tobytes() + np.asarray(record.tokens, "<i4").tobytes()
            + np.asarray(record.times, "<i8").tobytes())


def decode_record(data: bytes) -> PatientRecord:
    header = np.frombuffer(data, dtype=_HEADER, count=1)[0]
    n = int(header["n_tokens"])
    offset = _HEADER.itemsize
    tokens = np.frombuffer(data, "<i4", count=n, offset=offset)
    times = np.frombuffer(data, "<i8", count=n, offset=offset + 4 * n)
    return PatientRecord(int(header["subject_id"]), tokens, times, int(header["n_prefix"]))


def decode_tokens(data: bytes) -> tuple[np.ndarray, int]:
    """Tokens and prefix length only: the loader's hot path skips subject ids and times."""
    header = np.frombuffer(data, dtype=_HEADER, count=1)[0]
    n = int(header["n_tokens"])
    return np.frombuffer(data, "<i4", count=n, offset=_HEADER.itemsize), int(header["n_prefix"])


def shard_path(prepared_dir: str | os.PathLike, split: str, index: int) -> Path:
    return Path(prepared_dir) / split / f"shard-{index:05d}.array_record"


def write_split(records: Iterable[PatientRecord], prepared_dir: str | os.PathLike, split: str,
                records_per_shard: int) -> list[dict]:
    """Writes records into numbered shards and the split's index; returns the shard entries.

    The index lets the loader lay out training windows without reading every record.
    """
    (Path(prepared_dir) / split).mkdir(parents=True, exist_ok=True)
    entries, lengths = write_shards(records, lambda i: shard_path(prepared_dir, split, i), records_per_shard)
    for entry in entries:
        entry["path"] = str(Path(entry["path"]).relative_to(prepared_dir))
    np.save(Path(prepared_dir) / split / INDEX, index_array(lengths))
    return entries


def write_shards(records: Iterable[PatientRecord], path_of: Callable[[int], Path],
                 records_per_shard: int) -> tuple[list[dict], list[tuple[int, int]]]:
    """Writes records into shards path_of(0), path_of(1), ... of records_per_shard records each.

    Returns each shard's entry (path, num_records, num_tokens, sha256) and every record's
    (n_tokens, n_prefix) in order, for the index.
    """
    shards: list[dict] = []
    lengths: list[tuple[int, int]] = []
    writer, path, count, n_tokens = None, None, 0, 0
    for record in records:
        lengths.append((len(record.tokens), record.n_prefix))
        if writer is None:
            path = path_of(len(shards))
            # zstd level 1: twice the write speed of the default level 3 at about the same size
            writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1,zstd:1")
        writer.write(encode_record(record))
        count += 1
        n_tokens += len(record.tokens)
        if count == records_per_shard:
            shards.append(_close_shard(writer, path, count, n_tokens))
            writer, count, n_tokens = None, 0, 0
    if writer is not None:
        shards.append(_close_shard(writer, path, count, n_tokens))
    return shards, lengths


def index_array(lengths: list[tuple[int, int]]) -> np.ndarray:
    """The index's structured array of (n_tokens, n_prefix) per record."""
    return np.array(lengths, dtype=_INDEX).reshape(-1)


def _close_shard(writer, path: Path, count: int, n_tokens: int) -> dict:
    writer.close()
    return {"path": str(path), "num_records": count, "num_tokens": n_tokens, "sha256": file_sha256(path)}


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_paths(prepared_dir: str | os.PathLike, split: str) -> list[str]:
    """Shard paths of one split, in manifest order."""
    manifest = read_manifest(prepared_dir)
    if split not in manifest["splits"]:
        raise DataError(f"{Path(prepared_dir) / MANIFEST}: no split {split!r}; "
                        f"expected one of {sorted(manifest['splits'])}")
    return [str(Path(prepared_dir) / s["path"]) for s in manifest["splits"][split]["shards"]]


def read_index(prepared_dir: str | os.PathLike, split: str) -> np.ndarray:
    """Structured array (n_tokens, n_prefix) of every record of a split, in shard order."""
    path = Path(prepared_dir) / split / INDEX
    if not path.exists():
        raise DataError(f"{path}: missing; re-run `python -m ehr_jax.data.prepare` to rebuild the split")
    return np.load(path)


def iter_records(prepared_dir: str | os.PathLike, split: str) -> Iterator[PatientRecord]:
    """Every patient of a split, in shard order (evaluation and tests; training uses Grain)."""
    for path in split_paths(prepared_dir, split):
        reader = array_record_module.ArrayRecordReader(path)
        try:
            for i in range(reader.num_records()):
                yield decode_record(reader.read([i])[0])
        finally:
            reader.close()


def read_manifest(prepared_dir: str | os.PathLike) -> dict:
    path = Path(prepared_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"{path}: no manifest; run `python -m ehr_jax.data.prepare` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_vocab(prepared_dir: str | os.PathLike) -> list[str]:
    """Token strings; a token's id is its index."""
    path = Path(prepared_dir) / VOCAB
    if not path.exists():
        raise DataError(f"{path}: no vocabulary; run `python -m ehr_jax.data.prepare` first")
    return json.loads(path.read_text())["tokens"]
