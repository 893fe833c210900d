"""Evaluate a trained run on the clinical tasks: restore, label, predict, score, record.

  evaluate(run_dir, config, prepared_dir) -> {name: {task: {method: {auroc, auroc_ci, auprc,
                                                 auprc_ci, brier, brier_ci, n_cases, ...}}}}

Methods: zero_shot (ETHOS rollouts: outcome share among resolved rollouts, capped ones
censored), zero_shot_resolved (the same, shrunk towards the pooled rate), next_token (one
deterministic forward pass; ranks, not calibrated) and probe (logistic regression on the hidden
state, fitted on train-split cases). A method that cannot run on a task gets {"not_run": why}.

Each evaluation has a name (config.eval.name; default "builtin" for the built-in tasks, else
the labels_dir's folder name) and its own place: summary.json["evaluation"][name],
<run_dir>/evaluation/<name>/results.json, <run_dir>/evaluation/<name>/<task>/<method>/
predictions.parquet (meds-evaluation format) and TensorBoard eval/<name>/<task>/<method>/<metric>;
evaluations under other names are kept. Only aggregates are logged: never a subject id.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import polars as pl
import pyarrow.parquet as pq
from absl import logging
from flax import nnx
from meds import LabelSchema

from ehr_jax import parallel, rundir
from ehr_jax.data import day_tokens, meds, shards, tokenize
from ehr_jax.errors import ConfigError, DataError
from ehr_jax.evaluation import metrics, probe, tasks, trajectories, zero_shot
from ehr_jax.model import init as model_init
from ehr_jax.model import transformer
from ehr_jax.train import checkpoint

ROLLOUT_BATCH = 512  # sequences decoded together (cases x rollouts)
SCORE_BATCH = 64  # prompts per forward pass for next-token and probe features
CAPPED_SHARE_LIMIT = 0.2  # a task with more censored rollouts than this is flagged
BUILTIN_NAME = "builtin"  # evaluation name of the built-in tasks
PREDICTION_SCHEMA = {"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"),
                     "boolean_value": pl.Boolean, "predicted_boolean_value": pl.Boolean,
                     "predicted_boolean_probability": pl.Float32}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """config.eval, checked once."""

    name: str
    tasks: tuple[str, ...]
    labels_dir: str
    rules: dict  # task -> OutcomeRule for zero-shot and next-token (built-in names and task_rules)
    num_rollouts: int
    max_cases: int
    max_train_cases: int
    max_new_tokens: int
    probe: bool
    bootstrap: int
    prompt_len: int
    seed: int
    write_trajectories: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "EvalSettings":
        ev = config.eval
        for key in ("num_rollouts", "max_new_tokens"):
            if int(ev[key]) < 1:
                raise ConfigError(f"config.eval.{key}={ev[key]}; expected a positive integer")
        for key in ("max_cases", "max_train_cases", "bootstrap"):
            if int(ev.get(key, 0)) < 0:
                raise ConfigError(f"config.eval.{key}={ev.get(key)}; expected an integer >= 0 (0: all)")
        task_names = (ev.tasks,) if isinstance(ev.tasks, str) else tuple(ev.tasks)
        if not ev.labels_dir:
            unknown = [t for t in task_names if t not in tasks.BUILTIN_RULES]
            if unknown:
                raise ConfigError(f"config.eval.tasks has {unknown}; built-in tasks are "
                                  f"{tasks.BUILTIN_TASKS} (set config.eval.labels_dir for others)")
        mapped = tasks.parse_task_rules(ev.get("task_rules", ()))
        rules = {t: mapped.get(t, tasks.BUILTIN_RULES.get(t)) for t in task_names}
        seq_len = int(config.data.seq_len)
        # The history fills the training window; rollouts then slide that window (see
        # zero_shot.RolloutSampler), so no attention span exceeds what training saw.
        prompt_len = min(int(ev.prompt_len) or seq_len, seq_len)
        return cls(evaluation_name(ev), task_names, str(ev.labels_dir),
                   {t: r for t, r in rules.items() if r is not None}, int(ev.num_rollouts),
                   int(ev.max_cases), int(ev.get("max_train_cases", 0)), int(ev.max_new_tokens),
                   bool(ev.probe), int(ev.bootstrap), prompt_len, int(config.seed),
                   bool(ev.write_trajectories))


def evaluation_name(ev: ml_collections.ConfigDict) -> str:
    """config.eval.name, or "builtin" (built-in tasks) / the labels_dir's folder name."""
    name = str(ev.get("name", "") or "")
    if not name:
        name = Path(str(ev.labels_dir)).name if ev.labels_dir else BUILTIN_NAME
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"config.eval.name={name!r}; expected letters, digits, '_', '.' or '-' "
                          "(it names a folder under <run_dir>/evaluation)")
    return name


def evaluate(run_dir: str, config: ml_collections.ConfigDict, prepared_dir: str) -> dict:
    """Evaluates the run's latest checkpoint; returns {name: results} (module docstring)."""
    start = time.perf_counter()
    run_dir = os.path.abspath(run_dir)
    settings = EvalSettings.from_config(config)
    vocab = shards.read_vocab(prepared_dir)
    mesh = parallel.make_mesh(tuple(config.mesh.shape))
    model = restore_model(run_dir, config, len(vocab), mesh)
    splits = ("held_out", "train") if settings.probe else ("held_out",)
    manifest = shards.read_manifest(prepared_dir)
    first_age = tokenize.first_age_id(manifest)
    dataset = open_meds(manifest, prepared_dir)
    labels = collect_labels(settings, dataset, prepared_dir, splits)
    records = {split: _records_of(prepared_dir, split, labels) for split in splits}
    budget = RolloutBudget(day_tokens.tokens_per_day(prepared_dir),
                           tasks.long_stay_days(cached_stays(dataset, prepared_dir, "train")))
    logging.info("evaluation %s: rollout budgets from %.0f tokens per day and a %.1f-day long stay "
                 "(at most %d tokens)", settings.name, budget.tokens_per_day, budget.stay_days,
                 settings.max_new_tokens)
    out_dir = Path(run_dir) / rundir.EVALUATION / settings.name
    tokenizer = tokenize.Tokenizer.load(prepared_dir) if settings.write_trajectories else None
    predictors = Predictors(model, settings, window=int(config.data.seq_len), budget=budget,
                            trajectories=(out_dir, tokenizer) if tokenizer else None, mesh=mesh)
    results: dict = {}
    for task in settings.tasks:
        held = labels[task]["held_out"]
        if held.height == 0:
            logging.warning("evaluation: task %s has no held_out cases; skipped", task)
            continue
        cases = tasks.build_cases(held, records["held_out"].values(), vocab, settings.prompt_len, first_age)
        train_cases = None
        if settings.probe and labels[task].get("train") is not None and labels[task]["train"].height:
            train_cases = tasks.build_cases(labels[task]["train"], records["train"].values(), vocab,
                                            settings.prompt_len, first_age)
        predictions, not_run = predictors.predict(task, cases, train_cases, vocab)
        results[task] = {}
        for method, (probability, extra) in predictions.items():
            results[task][method] = {**metrics.summarize(
                cases.labels["boolean_value"].to_numpy(), probability,
                cases.labels["subject_id"].to_numpy(), num_resamples=settings.bootstrap,
                seed=settings.seed), **extra}
            if jax.process_index() == 0:
                write_predictions(out_dir / task / method, cases.labels, probability)
            _log_result(task, method, results[task][method])
        for method, reason in not_run.items():
            logging.warning("evaluation %s/%s: not run: %s", task, method, reason)
            results[task][method] = {"not_run": reason}
    if jax.process_index() == 0:
        record_results(run_dir, settings.name, results)
    logging.info("evaluation %s: %d tasks in %.1fs", settings.name, len(results), time.perf_counter() - start)
    return {settings.name: results}


def write_labels(config: ml_collections.ConfigDict, prepared_dir: str, out_dir: str) -> dict:
    """The built-in tasks' labels of every split as MEDS label files (LabelSchema), laid out as
    ACES writes them: <out_dir>/<task>/<split>/0.parquet. The same cohort can then go to ACES,
    meds-evaluation or another model, and comes back through config.eval.labels_dir.
    Returns {task: {split: number of labels}}."""
    task_names = (config.eval.tasks,) if isinstance(config.eval.tasks, str) else tuple(config.eval.tasks)
    unknown = [t for t in task_names if t not in tasks.BUILTIN_RULES]
    if unknown:
        raise ConfigError(f"config.eval.tasks has {unknown}; --write_labels writes built-in tasks "
                          f"only: {tasks.BUILTIN_TASKS}")
    dataset = open_meds(shards.read_manifest(prepared_dir), prepared_dir)
    counts: dict = {task: {} for task in task_names}
    for split in shards.SPLITS:
        stays = cached_stays(dataset, prepared_dir, split)
        for task in task_names:
            labels = tasks.labels_from_stays(task, stays)
            path = Path(out_dir) / task / split / "0.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            table = LabelSchema.align(labels.to_arrow())
            LabelSchema.validate(table)
            tmp = path.with_name(f".{path.name}.tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, path)
            counts[task][split] = labels.height
    logging.info("evaluation: labels of %s written to %s", list(task_names), out_dir)
    return counts


@dataclasses.dataclass(frozen=True)
class RolloutBudget:
    """What rollout token caps follow from (see zero_shot.token_caps): the train split's tokens
    per busy day and the length of a long train stay in days (for tasks ending with the stay)."""

    tokens_per_day: float
    stay_days: float


class Predictors:
    """The model's three ways to give a risk, each compiled once and reused across tasks."""

    def __init__(self, model: nnx.Module, settings: EvalSettings, window: int, budget: RolloutBudget,
                 trajectories: tuple[Path, tokenize.Tokenizer] | None = None,
                 mesh: jax.sharding.Mesh | None = None):
        """trajectories: (evaluation dir, tokenizer) to write each task's rollouts as MEDS.
        mesh: the training mesh; rollout slots and scoring batches split over its data axes."""
        self.settings = settings
        self.budget = budget
        self.trajectories = trajectories
        cases_per_batch = max(1, ROLLOUT_BATCH // settings.num_rollouts)
        ways = zero_shot.slot_ways(mesh) if mesh is not None else 1
        while cases_per_batch * settings.num_rollouts % ways:  # slots split evenly over devices
            cases_per_batch += 1
        self.sampler = zero_shot.RolloutSampler(
            model, prompt_len=settings.prompt_len, max_new_tokens=settings.max_new_tokens,
            num_rollouts=settings.num_rollouts, cases_per_batch=cases_per_batch,
            window=window, record_tokens=trajectories is not None, mesh=mesh)
        self.scorer = zero_shot.NextTokenScorer(model, cases_per_batch=SCORE_BATCH, mesh=mesh)
        self.representer = probe.Representer(model, prompt_len=settings.prompt_len,
                                             batch_size=SCORE_BATCH, mesh=mesh)

    def predict(self, task: str, cases: tasks.Cases, train_cases: tasks.Cases | None,
                vocab: list[str]) -> tuple[dict[str, tuple[np.ndarray, dict]], dict[str, str]]:
        """({method: (probability per case, extra result fields)}, {method: why it did not run})."""
        out: dict[str, tuple[np.ndarray, dict]] = {}
        not_run: dict[str, str] = {}
        rule = self.settings.rules.get(task)
        token_rule = zero_shot.resolve_rule(rule, vocab) if rule is not None else None
        rollout_methods = ("zero_shot", "zero_shot_resolved", "next_token")
        if rule is None:
            why = (f"no outcome rule for task {task!r}: it is not built-in; map it to one "
                   f"({tasks.BUILTIN_TASKS}) or to token prefixes in config.eval.task_rules")
            not_run.update(dict.fromkeys(rollout_methods, why))
        elif rule.positive and not token_rule.positive_V.any():
            why = (f"no token of the vocabulary starts with {rule.positive} (rare in train? lower "
                   "data.min_code_count)")
            not_run.update(dict.fromkeys(rollout_methods, why))
            token_rule = None
        if token_rule is not None:
            prompts, valid = zero_shot.left_pad(cases.prompts, self.settings.prompt_len)
            out.update(self._rollouts(task, rule, token_rule, cases, prompts, valid))
            if zero_shot.supports_next_token(token_rule):
                out["next_token"] = (self.scorer.run(prompts, valid, token_rule), {"calibrated": False})
            else:
                not_run["next_token"] = ("the task's rule needs both an outcome and a stopping token "
                                         "(its outcome is reaching the horizon)" if not rule.positive
                                         else "no stopping token of the task's rule is in the vocabulary")
        if not self.settings.probe:
            not_run["probe"] = "config.eval.probe is False"
        elif train_cases is None:
            not_run["probe"] = "no labels for train-split subjects to fit it on"
        else:
            fitted = probe.fit(self.representer.run(train_cases.prompts),
                               train_cases.labels["boolean_value"].to_numpy(), seed=self.settings.seed)
            if fitted is None:
                not_run["probe"] = "the train labels hold one class"
            else:
                out["probe"] = (fitted.predict_proba(self.representer.run(cases.prompts)),
                                {"n_train_cases": train_cases.labels.height, "l2": fitted.l2})
        return out, not_run

    def _rollouts(self, task: str, rule: tasks.OutcomeRule, token_rule: zero_shot.TokenRule,
                  cases: tasks.Cases, prompts: np.ndarray, valid: np.ndarray) -> dict:
        caps = zero_shot.token_caps(cases.budget_days(rule, self.budget.stay_days),
                                    self.budget.tokens_per_day, self.settings.max_new_tokens)
        t0, phases_before = time.perf_counter(), dict(self.sampler.timings)
        rollouts = self.sampler.run(prompts, valid, cases.horizon_seconds(rule), token_rule,
                                    seed=self.settings.seed, cap_C=caps)
        seconds = time.perf_counter() - t0
        phases = {f"rollout_{phase}": s - phases_before.get(phase, 0.0) for phase, s in self.sampler.timings.items()}
        capped = rollouts.capped_share
        extra = {"num_rollouts": self.settings.num_rollouts,
                 "mean_new_tokens": float(rollouts.new_tokens_CxR.mean()),
                 "token_cap_median": int(np.median(caps)), "token_cap_max": int(caps.max()),
                 "tokens_per_day": self.budget.tokens_per_day,
                 "capped_share": capped, "capped_share_high": capped > CAPPED_SHARE_LIMIT,
                 "rollout_s": seconds, **phases,
                 "generated_tokens_per_s": float(rollouts.new_tokens_CxR.sum() / max(seconds, 1e-9))}
        if self.trajectories is not None and jax.process_index() == 0:
            directory, tokenizer = self.trajectories
            n_rows = trajectories.write(directory / task / "trajectories", tokenizer, rollouts.tokens_CxRxT,
                                        cases.last_event_s, cases.labels, f"{task} rollouts")
            logging.info("evaluation %s: %d rollouts written as MEDS (%d events) to %s", task,
                         rollouts.tokens_CxRxT.shape[0] * rollouts.tokens_CxRxT.shape[1], n_rows,
                         directory / task / "trajectories")
        if capped > CAPPED_SHARE_LIMIT:
            logging.warning("evaluation %s: %.0f%% of rollouts hit their token cap (censored; limit "
                            "%.0f%%): raise config.eval.max_new_tokens (caps: median %d, max %d) for "
                            "estimates that rest on more rollouts", task, 100 * capped,
                            100 * CAPPED_SHARE_LIMIT, np.median(caps), caps.max())
        return {"zero_shot": (rollouts.probability_C, extra),
                "zero_shot_resolved": (rollouts.resolved_probability_C(), dict(extra))}


def restore_model(run_dir: str, config: ml_collections.ConfigDict, vocab_size: int,
                  mesh: jax.sharding.Mesh | None = None) -> nnx.Module:
    """The model of the run's newest checkpoint, sharded over `mesh` as in training (default:
    one device); the optimizer item stays on disk.

    The layer layout (scan_layers) and the embedding's rows (vocabulary padding) are the ones
    the checkpoint records, whatever this backend's defaults, so a run trained on GPU evaluates
    on CPU.
    """
    mesh = mesh or parallel.make_mesh((1, 1, 1), jax.devices()[:1])
    directory = os.path.join(run_dir, rundir.CHECKPOINTS)
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no checkpoints; train the run first (python -m ehr_jax.main)")
    checkpointer = checkpoint.Checkpointer(directory, keep=max(1, int(config.train.keep_checkpoints)),
                                           use_async=False)
    try:
        meta = checkpointer.latest_meta()
        if meta is None:
            raise DataError(f"{directory}: no complete checkpoint; train the run first")
        rows = checkpointer.model_shape("embed")
        model_cfg = transformer.model_config(config.model, vocab_size, config.data.seq_len,
                                             padded_vocab=rows[0] if rows else None)
        scan_layers = bool(meta.get("scan_layers", model_cfg.scan_layers))
        model_cfg = dataclasses.replace(model_cfg, scan_layers=scan_layers)
        graphdef, abstract = model_init.abstract(model_cfg, mesh)
        step, state = checkpointer.restore_model(abstract)
    finally:
        checkpointer.close()
    logging.info("evaluation: restored the model of step %d of %s", step, run_dir)
    return nnx.merge(graphdef, state)


def open_meds(manifest: dict, prepared_dir: str) -> meds.MedsDataset:
    """The MEDS dataset the prepared dir was made from (labels and stays come from it)."""
    meds_dir = manifest.get("meds_dir", "")
    if not meds_dir or not os.path.isdir(meds_dir):
        raise DataError(f"{Path(prepared_dir) / shards.MANIFEST}: meds_dir {meds_dir!r} is not a "
                        "directory; evaluation reads the MEDS data the run was prepared from")
    return meds.open_dataset(meds_dir)


def collect_labels(settings: EvalSettings, dataset: meds.MedsDataset, prepared_dir: str,
                   splits: tuple[str, ...]) -> dict[str, dict[str, pl.DataFrame]]:
    """{task: {split: labels}}, at most max_cases per split, sampled with the run's seed."""
    out: dict[str, dict[str, pl.DataFrame]] = {}
    if settings.labels_dir:
        subject_splits = _subject_splits(dataset)
        for task in settings.tasks:
            by_split = tasks.split_labels(tasks.read_labels(settings.labels_dir, task), subject_splits)
            if by_split["held_out"].height == 0:
                raise DataError(f"{Path(settings.labels_dir) / task}: no labels for held_out subjects; "
                                "evaluation scores held_out subjects only")
            out[task] = by_split
    else:
        stays = {split: cached_stays(dataset, prepared_dir, split) for split in splits}
        for task in settings.tasks:
            out[task] = {split: tasks.labels_from_stays(task, stays[split]) for split in splits}
    limits = {"held_out": settings.max_cases, "train": settings.max_train_cases}
    for task, by_split in out.items():
        out[task] = {split: _sample(by_split[split], limits[split], settings.seed)
                     for split in splits if split in by_split}
    return out


def cached_stays(dataset: meds.MedsDataset, prepared_dir: str, split: str) -> pl.DataFrame:
    """Hospital stays of a split, derived once per prepared dir and reused by every run."""
    path = Path(prepared_dir) / "eval_stays" / f"{split}.v{tasks.STAYS_VERSION}.parquet"
    if path.exists():
        return pl.read_parquet(path)
    stays = tasks.hospital_stays(meds.iter_split_frames(dataset, split))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    stays.write_parquet(tmp)
    os.replace(tmp, path)
    return stays


def _subject_splits(dataset: meds.MedsDataset) -> pl.DataFrame:
    if dataset.subject_splits is not None:
        return dataset.subject_splits
    parts = [pl.read_parquet(f, columns=["subject_id"]).unique().with_columns(split=pl.lit(split))
             for split, files in dataset.files.items() for f in files]
    return pl.concat(parts).select(pl.col("subject_id").cast(pl.Int64), "split")


def _sample(labels: pl.DataFrame, max_cases: int, seed: int) -> pl.DataFrame:
    if max_cases and labels.height > max_cases:
        labels = labels.sample(n=max_cases, seed=seed)
    return labels.sort("subject_id", "prediction_time", maintain_order=True)


def _records_of(prepared_dir: str, split: str, labels: dict) -> dict[int, shards.PatientRecord]:
    """One pass over a split's shards keeping only the labelled subjects' records."""
    wanted = set()
    for by_split in labels.values():
        if split in by_split:
            wanted.update(by_split[split]["subject_id"].to_list())
    return {r.subject_id: r for r in shards.iter_records(prepared_dir, split) if r.subject_id in wanted}


def write_predictions(directory: Path, labels: pl.DataFrame, probability: np.ndarray) -> Path:
    """predictions.parquet with exactly the columns meds-evaluation accepts."""
    directory.mkdir(parents=True, exist_ok=True)
    frame = labels.select("subject_id", "prediction_time", "boolean_value").with_columns(
        predicted_boolean_value=pl.Series(np.asarray(probability) >= 0.5),
        predicted_boolean_probability=pl.Series(np.asarray(probability, np.float32)))
    path = directory / "predictions.parquet"
    frame.cast(PREDICTION_SCHEMA).write_parquet(path)
    return path


def record_results(run_dir: str, name: str, results: dict) -> None:
    """evaluation/<name>/results.json, summary.json["evaluation"][name] and TensorBoard scalars.

    summary.json is only updated, never created: its existence marks a finished run. Other
    evaluations in it are kept (a summary from before named evaluations is kept as "builtin").
    """
    directory = Path(run_dir) / rundir.EVALUATION / name
    directory.mkdir(parents=True, exist_ok=True)
    rundir.write_json_atomic(directory / "results.json", results)
    summary = rundir.read_summary(run_dir)
    if summary is not None:
        summary = rundir.merge_into_summary(
            run_dir, evaluation={**named_evaluations(summary.get("evaluation")), name: results})
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(logdir=os.path.join(run_dir, rundir.TENSORBOARD))
    step = int((summary or {}).get("steps", 0))
    for task, methods in results.items():
        for method, values in methods.items():
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(f"eval/{name}/{task}/{method}/{key}", value, global_step=step)
    writer.close()


def named_evaluations(evaluation: dict | None) -> dict:
    """summary["evaluation"] as {name: {task: {method: result}}}; a summary written before
    evaluations had names ({task: {method: result}}) becomes {"builtin": ...}."""
    if not evaluation:
        return {}
    flat = all(isinstance(m, dict) and all(isinstance(r, dict) and ("auroc" in r or "not_run" in r)
                                           for r in m.values()) for m in evaluation.values())
    return {BUILTIN_NAME: evaluation} if flat else dict(evaluation)


def _log_result(task: str, method: str, result: dict) -> None:
    ci = result["auroc_ci"]
    logging.info("evaluation %s/%s: AUROC %s [%s, %s], AUPRC %s, Brier %s, %d cases (%d positive)",
                 task, method, *(f"{v:.3f}" if v is not None else "n/a" for v in
                                 (result["auroc"], ci[0], ci[1], result["auprc"], result["brier"])),
                 result["n_cases"], result["n_positive"])
