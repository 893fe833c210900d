"""ETHOS-style tokens for MEDS timelines: token strings, code splitting and vectorised encoding.

A patient becomes one token sequence (docs/DATA.md shows an example):

    [TIMELINE_START] <static codes> AGE//<band>   <- the static prefix (n_prefix tokens)
    <event> <event> TIME//1h <event> ...          <- timed rows, interval tokens between times

Rules, each chosen so one tokenizer serves every ETL's spelling:
- A code with numeric values in train (a lab, a vital) is one token for the whole code plus a
  value-bin token `Q//k` (per-code quantiles fitted on train), whatever the ETL calls it.
- A code with at most `max_text_values` distinct text values in train (rows without a numeric
  value) is followed by a `TXT//<value>` token when a row has a text value and no number
  (`[UNK]` for a value unseen in train); free text and numbers written as text stay out.
- Other codes split on `//`: the top-level part first (so MEDS_DEATH, HOSPITAL_ADMISSION, ...
  are tokens on their own), then one `TOP//part` token per remaining part, with ICD codes split
  into category and subcategory and ATC codes into levels (`split_code`).
- Interval tokens between consecutive distinct event times (`interval_tokens`).
- MEDS_BIRTH rows are not emitted: they set the age band at the first timed event, and the
  static prefix's tokens carry the birth time, so that a training window (ehr_jax.data.loader)
  or an evaluation prompt starting years later restates the age for its own start.
- No [TIMELINE_END]: the end of a record is the end of data extraction, not a clinical event,
  and windows never span patients, so the model needs no separator (the id stays reserved).
Fitting (vocabulary, quantile edges) lives in ehr_jax.data.vocab.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

from ehr_jax.data.shards import PatientRecord
from ehr_jax.errors import DataError

TOKENIZER_VERSION = 2  # bump when a rule below changes: it feeds the tokenizer hash
# 2: static prefix tokens carry the birth time, so windows and prompts restate the age
TOKENIZER_FILE = "tokenizer.json"  # in the prepared dir: vocabulary, numeric codes, quantile edges
PAD, UNK, TIMELINE_START, TIMELINE_END = "[PAD]", "[UNK]", "[TIMELINE_START]", "[TIMELINE_END]"
SPECIAL_TOKENS = (PAD, UNK, TIMELINE_START, TIMELINE_END)
_MINUTE, _HOUR, _DAY = 60, 3600, 86400
INTERVAL_EDGES_S = np.array([5 * _MINUTE, 15 * _MINUTE, _HOUR, 2 * _HOUR, 6 * _HOUR, 12 * _HOUR, _DAY,
                             3 * _DAY, 7 * _DAY, 14 * _DAY, 30 * _DAY, 90 * _DAY, 180 * _DAY], np.int64)
INTERVAL_TOKENS = ("TIME//5m", "TIME//15m", "TIME//1h", "TIME//2h", "TIME//6h", "TIME//12h", "TIME//1d",
                   "TIME//3d", "TIME//7d", "TIME//14d", "TIME//30d", "TIME//90d", "TIME//6mo")
SIX_MONTHS_S = int(INTERVAL_EDGES_S[-1])
AGE_BAND_YEARS = 5
AGE_TOKENS = tuple(f"AGE//{a}-{a + AGE_BAND_YEARS - 1}" for a in range(0, 95, AGE_BAND_YEARS)) + (
    "AGE//95+", "AGE//unknown")
BIRTH_CODE = "MEDS_BIRTH"
TEXT_PREFIX = "TXT//"  # TXT//<value>: a text_value of a code with few distinct ones (vocab.fit)
TOKEN_TYPE_NAMES = ("special", "time", "value", "static", "diagnosis", "procedure", "lab",
                    "medication", "encounter", "death", "other")
# Token type by keyword in a token's top-level part, first match wins (see token_types).
_TYPE_KEYWORDS = (("death", ("DEATH",)), ("static", ("GENDER", "SEX", "RACE", "ETHNIC", "MARITAL",
                  "LANGUAGE", "INSURANCE", "BIRTH")), ("diagnosis", ("DIAGNOS", "ICD", "DRG")),
                  ("procedure", ("PROCEDURE",)), ("lab", ("LAB", "VITAL", "CHART", "OMR", "BLOOD PRESSURE",
                  "WEIGHT", "HEIGHT", "BMI")),
                  ("medication", ("MEDICATION", "DRUG", "ATC", "PRESCRIPTION", "INFUSION")),
                  ("encounter", ("ADMISSION", "DISCHARGE", "TRANSFER", "ICU", "ED_", "VISIT", "ENCOUNTER")))


def text_token(value: str) -> str:
    return TEXT_PREFIX + value


def value_tokens(num_quantiles: int) -> tuple[str, ...]:
    return tuple(f"Q//{k}" for k in range(1, num_quantiles + 1))


def fixed_tokens(num_quantiles: int) -> list[str]:
    """Tokens every vocabulary starts with, in the order docs/CONTRACTS.md pins."""
    return [*SPECIAL_TOKENS, *INTERVAL_TOKENS, *value_tokens(num_quantiles), *AGE_TOKENS]


def interval_tokens(gap_s: int) -> list[str]:
    """Tokens for a gap between two distinct event times (seconds).

    Under 5 minutes: none. Under 180 days: the token whose lower edge is the largest one
    <= gap. From 180 days: `TIME//6mo` floor(gap / 180d) times, then the token of the
    remainder (if >= 5 minutes), so a 200-day gap is TIME//6mo TIME//14d.
    """
    n_six, remainder = divmod(int(gap_s), SIX_MONTHS_S)
    band = int(np.searchsorted(INTERVAL_EDGES_S[:-1], remainder, side="right")) - 1
    return [INTERVAL_TOKENS[-1]] * n_six + ([INTERVAL_TOKENS[band]] if band >= 0 else [])


def split_code(code: str, numeric: bool = False) -> list[str]:
    """Token strings of one code; `numeric` codes (values in train) stay whole."""
    if numeric:
        return [code]
    parts = [p for p in code.split("//") if p]
    if len(parts) <= 1:
        return [code]
    top, rest = parts[0], parts[1:]
    tokens = [top]
    i = 0
    while i < len(rest):
        part = rest[i].upper()
        if part == "ICD" and i + 2 < len(rest):
            tokens += _icd_tokens(top, rest[i + 1], rest[i + 2])
            i += 3
        elif part == "ATC" and i + 1 < len(rest):
            tokens += _atc_tokens(top, rest[i + 1])
            i += 2
        else:
            tokens.append(f"{top}//{rest[i]}")
            i += 1
    return tokens


def _icd_tokens(top: str, version: str, code: str) -> list[str]:
    """ICD category (3 characters; 4 for ICD-9 E-codes, 2 for ICD-9 procedures), then the rest."""
    code = code.replace(".", "").upper()
    if version == "9":
        n_cat = 2 if "PROC" in top.upper() else (4 if code.startswith("E") else 3)
        groups = [(code[:n_cat], ""), (code[n_cat:], f"{n_cat + 1}+//")]
    else:
        groups = [(code[:3], ""), (code[3:6], "4-6//"), (code[6:], "7//")]
    return [f"{top}//ICD{version}//{label}{chunk}" for chunk, label in groups if chunk]


def _atc_tokens(top: str, code: str) -> list[str]:
    """ATC levels 1-2 (A10), level 3 (B), levels 4-5 (A02)."""
    groups = [(code[:3], ""), (code[3:4], "4//"), (code[4:], "5//")]
    return [f"{top}//ATC//{label}{chunk}" for chunk, label in groups if chunk]


def token_types(tokens: list[str]) -> np.ndarray:
    """Type id (index into TOKEN_TYPE_NAMES) per token, for the trainer's per-type loss."""
    type_id = {name: i for i, name in enumerate(TOKEN_TYPE_NAMES)}
    out = np.empty(len(tokens), np.int32)
    for i, token in enumerate(tokens):
        out[i] = type_id[_token_type(token)]
    return out


def _token_type(token: str) -> str:
    if token in SPECIAL_TOKENS:
        return "special"
    if token.startswith("TIME//"):
        return "time"
    if token.startswith(("Q//", TEXT_PREFIX)):
        return "value"
    if token.startswith("AGE//"):
        return "static"
    top = token.split("//", 1)[0].upper()
    for name, keywords in _TYPE_KEYWORDS:
        if any(k in top for k in keywords):
            return name
    return "other"


def is_birth(code: pl.Expr) -> pl.Expr:
    return (code == BIRTH_CODE) | code.str.starts_with(BIRTH_CODE + "//")


def tokenizable_rows(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Rows that become tokens, birth time per subject, and rows dropped with their subject.

    Birth rows become the age token; a subject with no timed row besides its birth has no
    timeline to model and is dropped (and counted).
    """
    birth = is_birth(pl.col("code"))
    births = (frame.filter(birth & pl.col("time").is_not_null())
              .group_by("subject_id").agg(pl.col("time").min().alias("birth_time")))
    rows = frame.filter(~birth)
    has_timed = pl.col("time").is_not_null().any().over("subject_id")
    kept = rows.filter(has_timed)
    return kept, births, rows.height - kept.height


@dataclasses.dataclass
class Tokenizer:
    """A fitted vocabulary plus per-code quantile edges; encodes validated MEDS frames."""

    tokens: list[str]
    num_quantiles: int
    numeric_codes: frozenset  # train codes that carry numeric values (kept whole)
    edges: dict  # numeric code in the vocabulary -> num_quantiles - 1 ascending edges
    text_codes: frozenset = frozenset()  # codes whose few text values become TXT// tokens

    def __post_init__(self):
        self.token_id = {t: i for i, t in enumerate(self.tokens)}
        self._code_cache: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self._interval_ids = np.array([self.token_id[t] for t in INTERVAL_TOKENS], np.int32)
        self._age_ids = np.array([self.token_id[t] for t in AGE_TOKENS], np.int32)
        self._q_base = self.token_id["Q//1"]

    def to_json(self) -> dict:
        return {"version": TOKENIZER_VERSION, "tokens": self.tokens, "num_quantiles": self.num_quantiles,
                "numeric_codes": sorted(self.numeric_codes),
                "edges": {c: [float(x) for x in e] for c, e in sorted(self.edges.items())},
                "text_codes": sorted(self.text_codes)}

    @classmethod
    def from_json(cls, obj: dict) -> "Tokenizer":
        return cls(obj["tokens"], obj["num_quantiles"], frozenset(obj["numeric_codes"]),
                   {c: np.asarray(e, np.float32) for c, e in obj["edges"].items()},
                   frozenset(obj.get("text_codes", ())))

    @classmethod
    def load(cls, prepared_dir: str | os.PathLike) -> "Tokenizer":
        """The tokenizer a prepared dir was made with (evaluation decodes value bins with it)."""
        path = Path(prepared_dir) / TOKENIZER_FILE
        if not path.exists():
            raise DataError(f"{path}: missing; re-run `python -m ehr_jax.data.prepare`")
        return cls.from_json(json.loads(path.read_text()))

    def hash(self) -> str:
        """Changes whenever the vocabulary, the bins or the rules change."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def code_ids(self, code: str) -> np.ndarray:
        """Token ids of one code; unknown parts become one [UNK] (runs collapse)."""
        return self._code_entry(code)[0]

    def _code_entry(self, code: str) -> tuple[np.ndarray, np.ndarray | None]:
        entry = self._code_cache.get(code)
        if entry is None:
            unk = self.token_id[UNK]
            ids: list[int] = []
            for token in split_code(code, code in self.numeric_codes):
                i = self.token_id.get(token, unk)
                if not (i == unk and ids and ids[-1] == unk):
                    ids.append(i)
            entry = (np.array(ids, np.int32), self.edges.get(code))
            self._code_cache[code] = entry
        return entry

    def encode_frame(self, frame: pl.DataFrame) -> "EncodedFrame":
        """Tokens and times of every subject in one validated frame, without per-row Python."""
        return _encode_rows(self, frame)


@dataclasses.dataclass
class EncodedFrame:
    """Flat tokens/times of consecutive subjects; `starts` has one more entry than subjects."""

    subject_ids: np.ndarray  # int64[S]
    starts: np.ndarray  # int64[S+1] offsets into tokens
    n_prefix: np.ndarray  # int32[S]
    tokens: np.ndarray  # int32[T]
    times: np.ndarray  # int64[T] seconds since epoch
    num_events: int  # MEDS rows encoded (static and timed; MEDS_BIRTH rows, folded into the age token, excluded)
    dropped_rows: int  # rows of subjects without timed events

    def records(self) -> Iterator[PatientRecord]:
        for s, subject in enumerate(self.subject_ids.tolist()):
            a, b = self.starts[s], self.starts[s + 1]
            yield PatientRecord(subject, self.tokens[a:b], self.times[a:b], int(self.n_prefix[s]))


def _code_table(tok: Tokenizer, codes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CSR token ids (offsets, flat) and quantile edges (with a has-edges mask) per distinct code."""
    entries = [tok._code_entry(c) for c in codes]
    lengths = np.array([len(ids) for ids, _ in entries], np.int64)
    offsets = np.zeros(len(codes) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([ids for ids, _ in entries]) if entries else np.zeros(0, np.int32)
    edges = np.full((len(codes), max(tok.num_quantiles - 1, 1)), np.inf, np.float32)
    has_edges = np.zeros(len(codes), bool)
    for u, (_, e) in enumerate(entries):
        if e is not None:
            edges[u, :len(e)] = e
            has_edges[u] = True
    return offsets, flat, edges, has_edges


def _age_token_ids(tok: Tokenizer, t_us: np.ndarray, birth_us: np.ndarray, has_birth: np.ndarray) -> np.ndarray:
    band = age_band((t_us - birth_us) / 1e6)
    return tok._age_ids[np.where(has_birth, band, len(AGE_TOKENS) - 1)]


def age_band(seconds: np.ndarray) -> np.ndarray:
    """Index into AGE_TOKENS of ages given in seconds since birth (5-year bands, then 95+)."""
    years = np.asarray(seconds, np.float64) / (365.25 * _DAY)
    return np.clip(np.floor(years / AGE_BAND_YEARS), 0, len(AGE_TOKENS) - 2).astype(np.int64)


def first_age_id(manifest: dict) -> int | None:
    """Token id of AGE_TOKENS[0] (fixed_tokens' order) when the prepared dir's prefixes carry
    the birth time (tokenizer version >= 2), else None: older records cannot restate the age."""
    if manifest.get("tokenizer_version", 1) < 2:
        return None
    return len(SPECIAL_TOKENS) + len(INTERVAL_TOKENS) + int(manifest["settings"]["num_quantiles"])


def restate_age(tokens: np.ndarray, times: np.ndarray, n_prefix: int, at_s: np.ndarray | int,
                first_age: int) -> np.ndarray:
    """The prefix's age token (its last token) for the age at `at_s` instead of at the first
    event: training windows restate it at their start, evaluation prompts at the prediction
    time. The prefix's time is the birth time (TOKENIZER_VERSION >= 2). A prefix without a
    known age (AGE//unknown) or without its age token (cut) is left alone. Returns the id."""
    token = int(tokens[n_prefix - 1]) if n_prefix else -1
    if not first_age <= token < first_age + len(AGE_TOKENS) - 1:
        return token
    return first_age + int(age_band(np.asarray(at_s) - int(times[n_prefix - 1])))


def _text_ids(tok: Tokenizer, rows: pl.DataFrame, codes: list[str], code_idx: np.ndarray,
              values: np.ndarray) -> np.ndarray:
    """Per row: the TXT// token id of its text_value ([UNK] for a value unseen in train), or -1
    (no text token: not a text code, no text, or a numeric value, which gets its bin instead)."""
    out = np.full(len(code_idx), -1, np.int32)
    if not tok.text_codes or "text_value" not in rows.columns:
        return out
    is_text_code = np.array([c in tok.text_codes for c in codes], bool)
    wanted = np.flatnonzero(is_text_code[code_idx] & rows["text_value"].is_not_null().to_numpy()
                            & np.isnan(values))
    unk = tok.token_id[UNK]
    texts = rows["text_value"].gather(wanted).to_list()
    out[wanted] = [tok.token_id.get(text_token(t), unk) for t in texts]
    return out


def _row_structure(subj: np.ndarray, timed: np.ndarray, t_us: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per row: first of its subject, first timed of its subject, and its interval tokens
    (number of TIME//6mo, remainder band or -1, total), all by interval_tokens' rule."""
    first_row = np.ones(len(subj), bool)
    first_row[1:] = subj[1:] != subj[:-1]
    prev_timed = np.zeros_like(first_row)
    prev_timed[1:] = timed[:-1]
    prev_timed &= ~first_row
    first_timed = timed & ~prev_timed
    prev_t = np.zeros_like(t_us)
    prev_t[1:] = t_us[:-1]
    new_time = timed & prev_timed & (t_us != prev_t)
    gap_s = np.where(new_time, (t_us - prev_t) // 1_000_000, 0)
    n_six, remainder = np.divmod(gap_s, SIX_MONTHS_S)
    band = np.searchsorted(INTERVAL_EDGES_S[:-1], remainder, side="right") - 1
    n_interval = np.where(new_time, n_six + (band >= 0), 0)
    return first_row, first_timed, n_six, band, n_interval


def _encode_rows(tok: Tokenizer, frame: pl.DataFrame) -> EncodedFrame:
    rows, births, dropped_rows = tokenizable_rows(frame)
    if rows.height == 0:
        empty = np.zeros(0, np.int64)
        return EncodedFrame(empty, np.zeros(1, np.int64), empty.astype(np.int32), empty.astype(np.int32),
                            empty, 0, dropped_rows)
    rows = rows.join(births, on="subject_id", how="left", maintain_order="left")
    subj = rows["subject_id"].to_numpy()
    timed = rows["time"].is_not_null().to_numpy()
    t_us = rows["time"].dt.epoch("us").fill_null(0).to_numpy()
    codes = rows["code"].unique().sort()
    code_idx = rows["code"].cast(pl.Enum(codes)).to_physical().to_numpy().astype(np.int64)
    offsets, flat, edges, has_edges = _code_table(tok, codes.to_list())
    values = rows["numeric_value"].fill_null(np.nan).to_numpy()
    has_bin = has_edges[code_idx] & ~np.isnan(values)
    bins = np.zeros(len(subj), np.int32)
    bin_rows = np.flatnonzero(has_bin)
    bins[bin_rows] = (values[bin_rows, None] >= edges[code_idx[bin_rows]]).sum(axis=1)
    text_ids = _text_ids(tok, rows, codes.to_list(), code_idx, values)
    has_text = text_ids >= 0

    first_row, first_timed, n_six, band, n_interval = _row_structure(subj, timed, t_us)
    n_pre = first_row.astype(np.int64) + first_timed + n_interval
    code_len = np.diff(offsets)[code_idx]
    row_start = np.zeros(len(subj) + 1, np.int64)
    np.cumsum(n_pre + code_len + has_bin + has_text, out=row_start[1:])
    slot_row = np.repeat(np.arange(len(subj), dtype=np.int32), np.diff(row_start))
    # rel: a slot's position relative to its row's first code token (< 0: prefix or interval).
    rel = np.arange(row_start[-1]) - (row_start[:-1] + n_pre)[slot_row]
    row_code_len = code_len[slot_row]
    tokens = flat[np.clip(rel + offsets[code_idx][slot_row], 0, max(len(flat) - 1, 0))]
    bin_slots = np.flatnonzero((rel == row_code_len) & has_bin[slot_row])
    tokens[bin_slots] = tok._q_base + bins[slot_row[bin_slots]]
    text_slots = np.flatnonzero((rel == row_code_len + has_bin[slot_row]) & has_text[slot_row])
    tokens[text_slots] = text_ids[slot_row[text_slots]]

    pre_slots = np.flatnonzero(rel < 0)
    r = slot_row[pre_slots]
    kp = rel[pre_slots] + n_pre[r]
    is_start = first_row[r] & (kp == 0)
    after_start = kp - first_row[r]
    is_age = ~is_start & first_timed[r] & (after_start == 0)
    birth_us = rows["birth_time"].dt.epoch("us").fill_null(0).to_numpy()
    age_ids = _age_token_ids(tok, t_us[r], birth_us[r], rows["birth_time"].is_not_null().to_numpy()[r])
    interval_ids = np.where(after_start < n_six[r], tok._interval_ids[-1], tok._interval_ids[band[r]])
    tokens[pre_slots] = np.where(is_start, tok.token_id[TIMELINE_START], np.where(is_age, age_ids, interval_ids))

    first_rows, first_timed_rows = np.flatnonzero(first_row), np.flatnonzero(first_timed)
    subject_of_row = np.cumsum(first_row) - 1
    first_time_us = t_us[first_timed_rows][subject_of_row]
    times = np.floor_divide(np.where(timed, t_us, first_time_us), 1_000_000)[slot_row]
    n_prefix = row_start[first_timed_rows] + first_row[first_timed_rows] + 1 - row_start[first_rows]
    starts = np.append(row_start[first_rows], row_start[-1])
    # The static prefix carries the birth time (the first event's when unknown or later), so
    # the age at any later time follows from the record (loader windows, evaluation prompts).
    has_birth_s = rows["birth_time"].is_not_null().to_numpy()[first_rows]
    prefix_s = np.floor_divide(np.where(has_birth_s, np.minimum(birth_us[first_rows], t_us[first_timed_rows]),
                                        t_us[first_timed_rows]), 1_000_000)
    slot_subject = subject_of_row[slot_row]
    in_prefix = np.arange(len(times)) - starts[:-1][slot_subject] < n_prefix[slot_subject]
    times[in_prefix] = prefix_s[slot_subject[in_prefix]]
    return EncodedFrame(subj[first_rows], starts, n_prefix.astype(np.int32), tokens, times,
                        rows.height, dropped_rows)
