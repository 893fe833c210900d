"""Mesh, sharding rules and multi-process start-up: the one place that knows about devices.

Model code names logical axes only (embed, mlp, heads, ...). LOGICAL_AXIS_RULES maps them onto
the mesh axes ("data", "fsdp", "tensor"): FSDP shards the embed dimension of every weight,
tensor parallelism splits mlp/heads/vocab, and batches are split over data x fsdp. The same code
runs on 1 CPU device, 8 fake ones, a GPU node or a TPU pod slice.
"""

import math
import os
from collections.abc import Callable, Sequence

import flax.core.spmd as core_spmd
import jax
from absl import logging
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ehr_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),  # RMSNorm scales: tiny, replicated
)


def mesh_shape(shape: Sequence[int], device_count: int) -> tuple[int, ...]:
    """config.mesh.shape with its one -1 filled in; ConfigError when it cannot fit the devices."""
    shape = tuple(int(s) for s in shape)
    where = f"config.mesh.shape={shape} over axes {MESH_AXES} with {device_count} devices"
    if len(shape) != len(MESH_AXES):
        raise ConfigError(f"{where}: expected {len(MESH_AXES)} entries")
    if shape.count(-1) > 1:
        raise ConfigError(f"{where}: at most one entry may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"{where}: entries must be positive or a single -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if device_count % known:
            raise ConfigError(f"{where}: {known} does not divide the device count")
        shape = tuple(device_count // known if s == -1 else s for s in shape)
    if math.prod(shape) != device_count:
        raise ConfigError(f"{where}: the product {math.prod(shape)} must equal the device count")
    return shape


def check_batch_size(global_batch_size: int, shape: Sequence[int]) -> None:
    """The global batch splits evenly over the batch axes (data x fsdp) of a filled-in shape."""
    shards = math.prod(s for axis, s in zip(MESH_AXES, shape) if axis in BATCH_AXES)
    if global_batch_size % shards:
        raise ConfigError(f"config.train.global_batch_size={global_batch_size} must be a multiple "
                          f"of the {shards} batch shards (data x fsdp) of mesh shape "
                          f"{tuple(shape)}")


def agree(value: bool) -> bool:
    """Process 0's value on every process of the job (with one process, the value itself), so
    decisions only process 0 can make (locks, files it read) are the same everywhere."""
    if jax.process_count() == 1:
        return bool(value)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(value))))


def make_mesh(shape: Sequence[int]) -> Mesh:
    """A Mesh over all (global) devices with axes MESH_AXES, every axis Auto (pjit semantics)."""
    shape = mesh_shape(shape, jax.device_count())
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[str | None]) -> PartitionSpec:
    """PartitionSpec for a tuple of logical axis names under LOGICAL_AXIS_RULES."""
    rules = dict(LOGICAL_AXIS_RULES)
    missing = [a for a in logical_axes if a is not None and a not in rules]
    if missing:
        raise KeyError(f"logical axes {missing} have no rule in LOGICAL_AXIS_RULES")
    return PartitionSpec(*(rules[a] if a is not None else None for a in logical_axes))


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Replicate any dimension the mesh axes do not divide (e.g. an odd vocabulary size)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = math.prod(mesh.shape[n] for n in names)
        fitted.append(axes if ways > 1 and dim % ways == 0 else None)
    return PartitionSpec(*fitted)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Pin an activation's sharding by logical names when traced under jax.set_mesh(mesh).

    Without a mesh in context this is the identity, so model code runs unchanged on one device.
    Rules come from nnx.logical_axis_rules(...) when set, else LOGICAL_AXIS_RULES.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    rules = dict(core_spmd.get_logical_axis_rules() or LOGICAL_AXIS_RULES)
    spec = PartitionSpec(*(rules.get(a) if a is not None else None for a in logical_axes))
    return jax.lax.with_sharding_constraint(x, _fit_spec(spec, x.shape, mesh))


def _variable_sharding(var: nnx.Variable, mesh: Mesh) -> NamedSharding:
    logical = var.get_metadata().get("out_sharding") or ()
    spec = logical_to_spec(logical) if logical else PartitionSpec()
    return NamedSharding(mesh, _fit_spec(spec, var.shape, mesh))


def state_shardings(state, mesh: Mesh):
    """NamedShardings for an NNX state (model or optimizer), same tree structure as `state`.

    Variables without logical axes (step counters, scalars) are replicated.
    """

    def one(x):
        if isinstance(x, nnx.Variable):
            return x.replace(_variable_sharding(x, mesh))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Move a model's state onto its NamedShardings in place (and return it).

    Every process must hold the same values; for large or multi-host models use init_sharded.
    """
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh)))
    return model


def init_sharded(make_model: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Build a model directly on its shardings (no full host copy: large models, multi-host)."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
    shardings = state_shardings(abstract_state, mesh)
    state = jax.jit(lambda: nnx.state(make_model()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


_EXPLICIT_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _cluster_detected(env) -> bool:
    """Several SLURM tasks under srun, or a multi-host TPU slice: JAX finds its peers itself."""
    slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in env
    tpu_pod = "," in env.get("TPU_WORKER_HOSTNAMES", "")
    return slurm or tpu_pod


def _slurm_tasks_per_node(env) -> int:
    """Tasks on this node: SLURM writes e.g. "8", "8(x2)" or "8,4" (we take the first)."""
    for key in ("SLURM_NTASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        value = env.get(key, "")
        digits = value.split("(")[0].split(",")[0]
        if digits.isdigit():
            return int(digits)
    return 1


def local_device_ids(env) -> list[int] | None:
    """The GPU ordinals this process owns, counted among the GPUs it can see; None: leave it to JAX.

    jax.distributed's SLURM detection asks for ordinal SLURM_LOCALID, but srun (or
    launch/slurm_gpu.sbatch) often narrows CUDA_VISIBLE_DEVICES to the task's one GPU, where
    that ordinal does not exist for any rank >= 1 (jax-ml/jax issues 23452 and 29669).
    """
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible and "SLURM_LOCALID" not in env:
        return None  # not a GPU job we can reason about (CPU, TPU): JAX decides
    if _slurm_tasks_per_node(env) > 1 and len(visible) != 1:
        return [int(env.get("SLURM_LOCALID", "0"))]  # several tasks sharing the node's GPUs
    return list(range(len(visible))) if visible else None  # every GPU this process sees


def initialize_distributed(auto_detect: bool | None = None) -> None:
    """Start jax.distributed when this is one of several processes, then log who we are.

    Explicit: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES (> 1) and JAX_PROCESS_ID all set (the
    localhost and generic-cluster path). Detected: several SLURM tasks (srun) or a multi-host TPU
    slice, where JAX reads its arguments from the cluster; EHR_JAX_DISTRIBUTED=auto forces
    detection (e.g. Open MPI), =off disables it. A single process starts nothing.
    """
    env = os.environ
    mode = env.get("EHR_JAX_DISTRIBUTED", "").lower()
    if auto_detect is None:
        auto_detect = mode == "auto" or (mode != "off" and _cluster_detected(env))
    local = {} if (ids := local_device_ids(env)) is None else {"local_device_ids": ids}
    if jax.distributed.is_initialized():
        pass
    elif all(env.get(k) for k in _EXPLICIT_ENV) and int(env["JAX_NUM_PROCESSES"]) > 1:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
            **local,
        )
    elif auto_detect:
        jax.distributed.initialize(**local)
    logging.info(
        "process %d of %d; %d local / %d global devices (%s)",
        jax.process_index(), jax.process_count(), jax.local_device_count(),
        jax.device_count(), jax.devices()[0].device_kind,
    )
