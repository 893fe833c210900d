"""Grain loader contracts: patient-bounded windows, one target per token per epoch, seeded
order, exact resume, process slicing, fixed eval batches, clear errors."""

import json

import numpy as np
import pytest

from ehr_jax import rundir
from ehr_jax.data import loader, packing, shards
from ehr_jax.errors import ConfigError, DataError

SEQ_LEN = 16
PATIENT_STRIDE = 1000  # patient k's tokens are (k + 1) * 1000 + position: unique, disjoint


def _patient(k: int, n: int, n_prefix: int) -> shards.PatientRecord:
    tokens = (k + 1) * PATIENT_STRIDE + np.arange(n, dtype=np.int32)
    return shards.PatientRecord(k, tokens, np.arange(n, dtype=np.int64), n_prefix)


def _write_prepared(root, splits: dict[str, list[shards.PatientRecord]]) -> str:
    manifest = {"splits": {}}
    for split, records in splits.items():
        entries = shards.write_split(records, root, split, records_per_shard=3)
        manifest["splits"][split] = {"num_subjects": len(records), "shards": entries}
    rundir.write_json_atomic(root / shards.MANIFEST, manifest)
    return str(root)


# Lengths cover: 1 token (no target), exactly seq_len + 1, long multi-window patients, a prefix
# longer than seq_len // 2 (truncated in continuation windows) and patients without a prefix.
LENGTHS_AND_PREFIXES = [(40, 3), (1, 1), (17, 3), (5, 2), (90, 12), (33, 0), (2, 2), (61, 4)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    records = [_patient(k, n, p) for k, (n, p) in enumerate(LENGTHS_AND_PREFIXES)]
    tuning = [_patient(100 + k, n, p) for k, (n, p) in enumerate(LENGTHS_AND_PREFIXES[::-1])]
    root = tmp_path_factory.mktemp("prepared")
    return _write_prepared(root, {"train": records, "tuning": tuning})


def _take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


def _rows(batches: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def _assert_batches_equal(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def _expected_windows() -> int:
    """Hand count: first window covers seq_len targets, the rest seq_len - carry each."""
    total = 0
    for n, n_prefix in LENGTHS_AND_PREFIXES:
        targets, stride = n - 1, SEQ_LEN - min(n_prefix, SEQ_LEN // 2)
        total += 0 if targets == 0 else 1 + -(-max(targets - SEQ_LEN, 0) // stride)
    return total


def test_batch_shapes_dtypes_and_shifted_targets(prepared):
    batch = next(loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=4, seed=0,
                                     process_index=0, process_count=1))
    assert batch["tokens"].shape == batch["targets"].shape == batch["mask"].shape == (4, SEQ_LEN)
    assert (batch["tokens"].dtype, batch["targets"].dtype, batch["mask"].dtype) == (
        np.int32, np.int32, np.float32)
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["tokens"][:, 1:])


def test_epoch_targets_each_token_once_within_one_patient(prepared):
    """One epoch of rows: every token at position >= 1 is a masked-in target exactly once."""
    epoch = loader.num_windows(prepared, "train", SEQ_LEN)
    assert epoch == _expected_windows()
    iterator = loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=4, seed=3,
                                   process_index=0, process_count=1)
    rows = {k: v[:epoch] for k, v in _rows(_take(iterator, -(-epoch // 4))).items()}
    tokens, targets, mask = rows["tokens"], rows["targets"], rows["mask"] > 0
    real = tokens > 0
    patient = np.where(real, tokens // PATIENT_STRIDE, -1)
    for row_patient, row_real in zip(patient, real):  # no window spans two patients
        assert len(np.unique(row_patient[row_real])) == 1
    np.testing.assert_array_equal(targets[mask], tokens[mask] + 1)  # the true next token
    assert not np.any(mask & ~real) and np.all(tokens[~real] == 0)
    expected = np.concatenate([(k + 1) * PATIENT_STRIDE + np.arange(1, n)
                               for k, (n, _) in enumerate(LENGTHS_AND_PREFIXES)])
    np.testing.assert_array_equal(np.sort(targets[mask]), np.sort(expected))


def test_continuation_windows_carry_the_prefix(prepared):
    rows = _rows(loader.eval_batches(prepared, "train", seq_len=SEQ_LEN, batch_size=5,
                                     max_tokens=0))
    prefixes = dict(enumerate(p for _, p in LENGTHS_AND_PREFIXES))
    continuations = 0
    for tokens, mask in zip(rows["tokens"], rows["mask"]):
        if mask.sum() == 0 or tokens[0] % PATIENT_STRIDE != 0 or mask[0] > 0:
            continue  # padding row or a first window (its mask starts at position 0)
        carry = min(prefixes[tokens[0] // PATIENT_STRIDE - 1], SEQ_LEN // 2)
        np.testing.assert_array_equal(tokens[:carry], tokens[0] + np.arange(carry))
        assert mask[:carry].sum() == 0 and mask[carry] == 1
        assert tokens[carry] > tokens[0] + carry  # the body resumes later in the timeline
        continuations += 1
    assert continuations >= 5


def test_order_is_seeded_and_reshuffled_each_epoch(prepared):
    def first_rows(seed: int, count: int) -> np.ndarray:
        iterator = loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=2, seed=seed,
                                       process_index=0, process_count=1)
        return _rows(_take(iterator, count))["tokens"]

    epoch = loader.num_windows(prepared, "train", SEQ_LEN)
    assert epoch % 2 == 0  # so epochs align with batches below
    run = first_rows(7, epoch)  # two epochs of rows
    np.testing.assert_array_equal(run, first_rows(7, epoch))
    assert not np.array_equal(run[:epoch // 2], first_rows(8, epoch // 4))
    first, second = run[:epoch], run[epoch:]
    assert not np.array_equal(first, second)
    assert sorted(map(tuple, first)) == sorted(map(tuple, second))  # same windows, new order


@pytest.mark.slow
@pytest.mark.parametrize("num_workers,pack", [(0, False), (1, False), (1, True)])
def test_resume_from_state_matches_uninterrupted_run(prepared, num_workers, pack):
    def make():
        return loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=4, seed=1,
                                   process_index=0, process_count=1, num_workers=num_workers,
                                   pack=pack)

    uninterrupted = make()
    reference = _take(uninterrupted, 9)
    uninterrupted.close()
    first = make()
    _take(first, 5)
    state = json.loads(json.dumps(first.get_state()))  # survives a JSON round trip
    first.close()
    resumed = make()
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 4), reference[5:])
    resumed.close()


def test_resume_rejects_state_of_another_order(prepared):
    state = loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=4, seed=1,
                                process_index=0, process_count=1).get_state()
    other = loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=8, seed=1,
                                process_index=0, process_count=1)
    with pytest.raises(ConfigError, match="global_batch_size"):
        other.set_state(state)
    packed = loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=4, seed=1,
                                 process_index=0, process_count=1, pack=True)
    with pytest.raises(ConfigError, match="pack"):
        packed.set_state(state)


@pytest.mark.parametrize("pack", [False, True])
def test_two_processes_concatenate_to_the_one_process_batch(prepared, pack):
    def batches(index: int, count: int) -> list[dict]:
        iterator = loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=6, seed=2,
                                       process_index=index, process_count=count, pack=pack)
        return _take(iterator, 4)

    single, first, second = batches(0, 1), batches(0, 2), batches(1, 2)
    for whole, top, bottom in zip(single, first, second):
        assert top["tokens"].shape == (3, SEQ_LEN)
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([top[key], bottom[key]]))


def test_global_batch_must_divide_by_processes(prepared):
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=5, seed=0,
                            process_index=0, process_count=2)


def test_eval_batches_fixed_capped_and_padded(prepared):
    def make(max_tokens: int) -> list[dict]:
        return loader.eval_batches(prepared, "tuning", seq_len=SEQ_LEN, batch_size=4,
                                   max_tokens=max_tokens)

    capped = make(7 * SEQ_LEN + 5)  # room for 7 windows: 2 batches, the last one padded
    _assert_batches_equal(capped, make(7 * SEQ_LEN + 5))
    assert len(capped) == 2 and capped[1]["tokens"].shape == (4, SEQ_LEN)
    np.testing.assert_array_equal(capped[1]["mask"][3], 0)
    np.testing.assert_array_equal(capped[1]["tokens"][3], 0)
    assert all(row.sum() > 0 for b in capped for row in b["mask"][:7 - 4 * (b is capped[1])])
    everything = _rows(make(0))
    assert everything["mask"].sum() == sum(n - 1 for n, _ in LENGTHS_AND_PREFIXES)
    assert len(everything["tokens"]) == 4 * -(-_expected_windows() // 4)


def test_seq_len_two_still_covers_every_target(tmp_path):
    prepared = _write_prepared(tmp_path, {"train": [_patient(0, 9, 5), _patient(1, 3, 0)]})
    rows = _rows(loader.eval_batches(prepared, "train", seq_len=2, batch_size=3, max_tokens=0))
    mask = rows["mask"] > 0
    assert sorted(rows["targets"][mask]) == [1001 + i for i in range(8)] + [2001, 2002]


def test_missing_manifest_empty_split_and_bad_settings(tmp_path, prepared):
    with pytest.raises(DataError, match="manifest"):
        loader.train_loader(tmp_path / "nowhere", seq_len=SEQ_LEN, global_batch_size=2, seed=0,
                            process_index=0, process_count=1)
    empty = _write_prepared(tmp_path / "empty", {"train": [_patient(0, 1, 1)]})
    with pytest.raises(DataError, match="'train'"):
        loader.train_loader(empty, seq_len=SEQ_LEN, global_batch_size=2, seed=0,
                            process_index=0, process_count=1)
    with pytest.raises(ConfigError, match="data.seq_len"):
        loader.num_windows(prepared, "train", 1)
    with pytest.raises(DataError, match="held_out"):
        loader.eval_batches(prepared, "held_out", seq_len=SEQ_LEN, batch_size=2, max_tokens=0)


def test_process_defaults_come_from_jax(prepared):
    """On one JAX process the defaults give the whole global batch."""
    implicit = loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=4, seed=5)
    explicit = loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=4, seed=5,
                                   process_index=0, process_count=1)
    _assert_batches_equal(_take(implicit, 2), _take(explicit, 2))


def test_set_state_rejects_a_malformed_state(prepared):
    iterator = loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=4, seed=1,
                                   process_index=0, process_count=1)
    with pytest.raises(ConfigError, match="step"):
        iterator.set_state({**iterator.get_state(), "step": None})


def _packed_epoch(prepared, seed: int, epochs: int = 1) -> tuple[dict[str, np.ndarray], int]:
    rows = loader.epoch_stats(prepared, "train", SEQ_LEN, pack=True)["rows"]
    iterator = loader.train_loader(prepared, seq_len=SEQ_LEN, global_batch_size=2, seed=seed,
                                   process_index=0, process_count=1, pack=True)
    batches = _take(iterator, -(-epochs * rows // 2))
    return {k: v[:epochs * rows] for k, v in _rows(batches).items()}, rows


def test_packed_epoch_targets_each_token_once_one_patient_per_segment(prepared):
    epoch, rows = _packed_epoch(prepared, seed=3)
    tokens, targets, mask = epoch["tokens"], epoch["targets"], epoch["mask"] > 0
    segments, positions = epoch["segment_ids"], epoch["positions"]
    assert segments.max() > 1  # rows really hold several windows
    for row in range(rows):
        for segment in np.unique(segments[row][segments[row] > 0]):
            where = segments[row] == segment
            assert len(np.unique(tokens[row][where] // PATIENT_STRIDE)) == 1
            np.testing.assert_array_equal(positions[row][where], np.arange(where.sum()))
            np.testing.assert_array_equal(targets[row][where][:-1], tokens[row][where][1:])
    padding = segments == 0
    assert np.all(tokens[padding] == 0) and not np.any(mask[padding])
    np.testing.assert_array_equal(targets[mask], tokens[mask] + 1)
    expected = np.concatenate([(k + 1) * PATIENT_STRIDE + np.arange(1, n)
                               for k, (n, _) in enumerate(LENGTHS_AND_PREFIXES)])
    np.testing.assert_array_equal(np.sort(targets[mask]), np.sort(expected))
    stats = loader.epoch_stats(prepared, "train", SEQ_LEN, pack=True)
    assert stats["tokens"] == np.count_nonzero(tokens)
    unpacked = loader.epoch_stats(prepared, "train", SEQ_LEN)
    assert unpacked["rows"] == _expected_windows()
    rows_unpacked = _rows(loader.eval_batches(prepared, "train", seq_len=SEQ_LEN, batch_size=4,
                                              max_tokens=0))
    assert unpacked["tokens"] == np.count_nonzero(rows_unpacked["tokens"])
    assert stats["padding_share"] < unpacked["padding_share"]


def test_packed_order_is_seeded_and_reshuffled_each_epoch(prepared):
    two_epochs, rows = _packed_epoch(prepared, seed=7, epochs=2)
    again, _ = _packed_epoch(prepared, seed=7, epochs=2)
    _assert_batches_equal([two_epochs], [again])
    other, _ = _packed_epoch(prepared, seed=8)
    assert not np.array_equal(two_epochs["tokens"][:rows], other["tokens"])
    first, second = two_epochs["tokens"][:rows], two_epochs["tokens"][rows:]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first[first > 0]), np.sort(second[second > 0]))


def test_best_fit_decreasing_fills_rows_without_overflow():
    assert packing.best_fit_decreasing(np.array([3, 2, 6, 2, 4, 3]), 10).max() == 1  # 2 rows
    rng = np.random.default_rng(0)
    for high in (65, 17):  # any sizes up to the capacity; small sizes only
        sizes = rng.integers(1, high, 500)
        row_of = packing.best_fit_decreasing(sizes, 64)
        totals = np.bincount(row_of, weights=np.sort(sizes)[::-1])
        assert totals.max() <= 64 and totals.sum() == sizes.sum()
    assert len(totals) == -(-sizes.sum() // 64)  # small items: no row more than needed
    with pytest.raises(ValueError, match="sizes"):
        packing.best_fit_decreasing(np.array([65]), 64)


def test_late_windows_restate_the_age_at_their_start(tmp_path):
    """Prepared dirs whose prefix carries the birth time (tokenizer version 2): a continuation
    window years after the first event states the age of its own first token."""
    from ehr_jax.data import tokenize

    year = int(365.25 * 86_400)
    first_age = tokenize.first_age_id({"tokenizer_version": 2, "settings": {"num_quantiles": 10}})
    age_40 = first_age + 8  # AGE//40-44
    birth = 0
    timed = 100
    tokens = np.r_[[2, 500, age_40], np.full(timed, 600)].astype(np.int32)
    times = np.r_[[birth] * 3, 42 * year + np.arange(timed) * year // 4].astype(np.int64)  # 25 years of events
    record = shards.PatientRecord(0, tokens, times, 3)
    _write_prepared(tmp_path, {"train": [record]})
    manifest = json.loads((tmp_path / shards.MANIFEST).read_text())
    rundir.write_json_atomic(tmp_path / shards.MANIFEST, {**manifest, "tokenizer_version": 2,
                                                          "settings": {"num_quantiles": 10}})
    batch = loader.eval_batches(str(tmp_path), "train", seq_len=SEQ_LEN, batch_size=32, max_tokens=0)[0]
    windows = [row for row in batch["tokens"] if row.any()]
    assert len(windows) > 3 and windows[0][2] == age_40  # the first window: age at the first event
    layout = loader._layout_windows(shards.read_index(str(tmp_path), "train"), SEQ_LEN)
    for row, start in zip(windows[1:], layout["body_start"][1:]):
        assert row[2] == first_age + int(tokenize.age_band(times[start] - birth))
    assert windows[-1][2] > age_40 + 3  # 20+ years later: four bands on
