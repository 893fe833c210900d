"""Memory pre-flight: compile the train step for the real mesh and check it fits the device.

Before the first step the trainer compiles its step ahead of time and reads XLA's own
per-device buffer assignment (`compiled.memory_analysis()`: arguments + outputs - donated
aliases + temporaries). When that exceeds the device's memory, `train.memory_fit="auto"` tries
rematerialisation, then rematerialisation with 2, 4, 8, ... gradient-accumulation steps, and
keeps the first setting that fits; `"check"` stops with a ConfigError naming that setting;
`"off"` skips the pre-flight (the step then compiles on its first call, as without it). The
compiled executable that fits is the one training runs, so the pre-flight costs no second
compile when the configured setting fits.

Remat comes first because it costs a fixed ~1/3 more compute and keeps the micro-batch (and
its matmuls) large; accumulation splits the per-device rows, which re-gathers FSDP weights once
per micro-batch and shrinks every matmul.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable

import ml_collections
from absl import logging

from ehr_jax.errors import ConfigError

GIB = 2.0**30
MODES = ("auto", "check", "off")
# Share of the device's memory the step may use: the rest is for what the analysis does not
# see (the eval step's buffers, prefetched batches, allocator fragmentation).
USABLE_FRACTION = 0.95


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the pre-flight may change: remat and the number of micro-batches per step."""

    remat: bool
    accum_steps: int

    def describe(self) -> str:
        remat = "remat" if self.remat else "no remat"
        steps = self.accum_steps
        return f"{remat}, {steps} accumulation step{'s' if steps > 1 else ''}"

    def config_keys(self) -> str:
        return (f"--config.model.remat={self.remat} "
                f"--config.train.grad_accum_steps={self.accum_steps}")


@dataclasses.dataclass
class Fit:
    """The setting training uses, with what the pre-flight measured (bytes per device)."""

    setting: Setting
    mode: str
    limit_bytes: int | None = None
    need_bytes: int | None = None
    compiled: Any = None  # the compiled step of `setting` (None when nothing was compiled)
    tried: list[tuple[Setting, int, float]] = dataclasses.field(default_factory=list)  # bytes, compile s

    def summary(self) -> dict:
        """summary.json's `memory` entry."""
        gib = lambda b: None if b is None else round(b / GIB, 3)  # noqa: E731
        return {"remat": self.setting.remat, "grad_accum_steps": self.setting.accum_steps,
                "memory_fit": self.mode, "step_gib_per_device": gib(self.need_bytes),
                "device_gib": gib(self.limit_bytes),
                "tried": [{"remat": s.remat, "grad_accum_steps": s.accum_steps,
                           "step_gib_per_device": gib(b), "compile_s": round(t, 1)}
                          for s, b, t in self.tried]}


def check_config(train: ml_collections.ConfigDict) -> None:
    """train.memory_fit, train.grad_accum_steps and train.device_memory_gib are well-formed."""
    if train.memory_fit not in MODES:
        raise ConfigError(f"train.memory_fit={train.memory_fit!r}; expected one of {MODES}")
    steps = train.grad_accum_steps
    if not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"train.grad_accum_steps={steps!r}; expected 0 (auto) or a positive "
                          "number of micro-batches per step")
    if train.device_memory_gib < 0:
        raise ConfigError(f"train.device_memory_gib={train.device_memory_gib}; expected 0 (ask "
                          "the device) or the memory of one device in GiB")


def check_accumulation(accum_steps: int, global_batch_size: int, batch_shards: int,
                       mesh_shape: tuple[int, ...]) -> None:
    """Each batch shard's rows must split evenly into the micro-batches."""
    rows = global_batch_size // batch_shards
    if rows % accum_steps:
        raise ConfigError(
            f"train.grad_accum_steps={accum_steps}: each of the {batch_shards} batch shards "
            f"(data x fsdp of mesh.shape={mesh_shape}) holds {rows} rows of "
            f"train.global_batch_size={global_batch_size}, which {accum_steps} micro-batches "
            f"do not divide")


def device_memory_bytes(train: ml_collections.ConfigDict, device: Any) -> int | None:
    """Memory one device offers the step: train.device_memory_gib when set, else the allocator's
    limit (GPU: XLA_PYTHON_CLIENT_MEM_FRACTION of it, 75% by default; TPU: its HBM); None on
    CPU, where the host has no such limit."""
    if train.device_memory_gib:
        return int(train.device_memory_gib * GIB)
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def step_bytes(compiled: Any) -> int:
    """Per-device bytes of a compiled program: arguments + outputs - donated aliases + temps."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def candidates(remat: bool, accum_steps: int, rows_per_shard: int) -> list[Setting]:
    """Settings in the order the pre-flight tries them: the configured one first, then remat,
    then remat with doubling accumulation (only when train.grad_accum_steps is 0, auto)."""
    first = Setting(remat, accum_steps or 1)
    found = [first, Setting(True, first.accum_steps)]
    if not accum_steps:
        steps = 2
        while steps <= rows_per_shard:
            if rows_per_shard % steps == 0:
                found.append(Setting(True, steps))
            steps *= 2
    return list(dict.fromkeys(found))


def choose(train: ml_collections.ConfigDict, *, remat: bool, rows_per_shard: int,
           limit_bytes: int | None, compile_step: Callable[[Setting], Any], what: str) -> Fit:
    """The setting training uses, and its compiled step when the pre-flight ran.

    `compile_step(setting)` returns the step compiled ahead of time for that setting; `what`
    names the run in messages (size, rows per device).
    """
    configured = Setting(remat, int(train.grad_accum_steps) or 1)
    if train.memory_fit == "off" or limit_bytes is None:
        if train.memory_fit != "off":
            logging.info("memory pre-flight skipped: the device reports no memory limit (set "
                         "train.device_memory_gib to check against one)")
        return Fit(configured, train.memory_fit, limit_bytes)
    usable = int(limit_bytes * USABLE_FRACTION)
    fit = Fit(configured, train.memory_fit, limit_bytes)
    for setting in candidates(remat, int(train.grad_accum_steps), rows_per_shard):
        start = time.perf_counter()
        compiled, need = _compile_or_refusal(compile_step, setting)
        fit.tried.append((setting, need, time.perf_counter() - start))
        logging.info("memory pre-flight: %s with %s needs %s per device of %.2f GiB usable "
                     "(compiled in %.1f s%s)", what, setting.describe(), _gib(need), usable / GIB,
                     fit.tried[-1][2], "" if compiled is not None else "; the compiler refused it")
        if compiled is not None and need <= usable:
            fit.setting, fit.need_bytes, fit.compiled = setting, need, compiled
            break
        del compiled
    else:
        raise ConfigError(_nothing_fits(what, fit.tried, usable))
    if fit.setting != configured:
        first_need = fit.tried[0][1]
        message = (f"{what} needs {_gib(first_need)} per device of {usable / GIB:.1f} GiB "
                   f"usable; with {fit.setting.describe()} it needs {fit.need_bytes / GIB:.1f} "
                   f"GiB")
        if train.memory_fit == "check":
            raise ConfigError(f"{message}: set {fit.setting.config_keys()} (or "
                              "train.memory_fit=auto to pick it)")
        logging.warning("memory pre-flight: %s; training with it (train.memory_fit=auto)", message)
    return fit


def _compile_or_refusal(compile_step: Callable[[Setting], Any], setting: Setting
                        ) -> tuple[Any | None, int]:
    """(compiled step, its bytes per device), or (None, the bytes the compiler said it needed)
    when the compiler itself refuses the program: XLA's TPU compiler knows the chip's HBM and
    fails with RESOURCE_EXHAUSTED instead of returning a program that does not fit."""
    try:
        compiled = compile_step(setting)
    except Exception as error:  # jax.errors.JaxRuntimeError; other errors are re-raised
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        return None, refused_bytes(str(error))
    return compiled, step_bytes(compiled)


def refused_bytes(message: str) -> int:
    """What a RESOURCE_EXHAUSTED compile error says the program needs ("... the total memory
    required for HLO temporaries (50.34G) exceeds available HBM (15.75G)"; XLA's G is GiB), or
    2**62 when it names no size (then only "does not fit" is known)."""
    match = re.search(r"required[^(]*\(([\d.]+)([KMGT])\)", message)
    if not match:
        return 2**62
    return int(float(match.group(1)) * 1024.0 ** "KMGT".index(match.group(2)) * 1024)


def _nothing_fits(what: str, tried: list[tuple[Setting, int, float]], usable: int) -> str:
    needs = "; ".join(f"{s.describe()}: {_gib(b)}" for s, b, _ in tried)
    return (f"{what} does not fit {usable / GIB:.1f} GiB per device with any setting tried "
            f"({needs}); use more devices or shard weights over them (mesh.shape with fsdp), "
            f"or lower train.global_batch_size or data.seq_len")


def _gib(n_bytes: int) -> str:
    return "more than the device (the compiler refused it)" if n_bytes >= 2**62 else f"{n_bytes / GIB:.1f} GiB"
