"""Size ladder, parameter counts and FLOP counts against the real model and XLA's cost analysis."""


import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

from ehr_jax.errors import ConfigError
from ehr_jax.model import sizes
from ehr_jax.model import transformer as T


def _config(size: str, vocab: int, seq_len: int, **model) -> T.ModelConfig:
    model_cfg = ml_collections.ConfigDict(dict(size=size, dtype="float32", **model))
    return T.model_config(model_cfg, vocab, seq_len)


def _param_counts(cfg: T.ModelConfig) -> tuple[int, int]:
    """(total, non-embedding) from the abstract NNX parameter tree (no arrays allocated)."""
    model = nnx.eval_shape(lambda: T.Transformer(cfg, rngs=nnx.Rngs(0)))
    total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    embedding = model.embed.size + (0 if cfg.tie_embeddings else model.head.size)
    return total, total - embedding


@pytest.mark.parametrize(
    "size,n_kv_heads,tie",
    [("d32-l1", 0, False), ("d64-l2", 2, True), ("d96-l3", 1, False), ("d256-l6", 2, False),
     ("d512-l8", 0, True)],
)
def test_n_params_equals_parameter_tree(size, n_kv_heads, tie):
    cfg = _config(size, 317, 64, n_kv_heads=n_kv_heads, tie_embeddings=tie)
    expected = sizes.n_params(cfg.size, 317, n_kv_heads=n_kv_heads, tie_embeddings=tie)
    assert _param_counts(cfg) == expected


@pytest.mark.slow
def test_n_params_whole_ladder_default_options():
    for name in sizes.LADDER:
        cfg = _config(name, 1000, 128)
        assert _param_counts(cfg) == sizes.n_params(cfg.size, 1000), name


def _xla_flops(cfg: T.ModelConfig, batch: int, *, grad: bool) -> float:
    graphdef, state = nnx.split(T.Transformer(cfg, rngs=nnx.Rngs(0)))
    tokens = jnp.zeros((batch, cfg.seq_len), jnp.int32)

    def loss(state, tokens):
        return jax.nn.logsumexp(nnx.merge(graphdef, state)(tokens), axis=-1).mean()

    fn = jax.grad(loss) if grad else loss
    return jax.jit(fn).lower(state, tokens).compile().cost_analysis()["flops"]


@pytest.mark.slow
@pytest.mark.parametrize("n_kv_heads", [0, 2])
def test_flops_agree_with_xla_cost_analysis(n_kv_heads):
    """XLA counts attention in full (both triangles) and elementwise ops: add the one, allow ~3%."""
    batch, vocab, seq_len = 2, 512, 128
    cfg = _config("d128-l4", vocab, seq_len, n_kv_heads=n_kv_heads)
    s = cfg.size
    tokens = batch * seq_len
    masked_half = s.n_layers * 2 * seq_len * s.n_heads * s.head_dim * tokens
    forward = sizes.forward_flops_per_token(s, vocab, seq_len, n_kv_heads=n_kv_heads) * tokens
    assert _xla_flops(cfg, batch, grad=False) == pytest.approx(forward + masked_half, rel=0.03)
    train = sizes.flops_per_token(s, vocab, seq_len, n_kv_heads=n_kv_heads) * tokens
    assert train == pytest.approx(3 * forward)
    if n_kv_heads == 0:  # the backward pass is 2 x forward in XLA's count too
        assert _xla_flops(cfg, batch, grad=True) == pytest.approx(train + 3 * masked_half, rel=0.04)


def test_flops_6nd_and_convention():
    assert sizes.flops_6nd(1_000_000, 2e9) == 1.2e16
    assert "causal" in sizes.FLOP_CONVENTION and "3 x forward" in sizes.FLOP_CONVENTION
    s = sizes.get_size("d512-l8")
    n_total, _ = sizes.n_params(s, 4096)
    # At short context the count is close to 6 x matmul parameters (embedding lookup is free).
    matmul_params = n_total - 4096 * 512 - 2 * 512 * s.n_layers - 512
    assert sizes.flops_per_token(s, 4096, 16) == pytest.approx(6 * matmul_params, rel=0.01)


def test_ladder_is_monotone_and_spans_the_study():
    rungs = list(sizes.LADDER.values())
    non_embedding = [sizes.n_params(s, 2048)[1] for s in rungs]
    assert non_embedding == sorted(non_embedding) and len(set(non_embedding)) == len(rungs)
    assert non_embedding[0] < 20_000 and non_embedding[-1] > 900_000_000
    for a, b in zip(rungs, rungs[1:]):
        assert b.d_model >= a.d_model and b.n_layers >= a.n_layers
    for s in rungs:
        assert s.name == f"d{s.d_model}-l{s.n_layers}"
        assert s.n_heads * s.head_dim == s.d_model
        assert s.d_ff % 32 == 0 and s.d_ff >= 8 * s.d_model / 3
        assert s.head_dim == 64 or s.d_model < 256


def test_unknown_size_is_a_config_error():
    with pytest.raises(ConfigError, match=r"config\.model\.size.*d64-l2"):
        sizes.get_size("d7-l99")
    with pytest.raises(ConfigError, match=r"config\.model\.n_kv_heads"):
        sizes.n_params(sizes.get_size("d96-l3"), 100, n_kv_heads=2)
