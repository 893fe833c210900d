"""Mesh, sharding rules and multi-process start-up: the one place that knows about devices.

Model code names logical axes only (embed, mlp, heads, ...). LOGICAL_AXIS_RULES maps them onto
the mesh axes ("data", "fsdp", "tensor"): FSDP shards the embed dimension of every weight,
tensor parallelism splits mlp/heads/vocab, and batches are split over data x fsdp. The same code
runs on 1 CPU device, 8 fake ones, a GPU node or a TPU pod slice.
"""

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

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
    ("layers", None),  # the stacked blocks' leading axis (model.scan_layers)
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


def check_batch_size(global_batch_size: int, shape: Sequence[int]) -> int:
    """The batch shards (data x fsdp) of a filled-in mesh shape, which must divide the batch."""
    shards = math.prod(s for axis, s in zip(MESH_AXES, shape) if axis in BATCH_AXES)
    if global_batch_size % shards:
        raise ConfigError(f"config.train.global_batch_size={global_batch_size} must be a multiple "
                          f"of the {shards} batch shards (data x fsdp) of mesh shape "
                          f"{tuple(shape)}")
    return shards


def agree(value: bool) -> bool:
    """Process 0's value on every process of the job (with one process, the value itself), so
    decisions only process 0 can make (locks, files it read) are the same everywhere."""
    if jax.process_count() == 1:
        return bool(value)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(value))))


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over `devices` (default: all global devices) with axes MESH_AXES, every axis Auto
    (pjit semantics)."""
    shape = mesh_shape(shape, jax.device_count() if devices is None else len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def _mesh_axes(entry) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry or ())


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, what: str) -> PartitionSpec:
    """`spec` with every dimension the mesh does not divide replicated, and logged.

    Mesh axes of size 1 are dropped (they split nothing). A rule naming an axis the mesh lacks
    is a bug in LOGICAL_AXIS_RULES or the model and raises.
    """
    fitted = []
    for dim, (size, entry) in enumerate(zip(shape, tuple(spec) + (None,) * len(shape))):
        names = _mesh_axes(entry)
        unknown = [n for n in names if n not in mesh.shape]
        if unknown:
            raise ValueError(f"{what}: axes {unknown} are not mesh axes {tuple(mesh.shape)}; "
                             "every logical axis needs a rule in LOGICAL_AXIS_RULES")
        ways = math.prod(mesh.shape[n] for n in names)
        if ways > 1 and size % ways:
            _log_replicated(what, dim, size, names, ways)
        fitted.append(entry if ways > 1 and size % ways == 0 else None)
    return PartitionSpec(*fitted)


@functools.cache
def _log_replicated(what: str, dim: int, size: int, names: tuple[str, ...], ways: int) -> None:
    """Once per (array, dimension): the split the rules asked for, and why it is not made."""
    logging.warning("sharding: %s dimension %d has size %d, which mesh axes %s (%d ways) do not "
                    "divide; it is replicated instead", what, dim, size, names, ways)


def logical_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                 what: str) -> PartitionSpec:
    """PartitionSpec of an array with these logical axes under LOGICAL_AXIS_RULES, fitted to
    `mesh`; `what` names the array in the log line when a dimension is not divisible."""
    spec = core_spmd.from_sharding_rules(tuple(logical_axes), LOGICAL_AXIS_RULES)
    return _fit(PartitionSpec(*spec), shape, mesh, what)


def constrain(x: jax.Array, logical_axes: Sequence[str | None], what: str = "activation") -> jax.Array:
    """Pin an activation's sharding by logical names when traced under jax.set_mesh(mesh).

    Without a mesh in context this is the identity, so model code runs unchanged on one device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(logical_axes, x.shape, mesh, what))


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """NamedShardings for an NNX state (model or optimizer), same tree structure as the state.

    Flax reads each Variable's logical axes (nnx.with_partitioning) under LOGICAL_AXIS_RULES;
    variables without logical axes (step counters, scalars) are replicated.
    """
    with nnx.logical_axis_rules(LOGICAL_AXIS_RULES):
        specs = nnx.get_partition_spec(abstract_state)

    def one(path, spec, var):
        fitted = _fit(spec.get_value(), var.shape, mesh, _path_name(path))
        return spec.replace(NamedSharding(mesh, fitted))

    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    return jax.tree_util.tree_map_with_path(one, specs, abstract_state, is_leaf=is_var)


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


def check_batch_layout(mesh: Mesh, global_batch_size: int,
                       process_of: Callable[[jax.Device], int] | None = None) -> None:
    """Each process loads B/P rows of every batch (its own, data/loader.py); its devices must
    hold exactly one block of B/P rows, or make_array_from_process_local_data refuses the data.

    That fails when an axis the batch is replicated over (tensor) spans processes: both
    processes' devices then hold the same rows, but each loaded different ones. Refused here,
    naming the mesh. (Which block a process holds does not matter: rows are exchangeable.)
    """
    process_of = process_of or (lambda device: device.process_index)
    processes = sorted({process_of(device) for device in mesh.devices.flat})
    if len(processes) == 1:
        return
    rows: dict[int, set[int]] = {p: set() for p in processes}
    for device, index in batch_sharding(mesh).devices_indices_map((global_batch_size,)).items():
        rows[process_of(device)].update(range(*index[0].indices(global_batch_size)))
    share = global_batch_size // len(processes)
    for p in processes:
        if len(rows[p]) != share or max(rows[p]) - min(rows[p]) + 1 != share:
            raise ConfigError(
                f"mesh.shape={tuple(mesh.shape.values())} over {len(processes)} processes: the "
                f"devices of process {p} hold {len(rows[p])} rows of each batch, not one block "
                f"of the {share} rows it loads; the tensor axis (over which the batch is "
                f"replicated) must stay inside one process (at most "
                f"{mesh.devices.size // len(processes)} devices here), data and fsdp may span "
                f"processes")
