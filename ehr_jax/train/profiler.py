"""An optional jax.profiler trace of a few training steps (config.train.profile_steps).

The trace lands in <run_dir>/profile, where TensorBoard's profile tab (tensorboard-plugin-profile)
or Perfetto reads it: op-level device time, the first thing to look at when MFU is low.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
from absl import logging

from ehr_jax.errors import ConfigError


class StepProfiler:
    """Starts a trace before step `first` and stops it after `count` steps (only process 0)."""

    def __init__(self, run_dir: str, profile_steps: Sequence[int], enabled: bool = True):
        if len(profile_steps) != 2 or any(int(v) < 0 for v in profile_steps):
            raise ConfigError(f"train.profile_steps={tuple(profile_steps)!r}; expected "
                              "(first step, number of steps), e.g. (10, 5), or (0, 0) for off")
        self.first, self.count = int(profile_steps[0]), int(profile_steps[1])
        self.enabled = enabled and self.count > 0
        self.directory = os.path.join(run_dir, "profile")
        self.active = False

    def before_step(self, step: int) -> None:
        if self.enabled and not self.active and step == self.first:
            jax.profiler.start_trace(self.directory)
            self.active = True
            logging.info("profiler: tracing steps %d-%d into %s", step, step + self.count - 1,
                         self.directory)

    def after_step(self, step: int, outputs) -> None:
        """Stops once `count` steps ran (waiting for them, so the trace holds their device time)."""
        if self.active and step + 1 >= self.first + self.count:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
