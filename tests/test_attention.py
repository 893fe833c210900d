"""Attention implementations agree with the reference ("xla"): outputs and gradients, causal,
grouped-query, packed segments; kernel choice per backend and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ehr_jax import parallel
from ehr_jax.errors import ConfigError
from ehr_jax.model import attention as A

# float32 on CPU: the blocked online softmax reorders sums; measured differences are ~1e-6.
TOLERANCE = dict(atol=2e-5, rtol=2e-5)


def _inputs(b, length, heads, kv_heads, head_dim, *, packed: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((b, length, heads, head_dim)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((b, length, kv_heads, head_dim)), jnp.float32)
            for _ in range(2))
    segments = None
    if packed:  # 3-4 segments of random lengths per row, then padding (segment 0)
        segments = np.zeros((b, length), np.int32)
        for row in range(b):
            cuts = np.sort(rng.choice(np.arange(1, length - 4), 3, replace=False))
            segments[row, :length - 4] = 1 + np.searchsorted(cuts, np.arange(length - 4),
                                                             side="right")
        segments = jnp.asarray(segments)
    cotangent = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    return (q, k, v), segments, cotangent


def _value_and_grads(fn, qkv, cotangent):
    """Output and d<out, cotangent>/d(q, k, v): a random projection checks every gradient."""
    out, vjp = jax.vjp(fn, *qkv)
    return out, vjp(cotangent)


def _assert_matches_reference(implementation_fn, qkv, segments, cotangent):
    reference = _value_and_grads(
        lambda q, k, v: A.attention(q, k, v, segment_ids_BxL=segments, implementation="xla"),
        qkv, cotangent)
    got = _value_and_grads(implementation_fn, qkv, cotangent)
    np.testing.assert_allclose(got[0], reference[0], **TOLERANCE)
    for name, g, r in zip("qkv", got[1], reference[1]):
        np.testing.assert_allclose(g, r, err_msg=f"d{name}", **TOLERANCE)


@pytest.mark.parametrize("length,block,packed", [
    (37, 8, False),  # 5 blocks, the last one padded
    (37, 8, True),
    (24, 64, True),  # one block shorter than the default
])
@pytest.mark.slow
def test_chunked_matches_reference_outputs_and_gradients(length, block, packed):
    qkv, segments, cotangent = _inputs(2, length, 4, 2, 8, packed=packed)
    fn = jax.jit(lambda q, k, v: A.chunked(q, k, v, segments, block=block))
    _assert_matches_reference(fn, qkv, segments, cotangent)


def test_chunked_is_causal_and_keeps_segments_apart():
    """Changing a later token, or a token of another segment, leaves an output unchanged."""
    (q, k, v), segments, _ = _inputs(1, 32, 2, 2, 8, packed=True, seed=3)
    run = jax.jit(lambda k, v: A.chunked(q, k, v, segments, block=8))
    base = run(k, v)
    seg = np.asarray(segments[0])
    second = np.flatnonzero(seg == 2)  # change the first token of segment 2
    changed = run(k.at[:, second[0]].add(5.0), v.at[:, second[0]].add(5.0))
    unchanged = (np.arange(32) < second[0]) | (seg != 2)
    np.testing.assert_array_equal(base[0, unchanged], changed[0, unchanged])
    assert not np.allclose(base[0, second], changed[0, second])


@pytest.mark.slow
def test_triton_kernel_matches_reference_under_a_mesh():
    """The Pallas GPU kernel (interpreted on CPU), run per device over batch and KV heads."""
    qkv, segments, cotangent = _inputs(4, 32, 4, 2, 16, packed=True)
    mesh = parallel.make_mesh((2, 2, 2))
    fn = jax.jit(lambda q, k, v: A.attention(q, k, v, segment_ids_BxL=segments,
                                             implementation="triton", interpret=True))
    assert parallel.logical_spec(("batch", None, "kv_heads", None), qkv[1].shape, mesh, "k") == \
        jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None)
    with jax.set_mesh(mesh):
        _assert_matches_reference(fn, qkv, segments, cotangent)


@pytest.mark.slow
def test_splash_kernel_matches_reference():
    """The Pallas TPU splash kernel (interpreted on CPU), grouped-query, packed."""
    qkv, segments, cotangent = _inputs(1, 128, 2, 1, 16, packed=True)
    fn = jax.jit(lambda q, k, v: A.attention(q, k, v, segment_ids_BxL=segments,
                                             implementation="splash", interpret=True))
    _assert_matches_reference(fn, qkv, segments, cotangent)


@pytest.mark.slow
def test_pallas_kernel_falls_back_to_chunked_on_lengths_it_cannot_tile():
    qkv, _, cotangent = _inputs(1, 24, 2, 2, 8, packed=False)
    fn = jax.jit(lambda q, k, v: A.attention(q, k, v, implementation="splash"))
    assert "pallas_call" not in str(jax.make_jaxpr(fn)(*qkv))
    _assert_matches_reference(fn, qkv, None, cotangent)


def _resolve(requested, backend, *, dtype="bfloat16", seq_len=256, packed=False):
    return A.resolve(requested, dtype=dtype, head_dim=64, seq_len=seq_len, packed=packed,
                     backend=backend)


def test_auto_picks_per_backend():
    assert _resolve("auto", "cpu", dtype="float32") == "xla"
    assert _resolve("auto", "tpu") == "splash"
    assert _resolve("auto", "tpu", seq_len=200) == "chunked"
    assert _resolve("auto", "gpu", packed=True) == "triton"
    # cuDNN needs compute capability >= 8.0: these CPU devices have none
    assert _resolve("auto", "gpu") == "chunked"
    assert _resolve("chunked", "cpu") == "chunked" and _resolve("xla", "tpu") == "xla"


@pytest.mark.parametrize("requested,backend,kwargs,message", [
    ("cudnn", "cpu", {}, "compute capability"),
    ("splash", "cpu", {}, "splash is a Pallas kernel for TPUs"),
    ("splash", "tpu", {"seq_len": 200}, "multiple of 128"),
    ("triton", "tpu", {"packed": True}, "triton is a Pallas kernel for GPUs"),
    ("flash", "cpu", {}, "expected one of auto, xla, chunked"),
])
def test_unavailable_implementation_is_a_config_error(requested, backend, kwargs, message):
    with pytest.raises(ConfigError, match=rf"config\.model\.attention='{requested}'.*{message}"):
        _resolve(requested, backend, **kwargs)
