"""The Beam engine (DirectRunner, 2 worker processes) against the local one on the same MEDS input.

Runs wherever the `beam` extra is installed (the `test` extra includes it, so CI runs it).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from meds_fixtures import frame, patient, small_dataset  # noqa: E402

pytest.importorskip("apache_beam", reason="the Beam engine needs the beam extra: pip install -e '.[beam]'")

from ehr_jax.data import beam_prepare, loader, shards, vocab  # noqa: E402
from ehr_jax.data import prepare as prep  # noqa: E402
from ehr_jax.errors import DataError  # noqa: E402

SETTINGS = dict(min_code_count=2, num_quantiles=4, records_per_shard=3)
TWO_WORKERS = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
IN_PROCESS = ["--runner=DirectRunner"]  # starts faster: for the error paths


def _dataset(root: Path) -> Path:
    """Two train files whose lab has more values than the reservoir keeps, so the Beam merge of
    per-file samples must reproduce the local bottom-k exactly."""
    small_dataset(root)
    rng = np.random.default_rng(0)
    rows = []
    for s in range(500, 505):
        values = rng.lognormal(size=vocab.RESERVOIR_SIZE // 2)
        rows += patient(s, [(60 * i, "LAB//51221//%", float(v)) for i, v in enumerate(values)])
    frame(rows).write_parquet(root / "data/train/1.parquet")
    return root


def _records(out: Path, split: str) -> list[tuple]:
    return [(r.subject_id, r.n_prefix, r.tokens.tobytes(), r.times.tobytes()) for r in shards.iter_records(out, split)]


def _assert_same_output(local: Path, beam: Path) -> None:
    assert shards.read_vocab(local) == shards.read_vocab(beam)
    assert (local / "tokenizer.json").read_text() == (beam / "tokenizer.json").read_text()  # identical edges
    a, b = shards.read_manifest(local), shards.read_manifest(beam)
    for manifest in (a, b):
        for split in manifest["splits"].values():
            split.pop("shards")
    assert a == b  # tokenizer hash, settings, fingerprint, per-split counts and dropped rows
    for split in shards.SPLITS:
        np.testing.assert_array_equal(shards.read_index(local, split), shards.read_index(beam, split))
        assert _records(local, split) == _records(beam, split)  # same records, same order
    # so training reads the same batches from either dir
    loaders = [loader.train_loader(d, seq_len=16, global_batch_size=4, seed=1) for d in (local, beam)]
    for _, a_batch, b_batch in zip(range(6), *loaders):
        for key in a_batch:
            np.testing.assert_array_equal(a_batch[key], b_batch[key])
    for each in loaders:
        each.close()


@pytest.mark.slow
def test_beam_matches_local_even_when_every_bundle_runs_twice(tmp_path):
    meds_dir = _dataset(tmp_path / "meds")
    prep.prepare(meds_dir, tmp_path / "local", **SETTINGS)
    # Replaying each bundle stands in for a retried worker: no record may be written twice.
    manifest = beam_prepare.prepare(str(meds_dir), str(tmp_path / "beam"), **SETTINGS,
                                    pipeline_args=TWO_WORKERS + ["--direct_runner_bundle_repeat=1"])
    _assert_same_output(tmp_path / "local", tmp_path / "beam")
    edges = json.loads((tmp_path / "beam" / "tokenizer.json").read_text())["edges"]
    assert len(edges["LAB//51221//%"]) == 3
    train = manifest["splits"]["train"]
    assert [s["num_records"] for s in train["shards"]] == [3, 3, 3, 2]  # per input file: 6 and 5 patients
    for entry in train["shards"]:
        assert shards.file_sha256(tmp_path / "beam" / entry["path"]) == entry["sha256"]
    assert not (tmp_path / "beam" / beam_prepare.TMP_DIR).exists()
    assert beam_prepare.prepare(str(meds_dir), str(tmp_path / "beam"), **SETTINGS, pipeline_args=["--bad"]) == manifest


@pytest.mark.slow
def test_beam_matches_local_on_a_meds_testing_helpers_dataset(generated_sample_MEDS, tmp_path):
    prep.prepare(generated_sample_MEDS, tmp_path / "local", **SETTINGS)
    beam_prepare.prepare(str(generated_sample_MEDS), str(tmp_path / "beam"), **SETTINGS, pipeline_args=TWO_WORKERS)
    _assert_same_output(tmp_path / "local", tmp_path / "beam")


@pytest.mark.slow
def test_beam_cli_refuses_a_subject_in_two_files_without_traceback(tmp_path):
    root = small_dataset(tmp_path / "meds")
    frame(patient(1, [(0, "A", None)])).write_parquet(root / "data/train/1.parquet")  # subject 1 is in 0.parquet too
    cmd = [sys.executable, "-m", "ehr_jax.data.prepare", f"--meds_dir={root}", f"--out_dir={tmp_path / 'beam'}",
           "--engine=beam", "--", *IN_PROCESS]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "error:" in done.stderr and "more than one file" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "beam" / shards.MANIFEST).exists()


def test_beam_reports_a_worker_data_error(tmp_path):
    root = small_dataset(tmp_path / "meds")
    frame(patient(77, [(60, "A", None), (0, "B", None)])).write_parquet(root / "data/train/1.parquet")
    with pytest.raises(DataError, match=r"train/1.parquet: column 'time' is not sorted"):
        beam_prepare.prepare(str(root), str(tmp_path / "beam"), **SETTINGS, pipeline_args=IN_PROCESS)


@pytest.mark.slow
def test_beam_synthetic_generator_writes_the_local_rows(tmp_path):
    """Same seed and size: the same rows in the same order, cut into per-group files."""
    import polars as pl

    from ehr_jax import synthetic
    from ehr_jax.synthetic import beam as synthetic_beam

    local = synthetic.generate(tmp_path / "local", 700, seed=3)
    counts = synthetic_beam.generate_beam(str(tmp_path / "beam"), 700, seed=3, subjects_per_shard=500,
                                          pipeline_args=TWO_WORKERS)
    assert counts["events"] == local["events"] and counts["codes"] == local["codes"]
    for split in shards.SPLITS:
        files = {root: sorted((tmp_path / root / "data" / split).glob("*.parquet"), key=lambda p: int(p.stem))
                 for root in ("local", "beam")}
        assert len(files["beam"]) == 2 and counts["splits"][split]["subjects"] == local["splits"][split]["subjects"]
        rows = {root: pl.concat([pl.read_parquet(f) for f in paths]) for root, paths in files.items()}
        assert rows["local"].equals(rows["beam"])
    for name in ("metadata/codes.parquet", "metadata/subject_splits.parquet"):
        assert pl.read_parquet(tmp_path / "local" / name).equals(pl.read_parquet(tmp_path / "beam" / name))
    dataset_json = [(tmp_path / root / "metadata/dataset.json").read_text() for root in ("local", "beam")]
    assert dataset_json[0] == dataset_json[1]
    assert not (tmp_path / "beam" / "_beam_job").exists()


def test_beam_checks_split_folders_against_the_split_table(tmp_path):
    import polars as pl

    root = small_dataset(tmp_path / "meds")
    table = pl.read_parquet(root / "metadata/subject_splits.parquet")
    moved = pl.when(pl.col("subject_id") == 1).then(pl.lit("held_out")).otherwise("split")
    table.with_columns(split=moved).write_parquet(root / "metadata/subject_splits.parquet")
    with pytest.raises(DataError, match="1 subjects are under one data/<split>/ folder but"):
        beam_prepare.prepare(str(root), str(tmp_path / "beam"), **SETTINGS, pipeline_args=IN_PROCESS)
