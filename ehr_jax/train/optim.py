"""Run length, learning rate and optimizer: the one place durations become steps.

A scaling-law point is only valid when its schedule spans exactly its own budget, so the
budget (steps, tokens or training FLOPs) is converted to steps here and the cosine (or a wsd
cooldown) reaches its floor on precisely the last step. Schedule values are run-time inputs of
the train step, never constants baked into it: runs of one model shape share one compile.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ehr_jax.errors import ConfigError

# Width rule for the peak learning rate when config.train.lr is 0:
#   lr = BASE_LR * (BASE_WIDTH / d_model) ** WIDTH_EXPONENT, capped at MAX_LR.
# Wider models get smaller steps (the Adam update of a d x d matrix grows with width); the square
# root is the usual compromise between standard parametrisation (exponent 0) and muP's 1/width
# for hidden matrices. 3e-3 at d_model=256 trains the ladder's small models stably in fp32.
BASE_LR = 3e-3
BASE_WIDTH = 256
WIDTH_EXPONENT = 0.5
MAX_LR = 1e-2
ADAM_B1 = 0.9


def num_steps(train: ml_collections.ConfigDict, *, tokens_per_step: int,
              flops_per_token: float) -> int:
    """Steps for the run from exactly one of train.steps / train.tokens / train.flops.

    Token and FLOP budgets round to the nearest whole step (at least one), so the run's real
    token count is steps * tokens_per_step; summary.json records that real count.
    """
    budgets = {"train.steps": train.steps, "train.tokens": train.tokens,
               "train.flops": train.flops}
    set_keys = [key for key, value in budgets.items() if value]
    if len(set_keys) != 1:
        raise ConfigError(
            f"set exactly one of train.steps, train.tokens, train.flops to a positive value "
            f"(the others 0); got {', '.join(f'{k}={v}' for k, v in budgets.items())}")
    if any(value < 0 for value in budgets.values()):
        raise ConfigError(f"run length must be positive; got {set_keys[0]}={budgets[set_keys[0]]}")
    if train.steps:
        if int(train.steps) != train.steps:
            raise ConfigError(f"train.steps must be a whole number; got {train.steps}")
        return int(train.steps)
    tokens = train.tokens if train.tokens else train.flops / flops_per_token
    return max(1, round(tokens / tokens_per_step))


def peak_learning_rate(train: ml_collections.ConfigDict, d_model: int) -> float:
    """config.train.lr when set, else the width rule above."""
    if train.lr < 0:
        raise ConfigError(f"train.lr must be >= 0 (0 picks the width rule); got {train.lr}")
    if train.lr:
        return float(train.lr)
    return min(MAX_LR, BASE_LR * (BASE_WIDTH / d_model) ** WIDTH_EXPONENT)


SCHEDULES = ("cosine", "wsd")
COOLDOWN_SHAPES = ("linear", "1-sqrt")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A run's learning-rate schedule as numbers.

    `kind` and `cooldown_shape` shape the compiled train step; everything else reaches it as
    run-time inputs (`inputs()`), so every run of one model shape shares one compiled program.

    cosine: linear warmup to the peak, then cosine to floor = peak * min_lr_ratio, reached
    exactly at step index steps - 1 (each IsoFLOP point's schedule spans its own budget).
    wsd (warmup-stable-decay, Hägele et al. 2024): warmup, constant peak, then a cooldown over
    the last cooldown_frac of the steps (from step decay_start) to the floor at steps - 1. Up to
    decay_start the rate does not depend on the run's length, which is what lets one stable run
    feed cooldown branches of every length (ehr_jax.sweep).
    """

    kind: str
    peak_lr: float
    steps: int
    warmup: int
    decay_start: int  # cosine: the warmup's end; wsd: the cooldown's first step
    min_lr_ratio: float
    cooldown_frac: float = 0.0
    cooldown_shape: str = "linear"

    @property
    def floor(self) -> float:
        return self.peak_lr * self.min_lr_ratio

    def inputs(self) -> dict[str, np.ndarray]:
        """float32 scalars the train step computes the rate from (see learning_rate).

        Divisions by run constants are products with float32 reciprocals taken here, which is
        what XLA made of them when they were compiled in: a cosine run's rates are the same
        bits as with a baked-in schedule.
        """
        f32 = np.float32
        return {"peak": f32(self.peak_lr), "floor": f32(self.floor),
                "amplitude": f32(self.peak_lr - self.floor), "warmup": f32(self.warmup),
                "warmup_slope": f32(self.peak_lr) * (f32(1) / f32(max(self.warmup, 1))),
                "decay_start": f32(self.decay_start),
                "inv_decay_len": f32(1) / f32(max(self.steps - 1 - self.decay_start, 1))}

    def describe(self) -> dict:
        """The summary.json fields of the schedule."""
        wsd = self.kind == "wsd"
        return {"schedule": self.kind, "warmup_steps": self.warmup,
                "decay_start": self.decay_start,
                "cooldown_frac": self.cooldown_frac if wsd else None,
                "cooldown_shape": self.cooldown_shape if wsd else None}


def warmup_steps(steps: int, warmup_frac: float) -> int:
    if not 0 <= warmup_frac < 1:
        raise ConfigError(f"train.warmup_frac must be in [0, 1); got {warmup_frac}")
    return int(round(steps * warmup_frac))


def cooldown_start(steps: int, cooldown_frac: float) -> int:
    """The first cooldown step of a wsd run of `steps` steps (the grid branches there)."""
    if not 0 <= cooldown_frac <= 1:
        raise ConfigError(f"train.cooldown_frac must be in [0, 1]; got {cooldown_frac}")
    return int(round(steps * (1.0 - cooldown_frac)))


def make_schedule(train: ml_collections.ConfigDict, peak_lr: float, steps: int) -> Schedule:
    """The run's schedule from config.train (schedule, warmup_*, min_lr_ratio, cooldown_*).

    train.warmup_steps > 0 fixes the warmup length (a sweep's stable run and its branches must
    share it); 0 takes warmup_frac of the run's steps.
    """
    kind = train.schedule
    if kind not in SCHEDULES:
        raise ConfigError(f"train.schedule must be one of {SCHEDULES}; got {kind!r}")
    if not 0 <= train.min_lr_ratio <= 1:
        raise ConfigError(f"train.min_lr_ratio must be in [0, 1]; got {train.min_lr_ratio}")
    fixed = int(train.warmup_steps)
    if fixed < 0:
        raise ConfigError(f"train.warmup_steps must be >= 0 (0: warmup_frac); got {fixed}")
    warmup = fixed or warmup_steps(steps, train.warmup_frac)
    if kind == "cosine":
        return Schedule("cosine", peak_lr, steps, warmup, warmup, train.min_lr_ratio)
    shape = train.cooldown_shape
    if shape not in COOLDOWN_SHAPES:
        raise ConfigError(f"train.cooldown_shape must be one of {COOLDOWN_SHAPES}; got {shape!r}")
    frac = float(train.cooldown_frac)
    start = cooldown_start(steps, frac)
    if warmup > start:
        raise ConfigError(f"train.schedule='wsd': the warmup ({warmup} steps) must end before "
                          f"the cooldown starts (step {start} of {steps}); lower "
                          f"train.warmup_frac / warmup_steps or train.cooldown_frac")
    return Schedule("wsd", peak_lr, steps, warmup, start, train.min_lr_ratio, frac, shape)


def learning_rate(count: jax.Array, inputs: dict[str, jax.Array], kind: str,
                  cooldown_shape: str = "linear") -> jax.Array:
    """The rate of step index `count` (float32) from Schedule.inputs(), inside a jit.

    Warmup starts at peak / warmup (not 0) so the first step is not wasted.
    """
    count = jnp.asarray(count, jnp.float32)
    warm = (count + 1) * inputs["warmup_slope"]
    progress = jnp.clip((count - inputs["decay_start"]) * inputs["inv_decay_len"], 0.0, 1.0)
    if kind == "cosine":
        decayed = inputs["floor"] + inputs["amplitude"] * 0.5 * (1 + jnp.cos(math.pi * progress))
        return jnp.where(count < inputs["warmup"], warm, decayed)
    if cooldown_shape == "1-sqrt":  # Hägele et al.'s best cooldown shape
        left = 1 - jnp.sqrt(progress)
    else:
        left = 1 - progress
    decayed = jnp.where(count < inputs["decay_start"], inputs["peak"],
                        inputs["floor"] + inputs["amplitude"] * left)
    return jnp.where(count < inputs["warmup"], warm, decayed)


def learning_rate_schedule(schedule: Schedule) -> optax.Schedule:
    """The schedule as a plain function of the step (tests, plots)."""
    inputs = {key: jnp.asarray(value) for key, value in schedule.inputs().items()}
    return lambda count: learning_rate(count, inputs, schedule.kind, schedule.cooldown_shape)


def static_settings(train: ml_collections.ConfigDict, schedule: Schedule) -> tuple:
    """What shapes the compiled train step besides the model: the optimizer's constants and the
    schedule's kind, as a hashable key (ehr_jax.train.trainer.compiled_programs)."""
    shape = schedule.cooldown_shape if schedule.kind == "wsd" else "linear"
    return (("b2", float(train.b2)), ("cooldown_shape", shape),
            ("grad_clip", float(train.grad_clip)), ("schedule", schedule.kind),
            ("weight_decay", float(train.weight_decay)))


def _decay_mask(params):
    """Weight decay on matrices only: norm scales (1-D) are not pulled towards zero."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def scale_by_runtime_learning_rate() -> optax.GradientTransformationExtraArgs:
    """Multiplies updates by -learning_rate, a value the caller passes to each update.

    Its state is optax's ScaleByScheduleState (a step count), as scale_by_learning_rate(schedule)
    keeps, so the optimizer state (and its checkpoints) look the same as with a baked-in schedule.
    """
    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, learning_rate, **extra_args):
        del params, extra_args
        step_size = -1 * learning_rate
        updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        return updates, optax.ScaleByScheduleState(
            count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
    """Global-norm clipping, then AdamW whose rate comes with every update
    (`update(..., learning_rate=lr)`): optax.adamw's transforms, with the rate at run time."""
    if train.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip must be positive; got {train.grad_clip}")
    adamw = optax.chain(
        optax.scale_by_adam(b1=ADAM_B1, b2=train.b2, eps=1e-8, eps_root=0.0),
        optax.add_decayed_weights(train.weight_decay, _decay_mask),
        scale_by_runtime_learning_rate(),
    )
    return optax.chain(optax.clip_by_global_norm(train.grad_clip), adamw)
