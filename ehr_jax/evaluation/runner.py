"""Evaluate a trained run on the clinical tasks: restore, label, predict, score, record.

  evaluate(run_dir, config, prepared_dir) -> {task: {method: {auroc, auroc_ci, auprc, auprc_ci, brier,
                                                 brier_ci, n_cases, n_positive, prevalence}}}

Methods: zero_shot (ETHOS rollouts: fraction ending in the outcome), zero_shot_resolved (the
same rollouts, capped ones treated as censored), next_token (one deterministic forward pass)
and probe (logistic regression on the hidden state, fitted on train-split cases). Results are merged
into summary.json["evaluation"] and TensorBoard (eval/<task>/<method>/<metric>); predictions
go to <run_dir>/evaluation/<task>/<method>/predictions.parquet in the meds-evaluation format.
Only aggregates are logged: never a subject id.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import polars as pl
from absl import logging
from flax import nnx

from ehr_jax import parallel, rundir
from ehr_jax.data import meds, shards
from ehr_jax.errors import ConfigError, DataError
from ehr_jax.evaluation import metrics, probe, tasks, zero_shot
from ehr_jax.model import init as model_init
from ehr_jax.model import transformer
from ehr_jax.train import checkpoint

ROLLOUT_BATCH = 512  # sequences decoded together (cases x rollouts)
SCORE_BATCH = 64  # prompts per forward pass for next-token and probe features
PREDICTION_SCHEMA = {"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"),
                     "boolean_value": pl.Boolean, "predicted_boolean_value": pl.Boolean,
                     "predicted_boolean_probability": pl.Float32}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """config.eval, checked once."""

    tasks: tuple[str, ...]
    labels_dir: str
    num_rollouts: int
    max_cases: int
    max_new_tokens: int
    probe: bool
    bootstrap: int
    prompt_len: int
    seed: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "EvalSettings":
        ev = config.eval
        for key in ("num_rollouts", "max_new_tokens"):
            if int(ev[key]) < 1:
                raise ConfigError(f"config.eval.{key}={ev[key]}; expected a positive integer")
        if int(ev.max_cases) < 0 or int(ev.bootstrap) < 0:
            raise ConfigError("config.eval.max_cases and config.eval.bootstrap must be >= 0")
        task_names = (ev.tasks,) if isinstance(ev.tasks, str) else tuple(ev.tasks)
        if not ev.labels_dir:
            unknown = [t for t in task_names if t not in tasks.BUILTIN_RULES]
            if unknown:
                raise ConfigError(f"config.eval.tasks has {unknown}; built-in tasks are "
                                  f"{tasks.BUILTIN_TASKS} (set config.eval.labels_dir for others)")
        seq_len = int(config.data.seq_len)
        # The history fills the training window; rollouts then slide that window (see
        # zero_shot.RolloutSampler), so no attention span exceeds what training saw.
        prompt_len = min(int(ev.get("prompt_len", 0)) or seq_len, seq_len)
        return cls(task_names, str(ev.labels_dir), int(ev.num_rollouts), int(ev.max_cases),
                   int(ev.max_new_tokens), bool(ev.probe), int(ev.bootstrap), prompt_len,
                   int(config.seed))


def evaluate(run_dir: str, config: ml_collections.ConfigDict, prepared_dir: str) -> dict:
    """Evaluates the run's latest checkpoint; see the module docstring for what it writes."""
    start = time.perf_counter()
    run_dir = os.path.abspath(run_dir)
    settings = EvalSettings.from_config(config)
    vocab = shards.read_vocab(prepared_dir)
    model = restore_model(run_dir, config, len(vocab))
    splits = ("held_out", "train") if settings.probe else ("held_out",)
    labels = collect_labels(settings, shards.read_manifest(prepared_dir), prepared_dir, splits)
    records = {split: _records_of(prepared_dir, split, labels) for split in splits}
    predictors = Predictors(model, settings, window=int(config.data.seq_len))
    results: dict = {}
    for task in settings.tasks:
        held = labels[task]["held_out"]
        if held.height == 0:
            logging.warning("evaluation: task %s has no held_out cases; skipped", task)
            continue
        cases = tasks.build_cases(held, records["held_out"].values(), vocab, settings.prompt_len)
        train_cases = None
        if settings.probe and labels[task].get("train") is not None and labels[task]["train"].height:
            train_cases = tasks.build_cases(labels[task]["train"], records["train"].values(), vocab,
                                            settings.prompt_len)
        predictions = predictors.predict(task, cases, train_cases, vocab)
        results[task] = {}
        for method, (probability, extra) in predictions.items():
            results[task][method] = {**metrics.summarize(
                cases.labels["boolean_value"].to_numpy(), probability,
                cases.labels["subject_id"].to_numpy(), num_resamples=settings.bootstrap,
                seed=settings.seed), **extra}
            write_predictions(Path(run_dir) / "evaluation" / task / method, cases.labels, probability)
            _log_result(task, method, results[task][method])
    if jax.process_index() == 0:
        record_results(run_dir, results)
    logging.info("evaluation: %d tasks in %.1fs", len(results), time.perf_counter() - start)
    return results


class Predictors:
    """The model's three ways to give a risk, each compiled once and reused across tasks."""

    def __init__(self, model: nnx.Module, settings: EvalSettings, window: int):
        self.settings = settings
        cases_per_batch = max(1, ROLLOUT_BATCH // settings.num_rollouts)
        self.sampler = zero_shot.RolloutSampler(
            model, prompt_len=settings.prompt_len, max_new_tokens=settings.max_new_tokens,
            num_rollouts=settings.num_rollouts, cases_per_batch=cases_per_batch,
            window=window)
        self.scorer = zero_shot.NextTokenScorer(model, cases_per_batch=SCORE_BATCH)
        self.representer = probe.Representer(model, prompt_len=settings.prompt_len,
                                             batch_size=SCORE_BATCH)

    def predict(self, task: str, cases: tasks.Cases, train_cases: tasks.Cases | None,
                vocab: list[str]) -> dict[str, tuple[np.ndarray, dict]]:
        """{method: (probability per case, extra result fields)} for the methods the task allows."""
        out: dict[str, tuple[np.ndarray, dict]] = {}
        rule = tasks.BUILTIN_RULES.get(task)
        token_rule = zero_shot.resolve_rule(rule, vocab) if rule is not None else None
        if token_rule is not None and rule.positive and not token_rule.positive_V.any():
            logging.warning("evaluation: no token of the vocabulary starts with %s; %s has no "
                            "zero-shot prediction (lower data.min_code_count?)", rule.positive, task)
            token_rule = None
        if token_rule is not None:
            prompts, valid = zero_shot.left_pad(cases.prompts, self.settings.prompt_len)
            t0 = time.perf_counter()
            rollouts = self.sampler.run(prompts, valid, cases.horizon_seconds(rule), token_rule,
                                        seed=self.settings.seed)
            seconds = time.perf_counter() - t0
            out["zero_shot"] = (rollouts.probability_C, {
                "num_rollouts": self.settings.num_rollouts,
                "mean_new_tokens": float(rollouts.new_tokens_CxR.mean()),
                "token_cap_fraction": float((rollouts.reason_CxR == zero_shot.RUNNING).mean()),
                "generated_tokens_per_s": float(rollouts.new_tokens_CxR.sum() / max(seconds, 1e-9))})
            out["zero_shot_resolved"] = (rollouts.resolved_probability_C(), {})
            if zero_shot.supports_next_token(token_rule):
                out["next_token"] = (self.scorer.run(prompts, valid, token_rule), {})
        if train_cases is not None:
            fitted = probe.fit(self.representer.run(train_cases.prompts),
                               train_cases.labels["boolean_value"].to_numpy(), seed=self.settings.seed)
            if fitted is None:
                logging.warning("evaluation: %s train labels hold one class; no probe", task)
            else:
                out["probe"] = (fitted.predict_proba(self.representer.run(cases.prompts)),
                                {"n_train_cases": train_cases.labels.height, "l2": fitted.l2})
        return out


def restore_model(run_dir: str, config: ml_collections.ConfigDict, vocab_size: int) -> nnx.Module:
    """The model of the run's newest checkpoint, on one device (the optimizer item stays on disk).

    The layer layout (scan_layers) is the one the checkpoint records, whatever this backend's
    default, so a run trained on GPU evaluates on CPU.
    """
    model_cfg = transformer.model_config(config.model, vocab_size, config.data.seq_len)
    directory = os.path.join(run_dir, rundir.CHECKPOINTS)
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no checkpoints; train the run first (python -m ehr_jax.main)")
    checkpointer = checkpoint.Checkpointer(directory, keep=max(1, int(config.train.keep_checkpoints)),
                                           use_async=False)
    try:
        meta = checkpointer.latest_meta()
        if meta is None:
            raise DataError(f"{directory}: no complete checkpoint; train the run first")
        scan_layers = bool(meta.get("scan_layers", model_cfg.scan_layers))
        model_cfg = dataclasses.replace(model_cfg, scan_layers=scan_layers)
        one_device = parallel.make_mesh((1, 1, 1), jax.devices()[:1])
        graphdef, abstract = model_init.abstract(model_cfg, one_device)
        step, state = checkpointer.restore_model(abstract)
    finally:
        checkpointer.close()
    logging.info("evaluation: restored the model of step %d of %s", step, run_dir)
    return nnx.merge(graphdef, state)


def collect_labels(settings: EvalSettings, manifest: dict, prepared_dir: str,
                   splits: tuple[str, ...]) -> dict[str, dict[str, pl.DataFrame]]:
    """{task: {split: labels}}, at most max_cases per split, sampled with the run's seed."""
    meds_dir = manifest.get("meds_dir", "")
    if not meds_dir or not os.path.isdir(meds_dir):
        raise DataError(f"{Path(prepared_dir) / shards.MANIFEST}: meds_dir {meds_dir!r} is not a "
                        "directory; evaluation reads the MEDS data the run was prepared from")
    dataset = meds.open_dataset(meds_dir)
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
    for task, by_split in out.items():
        out[task] = {split: _sample(by_split[split], settings.max_cases, settings.seed)
                     for split in splits if split in by_split}
    return out


def cached_stays(dataset: meds.MedsDataset, prepared_dir: str, split: str) -> pl.DataFrame:
    """Hospital stays of a split, derived once per prepared dir and reused by every run."""
    path = Path(prepared_dir) / "eval_stays" / f"{split}.parquet"
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


def record_results(run_dir: str, results: dict) -> None:
    """evaluation/results.json, summary.json["evaluation"] and TensorBoard scalars.

    summary.json is only updated, never created: its existence marks a finished run.
    """
    (Path(run_dir) / rundir.EVALUATION).mkdir(parents=True, exist_ok=True)
    rundir.write_json_atomic(Path(run_dir) / rundir.EVALUATION / "results.json", results)
    summary = rundir.merge_into_summary(run_dir, evaluation=results)
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(logdir=os.path.join(run_dir, "tensorboard"))
    step = int((summary or {}).get("steps", 0))
    for task, methods in results.items():
        for method, values in methods.items():
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(f"eval/{task}/{method}/{key}", value, global_step=step)
    writer.close()


def _log_result(task: str, method: str, result: dict) -> None:
    ci = result["auroc_ci"]
    logging.info("evaluation %s/%s: AUROC %s [%s, %s], AUPRC %s, Brier %s, %d cases (%d positive)",
                 task, method, *(f"{v:.3f}" if v is not None else "n/a" for v in
                                 (result["auroc"], ci[0], ci[1], result["auprc"], result["brier"])),
                 result["n_cases"], result["n_positive"])
