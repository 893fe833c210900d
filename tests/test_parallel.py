"""Mesh construction, sharding rules and multi-process start-up on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

from ehr_jax import parallel
from ehr_jax.errors import ConfigError
from ehr_jax.model import transformer as T

VOCAB = 100  # even, so the tensor axis can split it


def _make(size="d64-l2", vocab=VOCAB, **model):
    cfg = T.model_config(ml_collections.ConfigDict(dict(size=size, **model)), vocab, 16)
    return lambda: T.Transformer(cfg, rngs=nnx.Rngs(0))


def test_every_logical_axis_has_a_rule():
    rules = dict(parallel.LOGICAL_AXIS_RULES)
    for make in (_make(n_kv_heads=2), _make(tie_embeddings=True)):
        model = nnx.eval_shape(make)
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            axes = var.get_metadata().get("out_sharding")
            assert axes and len(axes) == var.ndim, path
            assert set(axes) <= set(rules), (path, axes)
    for mesh_axes in rules.values():
        names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        assert set(names) <= set(parallel.MESH_AXES)


def test_make_mesh_fills_the_free_axis():
    mesh = parallel.make_mesh((-1, 2, 1))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert tuple(mesh.axis_types) == (AxisType.Auto,) * 3
    assert dict(parallel.make_mesh([1, 1, -1]).shape)["tensor"] == 8


@pytest.mark.parametrize(
    "shape", [(2, 2, 1), (-1, -1, 2), (3, -1, 1), (8, 1), (0, -1, 1), (16, 1, 1)]
)
def test_bad_mesh_shape_is_a_config_error(shape):
    with pytest.raises(ConfigError, match=r"config\.mesh\.shape"):
        parallel.make_mesh(shape)


def test_large_parameters_are_sharded():
    """With mesh (1, 4, 2) every matrix lives 8-way split (MaxText's sufficiently-sharded check)."""
    mesh = parallel.make_mesh((1, 4, 2))
    model = parallel.shard_model(_make()(), mesh)
    total = per_device = 0
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        array = var[...]
        shard = array.addressable_shards[0].data
        total += array.size
        per_device += shard.size
        if array.ndim >= 2:
            assert shard.size * 8 == array.size, (path, array.sharding.spec)
    assert per_device < 1.02 * total / 8


def test_uneven_dimensions_fall_back_to_replication():
    mesh = parallel.make_mesh((1, 4, 2))
    model = parallel.shard_model(_make(vocab=101)(), mesh)
    assert model.embed[...].sharding.spec == jax.P(None, "fsdp")  # 101 rows: not split 2 ways
    assert model.head[...].sharding.spec == jax.P("fsdp", None)
    assert model.blocks[0].attn.wq[...].sharding.spec == jax.P("fsdp", "tensor", None)
    wide = parallel.make_mesh((1, 1, 8))  # 4 heads cannot split 8 ways
    wq = parallel.shard_model(_make()(), wide).blocks[0].attn.wq[...]
    assert wq.sharding.spec == jax.P(None, None, None)


def test_sharded_forward_matches_single_device():
    make = _make(n_kv_heads=2)
    tokens = jax.random.randint(jax.random.key(0), (8, 16), 0, VOCAB)
    graphdef, state = nnx.split(make())
    forward = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens))
    expected = forward(state, tokens)

    mesh = parallel.make_mesh((2, 2, 2))
    _, sharded_state = nnx.split(parallel.shard_model(make(), mesh))
    tokens = jax.device_put(tokens, parallel.batch_sharding(mesh))
    assert tokens.addressable_shards[0].data.shape == (2, 16)
    with jax.set_mesh(mesh):
        got = forward(sharded_state, tokens)
    # parallel.constrain pins activations under the mesh: logits split by batch and vocab.
    assert got.sharding.spec == jax.P(("data", "fsdp"), None, "tensor")
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-5, rtol=1e-5)


def test_constrain_is_identity_off_mesh():
    x = jnp.ones((8, 4, 6))
    assert parallel.constrain(x, ("batch", "length", None)) is x


def test_init_sharded_builds_the_same_parameters_on_their_shardings():
    make = _make("d32-l1")
    mesh = parallel.make_mesh((1, 4, 2))
    built = nnx.state(parallel.init_sharded(make, mesh), nnx.Param)
    expected = nnx.state(make(), nnx.Param)
    for (path, got), (_, want) in zip(nnx.to_flat_state(built), nnx.to_flat_state(expected)):
        np.testing.assert_array_equal(np.asarray(got[...]), np.asarray(want[...]))
        assert got[...].sharding == parallel.state_shardings(got, mesh).get_value(), path


def test_initialize_distributed_only_with_several_processes(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for key in (*parallel._EXPLICIT_ENV, "EHR_JAX_DISTRIBUTED", "SLURM_NTASKS", "SLURM_STEP_ID",
                "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(key, raising=False)
    parallel.initialize_distributed()
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:12345")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    parallel.initialize_distributed()
    assert calls == []
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    parallel.initialize_distributed()
    assert calls == [dict(coordinator_address="localhost:12345", num_processes=2, process_id=1)]
    calls.clear()
    for key in parallel._EXPLICIT_ENV:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    parallel.initialize_distributed()  # srun with 4 tasks: JAX reads SLURM's variables itself
    monkeypatch.setenv("EHR_JAX_DISTRIBUTED", "off")
    parallel.initialize_distributed()
    assert calls == [{}]


def _slurm_env(monkeypatch, **values):
    for key in (*parallel._EXPLICIT_ENV, "EHR_JAX_DISTRIBUTED", "SLURM_NTASKS", "SLURM_STEP_ID",
                "TPU_WORKER_HOSTNAMES", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE",
                "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_slurm_local_rank_1_gets_a_gpu_ordinal_it_can_see(monkeypatch):
    """Rank 1 of a node whose task sees only its own GPU must ask for ordinal 0, not 1."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    # launch/slurm_gpu.sbatch: explicit JAX_* variables, CUDA_VISIBLE_DEVICES narrowed to GPU 1.
    _slurm_env(monkeypatch, JAX_COORDINATOR_ADDRESS="node-a:12355", JAX_NUM_PROCESSES="16",
               JAX_PROCESS_ID="9", SLURM_NTASKS="16", SLURM_STEP_ID="0", SLURM_LOCALID="1",
               SLURM_NTASKS_PER_NODE="8", CUDA_VISIBLE_DEVICES="1")
    parallel.initialize_distributed()
    assert calls == [dict(coordinator_address="node-a:12355", num_processes=16, process_id=9,
                          local_device_ids=[0])]
    # Plain srun, no narrowing: every task sees the node's GPUs and keeps its local rank's.
    calls.clear()
    _slurm_env(monkeypatch, SLURM_NTASKS="4", SLURM_STEP_ID="0", SLURM_LOCALID="1",
               SLURM_STEP_TASKS_PER_NODE="2(x2)", CUDA_VISIBLE_DEVICES="0,1")
    parallel.initialize_distributed()
    assert calls == [dict(local_device_ids=[1])]
    # One task per node: the process owns every GPU it sees (not GPU 0 alone).
    calls.clear()
    _slurm_env(monkeypatch, SLURM_NTASKS="2", SLURM_STEP_ID="0", SLURM_LOCALID="0",
               SLURM_NTASKS_PER_NODE="1", CUDA_VISIBLE_DEVICES="0,1,2,3")
    parallel.initialize_distributed()
    assert calls == [dict(local_device_ids=[0, 1, 2, 3])]


def test_local_device_ids_left_to_jax_off_gpu():
    assert parallel.local_device_ids({}) is None
    assert parallel.local_device_ids({"TPU_WORKER_HOSTNAMES": "a,b"}) is None
