"""MEDS dataset -> prepared dir (ArrayRecord shards per split, manifest.json, vocab.json).

    python -m ehr_jax.data.prepare --meds_dir=DIR --out_dir=DIR
    python -m ehr_jax.data.prepare --meds_dir=URL --out_dir=URL --engine=beam -- BEAM_OPTIONS (beam extra)

Streams: one pass over the train files fits the tokenizer, then every split is encoded batch by
batch (about meds.BATCH_ROWS rows of whole subjects), so memory does not grow with the dataset.
Idempotent: a manifest whose input fingerprint (paths, sizes, mtimes) and settings hash match
is reused. The manifest is written last, so a killed run leaves no manifest and is redone.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import ml_collections
import numpy as np
import polars as pl
from absl import flags, logging

from ehr_jax import cli, rundir
from ehr_jax.data import barrier, day_tokens, meds, shards, tokenize, vocab
from ehr_jax.errors import ConfigError, DataError, EhrJaxError

MAX_TEXT_VALUES = 8  # default of config.data.max_text_values (configs/base.py)


def prepare(meds_dir: str | os.PathLike, out_dir: str | os.PathLike, *, min_code_count: int = 10,
            num_quantiles: int = 10, records_per_shard: int = 2000, max_text_values: int = MAX_TEXT_VALUES) -> dict:
    """Tokenizes a MEDS dataset into shards; returns the manifest (reused when up to date).

    A lock file serialises concurrent calls on one machine (e.g. parallel runs of a sweep).
    """
    settings = check_settings(min_code_count, num_quantiles, records_per_shard, max_text_values)
    ds = meds.open_dataset(meds_dir)
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        hashes = {"settings_hash": settings_hash(settings), "input_fingerprint": input_fingerprint(ds.input_files())}
        existing = _reusable_manifest(out_dir, hashes["input_fingerprint"], hashes["settings_hash"])
        if existing is not None:
            logging.info("Reusing %s: same inputs and settings (tokenizer %s)", out_dir, existing["tokenizer_hash"])
            return existing
        _clear_outputs(out_dir)
        return _build(ds, out_dir, settings, hashes)


def _build(ds: meds.MedsDataset, out_dir: Path, settings: dict, hashes: dict) -> dict:
    """Fit on train, then encode every split; the manifest is written last."""
    start = time.perf_counter()
    min_code_count, num_quantiles = settings["min_code_count"], settings["num_quantiles"]
    records_per_shard = settings["records_per_shard"]
    train_dropped: collections.Counter = collections.Counter()
    tok = vocab.fit(meds.iter_split_frames(ds, "train", train_dropped), min_code_count=min_code_count,
                    num_quantiles=num_quantiles, max_text_values=settings["max_text_values"])
    splits = {}
    for split in meds.SPLITS:
        splits[split] = _write_split(ds, tok, out_dir, split, records_per_shard, train_dropped)
        if splits["train"]["num_subjects"] == 0:
            raise DataError(f"{ds.root}: the train split has no subjects with timed events; "
                            "expected at least one to fit the vocabulary")
    rundir.write_json_atomic(out_dir / shards.VOCAB, {"tokens": tok.tokens})
    rundir.write_json_atomic(out_dir / tokenize.TOKENIZER_FILE, tok.to_json())
    manifest = manifest_of(tok, settings, hashes, ds, splits)
    rundir.write_json_atomic(out_dir / shards.MANIFEST, manifest)
    log_done(out_dir, manifest, time.perf_counter() - start)
    return manifest


def manifest_of(tok: tokenize.Tokenizer, settings: dict, hashes: dict, ds: meds.MedsDataset,
                splits: dict) -> dict:
    """The manifest both engines write (`ds` gives the input's root, layout and provenance)."""
    train = splits["train"]
    return {"vocab_size": len(tok.tokens), "settings": settings, **hashes,
            "tokens_per_day": day_tokens.ratio(train),
            "tokenizer_hash": tok.hash(), "tokenizer_version": tokenize.TOKENIZER_VERSION,
            "meds_dir": str(ds.root), "layout": ds.layout, "provenance": meds.provenance(ds),
            "ignored_files": len(ds.ignored_files), "splits": splits}


def log_done(out_dir, manifest: dict, seconds: float) -> None:
    events = sum(s["num_events"] for s in manifest["splits"].values())
    logging.info("Prepared %s: vocab %d, %d events in %.1fs (%.0f events/s)", out_dir, manifest["vocab_size"],
                 events, seconds, events / max(seconds, 1e-9))


def check_settings(min_code_count: int, num_quantiles: int, records_per_shard: int,
                   max_text_values: int) -> dict:
    for key, value, low in (("data.min_code_count", min_code_count, 1), ("data.num_quantiles", num_quantiles, 1),
                            ("data.records_per_shard", records_per_shard, 1),
                            ("data.max_text_values", max_text_values, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{key}={value!r}; expected an integer >= {low}")
    return {"min_code_count": int(min_code_count), "num_quantiles": int(num_quantiles),
            "records_per_shard": int(records_per_shard), "reservoir_size": vocab.RESERVOIR_SIZE,
            "max_text_values": int(max_text_values), "tokenizer_version": tokenize.TOKENIZER_VERSION}


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def input_fingerprint(paths: list[Path]) -> str:
    """Hash of every input file's path, size and mtime: cheap, and changes when a file does."""
    entries = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _reusable_manifest(out_dir: Path, fingerprint: str, settings_hash: str) -> dict | None:
    if not (out_dir / shards.MANIFEST).exists():
        return None
    try:
        manifest = shards.read_manifest(out_dir)
    except EhrJaxError:
        return None
    return reusable(manifest, fingerprint, settings_hash, lambda rel: (out_dir / rel).exists(), out_dir)


def reusable(manifest: dict, fingerprint: str, settings_hash: str, exists: Callable[[str], bool],
             out_dir) -> dict | None:
    """`manifest` when it was made from the same inputs and settings and its files all exist."""
    same = (manifest.get("input_fingerprint") == fingerprint
            and manifest.get("settings_hash") == settings_hash)
    needed = [shards.VOCAB, tokenize.TOKENIZER_FILE]
    needed += [f"{split}/{shards.INDEX}" for split in manifest.get("splits", {})]
    needed += [s["path"] for split in manifest.get("splits", {}).values() for s in split["shards"]]
    if not same:
        logging.info("%s: inputs or settings changed; re-preparing", out_dir)
    return manifest if same and all(exists(rel) for rel in needed) else None


def _clear_outputs(out_dir: Path) -> None:
    """Removes our own outputs only (the manifest first), so a stale shard is never reused."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (shards.MANIFEST, shards.VOCAB, tokenize.TOKENIZER_FILE):
        (out_dir / name).unlink(missing_ok=True)
    for split in meds.SPLITS:
        if (out_dir / split).is_dir():
            shutil.rmtree(out_dir / split)


def _write_split(ds: meds.MedsDataset, tok: tokenize.Tokenizer, out_dir: Path, split: str,
                 records_per_shard: int, fit_dropped: collections.Counter) -> dict:
    stats, dropped = new_split_stats(), collections.Counter()
    records = encoded_records(tok, meds.iter_split_frames(ds, split, dropped), stats, dropped)
    shard_entries = shards.write_split(records, out_dir, split, records_per_shard)
    if split == "train":  # rows outside every split are only seen (and counted) on the fit pass
        dropped["subject_not_in_subject_splits"] = fit_dropped["subject_not_in_subject_splits"]
    return split_summary(split, stats, dropped, shard_entries)


def new_split_stats() -> dict:
    """Counts summed over a split's records (day_tokens, day_tokens_sq: see add_day_counts)."""
    return {"num_subjects": 0, "num_tokens": 0, "num_events": 0, "num_unk_tokens": 0,
            "day_tokens": 0, "day_tokens_sq": 0}


def encoded_records(tok: tokenize.Tokenizer, frames: Iterable[pl.DataFrame], stats: dict,
                    dropped: collections.Counter) -> Iterator[shards.PatientRecord]:
    """Every subject's record of the frames, in order; adds to the split's stats as it goes."""
    for frame in frames:
        encoded = tok.encode_frame(frame)
        stats["num_subjects"] += len(encoded.subject_ids)
        stats["num_tokens"] += len(encoded.tokens)
        stats["num_events"] += encoded.num_events
        stats["num_unk_tokens"] += int((encoded.tokens == tok.token_id[tokenize.UNK]).sum())
        dropped["rows_of_subjects_without_timed_events"] += encoded.dropped_rows
        for record in encoded.records():
            day_tokens.add_day_counts(stats, record)
            yield record


def split_summary(split: str, stats: dict, dropped: collections.Counter, shard_entries: list[dict]) -> dict:
    """A split's manifest entry; logs what was dropped."""
    dropped = {reason: n for reason, n in sorted(dropped.items()) if n}
    if dropped:
        logging.warning("%s split: dropped rows %s", split, dropped)
    logging.info("%s split: %d subjects, %d events, %d tokens in %d shards", split, stats["num_subjects"],
                 stats["num_events"], stats["num_tokens"], len(shard_entries))
    return {**stats, "dropped": dropped, "shards": shard_entries}


def ensure_prepared(data: ml_collections.ConfigDict, workdir: str | os.PathLike,
                    write_meds: Callable[[Path], None] | None = None) -> str:
    """The prepared dir of config group `data` (built if missing or stale); returns its path.

    data.meds_dir "" means <workdir>/meds, written first by `write_meds(meds_dir)` (main passes
    the synthetic generator). In a multi-process job process 0 prepares while the others wait
    on a status file (ehr_jax.data.barrier), not in a device collective whose timeouts a long
    prepare would hit; a host that shares no filesystem with process 0 prepares its own copy
    (the output is deterministic).
    """
    import jax  # deferred: the CLI and data tests do not need a JAX backend

    workdir = Path(workdir).expanduser().resolve()
    meds_dir = Path(data.meds_dir).expanduser() if data.meds_dir else workdir / "meds"
    prepared_dir = Path(data.prepared_dir).expanduser() if data.prepared_dir else workdir / "prepared"
    if data.prepared_dir and not data.meds_dir and (prepared_dir / shards.MANIFEST).exists():
        # A prepared dir named without its MEDS source is used as it is: regenerating synthetic
        # data into it would overwrite what the user prepared from their own dataset.
        logging.info("Using the prepared data in %s as it is (config.data.meds_dir is empty)",
                     prepared_dir)
        return str(prepared_dir)

    def build() -> None:
        if not data.meds_dir and write_meds is not None:
            write_meds(meds_dir)
        prepare(meds_dir, prepared_dir, min_code_count=data.min_code_count,
                num_quantiles=data.num_quantiles, records_per_shard=data.records_per_shard,
                max_text_values=data.get("max_text_values", MAX_TEXT_VALUES))

    def broadcast(value: int) -> int:
        from jax.experimental import multihost_utils

        return int(multihost_utils.broadcast_one_to_all(np.int32(value)))

    barrier.run_on_first(prepared_dir, build, process_index=jax.process_index(),
                         process_count=jax.process_count(), broadcast=broadcast,
                         timeout_s=float(data.prepare_wait_s), what=f"preparing {prepared_dir}")
    return str(prepared_dir)


def define_flags() -> None:
    """CLI flags, defined only when run as a program (like every CLI of ehr_jax)."""
    flags.DEFINE_string("meds_dir", None, "MEDS dataset root (data/, metadata/).")
    flags.DEFINE_string("out_dir", None, "Prepared dir to write (shards, manifest, vocab).")
    flags.DEFINE_integer("min_code_count", 10, "Tokens seen fewer times in train become [UNK].")
    flags.DEFINE_integer("num_quantiles", 10, "Value bins per numeric code.")
    flags.DEFINE_integer("records_per_shard", 2000, "Patients per ArrayRecord shard.")
    flags.DEFINE_integer("max_text_values", MAX_TEXT_VALUES, "Codes with at most this many distinct text values in "
                         "train get a TXT//<value> token (0: text values ignored).")
    flags.DEFINE_enum("engine", "local", ["local", "beam"],
                      "local: this process; beam: an Apache Beam job (pipeline options after `--`).")


def main(argv: list[str]) -> None:
    f = flags.FLAGS
    if not f.meds_dir or not f.out_dir:
        sys.exit("usage: python -m ehr_jax.data.prepare --meds_dir=DIR --out_dir=DIR [--engine=beam -- BEAM_OPTIONS]")
    settings = dict(min_code_count=f.min_code_count, num_quantiles=f.num_quantiles,
                    records_per_shard=f.records_per_shard, max_text_values=f.max_text_values)
    try:
        if f.engine == "local":
            if argv[1:]:
                raise ConfigError(f"arguments {argv[1:]}: pipeline options need --engine=beam")
            manifest = prepare(f.meds_dir, f.out_dir, **settings)
        else:
            try:
                from ehr_jax.data import beam_prepare
            except ImportError as e:
                raise ConfigError(f"--engine=beam needs Apache Beam ({e}); pip install -e '.[beam]'") from None
            manifest = beam_prepare.prepare(f.meds_dir, f.out_dir, **settings,
                                            pipeline_args=argv[1:] or beam_prepare.DEFAULT_ARGS)
    except EhrJaxError as e:
        sys.exit(f"error: {e}")
    print(json.dumps({s: {k: v for k, v in m.items() if k != "shards"} for s, m in manifest["splits"].items()},
                     indent=2))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
