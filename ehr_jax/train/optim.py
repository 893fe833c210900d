"""Run length, learning rate and optimizer: the one place durations become steps.

A scaling-law point is only valid when its schedule spans exactly its own budget, so the
budget (steps, tokens or training FLOPs) is converted to steps here and the cosine reaches its
floor on precisely the last step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
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


def warmup_steps(steps: int, warmup_frac: float) -> int:
    if not 0 <= warmup_frac < 1:
        raise ConfigError(f"train.warmup_frac must be in [0, 1); got {warmup_frac}")
    return int(round(steps * warmup_frac))


def learning_rate_schedule(peak_lr: float, steps: int, warmup_frac: float,
                           min_lr_ratio: float) -> optax.Schedule:
    """Linear warmup to the peak, then cosine to peak * min_lr_ratio at step index steps - 1.

    Warmup starts at peak / warmup (not 0) so the first step is not wasted.
    """
    if not 0 <= min_lr_ratio <= 1:
        raise ConfigError(f"train.min_lr_ratio must be in [0, 1]; got {min_lr_ratio}")
    warmup = warmup_steps(steps, warmup_frac)
    decay = max(steps - 1 - warmup, 1)
    floor = peak_lr * min_lr_ratio

    def schedule(count: jax.Array) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        warm = peak_lr * (count + 1) / max(warmup, 1)
        progress = jnp.clip((count - warmup) / decay, 0.0, 1.0)
        cosine = floor + (peak_lr - floor) * 0.5 * (1 + jnp.cos(math.pi * progress))
        return jnp.where(count < warmup, warm, cosine)

    return schedule


def _decay_mask(params):
    """Weight decay on matrices only: norm scales (1-D) are not pulled towards zero."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(train: ml_collections.ConfigDict, peak_lr: float,
                   steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on the schedule above."""
    if train.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip must be positive; got {train.grad_clip}")
    schedule = learning_rate_schedule(peak_lr, steps, train.warmup_frac, train.min_lr_ratio)
    return optax.chain(
        optax.clip_by_global_norm(train.grad_clip),
        optax.adamw(schedule, b1=ADAM_B1, b2=train.b2, weight_decay=train.weight_decay,
                    mask=_decay_mask),
    )
