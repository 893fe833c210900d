"""Grain input pipeline: patient-bounded training windows, shuffled by seed, sliced per process.

Window layout (the paper's boundary-preserving batching: a window never holds two patients).
A patient record has tokens t[0..n) whose first `n_prefix` are static demographics. Positions
1..n-1 are the predictable targets; within an epoch each is a target of exactly one window:

- First window: inputs t[0 : e-1], targets t[1 : e] with e = min(seq_len + 1, n); mask 1 on
  every real position (the prefix itself is predicted here, once).
- Continuation windows carry the prefix first so the model always sees demographics. With
  c = min(n_prefix, seq_len // 2) carried tokens and a the first new target position,
  the window is the sequence  t[0:c] ++ t[a-1 : e]  with e = min(a + seq_len - c, n);
  inputs are that sequence minus its last token, targets minus its first (so within a window
  targets[j] == tokens[j+1]). The mask is 0 on the c prefix positions (their targets are
  prefix tokens, or t[a-1], already counted elsewhere) and 1 on the (at most seq_len - c)
  positions whose targets are t[a : e]. The next window starts at a = e.
- A prefix longer than seq_len // 2 is truncated to its first seq_len // 2 tokens in
  continuation windows, so every window still predicts at least half its length.
- A continuation window restates the prefix's age token (its last) for the time of the
  window's first token, so a window years after the first event shows the age of its own
  time (prepared dirs of tokenizer version >= 2, whose prefix tokens carry the birth time).
- Short windows are right-padded with [PAD] = 0 in tokens and targets and 0 in mask.
  Patients with fewer than 2 tokens have no targets and no windows.

Order: window ids of the split form one epoch; global position g (batch i, row r:
g = i * global_batch_size + r) maps to a window through Grain's per-epoch index shuffle seeded
from (seed, g // epoch_length), so batch i is a pure function of (seed, i) and the data, and
process p of P reads only rows [p*B/P, (p+1)*B/P) of it. The iterator's state is therefore the
step (plus seed, seq_len, global batch size, epoch length and packing, checked on restore),
which also lets a run resume with another number of workers or processes.

Packing (train_loader(pack=True), config data.pack): a row holds several windows side by side
(ehr_jax.data.packing decides which, again a pure function of (seed, row)); each window is its
own segment: `segment_ids` 1, 2, ... (0 on padding) and `positions` restarting at 0, which the
model uses to mask attention per segment and to restart RoPE, so the rule above still holds:
no token ever sees another patient. Unpacked batches carry neither key.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import grain
import numpy as np
from absl import logging
from array_record.python import array_record_module

from ehr_jax.data import packing, shards, tokenize
from ehr_jax.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]
_STATE_KEYS = ("seed", "seq_len", "global_batch_size", "num_windows", "pack")


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
        raise ConfigError(f"data.seq_len must be an integer >= 2 (one input and one target "
                          f"token per window); got {seq_len!r}")


def _layout_windows(index: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
    """Every window of a split as (record, carry, body_start, body_end) int32 columns.

    A window is the token sequence t[0:carry] ++ t[body_start:body_end] of its record (see the
    module docstring); vectorised so a MIMIC-sized split lays out in well under a second.
    """
    n = index["n_tokens"].astype(np.int64)
    carry = np.minimum(index["n_prefix"].astype(np.int64), seq_len // 2)
    stride = seq_len - carry  # new targets per continuation window, >= ceil(seq_len / 2)
    targets = np.maximum(n - 1, 0)
    rest = np.maximum(targets - seq_len, 0)
    per_record = np.where(targets > 0, 1 + (rest + stride - 1) // stride, 0)
    record = np.repeat(np.arange(len(n)), per_record)
    first_window = np.repeat(np.cumsum(per_record) - per_record, per_record)
    j = np.arange(len(record)) - first_window  # window number inside its record
    is_first = j == 0
    target_start = np.where(is_first, 1, seq_len + 1 + (j - 1) * stride[record])
    body_end = np.minimum(np.where(is_first, seq_len + 1, target_start + stride[record]),
                          n[record])
    return {"record": record.astype(np.int32),
            "carry": np.where(is_first, 0, carry[record]).astype(np.int32),
            "body_start": (target_start - 1).astype(np.int32),
            "body_end": body_end.astype(np.int32)}


def num_windows(prepared_dir: str | os.PathLike, split: str, seq_len: int) -> int:
    """Windows in one epoch of a split (from the index, without reading records)."""
    _check_seq_len(seq_len)
    return int(len(_layout_windows(shards.read_index(prepared_dir, split), seq_len)["record"]))


def _window_sizes(windows: dict[str, np.ndarray]) -> np.ndarray:
    """Input positions of each window: its token sequence's length minus one."""
    return (windows["carry"] + windows["body_end"] - windows["body_start"] - 1).astype(np.int64)


def epoch_stats(prepared_dir: str | os.PathLike, split: str, seq_len: int, *,
                pack: bool = False) -> dict[str, float]:
    """One epoch of a split as the loader serves it: rows, real (non-pad) input tokens and the
    padding share 1 - tokens / (rows x seq_len); from the index, without reading records.

    An unpacked row shorter than seq_len also holds its window's last target as an input (with
    mask 0), so it counts one token more than the window's size; a packed row does not.
    """
    _check_seq_len(seq_len)
    sizes = _window_sizes(_layout_windows(shards.read_index(prepared_dir, split), seq_len))
    rows = packing.PackedEpochs(sizes, seq_len, 0).rows_per_epoch if pack else len(sizes)
    tokens = int(sizes.sum()) + (0 if pack else int(np.count_nonzero(sizes < seq_len)))
    return {"rows": rows, "tokens": tokens,
            "padding_share": 1.0 - tokens / max(rows * seq_len, 1)}


class _PatientShards:
    """Random access to a split's records, one batched read per shard (picklable for workers).

    Grouping a batch's reads by shard into one ArrayRecord `read(positions)` call is 2-3x
    faster per record than reading records one by one (ArrayRecordDataSource.__getitem__), and
    reading dominates the loader's time.
    """

    def __init__(self, paths: list[str]):
        self._paths = list(paths)
        counts = [self._count_records(path) for path in paths]
        self._first_record = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._readers: list = [None] * len(paths)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._first_record[-1])

    @staticmethod
    def _count_records(path: str) -> int:
        reader = array_record_module.ArrayRecordReader(path)
        try:
            return reader.num_records()
        finally:
            reader.close()

    def __getstate__(self) -> dict:
        return {"_paths": self._paths, "_first_record": self._first_record}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._readers = [None] * len(self._paths)
        self._lock = threading.Lock()

    def _reader(self, shard: int):
        with self._lock:
            if self._readers[shard] is None:
                self._readers[shard] = array_record_module.ArrayRecordReader(
                    self._paths[shard], "readahead_buffer_size:0")
            return self._readers[shard]

    def read(self, record_ids: np.ndarray) -> list[bytes]:
        """Record bytes in the order of record_ids."""
        shard_of = np.searchsorted(self._first_record, record_ids, side="right") - 1
        out: list[bytes] = [b""] * len(record_ids)
        for shard in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == shard)
            positions = (record_ids[rows] - self._first_record[shard]).tolist()
            for row, data in zip(rows, self._reader(int(shard)).read(positions)):
                out[row] = data
        return out


class _WindowReader:
    """Builds batches of windows from random-access patient records (picklable for workers).

    first_age: token id of the first AGE token when the records' prefixes carry the birth time
    (tokenizer version >= 2): a continuation window then restates the age for its own start
    (tokenize.restate_age) instead of carrying the age at the patient's first event. None
    keeps the prefix as stored (older prepared dirs).
    """

    def __init__(self, paths: list[str], windows: dict[str, np.ndarray], seq_len: int,
                 first_age: int | None = None):
        self._source = _PatientShards(paths)
        self._windows = windows
        self._sizes = _window_sizes(windows)
        self._seq_len = seq_len
        self._first_age = first_age

    def __len__(self) -> int:
        return len(self._windows["record"])

    @property
    def num_records(self) -> int:
        return len(self._source)

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def sizes(self) -> np.ndarray:
        """Input positions of each window."""
        return self._sizes

    def _sequences(self, window_ids: np.ndarray) -> list[np.ndarray]:
        """Each window's token sequence t[0:carry] ++ t[body_start:body_end], one batched read."""
        w = self._windows
        carry, start = w["carry"][window_ids], w["body_start"][window_ids]
        end = w["body_end"][window_ids]
        sequences = []
        for row, data in enumerate(self._source.read(w["record"][window_ids])):
            tokens, n_prefix = shards.decode_tokens(data)
            c = carry[row]
            sequence = np.concatenate([tokens[:c], tokens[start[row]:end[row]]])
            if self._first_age is not None and 0 < n_prefix <= c:
                times = shards.decode_record(data).times
                sequence[n_prefix - 1] = tokenize.restate_age(tokens, times, n_prefix,
                                                              times[start[row]], self._first_age)
            sequences.append(sequence)
        return sequences

    def batch(self, window_ids: np.ndarray, num_rows: int) -> Batch:
        """Rows for `window_ids`, then all-padding rows (mask 0) up to num_rows."""
        seq_BxL1 = np.zeros((num_rows, self._seq_len + 1), np.int32)
        for row, sequence in enumerate(self._sequences(window_ids)):
            seq_BxL1[row, :len(sequence)] = sequence
        lengths = np.zeros(num_rows, np.int64)  # inputs per row: sequence length minus one
        lengths[:len(window_ids)] = self.sizes[window_ids]
        first_target = np.zeros(num_rows, np.int64)
        first_target[:len(window_ids)] = self._windows["carry"][window_ids]
        position = np.arange(self._seq_len)
        mask_BxL = (position >= first_target[:, None]) & (position < lengths[:, None])
        return {"tokens": np.ascontiguousarray(seq_BxL1[:, :-1]),
                "targets": np.ascontiguousarray(seq_BxL1[:, 1:]),
                "mask": mask_BxL.astype(np.float32)}

    def packed_batch(self, rows: list[np.ndarray]) -> Batch:
        """One row per entry of `rows`: its windows side by side, each its own segment (ids 1, 2,
        ... in order, 0 on padding) with positions from 0 and the window's own mask."""
        shape = (len(rows), self._seq_len)
        batch = {"tokens": np.zeros(shape, np.int32), "targets": np.zeros(shape, np.int32),
                 "mask": np.zeros(shape, np.float32), "segment_ids": np.zeros(shape, np.int32),
                 "positions": np.zeros(shape, np.int32)}
        window_ids = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        sequences = iter(self._sequences(window_ids))
        carries = iter(self._windows["carry"][window_ids])
        for row, windows in enumerate(rows):
            offset = 0
            for segment in range(1, len(windows) + 1):
                sequence, carry = next(sequences), next(carries)
                size = len(sequence) - 1
                span = slice(offset, offset + size)
                batch["tokens"][row, span] = sequence[:-1]
                batch["targets"][row, span] = sequence[1:]
                batch["mask"][row, offset + carry:offset + size] = 1.0
                batch["segment_ids"][row, span] = segment
                batch["positions"][row, span] = np.arange(size)
                offset += size
        return batch


def _open_split(prepared_dir: str | os.PathLike, split: str, seq_len: int) -> _WindowReader:
    """The split's window reader; DataError when it has no windows or a stale index."""
    _check_seq_len(seq_len)
    paths = shards.split_paths(prepared_dir, split)
    index = shards.read_index(prepared_dir, split)
    windows = _layout_windows(index, seq_len)
    if not paths or len(windows["record"]) == 0:
        raise DataError(f"{os.path.join(prepared_dir, shards.MANIFEST)}: split {split!r} has no "
                        f"patient with 2 or more tokens, so there is nothing to train or "
                        f"evaluate on; expected a non-empty split")
    if np.any(index["n_prefix"] > seq_len // 2):
        logging.warning("Some %s patients have a static prefix longer than seq_len // 2 = %d; "
                        "continuation windows carry only its first %d tokens.",
                        split, seq_len // 2, seq_len // 2)
    first_age = tokenize.first_age_id(shards.read_manifest(prepared_dir))
    reader = _WindowReader(paths, windows, seq_len, first_age)
    if reader.num_records != len(index):
        raise DataError(f"{os.path.join(prepared_dir, split, shards.INDEX)}: lists {len(index)} "
                        f"patients but the shards hold {reader.num_records}; re-run "
                        f"`python -m ehr_jax.data.prepare` to rebuild the split")
    return reader


class _LocalTrainBatch:
    """step -> this process's rows of global batch `step`: the pure function resume relies on."""

    def __init__(self, reader: _WindowReader, seed: int, global_batch_size: int,
                 process_index: int, process_count: int, pack: bool):
        # Mix the seed so that run seed s, epoch e+1 does not replay run seed s+1, epoch e
        # (Grain seeds epoch e with seed + e).
        mixed_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        self._packed = (packing.PackedEpochs(reader.sizes, reader.seq_len, mixed_seed)
                        if pack else None)
        self._order = None if pack else grain.MapDataset.range(len(reader)).shuffle(
            seed=mixed_seed)
        self._reader = reader
        self._global_batch_size = global_batch_size
        self._rows = global_batch_size // process_count
        self._first_row = process_index * self._rows

    def __call__(self, step: int) -> Batch:
        first = step * self._global_batch_size + self._first_row
        rows = range(first, first + self._rows)
        if self._packed is not None:
            return self._reader.packed_batch([self._packed.windows(g) for g in rows])
        window_ids = np.array([self._order[g] for g in rows])
        return self._reader.batch(window_ids, self._rows)


class TrainLoader:
    """Infinite iterator of this process's batches; `get_state()` is a JSON-able dict."""

    def __init__(self, make_batch: _LocalTrainBatch, fingerprint: dict[str, int],
                 num_workers: int):
        self._make_batch = make_batch
        self._fingerprint = fingerprint
        self._num_workers = num_workers
        self._step = 0
        self._iterator = None

    def _start(self) -> None:
        # One prefetch thread overlaps reading with the jitted step (which releases the GIL);
        # more threads only contend for the GIL (on the 2-core dev machine 4 threads were 20%
        # slower than 1). Worker processes are the way to scale past one core.
        dataset = (grain.MapDataset.range(self._step, sys.maxsize).map(self._make_batch)
                   .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8)))
        if self._num_workers > 0:
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self._num_workers, per_worker_buffer_size=4))
        self._iterator = iter(dataset)

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._start()
        batch = next(self._iterator)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """The next step plus what defines the order, so a mismatched resume fails loudly."""
        return {"step": self._step, **self._fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        step = state.get("step")
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ConfigError(f"loader state from the checkpoint has step={step!r}; expected a "
                              f"non-negative integer (a state saved by TrainLoader.get_state)")
        state = {"pack": False, **state}  # states saved before packing existed were unpacked
        for key in _STATE_KEYS:
            if state.get(key) != self._fingerprint[key]:
                raise ConfigError(
                    f"loader state from the checkpoint has {key}={state.get(key)!r} but this run "
                    f"has {self._fingerprint[key]}; resume with the same seed, data.seq_len, "
                    f"data.pack, train.global_batch_size and prepared data")
        self.close()
        self._step = int(step)

    def close(self) -> None:
        """Stops prefetch threads and worker processes (they restart on the next batch)."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None


def _process_slot(global_batch_size: int, process_index: int | None,
                  process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only here: the loader itself needs no accelerator runtime

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ConfigError(f"train.global_batch_size must be a positive multiple of the number "
                          f"of processes ({process_count}); got {global_batch_size}")
    if not 0 <= process_index < process_count:
        raise ConfigError(f"process_index {process_index} is outside [0, {process_count})")
    return process_index, process_count


def train_loader(prepared_dir: str | os.PathLike, *, seq_len: int, global_batch_size: int,
                 seed: int, process_index: int | None = None, process_count: int | None = None,
                 num_workers: int = 0, pack: bool = False) -> TrainLoader:
    """This process's share of the shuffled, infinite stream of train-split batches.

    pack=True fills each row with several windows (segment_ids and positions in the batch).

    num_workers > 0 moves batch building into Grain worker processes (spawned, so the calling
    program must guard its entry point, as absl's app.run does); batches are identical either
    way. Call close() when done to stop prefetching.
    """
    process_index, process_count = _process_slot(global_batch_size, process_index, process_count)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed!r}")
    if num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0; got {num_workers}")
    reader = _open_split(prepared_dir, "train", seq_len)
    make_batch = _LocalTrainBatch(reader, int(seed), global_batch_size, process_index,
                                  process_count, bool(pack))
    fingerprint = {"seed": int(seed), "seq_len": int(seq_len),
                   "global_batch_size": int(global_batch_size), "num_windows": len(reader),
                   "pack": bool(pack)}
    return TrainLoader(make_batch, fingerprint, num_workers)


def eval_batches(prepared_dir: str | os.PathLike, split: str, *, seq_len: int, batch_size: int,
                 max_tokens: int) -> list[Batch]:
    """Fixed validation batches: the same windows in every run, no shuffle.

    Takes k = min(num_windows, max(1, max_tokens // seq_len)) windows spread evenly over the
    split (window ids floor(i * N / k)), so a small budget still samples many patients;
    max_tokens <= 0 takes every window. The last batch is padded with mask-0 rows.
    """
    if batch_size < 1:
        raise ConfigError(f"eval batch_size must be >= 1; got {batch_size}")
    reader = _open_split(prepared_dir, split, seq_len)
    total = len(reader)
    count = total if max_tokens <= 0 else min(total, max(1, max_tokens // seq_len))
    window_ids = np.arange(count, dtype=np.int64) * total // count
    return [reader.batch(window_ids[i:i + batch_size], batch_size)
            for i in range(0, count, batch_size)]
