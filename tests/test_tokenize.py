"""Tokenizer: code splitting, interval tokens at every edge, quantile bins, prefix, no leakage."""

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ehr_jax.data import tokenize, vocab
from ehr_jax.data.tokenize import INTERVAL_EDGES_S, INTERVAL_TOKENS, SIX_MONTHS_S, interval_tokens

from meds_fixtures import BASE, frame, patient


def _fit(frames, min_code_count=1, num_quantiles=10):
    return vocab.fit(frames, min_code_count=min_code_count, num_quantiles=num_quantiles)


def _strings(tok, record):
    return [tok.tokens[i] for i in record.tokens]


def test_fixed_token_ids_follow_the_contract():
    tokens = tokenize.fixed_tokens(10)
    assert tokens[:4] == ["[PAD]", "[UNK]", "[TIMELINE_START]", "[TIMELINE_END]"]
    assert tokens[4:17] == list(INTERVAL_TOKENS) and len(INTERVAL_TOKENS) == 13
    assert tokens[17:27] == [f"Q//{k}" for k in range(1, 11)]
    assert all(t.startswith("AGE//") for t in tokens[27:])


@pytest.mark.parametrize("code,numeric,expected", [
    ("MEDS_DEATH", False, ["MEDS_DEATH"]),
    ("HOSPITAL_ADMISSION//EMERGENCY//ER", False,
     ["HOSPITAL_ADMISSION", "HOSPITAL_ADMISSION//EMERGENCY", "HOSPITAL_ADMISSION//ER"]),
    ("ICU_DISCHARGE//MICU", False, ["ICU_DISCHARGE", "ICU_DISCHARGE//MICU"]),
    ("DIAGNOSIS//ICD//10//I5021", False, ["DIAGNOSIS", "DIAGNOSIS//ICD10//I50", "DIAGNOSIS//ICD10//4-6//21"]),
    ("PROCEDURE//ICD//10//0DTJ4ZZ", False,
     ["PROCEDURE", "PROCEDURE//ICD10//0DT", "PROCEDURE//ICD10//4-6//J4Z", "PROCEDURE//ICD10//7//Z"]),
    ("DIAGNOSIS//ICD//9//4280", False, ["DIAGNOSIS", "DIAGNOSIS//ICD9//428", "DIAGNOSIS//ICD9//4+//0"]),
    ("DIAGNOSIS//ICD//9//E8889", False, ["DIAGNOSIS", "DIAGNOSIS//ICD9//E888", "DIAGNOSIS//ICD9//5+//9"]),
    ("PROCEDURE//ICD//9//3961", False, ["PROCEDURE", "PROCEDURE//ICD9//39", "PROCEDURE//ICD9//3+//61"]),
    ("MEDICATION//ATC//A10BA02//Administered", False,
     ["MEDICATION", "MEDICATION//ATC//A10", "MEDICATION//ATC//4//B", "MEDICATION//ATC//5//A02",
      "MEDICATION//Administered"]),
    ("LAB//RESULT//50912//mg/dL", True, ["LAB//RESULT//50912//mg/dL"]),  # mimic-iv-meds 0.2.0
    ("LAB//50912//mg/dL", True, ["LAB//50912//mg/dL"]),  # older ETL releases
])
def test_split_code(code, numeric, expected):
    assert tokenize.split_code(code, numeric) == expected


def test_interval_tokens_at_every_edge():
    assert interval_tokens(0) == [] and interval_tokens(INTERVAL_EDGES_S[0] - 1) == []
    for i, edge in enumerate(INTERVAL_EDGES_S[:-1]):
        assert interval_tokens(edge) == [INTERVAL_TOKENS[i]]
        assert interval_tokens(INTERVAL_EDGES_S[i + 1] - 1) == [INTERVAL_TOKENS[i]]
    six = int(INTERVAL_EDGES_S[-1])
    assert interval_tokens(six) == ["TIME//6mo"]
    assert interval_tokens(six + 299) == ["TIME//6mo"]
    assert interval_tokens(six + 300) == ["TIME//6mo", "TIME//5m"]
    assert interval_tokens(2 * six + 20 * 86400) == ["TIME//6mo", "TIME//6mo", "TIME//14d"]


def test_vectorised_encoder_matches_interval_rule_at_every_edge():
    """One patient per gap; the encoder's interval tokens equal interval_tokens(gap)."""
    gaps = sorted({0, 1, 299} | {int(e) + d for e in INTERVAL_EDGES_S for d in (-1, 0, 1)}
                  | {int(INTERVAL_EDGES_S[-1]) * 3 + 7 * 86400})
    rows = []
    for s, gap in enumerate(gaps):
        rows += patient(s, [(0, "A", None), (0, "B", None), (gap, "C", None)])
    tok = _fit([frame(rows)])
    encoded = tok.encode_frame(frame(rows))
    for s, record in enumerate(encoded.records()):
        strings = _strings(tok, record)
        # prefix: START GENDER GENDER//F AGE; then A B, then the gap's tokens, then C
        assert strings[record.n_prefix:] == (["A", "B", "C"] if gaps[s] == 0
                                             else ["A", "B", *interval_tokens(gaps[s]), "C"]), gaps[s]


def test_prefix_age_and_times():
    rows = patient(7, [(0, "A", None), (3600, "B", None)], birth_years_before=42.5)
    rows += patient(8, [(0, "A", None)], birth_years_before=None, static=())
    tok = _fit([frame(rows)])
    first, second = list(tok.encode_frame(frame(rows)).records())
    assert _strings(tok, first) == ["[TIMELINE_START]", "GENDER", "GENDER//F", "AGE//40-44", "A", "TIME//1h", "B"]
    assert first.n_prefix == 4 and first.subject_id == 7
    birth, t0 = (int(t.timestamp()) for t in frame(rows)["time"].drop_nulls()[:2])
    # The static prefix carries the birth time; an interval token the next event's time.
    assert first.times.tolist() == [birth] * 4 + [t0] + [t0 + 3600] * 2
    assert _strings(tok, second) == ["[TIMELINE_START]", "AGE//unknown", "A"] and second.n_prefix == 2
    assert second.times.tolist() == [t0] * 3  # no birth: the prefix takes the first event's time
    first_age = tokenize.first_age_id({"tokenizer_version": tokenize.TOKENIZER_VERSION,
                                       "settings": {"num_quantiles": 10}})
    assert tok.tokens[first_age] == "AGE//0-4"
    ten_years_on = t0 + int(10 * 365.25 * 86_400)
    restated = tokenize.restate_age(first.tokens, first.times, first.n_prefix, ten_years_on, first_age)
    assert tok.tokens[restated] == "AGE//50-54"  # 42.5 + 10 years
    assert tokenize.restate_age(second.tokens, second.times, 2, ten_years_on, first_age) == second.tokens[1]


def test_subjects_without_timed_events_are_dropped_and_counted():
    rows = patient(1, [(0, "A", None)]) + patient(2, [])  # subject 2: static + birth only
    encoded = _fit([frame(rows)]).encode_frame(frame(rows))
    assert encoded.subject_ids.tolist() == [1]
    assert encoded.dropped_rows == 1  # GENDER//F of subject 2 (birth becomes the age token)


def test_quantile_bins_are_deciles_fitted_on_train():
    values = np.arange(1, 1001, dtype=np.float32)
    rows = patient(1, [(i, "LAB//X//mg", float(v)) for i, v in enumerate(values)])
    tok = _fit([frame(rows)])
    np.testing.assert_allclose(tok.edges["LAB//X//mg"], np.quantile(values, np.arange(1, 10) / 10), rtol=1e-6)
    probe = patient(2, [(0, "LAB//X//mg", -5.0), (1, "LAB//X//mg", 100.0), (2, "LAB//X//mg", 100.95),
                        (3, "LAB//X//mg", 550.0), (4, "LAB//X//mg", 1e6), (5, "LAB//X//mg", None)])
    (record,) = tok.encode_frame(frame(probe)).records()
    assert _strings(tok, record)[record.n_prefix:] == [
        "LAB//X//mg", "Q//1", "LAB//X//mg", "Q//1", "LAB//X//mg", "Q//2", "LAB//X//mg", "Q//6",
        "LAB//X//mg", "Q//10", "LAB//X//mg"]
    encoded = tok.encode_frame(frame(rows))
    bins = encoded.tokens[np.isin(encoded.tokens, [tok.token_id[f"Q//{k}"] for k in range(1, 11)])]
    assert np.bincount(bins - tok.token_id["Q//1"]).tolist() == [100] * 10


def test_reservoir_is_bounded_and_independent_of_file_order():
    rng = np.random.default_rng(0)
    values = rng.normal(size=4 * vocab.RESERVOIR_SIZE).astype(np.float32)
    frames = [frame(patient(s, [(i, "V", float(v)) for i, v in enumerate(chunk)]))
              for s, chunk in enumerate(np.split(values, 4))]
    forward, backward = _fit(frames), _fit(frames[::-1])
    np.testing.assert_array_equal(forward.edges["V"], backward.edges["V"])
    np.testing.assert_allclose(forward.edges["V"], np.quantile(values, np.arange(1, 10) / 10), atol=0.15)


def test_held_out_only_code_is_unknown_and_fit_ignores_other_splits():
    train = frame(patient(1, [(0, "A", None), (60, "LAB//Y", 1.0)]))
    tok = _fit([train])
    held_out = frame(patient(2, [(0, "HELDOUT_ONLY_CODE", None), (600, "NEWTOP//X//Z", None),
                                 (1200, "LAB//Y", 3.0), (1800, "LAB//UNSEEN", 2.0)]))
    (record,) = tok.encode_frame(held_out).records()
    assert _strings(tok, record)[record.n_prefix:] == [
        "[UNK]", "TIME//5m", "[UNK]", "TIME//5m", "LAB//Y", "Q//10", "TIME//5m", "[UNK]"]
    assert "HELDOUT_ONLY_CODE" not in tok.tokens and tok.code_ids("HELDOUT_ONLY_CODE").tolist() == [1]


def test_min_code_count_maps_rare_tokens_to_unknown():
    rows = patient(1, [(i, "COMMON", None) for i in range(5)] + [(9, "RARE//PART", None), (10, "LAB//Z", 1.0)])
    tok = _fit([frame(rows)], min_code_count=2)
    assert "COMMON" in tok.tokens and "RARE" not in tok.tokens and "LAB//Z" not in tok.tokens
    (record,) = tok.encode_frame(frame(rows)).records()
    assert _strings(tok, record)[-3:] == ["COMMON", "[UNK]", "[UNK]"]  # rare numeric code: no bin


def test_fit_is_deterministic_and_hash_tracks_settings():
    rows = frame(patient(1, [(i, f"C{i % 3}", float(i)) for i in range(50)]))
    a, b = _fit([rows]), _fit([rows])
    assert a.tokens == b.tokens and a.hash() == b.hash()
    assert _fit([rows], num_quantiles=5).hash() != a.hash()
    restored = tokenize.Tokenizer.from_json(a.to_json())
    assert restored.hash() == a.hash()


def test_token_types_cover_names():
    tokens = ["[PAD]", "TIME//1h", "Q//3", "AGE//40-44", "GENDER//F", "DIAGNOSIS//ICD10//I50", "PROCEDURE",
              "LAB//RESULT//50912//mg/dL", "MEDICATION//ATC//A10", "HOSPITAL_ADMISSION", "ICU_DISCHARGE//MICU",
              "MEDS_DEATH", "Blood Pressure", "dynamic//3", "TUMOR_STAGE//2"]
    names = [tokenize.TOKEN_TYPE_NAMES[i] for i in tokenize.token_types(tokens)]
    assert names == ["special", "time", "value", "static", "static", "diagnosis", "procedure", "lab",
                     "medication", "encounter", "encounter", "death", "lab", "other", "other"]


def test_meds_testing_helpers_generated_dataset_tokenizes(generated_sample_MEDS):
    from ehr_jax.data import meds
    ds = meds.open_dataset(generated_sample_MEDS)
    tok = _fit(meds.iter_split_frames(ds, "train"))
    n_subjects = 0
    for split in meds.SPLITS:
        for f in meds.iter_split_frames(ds, split):
            encoded = tok.encode_frame(f)
            n_subjects += len(encoded.subject_ids)
            assert (encoded.tokens >= 0).all() and (encoded.tokens < len(tok.tokens)).all()
            assert (np.diff(encoded.starts) > encoded.n_prefix).all()
            starts = encoded.tokens[encoded.starts[:-1]]
            assert (starts == tok.token_id["[TIMELINE_START]"]).all()
    splits = pl.read_parquet(Path(generated_sample_MEDS) / "metadata/subject_splits.parquet")
    assert 0 < n_subjects <= splits.height


EPOCH = dt.datetime(1970, 1, 1)
CODE_POOL = ["GENDER//F", "RACE//WHITE", "HOSPITAL_ADMISSION//EW EMER.//ER", "HOSPITAL_DISCHARGE//HOME",
             "MEDS_DEATH", "DIAGNOSIS//ICD//10//I5021", "DIAGNOSIS//ICD//9//E8889", "PROCEDURE//ICD//9//3961",
             "MEDICATION//ATC//A10BA02//Administered", "LAB//50912//mg/dL", "LAB//RESULT//51221//%", "VITAL//HR"]


def _seconds(t: dt.datetime) -> int:
    return (t - EPOCH) // dt.timedelta(seconds=1)


def reference_encode(tok, frame: pl.DataFrame) -> list[tuple[int, list[int], list[int], int]]:
    """docs/DATA.md's token scheme, one row at a time: (subject, tokens, times, n_prefix) each."""
    out = []
    for (subject,), rows in frame.group_by("subject_id", maintain_order=True):
        birth = rows.filter(tokenize.is_birth(pl.col("code")))["time"].drop_nulls().min()
        rows = rows.filter(~tokenize.is_birth(pl.col("code")))
        first = rows["time"].drop_nulls().min()
        if first is None:
            continue
        tokens, times, previous, n_prefix = [tok.token_id["[TIMELINE_START]"]], [_seconds(first)], None, 0
        for _, time, code, value in rows.iter_rows():
            if time is not None and previous is None:  # the first timed row: the age band, then the row
                band = min(max(int((time - birth) / dt.timedelta(days=365.25) // 5), 0), 19) if birth else 20
                tokens.append(tok.token_id[tokenize.AGE_TOKENS[band]])
                times.append(_seconds(first))
                n_prefix = len(tokens)
            elif time is not None and time != previous:
                for token in interval_tokens((time - previous) // dt.timedelta(seconds=1)):
                    tokens.append(tok.token_id[token])
                    times.append(_seconds(time))
            row_tokens = tok.code_ids(code).tolist()
            if code in tok.edges and value is not None:
                row_tokens.append(tok.token_id[f"Q//{1 + sum(value >= e for e in tok.edges[code])}"])
            tokens += row_tokens
            times += [_seconds(time if time is not None else first)] * len(row_tokens)
            previous = time if time is not None else previous
        # The static prefix carries the birth time (the first event's when later or unknown).
        times[:n_prefix] = [_seconds(min(birth, first)) if birth else _seconds(first)] * n_prefix
        out.append((subject, tokens, times, n_prefix))
    return out


def random_meds_frame(rng: np.random.Generator, n_subjects: int, unseen: str) -> pl.DataFrame:
    """Static rows, maybe a birth (sometimes after the first event), and timed rows whose gaps hit
    0 (same timestamp), every interval edge and its neighbours, and long multi-6mo gaps."""
    gaps = [0, 0, 0, 1, 299, 3 * SIX_MONTHS_S + 86_400] + [int(e) + d for e in INTERVAL_EDGES_S for d in (-1, 0, 1)]
    codes = CODE_POOL + [unseen]
    rows = []
    for subject in range(n_subjects):
        rows += [(subject, None, codes[i], None) for i in rng.choice(3, rng.integers(0, 3), replace=False)]
        t = BASE + dt.timedelta(microseconds=int(rng.integers(0, 1_000_000)) * int(rng.random() < 0.3))
        if rng.random() < 0.8:
            rows.append((subject, t - dt.timedelta(days=float(rng.uniform(-400, 110 * 365.25))), "MEDS_BIRTH", None))
        for _ in range(rng.integers(0, 12)):
            code = codes[rng.integers(len(codes))]
            value = float(rng.normal(1, 2)) if code.startswith(("LAB", "VITAL")) and rng.random() < 0.8 else None
            rows.append((subject, t, code, value))
            t += dt.timedelta(seconds=int(gaps[rng.integers(len(gaps))]))
    return frame(rows)


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_encoder_equals_the_per_row_reference(seed):
    rng = np.random.default_rng(seed)
    tok = _fit([random_meds_frame(rng, 40, unseen="TRAIN_ONLY//X")], min_code_count=3, num_quantiles=5)
    held_out = random_meds_frame(rng, 40, unseen="UNSEEN//CODE//9")
    encoded = tok.encode_frame(held_out)
    got = [(r.subject_id, r.tokens.tolist(), r.times.tolist(), r.n_prefix) for r in encoded.records()]
    assert got == reference_encode(tok, held_out)


def _with_text(rows: list[tuple], texts: dict[str, list]) -> pl.DataFrame:
    """frame(rows) plus a text_value column: texts[code] gives the values of code's rows in order."""
    queues = {code: list(values) for code, values in texts.items()}
    column = [queues[r[2]].pop(0) if r[2] in queues else None for r in rows]
    return frame(rows).with_columns(text_value=pl.Series(column, dtype=pl.String))


def test_low_cardinality_text_values_become_tokens_fitted_on_train():
    """URINE//COLOR (2 values) gets TXT// tokens; NOTE (12 values > 8) and a numeric row's text
    do not; a value seen only outside train is [UNK]; max_text_values=0 turns it off."""
    events = ([(i, "URINE//COLOR", None) for i in range(5)] + [(10 + i, "NOTE", None) for i in range(12)]
              + [(30, "LAB//X", 7.4)])
    rows = patient(1, events)
    train = _with_text(rows, {"URINE//COLOR": ["YELLOW"] * 3 + ["RED"] * 2,
                              "NOTE": [f"free text {i}" for i in range(12)], "LAB//X": ["7.4"]})
    tok = vocab.fit([train], min_code_count=1, num_quantiles=10, max_text_values=8)
    assert tok.text_codes == {"URINE//COLOR"}
    assert {t for t in tok.tokens if t.startswith("TXT//")} == {"TXT//YELLOW", "TXT//RED"}
    (record,) = tok.encode_frame(train).records()
    strings = _strings(tok, record)
    assert strings.count("TXT//YELLOW") == 3 and strings.count("TXT//RED") == 2
    assert strings[-2:] == ["LAB//X", "Q//10"]  # the number gets its bin, its text nothing
    held_out = _with_text(patient(2, [(0, "URINE//COLOR", None), (1, "URINE//COLOR", None), (2, "NOTE", None)]),
                          {"URINE//COLOR": ["BLUE", "RED"], "NOTE": ["free text 0"]})
    (record,) = tok.encode_frame(held_out).records()
    assert _strings(tok, record)[record.n_prefix:] == [
        "URINE", "URINE//COLOR", "[UNK]", "URINE", "URINE//COLOR", "TXT//RED", "NOTE"]
    off = vocab.fit([train], min_code_count=1, num_quantiles=10, max_text_values=0)
    assert not off.text_codes and not any(t.startswith("TXT//") for t in off.tokens)
    assert tokenize.Tokenizer.from_json(tok.to_json()).text_codes == tok.text_codes
