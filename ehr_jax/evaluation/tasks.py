"""Clinical prediction tasks: labels in the MEDS label schema, and the history a model may see.

Labels are (subject_id, prediction_time, boolean_value) rows, read either from a user's parquet
files (TASK_ROOT/TASK_NAME/**/*.parquet, as ACES writes them) or derived here from MEDS codes.
The built-in definitions match codes by prefix (`HOSPITAL_ADMISSION`, `HOSPITAL_DISCHARGE`,
`ICU_ADMISSION`, `MEDS_DEATH`) so the synthetic data and every MIMIC-IV MEDS ETL release work:

- mortality: prediction at admission + 24h for stays still ongoing and alive then; positive if
  the subject dies (MEDS_DEATH, or a discharge coded as DIED/EXPIRED) by discharge.
- icu_admission: prediction at admission (most ICU transfers come within hours: MIMIC's ED ->
  ICU path, and the synthetic data's median of 4 h would leave almost no positives at + 24h);
  stays whose ICU admission shares the admission timestamp are excluded (already usable, the
  answer is known); positive if ICU_ADMISSION happens after admission and by discharge.
- long_stay: prediction at admission + 24h; positive if discharge comes > 7 days after admission.
- readmission_30d: prediction at discharge; in-hospital deaths excluded; positive if a new
  HOSPITAL_ADMISSION follows within 30 days.

A death closes a stay that has no discharge row before it. Stays without a discharge or a
death, or overlapping the next admission, are ambiguous and skipped.
"Usable at prediction time" follows MEDS: events at or before prediction_time, nothing after.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

import numpy as np
import polars as pl

from ehr_jax.data import tokenize
from ehr_jax.errors import ConfigError, DataError

LABEL_COLUMNS = {"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"),
                 "boolean_value": pl.Boolean}
OTHER_VALUE_COLUMNS = ("integer_value", "float_value", "categorical_value")  # ACES writes them null
SPLIT_NAMES = ("train", "tuning", "held_out")
ADMISSION, DISCHARGE, ICU, DEATH = "HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE", "ICU_ADMISSION", "MEDS_DEATH"
DIED_SUFFIXES = ("DIED", "EXPIRED", "DEATH", "DEAD")  # discharge locations that mean death
DAY_US = 86_400 * 1_000_000
STAYS_VERSION = 2  # bump when hospital_stays changes: cached stays of older rules are not reused
LONG_STAY_QUANTILE = 0.95  # rollouts of stay-bounded tasks get the time of a stay this long


@dataclasses.dataclass(frozen=True)
class OutcomeRule:
    """How a sampled future answers a task (ETHOS-style rollouts): prefixes of token strings.

    A rollout ends at the first positive token (outcome), at a negative token (no outcome,
    after the rest of that timestamp's tokens, which may still carry the outcome), when its
    summed time-interval tokens pass the horizon (outcome = horizon_outcome), or at the token
    cap (no outcome). The horizon is measured from `horizon_anchor`: the prediction time or
    the last admission in the history (known at prediction time, so no label leaks).
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    horizon_days: float | None = None
    horizon_anchor: str = "prediction"  # or "admission"
    horizon_outcome: bool = False


BUILTIN_RULES: dict[str, OutcomeRule] = {
    "mortality": OutcomeRule(positive=(DEATH,), negative=(DISCHARGE,)),
    "icu_admission": OutcomeRule(positive=(ICU,), negative=(DISCHARGE, DEATH)),
    "long_stay": OutcomeRule(positive=(), negative=(DISCHARGE, DEATH), horizon_days=7.0,
                             horizon_anchor="admission", horizon_outcome=True),
    "readmission_30d": OutcomeRule(positive=(ADMISSION,), negative=(DEATH,), horizon_days=30.0),
}
BUILTIN_TASKS = tuple(BUILTIN_RULES)
_RULE_FORMS = ("(task, built-in task name), e.g. ('inhospital_mortality', 'mortality'), or (task, "
               "outcome prefixes, stopping prefixes, horizon days[, reaching the horizon is the "
               "outcome]), e.g. ('death_30d', 'MEDS_DEATH', '', 30) with prefixes comma-separated "
               "and horizon 0 for none")


def parse_task_rules(entries) -> dict[str, OutcomeRule]:
    """config.eval.task_rules -> {label task name: OutcomeRule}, so zero-shot and next-token run
    on a user's tasks. Entries are tuples (see _RULE_FORMS) or a mapping {task: rest of the
    tuple, or a built-in name}; ConfigError names what is wrong."""
    if isinstance(entries, str):
        raise ConfigError(f"config.eval.task_rules={entries!r}; expected a tuple of {_RULE_FORMS}")
    if hasattr(entries, "items"):
        entries = [(task, *((spec,) if isinstance(spec, str) else tuple(spec))) for task, spec in entries.items()]
    rules = {}
    for entry in entries or ():
        entry = (entry,) if isinstance(entry, str) else tuple(entry)
        if len(entry) == 2 and isinstance(entry[1], str):
            task, name = entry
            if name not in BUILTIN_RULES:
                raise ConfigError(f"config.eval.task_rules: {task!r} maps to {name!r}, which is not a "
                                  f"built-in rule; expected one of {BUILTIN_TASKS}")
            rules[str(task)] = BUILTIN_RULES[name]
        elif len(entry) in (4, 5):
            task, positive, negative, horizon = entry[:4]
            try:
                horizon = float(horizon)
            except (TypeError, ValueError):
                raise ConfigError(f"config.eval.task_rules: {task!r} has horizon {horizon!r}; expected "
                                  "a number of days (0: none)") from None
            rule = OutcomeRule(_prefixes(positive), _prefixes(negative), horizon if horizon > 0 else None,
                               horizon_outcome=bool(entry[4]) if len(entry) == 5 else False)
            if not rule.positive and not (rule.horizon_outcome and rule.horizon_days):
                raise ConfigError(f"config.eval.task_rules: {task!r} has no outcome prefix and no "
                                  "horizon that counts as the outcome; a rollout could never be positive")
            rules[str(task)] = rule
        else:
            raise ConfigError(f"config.eval.task_rules: entry {entry!r}; expected {_RULE_FORMS}")
    return rules


def _prefixes(value) -> tuple[str, ...]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    return tuple(p.strip() for p in parts if p.strip())


def derive_labels(task: str, frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """Built-in labels from MEDS frames (subject_id, time, code), sorted by subject and time."""
    _check_task(task)
    return labels_from_stays(task, hospital_stays(frames))


def _check_task(task: str) -> None:
    if task not in BUILTIN_RULES:
        raise DataError(f"config.eval.tasks: unknown built-in task {task!r}; expected one of "
                        f"{BUILTIN_TASKS} (or set config.eval.labels_dir to read your own labels)")


def labels_from_stays(task: str, stays: pl.DataFrame) -> pl.DataFrame:
    """A built-in task's labels from hospital_stays() output (computed once for all tasks)."""
    _check_task(task)
    day = pl.duration(days=1)
    predict_day2 = pl.col("admit") + day
    alive_at = lambda t: pl.col("death").is_null() | (pl.col("death") > t)  # noqa: E731
    if task == "icu_admission":
        cases = stays.filter((pl.col("discharge") > pl.col("admit")) & alive_at(pl.col("admit"))
                             & (pl.col("icu").is_null() | (pl.col("icu") > pl.col("admit"))))
        cases = cases.with_columns(prediction_time=pl.col("admit"),
                                   boolean_value=pl.col("icu").is_not_null()
                                   & (pl.col("icu") <= pl.col("discharge")))
    elif task == "readmission_30d":
        cases = stays.filter(alive_at(pl.col("discharge"))).with_columns(
            prediction_time=pl.col("discharge"),
            boolean_value=pl.col("next_admit").is_not_null()
            & (pl.col("next_admit") <= pl.col("discharge") + pl.duration(days=30)))
    else:
        ongoing = stays.filter((pl.col("discharge") > predict_day2) & alive_at(predict_day2))
        ongoing = ongoing.with_columns(prediction_time=predict_day2)
        if task == "mortality":
            cases = ongoing.with_columns(boolean_value=pl.col("death").is_not_null()
                                         & (pl.col("death") <= pl.col("discharge")))
        else:
            cases = ongoing.with_columns(
                boolean_value=pl.col("discharge") - pl.col("admit") > pl.duration(days=7))
    return (cases.select(list(LABEL_COLUMNS)).cast(LABEL_COLUMNS)
            .sort("subject_id", "prediction_time"))


def hospital_stays(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """One row per unambiguous stay: subject_id, admit, discharge, death, icu, next_admit.

    death is the subject's first death at or after admission (MEDS_DEATH or a DIED discharge),
    icu the first ICU admission at or after admission. The stay ends at its first discharge,
    or at the death when that comes first (a death without a discharge row closes the stay).
    """
    kinds = {ADMISSION: "admit", DISCHARGE: "discharge", ICU: "icu", DEATH: "death"}
    parts = []
    for frame in frames:
        code = pl.col("code")
        kind = pl.lit(None, pl.String)
        for prefix, name in kinds.items():
            kind = pl.when(code.str.starts_with(prefix)).then(pl.lit(name)).otherwise(kind)
        events = frame.lazy().filter(pl.col("time").is_not_null()).select(
            "subject_id", pl.col("time").dt.cast_time_unit("us"), code, kind.alias("kind"))
        events = events.filter(pl.col("kind").is_not_null()).collect()
        died = events.filter((pl.col("kind") == "discharge") & _died_suffix(pl.col("code")))
        parts += [events.drop("code"), died.drop("code").with_columns(kind=pl.lit("death"))]
    schema = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "kind": pl.String}
    events = pl.concat([p.cast(schema) for p in parts]) if parts else pl.DataFrame(schema=schema)
    events = events.sort("subject_id", "time")

    def times(name: str) -> pl.DataFrame:
        return events.filter(pl.col("kind") == name).select("subject_id", pl.col("time").alias(name))

    admits = times("admit").unique(maintain_order=True).with_columns(
        next_admit=pl.col("admit").shift(-1).over("subject_id"))
    stays = admits
    for name in ("discharge", "death", "icu"):
        stays = stays.join_asof(times(name), left_on="admit", right_on=name, by="subject_id",
                                strategy="forward", check_sortedness=False)
    # A death closes the stay even without a discharge row (not every ETL writes one).
    died_first = pl.col("death").is_not_null() & (pl.col("discharge").is_null()
                                                  | (pl.col("death") < pl.col("discharge")))
    stays = stays.with_columns(discharge=pl.when(died_first).then(pl.col("death")).otherwise(pl.col("discharge")))
    stays = stays.filter(pl.col("discharge").is_not_null()
                         & (pl.col("next_admit").is_null() | (pl.col("next_admit") > pl.col("discharge"))))
    return stays.select("subject_id", "admit", "discharge", "death", "icu", "next_admit")


def long_stay_days(stays: pl.DataFrame, quantile: float = LONG_STAY_QUANTILE) -> float:
    """A long hospital stay in days: the quantile of stay lengths (train stays, so no label of an
    evaluated case leaks into its budget). 7 days when there are no stays."""
    if stays.height == 0:
        return 7.0
    days = (stays["discharge"] - stays["admit"]).dt.total_seconds().to_numpy() / 86_400
    return float(np.quantile(days, quantile))


def _died_suffix(code: pl.Expr) -> pl.Expr:
    upper = code.str.to_uppercase()
    return pl.any_horizontal([upper.str.contains(f"//{s}", literal=True) for s in DIED_SUFFIXES])


def read_labels(labels_dir: str | Path, task: str) -> pl.DataFrame:
    """A user's labels for one task: every TASK_ROOT/<task>/**/*.parquet, validated.

    Returns the label columns plus `source` (the file each row came from, for error messages).
    Extra ACES value columns are accepted when all null; anything else raises DataError.
    """
    task_dir = Path(labels_dir) / task
    files = sorted(task_dir.rglob("*.parquet")) if task_dir.is_dir() else []
    if not files:
        raise DataError(f"{task_dir}: no label files; expected {task_dir}/**/*.parquet with "
                        "subject_id, prediction_time, boolean_value (config.eval.labels_dir)")
    frames = [_read_label_file(path) for path in files]
    return pl.concat(frames).sort("subject_id", "prediction_time")


def _read_label_file(path: Path) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except Exception as e:  # polars raises several types for a corrupt file
        raise DataError(f"{path}: cannot read parquet ({e})") from None
    expected = "subject_id int64, prediction_time timestamp, boolean_value bool"
    for column, dtype in LABEL_COLUMNS.items():
        if column not in frame.columns:
            raise DataError(f"{path}: missing column {column!r}; expected the MEDS label schema ({expected})")
        actual = frame[column].dtype
        ok = {"subject_id": actual.is_integer(), "prediction_time": isinstance(actual, pl.Datetime),
              "boolean_value": actual == pl.Boolean}[column]
        if not ok:
            raise DataError(f"{path}: column {column!r} has type {actual}; expected {dtype}")
        if frame[column].null_count():
            raise DataError(f"{path}: column {column!r} has {frame[column].null_count()} nulls; "
                            "expected a value in every row")
    for column in frame.columns:
        if column not in LABEL_COLUMNS and column in OTHER_VALUE_COLUMNS and frame[column].null_count() < frame.height:
            raise DataError(f"{path}: column {column!r} has values; expected a boolean task "
                            "(only boolean_value set, other value columns all null)")
    time = pl.col("prediction_time")
    if frame["prediction_time"].dtype.time_zone is not None:
        time = time.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return frame.select(pl.col("subject_id").cast(pl.Int64), time.dt.cast_time_unit("us"),
                        pl.col("boolean_value"), pl.lit(str(path)).alias("source"))


def split_labels(labels: pl.DataFrame, subject_splits: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Labels per split (by the dataset's subject_id -> split table); DataError on mismatches.

    A label for a subject the dataset does not know is an error, and so is a file under a
    split-named folder (as ACES shards them) holding another split's subjects.
    """
    joined = labels.join(subject_splits.select("subject_id", pl.col("split").alias("_split")),
                         on="subject_id", how="left", maintain_order="left")
    source = joined["source"] if "source" in joined.columns else pl.Series([""] * joined.height)
    unknown = joined.filter(pl.col("_split").is_null())
    if unknown.height:
        raise DataError(f"{_first_source(unknown)}: column 'subject_id': {unknown.height} labels name "
                        "subjects that are not in the dataset; expected subjects of its "
                        "held_out (evaluation) or train (probe) split")
    folder_split = source.map_elements(_split_folder, return_dtype=pl.String)
    wrong = joined.with_columns(_folder=folder_split).filter(
        pl.col("_folder").is_not_null() & (pl.col("_folder") != pl.col("_split")))
    if wrong.height:
        row = wrong.row(0, named=True)
        raise DataError(f"{row['source']}: column 'subject_id': {wrong.height} labels in a "
                        f"{row['_folder']}/ folder belong to subjects of the {row['_split']} split; "
                        "expected each split's labels under its own folder")
    return {split: joined.filter(pl.col("_split") == split).drop("_split") for split in SPLIT_NAMES}


def _split_folder(source: str) -> str | None:
    parts = Path(source).parts[:-1]
    named = [p for p in parts if p in SPLIT_NAMES]
    return named[-1] if named else None


def _first_source(frame: pl.DataFrame) -> str:
    return frame["source"][0] if "source" in frame.columns else "labels"


@dataclasses.dataclass
class Cases:
    """Labelled prediction points with the model input each one may use."""

    labels: pl.DataFrame  # subject_id, prediction_time, boolean_value (row i <-> prompts[i])
    prompts: list[np.ndarray]  # static prefix + most recent usable tokens, <= prompt_len
    last_event_s: np.ndarray  # int64: time of the last usable token (the model's clock)
    last_admission_s: np.ndarray  # int64: last admission at or before prediction (-1: none)

    def horizon_seconds(self, rule: OutcomeRule) -> np.ndarray:
        """Time budget of each rollout, counted from its last usable event."""
        if rule.horizon_days is None:
            return np.full(len(self.prompts), np.inf)
        anchor = to_seconds(self.labels["prediction_time"])
        if rule.horizon_anchor == "admission":
            anchor = np.where(self.last_admission_s >= 0, self.last_admission_s, anchor)
        return (anchor + rule.horizon_days * 86_400 - self.last_event_s).astype(np.float64)

    def budget_days(self, rule: OutcomeRule, stay_days: float) -> np.ndarray:
        """Days of future a rollout may need: the rest of the task's horizon, or for tasks that
        end with the stay (no horizon) a long stay (`long_stay_days`)."""
        if rule.horizon_days is None:
            return np.full(len(self.prompts), float(stay_days))
        return np.maximum(self.horizon_seconds(rule), 0.0) / 86_400


def build_cases(labels: pl.DataFrame, records: Iterable, vocab: list[str], prompt_len: int,
                first_age: int | None = None) -> Cases:
    """Cuts every labelled subject's record at its prediction times (MEDS: times <= t).

    `records` are shard PatientRecords; only labelled subjects are kept in memory. A labelled
    subject without a record, or a prediction time outside its timeline, raises DataError.
    first_age (tokenize.first_age_id of the prepared dir): the prompt's age token states the
    age at the prediction time, as training windows state it at their start.
    """
    wanted = set(labels["subject_id"].to_list())
    by_subject = {r.subject_id: r for r in records if r.subject_id in wanted}
    admission_V = np.array([t.startswith(ADMISSION) for t in vocab], bool)
    pred_s = to_seconds(labels["prediction_time"])
    sources = labels["source"].to_list() if "source" in labels.columns else ["labels"] * labels.height
    prompts, last_event, last_admission = [], [], []
    for subject, t, source in zip(labels["subject_id"].to_list(), pred_s, sources):
        record = by_subject.get(subject)
        if record is None:
            raise DataError(f"{source}: column 'subject_id': a labelled subject has no prepared "
                            "record in this split; expected labels for subjects of the prepared data")
        end = history_end(record.times, record.n_prefix, int(t), source)
        prompt = cut_prompt(record.tokens, record.n_prefix, end, prompt_len)
        if first_age is not None and 0 < record.n_prefix <= min(prompt_len // 2, end):
            prompt[record.n_prefix - 1] = tokenize.restate_age(record.tokens, record.times, record.n_prefix,
                                                               int(t), first_age)
        prompts.append(prompt)
        last_event.append(int(record.times[end - 1]))
        admissions = np.flatnonzero(admission_V[record.tokens[record.n_prefix:end]])
        last_admission.append(int(record.times[record.n_prefix + admissions[-1]]) if admissions.size else -1)
    return Cases(labels.select(list(LABEL_COLUMNS)), prompts, np.array(last_event, np.int64),
                 np.array(last_admission, np.int64))


def history_end(times: np.ndarray, n_prefix: int, prediction_time_s: int, source: str = "labels") -> int:
    """Number of tokens usable at prediction_time (MEDS: times <= t), prefix included.

    DataError if the time lies outside the subject's timeline (before its first event or after
    its last), which means the label and the data disagree.
    """
    timed = times[n_prefix:] if len(times) > n_prefix else times
    if len(timed) == 0 or prediction_time_s < timed[0] or prediction_time_s > timed[-1]:
        raise DataError(f"{source}: column 'prediction_time': a prediction time lies outside the "
                        "subject's timeline (before its first or after its last event); expected "
                        "times within the data of the same dataset")
    return int(np.searchsorted(times, prediction_time_s, side="right"))


def cut_prompt(tokens: np.ndarray, n_prefix: int, end: int, prompt_len: int) -> np.ndarray:
    """The static prefix plus the last tokens before `end` that fit in prompt_len.

    A prefix longer than half the prompt is cut so recent history always gets room.
    """
    n_static = min(n_prefix, prompt_len // 2, end)
    n_recent = min(prompt_len - n_static, end - n_static)
    return np.concatenate([tokens[:n_static], tokens[end - n_recent:end]]).astype(np.int32)


def to_seconds(times: pl.Series) -> np.ndarray:
    """Datetime[us] -> int64 seconds since the epoch, floored (the shard records' clock)."""
    return np.floor_divide(times.dt.cast_time_unit("us").cast(pl.Int64).to_numpy(), 1_000_000)
