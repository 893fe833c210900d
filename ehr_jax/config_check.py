"""Every problem with a config and workdir, found before any data is made or any step trained.

main calls `check(config, workdir, device_count)` first. It checks each key's type (the type of
its default in configs/base.py, or sweep.grid.default_grid()) and range (RULES), that no key is
misspelt, then asks the stages' own checks (size names, the mesh against the devices, run
length, optimizer and schedule, evaluation tasks, the grid) and the paths (workdir writable,
datasets and label dirs present). All problems come back in one ConfigError, one line each,
naming the key, its value and what is expected.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import ml_collections
import numpy as np

from ehr_jax import config_files, rundir
from ehr_jax.errors import ConfigError, EhrJaxError

BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "base.py"
DURATION_KEYS = ("train.steps", "train.tokens", "train.flops")
RUN_ONLY_KEYS = ("grid_point",)  # set by the sweep on the configs of its runs
PLACEHOLDER_VOCAB = 512  # checks that need a vocabulary size run before the data exists

Rule = tuple[Callable[[Any], bool], str]


def _at_least(low: float) -> Rule:
    return (lambda v: v >= low), f">= {low}"


def _within(low: float, high: float, *, high_open: bool = False, low_open: bool = False) -> Rule:
    def ok(v):
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return ok, f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


RULES: dict[str, Rule] = {
    "seed": _at_least(0),
    "data.synthetic_subjects": _at_least(0),
    "data.synthetic_seed": _at_least(0),
    "data.seq_len": _at_least(2),
    "data.num_workers": _at_least(0),
    "data.min_code_count": _at_least(1),
    "data.num_quantiles": _at_least(1),
    "data.records_per_shard": _at_least(1),
    "data.max_text_values": _at_least(0),
    "data.prepare_wait_s": _at_least(0),
    "model.n_kv_heads": _at_least(0),
    "model.vocab_multiple": _at_least(0),
    "mesh.shape": ((lambda v: not isinstance(v, str) and all(
        isinstance(s, (int, np.integer)) for s in v)), "a tuple of integers, e.g. (-1, 1, 1)"),
    "train.global_batch_size": _at_least(1),
    "train.steps": _at_least(0),
    "train.tokens": _at_least(0),
    "train.flops": _at_least(0),
    "train.lr": _within(0, 1),
    "train.warmup_frac": _within(0, 1, high_open=True),
    "train.warmup_steps": _at_least(0),
    "train.cooldown_frac": _within(0, 1),
    "train.branch_step": _at_least(0),
    "train.grad_accum_steps": _at_least(0),
    "train.device_memory_gib": _at_least(0),
    "train.min_lr_ratio": _within(0, 1),
    "train.weight_decay": _at_least(0),
    "train.b2": _within(0, 1, low_open=True, high_open=True),
    "train.grad_clip": ((lambda v: v > 0), "> 0"),
    "train.log_every": _at_least(1),
    "train.eval_every": _at_least(0),
    "train.eval_tokens": _at_least(1),
    "train.checkpoint_every": _at_least(1),
    "train.keep_checkpoints": _at_least(1),
    "eval.num_rollouts": _at_least(1),
    "eval.max_cases": _at_least(0),
    "eval.max_new_tokens": _at_least(1),
    "eval.bootstrap": _at_least(0),
    "grid.budgets": ((lambda v: len(v) > 0 and all(_number(c) and c > 0 for c in v)),
                     "a non-empty tuple of positive training-FLOP budgets"),
    "grid.sizes_per_budget": _at_least(1),
    "grid.tokens_per_param": ((lambda v: v > 0), "> 0"),
    "grid.min_steps": _at_least(0),
    "grid.workers": _at_least(1),
    "grid.min_sizes": _at_least(0),
    "grid.max_epochs": _at_least(0),
    "grid.analysis_n": ((lambda v: v in ("non_embedding", "total")), "'non_embedding' or 'total'"),
}


def check(config: ml_collections.ConfigDict, workdir: str, device_count: int) -> None:
    """Raises one ConfigError listing every problem; returns quietly when there is none."""
    problems = check_problems(config, workdir, device_count)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems with the config; nothing was run:\n  "
                          + "\n  ".join(problems))


def check_problems(config: ml_collections.ConfigDict, workdir: str,
                   device_count: int) -> list[str]:
    """Every problem, one line each: keys and types, ranges, the stages' checks, then paths."""
    flat, reference = rundir.flatten_config(config), _reference_keys("grid" in config)
    problems: dict[str, str] = {}  # key -> its first problem
    for key, default in reference.items():
        if key not in flat:
            problems[key] = f"config.{key} is missing (configs/base.py has {default!r})"
        elif (expected := _type_problem(flat[key], default)) is not None:
            problems[key] = f"config.{key}={flat[key]!r}; expected {expected}"
    for key in flat:
        if key not in reference and key.split(".")[0] not in RUN_ONLY_KEYS:
            problems[key] = (f"config.{key} is not a key ehr_jax reads (configs/base.py and "
                             f"sweep.grid.default_grid() list them)")
    for key, (ok, expected) in RULES.items():
        if key in flat and key not in problems and not ok(flat[key]):
            problems[key] = f"config.{key}={flat[key]!r}; expected {expected}"
    # The stages check a copy whose reported keys hold base.py's values, so each problem is
    # reported once and the stages still find the others.
    clean = config.to_dict()
    for key in problems:
        if key in reference:
            group, _, name = key.rpartition(".")
            (clean[group] if group else clean)[name] = reference[key]
    clean = ml_collections.ConfigDict(clean)
    stage_problems, stage_flagged = [], set()
    for keys, stage_check in _stage_checks(clean, workdir, device_count):
        if keys[0] in problems or stage_flagged & set(keys):
            continue  # what it checks is reported already
        try:
            stage_check()
        except EhrJaxError as error:
            stage_problems.append(str(error))
            stage_flagged.update(keys)
    return list(problems.values()) + stage_problems


def command_line_durations(config: ml_collections.ConfigDict, overrides: dict) -> None:
    """A run length given on the command line replaces the config file's.

    base.py sets train.steps; `--config.train.tokens=5000000` means "run for 5M tokens", so the
    other two of train.steps / tokens / flops are zeroed unless the command line sets them too.
    """
    given = [key for key in DURATION_KEYS if key in overrides]
    if "grid" in config or not any(_get(config, key) for key in given):
        return
    for key in DURATION_KEYS:
        if key not in given:
            group, _, name = key.partition(".")
            config[group][name] = type(config[group][name])(0)


def _stage_checks(config, workdir: str, device_count: int) -> list[tuple[tuple[str, ...],
                                                                           Callable[[], None]]]:
    """(keys read, check) pairs: each stage's own validation, run before that stage."""
    from ehr_jax import parallel
    from ehr_jax.model import sizes, transformer
    from ehr_jax.train import optim

    data, train = config.data, config.train
    checks = [
        (("workdir",), lambda: _check_writable_dir(workdir, "--workdir")),
        (("model.size", "model.dtype", "model.n_kv_heads", "data.seq_len"),
         lambda: transformer.model_config(config.model, PLACEHOLDER_VOCAB, data.seq_len)),
        (("mesh.shape", "train.global_batch_size"), lambda: parallel.check_batch_size(
            train.global_batch_size, parallel.mesh_shape(config.mesh.shape, device_count))),
        (("train.memory_fit", "train.grad_accum_steps", "train.device_memory_gib", "mesh.shape",
          "train.global_batch_size"), lambda: _check_memory(config, device_count)),
        (("data.meds_dir", "data.prepared_dir", "data.synthetic_subjects"),
         lambda: _check_data_dirs(data, workdir)),
        (("eval.tasks", "eval.labels_dir", "eval.num_rollouts", "eval.max_cases",
          "eval.max_new_tokens", "eval.bootstrap"), lambda: _check_eval(config)),
    ]
    if "grid" in config:
        checks.append((("grid.budgets", "grid.sizes", "grid.only", "grid.sizes_per_budget",
                        "grid.seeds", "grid.optimum_law"),
                       lambda: _check_grid(config)))
    else:
        tokens_per_step = train.global_batch_size * data.seq_len
        checks.append((DURATION_KEYS, lambda: optim.num_steps(
            train, tokens_per_step=tokens_per_step, flops_per_token=1.0)))

    def optimizer() -> None:
        d_model = sizes.get_size(config.model.size).d_model
        steps = int(train.steps) if "grid" not in config and train.steps else 1000  # or a stand-in
        optim.make_schedule(train, optim.peak_learning_rate(train, d_model), steps)
        optim.make_optimizer(train)

    checks.append((("train.lr", "train.grad_clip", "train.warmup_frac", "train.min_lr_ratio",
                    "train.b2", "train.weight_decay", "model.size"), optimizer))
    return checks


def _check_memory(config: ml_collections.ConfigDict, device_count: int) -> None:
    from ehr_jax import parallel
    from ehr_jax.train import memory

    memory.check_config(config.train)
    if config.train.grad_accum_steps:
        shape = parallel.mesh_shape(config.mesh.shape, device_count)
        memory.check_accumulation(config.train.grad_accum_steps, config.train.global_batch_size,
                                  parallel.check_batch_size(config.train.global_batch_size, shape),
                                  tuple(config.mesh.shape))


def _check_data_dirs(data: ml_collections.ConfigDict, workdir: str) -> None:
    from ehr_jax.data import meds, shards

    prepared = Path(data.prepared_dir).expanduser() if data.prepared_dir else None
    if prepared is not None and prepared.exists() and not prepared.is_dir():
        raise ConfigError(f"config.data.prepared_dir={data.prepared_dir!r} is a file; expected "
                          "a prepared dir (manifest.json, vocab.json, shards) or a new folder")
    if data.meds_dir:
        if not Path(data.meds_dir).expanduser().is_dir():
            raise ConfigError(f"config.data.meds_dir={data.meds_dir!r}: no such directory; "
                              "expected a MEDS dataset root with data/ and metadata/")
        meds.open_dataset(Path(data.meds_dir).expanduser())  # DataError naming what is wrong
    elif prepared is not None and (prepared / shards.MANIFEST).exists():
        return  # used as it is
    elif data.synthetic_subjects < 3:
        raise ConfigError(
            f"config.data.meds_dir is empty and config.data.synthetic_subjects="
            f"{data.synthetic_subjects}: pass your MEDS dataset root, e.g. "
            "--config.data.meds_dir=/path/to/MIMIC-IV-MEDS, or generate at least 3 synthetic "
            "subjects (one per split)")
    if prepared is not None:
        _check_writable_dir(str(prepared), "config.data.prepared_dir")


def _check_eval(config: ml_collections.ConfigDict) -> None:
    from ehr_jax.evaluation import runner

    settings = runner.EvalSettings.from_config(config)
    if settings.labels_dir:
        root = Path(settings.labels_dir).expanduser()
        if not root.is_dir():
            raise ConfigError(f"config.eval.labels_dir={settings.labels_dir!r}: no such "
                              "directory; expected TASK_ROOT with one folder of label parquet "
                              "files per task")
        missing = [task for task in settings.tasks if not (root / task).is_dir()]
        if missing:
            raise ConfigError(f"config.eval.tasks names {missing}, but config.eval.labels_dir="
                              f"{settings.labels_dir!r} has no such folders; it has "
                              f"{sorted(p.name for p in root.iterdir() if p.is_dir())}")


def _check_grid(config: ml_collections.ConfigDict) -> None:
    """Budgets, size names and grid.only (sweep.check_config's data check is _check_data_dirs)."""
    from ehr_jax.sweep import grid

    names = [p.name for p in grid.expand(config, vocab_size=PLACEHOLDER_VOCAB, train_tokens=1)]
    wanted = [name.strip() for name in config.grid.only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise ConfigError(f"config.grid.only names {', '.join(unknown)}, not runs of this grid; "
                          f"the grid has {', '.join(names)}")


def _check_writable_dir(path: str, what: str) -> None:
    """`path` is a directory we can write, or can be created (probed with a temporary file)."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        blocker = "is a file" if existing == target else f"is under {existing}, a file"
        raise ConfigError(f"{what}={path!r} {blocker}; expected a directory (created if missing)")
    try:
        handle, probe = tempfile.mkstemp(prefix=".ehr_jax_probe", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        where = "" if existing == target else f" (it would be created in {existing})"
        raise ConfigError(f"{what}={path!r} is not writable{where}: {error.strerror}") from None


def _reference_keys(with_grid: bool) -> dict[str, Any]:
    reference = rundir.flatten_config(config_files.load_sibling(str(BASE_CONFIG)))
    if with_grid:
        from ehr_jax.sweep import grid

        reference.update({f"grid.{k}": v for k, v in grid.default_grid().items()})
    return reference


def _type_problem(value: Any, default: Any) -> str | None:
    """What `value` should be, given the type of its default, or None when it fits."""
    if isinstance(default, bool):
        return None if isinstance(value, (bool, np.bool_)) else "True or False"
    if isinstance(default, (int, np.integer)):
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        return None if ok else "an integer"
    if isinstance(default, float):
        return None if _number(value) and math.isfinite(value) else "a finite number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, (tuple, list)):
        return None if isinstance(value, (tuple, list, str)) else "a tuple"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    group, _, name = key.partition(".")
    return config[group][name]
