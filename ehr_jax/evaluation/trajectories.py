"""Sampled rollouts as a MEDS dataset, so the model's imagined futures can be read by any MEDS
tool (ACES on generated timelines, plots, another model) and checked against real ones.

Each rollout becomes one subject whose events start at its case's last usable event (the
model's clock at prediction time). Decoding inverts ehr_jax.data.tokenize:
- interval tokens advance the clock by their lower edge (TIME//1d: one day), as the stop rules
  count time;
- code tokens are joined back into codes (a code's top-level token starts it, `TOP//part`
  tokens continue it; ICD and ATC pieces are rejoined: DIAGNOSIS//ICD10//I50 +
  DIAGNOSIS//ICD10//4-6//23 -> DIAGNOSIS//ICD//10//I5023); a numeric code is one token;
- `Q//k` after a numeric code gives numeric_value = the midpoint of its train quantile bin
  (the edge itself for the open first and last bins); `TXT//v` gives text_value v;
- special and age tokens are dropped (a rollout's [PAD] marks its end).

Files: data/held_out/0.parquet (subject_id, time, code, numeric_value, text_value; valid under
meds.DataSchema), metadata/dataset.json, metadata/subject_splits.parquet, and beside them
rollout_subjects.parquet mapping each int64 subject_id to its "<case>-<rollout>" name, case,
rollout, the case's subject_id and prediction_time (it holds real subject ids, like the
predictions files).
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import meds as meds_schemas
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ehr_jax import rundir
from ehr_jax.data import tokenize

DATA_SCHEMA = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String,
               "numeric_value": pl.Float32, "text_value": pl.String}
_ICD = re.compile(r"ICD(9|10)//(.*)")
_ICD_MORE = re.compile(r"(?:\d\+|4-6|7)//(.*)")  # sub-code pieces: 4+//, 5+//, 3+//, 4-6//, 7//
_ATC_MORE = re.compile(r"[45]//(.*)")


class Decoder:
    """Token ids -> MEDS rows (seconds after the start, code, numeric_value, text_value)."""

    def __init__(self, tok: tokenize.Tokenizer):
        self.tokens = tok.tokens
        self.numeric = tok.numeric_codes
        self.midpoints = {code: _bin_midpoints(edges) for code, edges in tok.edges.items()}
        self.seconds = dict(zip(tokenize.INTERVAL_TOKENS, tokenize.INTERVAL_EDGES_S.tolist()))
        self.skip = set(tokenize.SPECIAL_TOKENS) | set(tokenize.AGE_TOKENS)

    def rows(self, token_ids: np.ndarray) -> list[tuple[int, str, float | None, str | None]]:
        out: list[list] = []  # [seconds, top, parts, numeric_value, text_value, closed]
        clock = 0
        for token_id in np.asarray(token_ids).tolist():
            if token_id == 0:  # [PAD]: the rollout ended
                break
            token = self.tokens[token_id]
            if token in self.seconds:
                clock += self.seconds[token]
            elif token.startswith("Q//"):
                if out and out[-1][5] and out[-1][1] in self.midpoints:
                    out[-1][3] = self.midpoints[out[-1][1]][int(token[3:]) - 1]
            elif token.startswith(tokenize.TEXT_PREFIX):
                if out:
                    out[-1][4] = token[len(tokenize.TEXT_PREFIX):]
            elif token in self.skip:
                continue
            elif token in self.numeric:
                out.append([clock, token, [], None, None, True])
            else:
                top, _, part = token.partition("//")
                if part and out and not out[-1][5] and out[-1][1] == top:
                    out[-1][2].append(part)
                else:
                    out.append([clock, top, [part] if part else [], None, None, False])
        return [(seconds, _join(top, parts), value, text) for seconds, top, parts, value, text, _ in out]


def _bin_midpoints(edges: np.ndarray) -> list[float]:
    """Value of each bin 1..len(edges)+1: the middle of its edges, the edge for the open ends."""
    edges = [float(e) for e in edges]
    if not edges:
        return [float("nan")]
    return [edges[0]] + [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])] + [edges[-1]]


def _join(top: str, parts: list[str]) -> str:
    """A code from its top-level part and the pieces tokenize.split_code made of the rest."""
    pieces: list[str] = []
    for part in parts:
        icd = _ICD.fullmatch(part)
        atc = part.startswith("ATC//") and part[5:]
        if icd:
            more = _ICD_MORE.fullmatch(icd.group(2))
            if more and pieces and pieces[-1].startswith(f"ICD//{icd.group(1)}//"):
                pieces[-1] += more.group(1)
            else:
                pieces.append(f"ICD//{icd.group(1)}//{icd.group(2)}")
        elif atc:
            more = _ATC_MORE.fullmatch(atc)
            if more and pieces and pieces[-1].startswith("ATC//"):
                pieces[-1] += more.group(1)
            else:
                pieces.append(f"ATC//{atc}")
        else:
            pieces.append(part)
    return "//".join([top, *pieces])


def write(out_dir: str | Path, tok: tokenize.Tokenizer, tokens_CxRxT: np.ndarray, start_s_C: np.ndarray,
          labels: pl.DataFrame, dataset_name: str) -> int:
    """Writes the rollouts of C cases (R each) as a MEDS dataset; returns the number of rows.

    labels: the cases' subject_id and prediction_time (row c <-> case c), for the side table.
    """
    out_dir = Path(out_dir)
    decoder = Decoder(tok)
    n_cases, n_rollouts = tokens_CxRxT.shape[:2]
    columns: dict[str, list] = {name: [] for name in DATA_SCHEMA}
    for case in range(n_cases):
        for rollout in range(n_rollouts):
            subject = case * n_rollouts + rollout
            for seconds, code, value, text in decoder.rows(tokens_CxRxT[case, rollout]):
                columns["subject_id"].append(subject)
                columns["time"].append((int(start_s_C[case]) + seconds) * 1_000_000)
                columns["code"].append(code)
                columns["numeric_value"].append(value)
                columns["text_value"].append(text)
    data = pl.DataFrame({**columns, "time": pl.Series(columns["time"], dtype=pl.Int64).cast(pl.Datetime("us"))},
                        schema=DATA_SCHEMA).sort("subject_id", "time", maintain_order=True)
    (out_dir / "data" / "held_out").mkdir(parents=True, exist_ok=True)
    (out_dir / "metadata").mkdir(parents=True, exist_ok=True)
    table = meds_schemas.DataSchema.align(data.to_arrow())
    meds_schemas.DataSchema.validate(table)
    pq.write_table(table, out_dir / "data" / "held_out" / "0.parquet")
    subjects = data["subject_id"].unique().sort()
    splits = pa.table({"subject_id": pa.array(subjects.to_list(), pa.int64()),
                       "split": pa.array([meds_schemas.held_out_split] * len(subjects), pa.string())})
    pq.write_table(meds_schemas.SubjectSplitSchema.align(splits), out_dir / "metadata" / "subject_splits.parquet")
    rundir.write_json_atomic(out_dir / "metadata" / "dataset.json", {
        "dataset_name": dataset_name, "dataset_version": "1", "etl_name": "ehr_jax.evaluation.trajectories",
        "etl_version": "1", "meds_version": meds_schemas.__version__,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    case = np.repeat(np.arange(n_cases), n_rollouts)
    rollout = np.tile(np.arange(n_rollouts), n_cases)
    side = pl.DataFrame({"subject_id": np.arange(n_cases * n_rollouts, dtype=np.int64),
                         "trajectory": [f"{c}-{r}" for c, r in zip(case.tolist(), rollout.tolist())],
                         "case": case, "rollout": rollout,
                         "case_subject_id": labels["subject_id"].to_numpy()[case],
                         "prediction_time": labels["prediction_time"].gather(case)})
    side.write_parquet(out_dir / "rollout_subjects.parquet")
    return data.height
