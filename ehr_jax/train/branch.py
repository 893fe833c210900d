"""Cooldown branches: a run that starts from another run's checkpoint instead of step 0.

A warmup-stable-decay (wsd) schedule is constant after its warmup until the cooldown, so up to
that point it does not depend on the run's length. A sweep therefore trains one stable run per
(size, seed) with a constant rate and starts every grid point of that size from the stable
run's checkpoint at the point's own cooldown start (`train.branch_from`, `train.branch_step`):
each point then costs only its cooldown. The checkpoint carries the model, the optimizer state
(its step count drives the schedule) and the loader position, so the branch reads the same
data stream an independent run with the same schedule would, and ends bit for bit where that
run would on CPU. Only a branch's first start reads the source; once the branch has saved a
checkpoint of its own, a rerun resumes from that (ehr_jax.train.trainer).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from ehr_jax import rundir
from ehr_jax.errors import ConfigError, DataError
from ehr_jax.model import sizes
from ehr_jax.train import checkpoint, optim

# Settings the source run must share with the branch for the branch to continue it exactly.
_SAME = (("model", "size"), ("data", "seq_len"), ("train", "global_batch_size"), ("seed",))


def restore(config: ml_collections.ConfigDict, schedule: optim.Schedule, abstract_state: Any, *,
            tokens_per_step: int, flops_per_token: float) -> checkpoint.Restored:
    """The source run's checkpoint at train.branch_step, after checking that the source trained
    exactly what this run's schedule would have up to that step."""
    source_dir = os.path.abspath(config.train.branch_from)
    step = int(config.train.branch_step)
    source_config = _read_config(source_dir)
    source_steps = optim.num_steps(source_config.train, tokens_per_step=tokens_per_step,
                                   flops_per_token=flops_per_token)
    _check_source(config, schedule, source_config, source_steps, step)
    reader = checkpoint.Checkpointer(os.path.join(source_dir, rundir.CHECKPOINTS), keep=1,
                                     read_only=True)
    try:
        steps = reader.all_steps()
        if step not in steps:
            raise DataError(
                f"{reader.directory}: no checkpoint at step {step} (train.branch_step) to branch "
                f"from; it holds steps {steps}. Rerun the sweep: it trains the stable run first "
                f"(which keeps every branch step)")
        return reader.restore(step, abstract_state)
    finally:
        reader.close()


def _read_config(source_dir: str) -> ml_collections.ConfigDict:
    path = os.path.join(source_dir, rundir.CONFIG)
    if not os.path.exists(path):
        raise DataError(f"{path} is missing: train.branch_from={source_dir!r} must be a run dir "
                        f"that has trained at least to train.branch_step")
    with open(path) as handle:
        return ml_collections.ConfigDict(json.load(handle))


def _check_source(config: ml_collections.ConfigDict, schedule: optim.Schedule,
                  source: ml_collections.ConfigDict, source_steps: int, step: int) -> None:
    """ConfigError unless the source's learning rate equals this run's on steps [0, step)."""
    where = f"train.branch_from={config.train.branch_from!r}"
    for keys in _SAME:
        mine, theirs = config, source
        for key in keys:
            mine, theirs = mine[key], theirs.get(key)
        if mine != theirs:
            raise ConfigError(f"{where}: its {'.'.join(keys)} is {theirs!r}, this run's is "
                              f"{mine!r}; a branch must continue the same model and data stream")
    if schedule.kind != "wsd" or source.train.get("schedule", "cosine") != "wsd":
        raise ConfigError(f"{where}: branching needs train.schedule='wsd' in both runs (a "
                          f"cosine rate depends on the run's length from the first step)")
    d_model = sizes.get_size(config.model.size).d_model
    source_schedule = optim.make_schedule(
        source.train, optim.peak_learning_rate(source.train, d_model), source_steps)
    if (source_schedule.peak_lr, source_schedule.warmup) != (schedule.peak_lr, schedule.warmup):
        raise ConfigError(
            f"{where}: its peak rate and warmup ({source_schedule.peak_lr:.3g}, "
            f"{source_schedule.warmup} steps) differ from this run's ({schedule.peak_lr:.3g}, "
            f"{schedule.warmup} steps); set train.warmup_steps the same in both")
    if not schedule.warmup <= step <= min(schedule.decay_start, source_schedule.decay_start):
        raise ConfigError(
            f"{where}: train.branch_step={step} must lie between the warmup's end "
            f"({schedule.warmup}) and both runs' cooldown starts (this run's "
            f"{schedule.decay_start}, the source's {source_schedule.decay_start})")
