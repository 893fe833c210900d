"""Pre-sharding: manifest contract, shards readable, idempotence, determinism, dropped rows counted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ehr_jax.data import day_tokens, shards, tokenize  # noqa: E402
from ehr_jax.data import prepare as prep  # noqa: E402
from ehr_jax.errors import ConfigError, DataError  # noqa: E402

from meds_fixtures import BASE, frame, patient, small_dataset, write_meds  # noqa: E402

SETTINGS = dict(min_code_count=1, num_quantiles=4, records_per_shard=4)


def _shard_digests(out: Path) -> dict:
    return {s["path"]: s["sha256"] for split in shards.read_manifest(out)["splits"].values() for s in split["shards"]}


def test_manifest_vocab_and_shards_follow_the_contract(tmp_path):
    meds_dir = small_dataset(tmp_path / "meds")
    manifest = prep.prepare(meds_dir, tmp_path / "out", **SETTINGS)
    out = tmp_path / "out"
    assert manifest == shards.read_manifest(out)
    assert manifest["meds_dir"] == str(meds_dir.resolve()) and Path(manifest["meds_dir"]).is_absolute()
    assert manifest["provenance"] == {"etl_name": "test_fixture", "etl_version": "1.0", "meds_version": "0.4.1"}
    tokens = shards.read_vocab(out)
    assert manifest["vocab_size"] == len(tokens) and tokens[:3] == ["[PAD]", "[UNK]", "[TIMELINE_START]"]
    assert manifest["settings"]["num_quantiles"] == 4 and len(manifest["tokenizer_hash"]) == 16
    train = manifest["splits"]["train"]
    assert train["num_subjects"] == 6 and [s["num_records"] for s in train["shards"]] == [4, 2]
    assert train["num_events"] == 6 * 6  # GENDER + 5 events each; MEDS_BIRTH became the age token
    for split, info in manifest["splits"].items():
        records = list(shards.iter_records(out, split))
        assert len(records) == info["num_subjects"]
        assert sum(len(r.tokens) for r in records) == info["num_tokens"]
        for shard in info["shards"]:
            assert shards.file_sha256(out / shard["path"]) == shard["sha256"]
        index = shards.read_index(out, split)
        assert index["n_tokens"].tolist() == [len(r.tokens) for r in records]
        for r in records:
            assert np.all(np.diff(r.times) >= 0) and tokens[r.tokens[0]] == "[TIMELINE_START]"
    assert manifest["splits"]["held_out"]["num_unk_tokens"] == 2  # HELDOUT_ONLY_CODE, once per subject
    assert "HELDOUT_ONLY_CODE" not in tokens
    assert tokenize.Tokenizer.load(out).hash() == manifest["tokenizer_hash"]


def test_prepare_is_idempotent_and_rebuilds_on_change(tmp_path, monkeypatch):
    meds_dir = small_dataset(tmp_path / "meds")
    out = tmp_path / "out"
    first = prep.prepare(meds_dir, out, **SETTINGS)
    shard = out / first["splits"]["train"]["shards"][0]["path"]
    mtime = shard.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(prep.vocab, "fit", lambda *a, **k: calls.append(1))  # must not be reached
    assert prep.prepare(meds_dir, out, **SETTINGS) == first and shard.stat().st_mtime_ns == mtime and not calls
    monkeypatch.undo()
    changed = prep.prepare(meds_dir, out, **{**SETTINGS, "num_quantiles": 5})
    assert changed["tokenizer_hash"] != first["tokenizer_hash"]
    assert changed["settings_hash"] != first["settings_hash"]
    data_file = meds_dir / "data/train/0.parquet"
    os.utime(data_file, ns=(data_file.stat().st_atime_ns, data_file.stat().st_mtime_ns + 10**9))
    rebuilt = prep.prepare(meds_dir, out, **{**SETTINGS, "num_quantiles": 5})
    assert rebuilt["input_fingerprint"] != changed["input_fingerprint"]
    (out / "vocab.json").unlink()  # an incomplete output is rebuilt, not reused
    prep.prepare(meds_dir, out, **{**SETTINGS, "num_quantiles": 5})
    assert shards.read_vocab(out)[0] == "[PAD]"


def test_prepare_is_deterministic(tmp_path):
    meds_dir = small_dataset(tmp_path / "meds")
    a = prep.prepare(meds_dir, tmp_path / "a", **SETTINGS)
    b = prep.prepare(meds_dir, tmp_path / "b", **SETTINGS)
    assert a["tokenizer_hash"] == b["tokenizer_hash"]
    assert _shard_digests(tmp_path / "a") == _shard_digests(tmp_path / "b")


@pytest.mark.slow
def test_bins_are_identical_in_a_fresh_process(tmp_path):
    """Reservoir subsampling (more values than RESERVOIR_SIZE) must not depend on process state."""
    rng = np.random.default_rng(0)
    rows = patient(1, [(i, "LAB//1//mg", float(v)) for i, v in enumerate(rng.normal(size=3000))])
    root = write_meds(tmp_path / "meds", {"train": frame(rows)})
    pl.Series([f"pollute{i}" for i in range(100)]).cast(pl.Categorical)  # unrelated categorical state
    here = prep.prepare(root, tmp_path / "here", **SETTINGS)
    code = f"from ehr_jax.data import prepare; print(prepare.prepare({str(root)!r}, {str(tmp_path / 'there')!r}, " \
           f"**{SETTINGS!r})['tokenizer_hash'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == here["tokenizer_hash"]


def test_vocabulary_and_bins_ignore_tuning_and_held_out(tmp_path):
    meds_dir = small_dataset(tmp_path / "meds")
    before = prep.prepare(meds_dir, tmp_path / "a", **SETTINGS)
    held_out = frame(patient(200, [(0, "LAB//50912//mg/dL", 1e6)] + [(i, f"NEW{i}", None) for i in range(1, 30)]))
    held_out.write_parquet(meds_dir / "data/held_out/0.parquet")
    after = prep.prepare(meds_dir, tmp_path / "b", **SETTINGS)
    assert after["tokenizer_hash"] == before["tokenizer_hash"]
    assert shards.read_vocab(tmp_path / "a") == shards.read_vocab(tmp_path / "b")
    train = lambda out: {k: v for k, v in _shard_digests(out).items() if k.startswith("train/")}  # noqa: E731
    assert train(tmp_path / "a") == train(tmp_path / "b")


def test_batched_reading_matches_whole_file(tmp_path, monkeypatch):
    meds_dir = small_dataset(tmp_path / "meds")
    prep.prepare(meds_dir, tmp_path / "whole", **SETTINGS)
    monkeypatch.setattr(prep.meds, "BATCH_ROWS", 5)
    prep.prepare(meds_dir, tmp_path / "chunked", **SETTINGS)
    assert _shard_digests(tmp_path / "whole") == _shard_digests(tmp_path / "chunked")


def test_dropped_rows_are_counted_in_the_manifest(tmp_path):
    train = frame(patient(1, [(0, "A", None), (60, "B", None)]) + patient(2, [])
                  + [(3, BASE, None, None), (3, BASE, "A", None)])
    root = write_meds(tmp_path / "meds", {"train": train, "held_out": frame(patient(9, [(0, "A", None)]))})
    manifest = prep.prepare(root, tmp_path / "out", **SETTINGS)
    assert manifest["splits"]["train"]["dropped"] == {"null_code": 1, "rows_of_subjects_without_timed_events": 1}
    assert manifest["splits"]["train"]["num_subjects"] == 2
    assert manifest["splits"]["tuning"] == {**manifest["splits"]["tuning"], "num_subjects": 0, "shards": []}


def test_empty_train_split_and_bad_settings_raise(tmp_path):
    root = write_meds(tmp_path / "meds", {"train": frame(patient(1, [])),
                                          "held_out": frame(patient(2, [(0, "A", None)]))})
    with pytest.raises(DataError, match="train split has no subjects"):
        prep.prepare(root, tmp_path / "out", **SETTINGS)
    with pytest.raises(ConfigError, match="data.num_quantiles"):
        prep.prepare(root, tmp_path / "out", **{**SETTINGS, "num_quantiles": 0})


def test_meds_testing_helpers_dataset_prepares(generated_sample_MEDS, tmp_path):
    manifest = prep.prepare(generated_sample_MEDS, tmp_path / "out", **SETTINGS)
    splits = pl.read_parquet(Path(generated_sample_MEDS) / "metadata/subject_splits.parquet")
    assert manifest["provenance"]["etl_name"] == "meds_testing_helpers"
    assert manifest["layout"] == "flat"
    for split, info in manifest["splits"].items():
        records = list(shards.iter_records(tmp_path / "out", split))
        expected = set(splits.filter(pl.col("split") == split)["subject_id"])
        assert {r.subject_id for r in records} <= expected and len(records) == info["num_subjects"]


def _config(meds_dir="", prepared_dir=""):
    config = ml_collections.ConfigDict()
    config.data = dict(meds_dir=str(meds_dir), prepared_dir=str(prepared_dir), synthetic_subjects=10,
                       synthetic_seed=3, min_code_count=1, num_quantiles=4, records_per_shard=4,
                       prepare_wait_s=60.0)
    return config


def test_ensure_prepared_writes_meds_once(tmp_path):
    calls = []

    def write_meds(meds_dir):
        calls.append(meds_dir)
        if not meds_dir.exists():
            small_dataset(meds_dir)

    config = _config()
    prepared = prep.ensure_prepared(config.data, tmp_path, write_meds)
    assert prepared == str(tmp_path / "prepared")
    assert shards.read_manifest(prepared)["meds_dir"] == str(tmp_path / "meds")
    assert prep.ensure_prepared(config.data, tmp_path, write_meds) == prepared
    assert calls == [tmp_path / "meds"] * 2  # asked each time; the writer itself skips a done dir


def test_main_prepares_the_real_synthetic_generator_once(tmp_path, monkeypatch):
    from ehr_jax import main, synthetic

    config = _config()
    config.data.synthetic_subjects = 30
    prepared = main.prepare_data(config.data, str(tmp_path))
    manifest = shards.read_manifest(prepared)
    assert sum(s["num_subjects"] for s in manifest["splits"].values()) <= 30
    assert manifest["splits"]["train"]["num_events"] > 0
    tokens = shards.read_vocab(prepared)
    for name in ("HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE", "DIAGNOSIS"):
        assert name in tokens
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: pytest.fail("generated twice"))
    assert main.prepare_data(config.data, str(tmp_path)) == prepared


def test_ensure_prepared_uses_configured_dirs(tmp_path):
    meds_dir = small_dataset(tmp_path / "meds")
    prepared = prep.ensure_prepared(_config(meds_dir, tmp_path / "elsewhere").data, tmp_path / "work")
    assert prepared == str(tmp_path / "elsewhere") and (tmp_path / "elsewhere" / shards.MANIFEST).exists()


@pytest.mark.slow
@pytest.mark.parametrize("module", ["ehr_jax.data.prepare", "ehr_jax.prepare"])  # new and old
def test_cli_prepares_and_reports_errors_without_traceback(tmp_path, module):
    meds_dir = small_dataset(tmp_path / "meds")
    cmd = [sys.executable, "-m", module, f"--meds_dir={meds_dir}", f"--out_dir={tmp_path / 'out'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["train"]["num_subjects"] == 6
    bad = subprocess.run(cmd[:3] + [f"--meds_dir={tmp_path / 'nope'}"] + cmd[4:], capture_output=True,
                         text=True, check=False)
    assert bad.returncode != 0 and "error:" in bad.stderr and "Traceback" not in bad.stderr


def test_token_types_of_a_prepared_vocab(tmp_path):
    prep.prepare(small_dataset(tmp_path / "meds"), tmp_path / "out", **SETTINGS)
    tokens = shards.read_vocab(tmp_path / "out")
    names = {tokenize.TOKEN_TYPE_NAMES[i] for i in tokenize.token_types(tokens)}
    assert {"special", "time", "value", "static", "diagnosis", "lab", "encounter"} <= names


def test_ensure_prepared_keeps_a_named_prepared_dir_without_meds_dir(tmp_path):
    prepared = str(tmp_path / "mine")
    prep.prepare(small_dataset(tmp_path / "meds"), prepared, **SETTINGS)
    before = shards.read_manifest(prepared)
    config = _config("", prepared)
    assert prep.ensure_prepared(config.data, tmp_path / "work",
                                lambda meds_dir: pytest.fail("wrote MEDS data")) == prepared
    assert shards.read_manifest(prepared) == before


def test_tokens_per_day_in_the_manifest_and_measured_for_old_manifests(tmp_path):
    """Train subject 1: 3 timed tokens on day 0 (A, TIME//1h, B), 2 on day 5 (TIME//3d, C);
    subject 2: 1. Token-weighted mean count: (3*3 + 2*2 + 1*1) / 6 tokens per busy day."""
    day = 86_400
    rows = patient(1, [(0, "A", None), (3600, "B", None), (5 * day, "C", None)]) + patient(2, [(0, "A", None)])
    meds_dir = write_meds(tmp_path / "meds", {"train": frame(rows), "tuning": frame(patient(3, [(0, "A", None)])),
                                             "held_out": frame(patient(4, [(0, "A", None)]))})
    out = tmp_path / "out"
    manifest = prep.prepare(meds_dir, out, **SETTINGS)
    assert manifest["tokens_per_day"] == pytest.approx((3 * 3 + 2 * 2 + 1) / 6)
    del manifest["tokens_per_day"]
    (out / shards.MANIFEST).write_text(json.dumps(manifest))
    assert day_tokens.tokens_per_day(out) == pytest.approx((3 * 3 + 2 * 2 + 1) / 6)
