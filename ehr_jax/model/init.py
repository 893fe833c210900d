"""The one way to build the model's state on a mesh, for training, evaluation and benchmarks.

`init` creates the model (and, for training, its optimizer) under jit with out_shardings, so no
host ever holds the whole model; `abstract` gives the same tree as shapes, dtypes and shardings
only, the target a checkpoint is restored onto. Training state is the pair (model, optimizer),
kept as two NNX states so a checkpoint can store them as separate items.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import nnx

from ehr_jax import parallel
from ehr_jax.model import transformer


def _create(cfg: transformer.ModelConfig, seed: int | jax.Array,
            tx: optax.GradientTransformation | None) -> tuple[nnx.Module, ...]:
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(jax.random.key(seed)))
    return (model,) if tx is None else (model, nnx.Optimizer(model, tx, wrt=nnx.Param))


def _split(nodes: tuple[nnx.Module, ...]) -> tuple[tuple, tuple]:
    """((graphdef, ...), (state, ...)) of each node on its own."""
    return tuple(zip(*(nnx.split(node) for node in nodes)))


def _unwrap(pairs: tuple, tx: optax.GradientTransformation | None) -> Any:
    return pairs[0] if tx is None else pairs


def init(cfg: transformer.ModelConfig, mesh: jax.sharding.Mesh, seed: int,
         tx: optax.GradientTransformation | None = None) -> tuple[Any, Any, Any]:
    """(graphdef, state, shardings) of the model, or of the pair (model, optimizer) when `tx`
    is given; each array is created directly in its sharding."""
    graphdef, shardings, create = make_init(cfg, mesh, tx)
    return graphdef, create(seed), shardings


def make_init(cfg: transformer.ModelConfig, mesh: jax.sharding.Mesh,
              tx: optax.GradientTransformation | None = None) -> tuple[Any, Any, Callable]:
    """(graphdef, shardings, create) where create(seed) is `init`'s state: the seed is an input
    of the compiled program, so runs with other seeds (and, kept, every run of a shape) share it."""
    graphdefs, abstract_states = _split(nnx.eval_shape(lambda: _create(cfg, 0, tx)))
    shardings = parallel.state_shardings(abstract_states, mesh)
    program = jax.jit(lambda seed: _split(_create(cfg, seed, tx))[1], out_shardings=shardings)
    return (_unwrap(graphdefs, tx), _unwrap(shardings, tx),
            lambda seed: _unwrap(program(np.int32(seed)), tx))


def abstract(cfg: transformer.ModelConfig, mesh: jax.sharding.Mesh,
             tx: optax.GradientTransformation | None = None) -> tuple[Any, Any]:
    """(graphdef, state of ShapeDtypeStructs with shardings): a restore target, nothing computed."""
    graphdefs, abstract_states = _split(nnx.eval_shape(lambda: _create(cfg, 0, tx)))
    shardings = parallel.state_shardings(abstract_states, mesh)
    targets = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           abstract_states, shardings)
    return _unwrap(graphdefs, tx), _unwrap(targets, tx)
