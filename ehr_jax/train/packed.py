"""Several same-shape runs trained as one program: jax.vmap over stacked (model, optimizer) states.

A model too small to fill its device (the quickstart's d16-d96 on a CPU, a 10M-parameter model on
an H100) leaves most of each step's time to dispatch and thin matmuls. K runs of one shape that
differ in seed, data order and learning rate can share one jitted step instead: their states are
stacked on a leading run axis, each gets its own batch and its own schedule inputs, and the
step is the single-run step (trainer.train_step_fn) under vmap, so the arithmetic of each run is
the single run's arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ehr_jax.train import trainer


def stack(trees: Sequence[Any]) -> Any:
    """One pytree with a leading run axis from K pytrees of the same structure."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, count: int) -> list[Any]:
    """The K single-run pytrees of a stacked one (e.g. to checkpoint each run on its own)."""
    return [jax.tree.map(lambda leaf, i=i: leaf[i], tree) for i in range(count)]


def make_packed_train_step(graphdef: tuple[nnx.GraphDef, nnx.GraphDef], schedule_kind: str,
                           cooldown_shape: str = "linear") -> Callable:
    """jit'd (stacked state, stacked batch, stacked schedule inputs) -> (stacked state,
    stacked metrics): every leaf carries the run axis first; the state is donated."""
    step = trainer.train_step_fn(graphdef, schedule_kind, cooldown_shape)
    return jax.jit(jax.vmap(step), donate_argnums=0)
