"""Mesh construction, sharding rules and multi-process start-up on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType

from ehr_jax import parallel
from ehr_jax.errors import ConfigError
from ehr_jax.model import init as model_init
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


def _train_state(mesh, vocab=VOCAB):
    """Model + optimizer state as the trainer initialises it (model/init.py), on `mesh`."""
    cfg = T.model_config(ml_collections.ConfigDict(dict(size="d64-l2")), vocab, 16)
    _, state, _ = model_init.init(cfg, mesh, 0, optax.adamw(1e-3))
    return state


def _params(state):
    return nnx.to_flat_state(state[0])


@pytest.mark.slow
def test_trainer_init_shards_every_parameter_by_the_rules():
    """Mesh (1, 4, 2): each parameter's sharding is its logical axes under the rule table, and
    every matrix is split 8 ways (MaxText's sufficiently-sharded check)."""
    mesh = parallel.make_mesh((1, 4, 2))
    rules = dict(parallel.LOGICAL_AXIS_RULES)
    state = _train_state(mesh)
    total = per_device = 0
    for path, var in _params(state):
        array = var[...]
        want = jax.P(*(rules[a] if mesh.shape.get(rules[a], 0) > 1 else None
                       for a in var.get_metadata()["out_sharding"]))
        assert array.sharding.spec == want, path
        shard = array.addressable_shards[0].data
        total += array.size
        per_device += shard.size
        if array.ndim >= 2:
            assert shard.size * 8 == array.size, (path, array.sharding.spec)
    assert per_device < 1.02 * total / 8
    mu = nnx.to_flat_state(state[1])  # Adam moments follow their parameters
    mu_wq = dict(mu)[("opt_state", 0, "mu", "blocks", 0, "attn", "wq")][...]
    assert mu_wq.sharding.spec == jax.P("fsdp", "tensor", None)


@pytest.mark.slow
def test_uneven_dimensions_are_replicated_and_logged(caplog):
    mesh = parallel.make_mesh((1, 4, 2))
    with caplog.at_level("WARNING"):
        params = dict(_params(_train_state(mesh, vocab=101)))
    assert params[("embed",)][...].sharding.spec == jax.P(None, "fsdp")  # 101 rows: not 2 ways
    assert params[("head",)][...].sharding.spec == jax.P("fsdp", None)
    assert params[("blocks", 0, "attn", "wq")][...].sharding.spec == jax.P("fsdp", "tensor", None)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "embed dimension 0 has size 101" in logged and "('tensor',) (2 ways)" in logged
    wide = parallel.make_mesh((1, 1, 8))  # 4 heads cannot split 8 ways
    wq = dict(_params(_train_state(wide)))[("blocks", 0, "attn", "wq")][...]
    assert wq.sharding.spec == jax.P(None, None, None)


@pytest.mark.slow
def test_sharded_forward_matches_single_device():
    cfg = T.model_config(ml_collections.ConfigDict(dict(size="d64-l2", n_kv_heads=2)), VOCAB, 16)
    tokens = jax.random.randint(jax.random.key(0), (8, 16), 0, VOCAB)
    graphdef, state = nnx.split(T.Transformer(cfg, rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens))
    expected = forward(state, tokens)

    mesh = parallel.make_mesh((2, 2, 2))
    sharded_state = jax.device_put(state, parallel.state_shardings(state, mesh))
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


def test_a_logical_axis_without_a_rule_is_an_error():
    mesh = parallel.make_mesh((1, 4, 2))
    with pytest.raises(ValueError, match="w: axes \\['sideways'\\] are not mesh axes"):
        parallel.logical_spec(("embed", "sideways"), (8, 8), mesh, "w")


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


@pytest.mark.parametrize("shape,ok", [
    ((2, 1, 4), True),  # tensor inside each 4-device process, data across the two
    ((1, 2, 4), True),
    ((4, 2, 1), True),
    ((1, 1, 8), False),  # tensor spans both processes: each would hold every row
    ((1, 4, 2), True),
    ((2, 4, 1), True),
])
def test_batch_layout_across_processes(shape, ok):
    """Two processes of 4 devices each (device ids 0-3 and 4-7), as the loader splits batches."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(shape), parallel.MESH_AXES)
    check = lambda: parallel.check_batch_layout(mesh, 16, process_of=lambda d: d.id // 4)  # noqa: E731
    if ok:
        check()
    else:
        with pytest.raises(ConfigError, match=r"mesh.shape=\(1, 1, 8\) over 2 processes: the "
                                              r"devices of process 0 hold 16 rows"):
            check()
    parallel.check_batch_layout(mesh, 16)  # one process: any layout
