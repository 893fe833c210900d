"""Run metrics: TensorBoard events, metrics.jsonl, the progress line, throughput and MFU (with
the device peaks it divides by: a table, or a matmul probe for kinds the table lacks).

Throughput is timed only over training steps: compile steps and eval/checkpoint pauses are
left out (big_vision's Chrono), so tokens/s and MFU describe the step itself.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import time
from typing import Mapping

import numpy as np
from absl import logging


class Chrono:
    """Training-step clock that skips compile steps and pauses.

    `mark(steps_done, tokens_done)` is called whenever a step is known to be finished (its
    metrics fetched), with the real (non-pad) tokens trained on so far; the time and tokens
    between two marks count towards throughput unless `pause()` came in between. The first mark
    after construction or a pause only sets the reference, so the step that compiles (or waits
    behind an eval) is never timed. Padding is not counted: tokens/s and MFU are real tokens'.
    """

    def __init__(self, total_steps: int, flops_per_token: float, peak_flops_total: float | None):
        self.total_steps = total_steps
        self.flops_per_token = flops_per_token
        self.peak_flops_total = peak_flops_total
        self.timed_steps = 0
        self.timed_tokens = 0
        self.timed_s = 0.0
        self._ref: tuple[float, int, int] | None = None  # (time, steps_done, tokens_done)
        self._window = (0, 0, 0.0)  # (timed_steps, timed_tokens, timed_s) at the last window

    def mark(self, steps_done: int, tokens_done: int) -> None:
        now = time.perf_counter()
        if self._ref is not None and steps_done > self._ref[1]:
            self.timed_s += now - self._ref[0]
            self.timed_steps += steps_done - self._ref[1]
            self.timed_tokens += tokens_done - self._ref[2]
        self._ref = (now, steps_done, tokens_done)

    def pause(self) -> None:
        """The next interval holds non-training work (eval, checkpoint, compile): skip it."""
        self._ref = None

    def rates(self) -> dict:
        """Cumulative tokens/s and MFU over all timed steps (0 before any)."""
        return self._rates(self.timed_steps, self.timed_tokens, self.timed_s)

    def window_rates(self) -> dict:
        """tokens/s and MFU since the previous call (for TensorBoard points)."""
        steps = self.timed_steps - self._window[0]
        tokens = self.timed_tokens - self._window[1]
        seconds = self.timed_s - self._window[2]
        self._window = (self.timed_steps, self.timed_tokens, self.timed_s)
        return self._rates(steps, tokens, seconds) if steps else self.rates()

    def _rates(self, steps: int, tokens: int, seconds: float) -> dict:
        if steps == 0 or seconds <= 0:
            return {"tokens_per_s": 0.0, "flops_per_s": 0.0, "mfu": 0.0}
        flops_per_s = tokens * self.flops_per_token / seconds
        return {"tokens_per_s": tokens / seconds, "flops_per_s": flops_per_s,
                "mfu": mfu(flops_per_s, self.peak_flops_total)}

    def eta_s(self, steps_done: int) -> float | None:
        if self.timed_steps == 0:
            return None
        return (self.total_steps - steps_done) * self.timed_s / self.timed_steps


def mfu(model_flops_per_s: float, peak_flops_total: float | None) -> float:
    """Model FLOP utilisation: achieved model FLOP/s over (device peak x devices)."""
    if not peak_flops_total:
        return 0.0
    return model_flops_per_s / peak_flops_total


def format_progress(step: int, total: int, loss: float, rates: Mapping[str, float],
                    eta_s: float | None) -> str:
    eta = "?" if eta_s is None else str(datetime.timedelta(seconds=int(eta_s)))
    return (f"step {step}/{total} ({100 * step / total:.1f}%) loss {loss:.4f} | "
            f"{rates['tokens_per_s']:,.0f} tok/s | MFU {100 * rates['mfu']:.1f}% | ETA {eta}")


# Dense bf16 peak FLOP/s per chip, matched as a case-insensitive substring of jax's
# device_kind (the longest match wins). Sources: NVIDIA datasheets (H100/H200/A100/B200 SXM,
# L4, L40S, A10; dense, no sparsity); Google Cloud TPU docs (cloud.google.com/tpu/docs/v3, /v4,
# /v5e, /v5p, /v6e, /tpu7x). A device kind missing here gets a measured matmul peak instead.
DEVICE_PEAK_FLOPS: dict[str, float] = {
    "TPU v3": 123e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,  # v5p reports itself as "TPU v5"
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "H100": 989e12,  # SXM
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,  # A10 datasheet; AWS's A10G is the same GA102 chip (its clocks may differ)
    "TPU7x": 2307e12,  # Ironwood
}


def known_peak(device_kind: str) -> float | None:
    """The table's peak for a device kind, or None when the kind is not in it."""
    matches = [k for k in DEVICE_PEAK_FLOPS if k.lower() in device_kind.lower()]
    return DEVICE_PEAK_FLOPS[max(matches, key=len)] if matches else None


def measure_matmul_peak(device=None) -> float:
    """FLOP/s of the best of a few large matmuls on `device` right now: the MFU denominator of a
    device kind the table lacks (CPUs), and what benchmarks re-measure on a shared machine."""
    import jax
    import jax.numpy as jnp

    device = device or jax.local_devices()[0]
    dtype = jnp.float32 if device.platform == "cpu" else jnp.bfloat16
    n = 1024 if device.platform == "cpu" else 8192
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


@functools.cache
def _measured_peak(platform: str, device_kind: str, n_local: int) -> float:
    """Measured once per process. On CPU the fake devices of one host share its cores, so the
    host peak is split among them (peak x devices stays the host's peak)."""
    peak = measure_matmul_peak()
    return peak / n_local if platform == "cpu" else peak


def peak_flops(device=None) -> float:
    """Peak FLOP/s of one device: the table for known kinds, else a measured matmul peak."""
    import jax

    device = device or jax.devices()[0]
    known = known_peak(device.device_kind)
    if known is not None:
        return known
    return _measured_peak(device.platform, device.device_kind, jax.local_device_count())


class MetricsWriter:
    """metrics.jsonl + TensorBoard events under the run dir; a no-op off process 0.

    On resume, points after the restored step (written before a kill) are dropped from both,
    so the curves of a resumed run equal those of an uninterrupted one.
    """

    def __init__(self, workdir: str, *, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # imported here: only process 0 writes

        path = os.path.join(workdir, "metrics.jsonl")
        _truncate_jsonl(path, resume_step)
        self._jsonl = open(path, "a", encoding="utf-8")
        self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"),
                                 purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {key: _to_float(value) for key, value in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()
        for key, value in clean.items():
            if value is not None:
                self._tb.add_scalar(key, value, global_step=step)
        self._tb.flush()  # a SIGKILL must not lose the points before the last checkpoint

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _to_float(value) -> float | None:
    value = float(np.asarray(value))
    return value if math.isfinite(value) else None


def _truncate_jsonl(path: str, keep_through_step: int) -> None:
    """Drops lines for steps after `keep_through_step` (all lines when starting fresh)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= keep_through_step]
    if len(kept) != len(lines):
        logging.info("metrics: dropping %d points after step %d", len(lines) - len(kept),
                     keep_through_step)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


@dataclasses.dataclass
class ValLosses:
    """Validation losses over the fixed tuning windows."""

    mean: float  # token-weighted mean cross-entropy
    sum_by_target: np.ndarray  # float64[vocab]: summed loss per target token id
    count_by_target: np.ndarray  # int64[vocab]: target positions per token id


def token_type_names(vocab: list[str]) -> np.ndarray:
    """Type name per token id (time, lab, diagnosis, ...) for the per-type validation loss."""
    from ehr_jax.data import tokenize

    return np.asarray(tokenize.TOKEN_TYPE_NAMES, dtype=object)[tokenize.token_types(vocab)]


def loss_by_token_type(val: ValLosses, type_names: np.ndarray) -> dict:
    """{type: {loss, n_tokens}} over validation targets, for types that occur."""
    result = {}
    for name in dict.fromkeys(type_names):
        ids = np.flatnonzero(type_names == name)
        count = int(val.count_by_target[ids].sum())
        if count:
            result[str(name)] = {"loss": float(val.sum_by_target[ids].sum() / count),
                                 "n_tokens": count}
    return result
