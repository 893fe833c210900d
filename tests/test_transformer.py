"""Decoder contracts: causality, KV cache == full forward, remat, dtypes, config errors."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ehr_jax.errors import ConfigError
from ehr_jax.model import sizes
from ehr_jax.model import transformer as T

VOCAB = 97


def _model(size="d64-l2", seq_len=16, seed=0, **model) -> T.Transformer:
    model_cfg = ml_collections.ConfigDict(dict(size=size, **{"dtype": "float32", **model}))
    return T.Transformer(T.model_config(model_cfg, VOCAB, seq_len), rngs=nnx.Rngs(seed))


forward = nnx.jit(lambda model, *inputs: model(*inputs))


@pytest.mark.slow
def test_forward_shapes_and_dtypes():
    model = _model(dtype="bfloat16", n_kv_heads=2)
    tokens = jnp.arange(24, dtype=jnp.int32).reshape(2, 12)
    logits = forward(model, tokens)
    assert logits.shape == (2, 12, VOCAB) and logits.dtype == jnp.float32
    hidden = nnx.jit(lambda m, t: m.hidden(t))(model, tokens)
    assert hidden.shape == (2, 12, 64) and hidden.dtype == jnp.float32
    assert model.embed.dtype == jnp.float32  # parameters stay float32 under bf16 compute
    reference = forward(_model(n_kv_heads=2), tokens)  # same seed, float32 compute
    assert np.abs(np.asarray(logits - reference)).max() < 0.1 * np.abs(np.asarray(reference)).max()
    assert not np.allclose(logits, reference)  # bf16 really ran


@pytest.mark.slow
def test_causality_through_gradients():
    """d logits[t] / d embedding(token at s) is zero for s > t and non-zero for s <= t."""
    model = _model(n_kv_heads=2)
    seq_len, t = 12, 5
    tokens = jax.random.permutation(jax.random.key(0), VOCAB)[:seq_len][None]  # distinct ids
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def logits_at_t(params):
        return nnx.merge(graphdef, params, rest)(tokens)[0, t].sum()

    grad_embed = jax.jit(jax.grad(logits_at_t))(params)["embed"][...]
    row_norms = np.linalg.norm(np.asarray(grad_embed)[np.asarray(tokens[0])], axis=1)
    assert np.all(row_norms[t + 1:] == 0.0)
    assert np.all(row_norms[: t + 1] > 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["xla", "chunked"])
def test_packed_segments_are_isolated_and_restart_positions(attention):
    """Segment 2's loss has zero gradient w.r.t. segment 1's tokens, and its logits equal those
    of segment 2 run alone from position 0 (RoPE restarts per segment)."""
    model = _model(n_kv_heads=2, attention=attention)
    first, second, pad = 6, 7, 3
    tokens = jax.random.permutation(jax.random.key(4), VOCAB)[:first + second + pad][None]
    segment_ids = jnp.array([[1] * first + [2] * second + [0] * pad], jnp.int32)
    positions = jnp.array([list(range(first)) + list(range(second)) + [0] * pad], jnp.int32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def second_segment_loss(params):
        logits = nnx.merge(graphdef, params, rest)(tokens, segment_ids, positions)
        return jax.nn.logsumexp(logits[0, first:first + second], axis=-1).sum()

    grad_embed = jax.jit(jax.grad(second_segment_loss))(params)["embed"][...]
    row_norms = np.linalg.norm(np.asarray(grad_embed)[np.asarray(tokens[0])], axis=1)
    assert np.all(row_norms[:first] == 0.0) and np.all(row_norms[first + second:] == 0.0)
    assert np.all(row_norms[first:first + second] > 0.0)
    packed = forward(model, tokens, segment_ids, positions)[0, first:first + second]
    alone = forward(model, tokens[:, first:first + second])[0]
    np.testing.assert_allclose(packed, alone, atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_future_tokens_do_not_change_past_logits():
    model = _model()
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, VOCAB)
    changed = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % VOCAB)
    a, b = forward(model, tokens), forward(model, changed)
    np.testing.assert_array_equal(a[:, :6], b[:, :6])
    assert not np.allclose(a[:, 6:], b[:, 6:])


def _decode_fn(model):
    """A jitted decode step over split state; the trace counter proves it compiles once."""
    graphdef, state = nnx.split(model)
    traces = []

    @jax.jit
    def step(state, token_B, cache):
        traces.append(1)
        return nnx.merge(graphdef, state).decode_step(token_B, cache)

    return lambda token_B, cache: step(state, token_B, cache), traces


def _full_forward_logits(model, sequences, positions):
    """Full-forward logits at given positions; right padding is harmless under causality."""
    width = max(len(seq) for seq in sequences)
    tokens = np.zeros((len(sequences), width), np.int32)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = seq
    logits = forward(model, jnp.asarray(tokens))
    return np.stack([np.asarray(logits[row, pos]) for row, pos in enumerate(positions)])


@pytest.mark.slow
@pytest.mark.parametrize("n_kv_heads,scan_layers", [(0, "off"), (2, "off"), (2, "on")])
def test_kv_cache_matches_full_forward_with_left_padding(n_kv_heads, scan_layers):
    model = _model(n_kv_heads=n_kv_heads, scan_layers=scan_layers)
    rng = np.random.default_rng(0)
    lengths = np.array([7, 4, 1])  # real prompt lengths; row 0 has no padding
    p, new = 7, 4
    prompts = [rng.integers(4, VOCAB, n) for n in lengths]
    tokens = np.zeros((3, p), np.int32)
    valid = np.zeros((3, p), bool)
    for row, prompt in enumerate(prompts):
        tokens[row, p - len(prompt):] = prompt
        valid[row, p - len(prompt):] = True
    logits, cache = nnx.jit(lambda m, t, v: m.prefill(t, v, max_len=p + new))(model, tokens, valid)
    assert cache.k[0].shape[1] == p + new  # layer 0's keys, in either layout
    decode, traces = _decode_fn(model)
    sequences, cached_logits = [list(x) for x in prompts], [np.asarray(logits)]
    for _ in range(new - 1):
        next_B = np.asarray(jnp.argmax(logits, axis=-1), np.int32)
        for row, seq in enumerate(sequences):
            seq.append(int(next_B[row]))
        logits, cache = decode(jnp.asarray(next_B), cache)
        cached_logits.append(np.asarray(logits))
    for step, got in enumerate(cached_logits):
        want = _full_forward_logits(model, sequences, lengths - 1 + step)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    assert len(traces) == 1
    assert int(cache.index) == p + new - 1
    np.testing.assert_array_equal(cache.pos_B, lengths + new - 1)


@pytest.mark.slow
def test_decode_loop_under_scan():
    """A greedy rollout as one jitted lax.scan picks the full forward pass's argmax each step."""
    model = _model()
    graphdef, state = nnx.split(model)
    prompt = jnp.array([[5, 9, 11]], jnp.int32)

    @jax.jit
    def rollout(state, prompt):
        logits, cache = nnx.merge(graphdef, state).prefill(prompt, max_len=8)

        def body(carry, _):
            logits, cache = carry
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return nnx.merge(graphdef, state).decode_step(token, cache), token

        return jax.lax.scan(body, (logits, cache), None, length=5)[1]

    generated = np.asarray(rollout(state, prompt)[:, 0])
    sequence = np.concatenate([np.asarray(prompt[0]), generated])
    full = forward(model, jnp.asarray(sequence)[None])[0]
    np.testing.assert_array_equal(np.argmax(full[2:7], axis=-1), generated)


@pytest.mark.slow
def test_remat_is_in_the_gradient_and_changes_nothing_else():
    """model.remat puts a checkpoint (remat) primitive in the gradient's jaxpr, with the same loss
    and gradients: equal numbers alone would also pass if the flag were ignored."""
    tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, VOCAB)

    def loss(model):
        return jax.nn.logsumexp(model(tokens), axis=-1).mean()

    def remat_in_grad(model):
        graphdef, state = nnx.split(model)
        jaxpr = jax.make_jaxpr(jax.grad(lambda s: loss(nnx.merge(graphdef, s))))(state)
        # The primitive is `remat2` on jax 0.10 and `checkpoint` on later versions.
        return re.search(r"= (checkpoint|remat\w*)\[", str(jaxpr)) is not None

    plain, remat = _model("d32-l1"), _model("d32-l1", remat=True)
    assert not remat_in_grad(plain) and remat_in_grad(remat)
    l1, g1 = nnx.jit(nnx.value_and_grad(loss))(plain)
    l2, g2 = nnx.jit(nnx.value_and_grad(loss))(remat)
    assert l1 == pytest.approx(float(l2), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g1, g2)


@pytest.mark.slow
def test_scan_layers_starts_from_the_same_parameters_and_loss():
    """Scanned blocks are the looped blocks stacked: same init, same loss and gradients."""
    tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, VOCAB)

    def loss(model):
        return jax.nn.logsumexp(model(tokens), axis=-1).mean()

    looped, scanned = _model("d32-l2", scan_layers="off"), _model("d32-l2", scan_layers="on")
    assert len(looped.blocks) == 2 and scanned.blocks.attn.wq[...].shape[0] == 2
    def stacked_leaves(per_layer):  # the looped layers' arrays, stacked as the scan stores them
        return [np.stack(layer) for layer in zip(*(jax.tree.leaves(x) for x in per_layer))]

    want = stacked_leaves([nnx.state(b, nnx.Param) for b in looped.blocks])
    for got, expected in zip(jax.tree.leaves(nnx.state(scanned.blocks, nnx.Param)), want, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert scanned.blocks.attn.wq.get_metadata()["out_sharding"][0] == "layers"
    for remat in (False, True):
        (l1, g1), (l2, g2) = (
            nnx.jit(nnx.value_and_grad(loss))(_model("d32-l2", scan_layers=s, remat=remat))
            for s in ("off", "on"))
        assert float(l1) == pytest.approx(float(l2), rel=1e-6)
        want = stacked_leaves([g1["blocks"][i] for i in range(2)])
        for got, expected in zip(jax.tree.leaves(g2["blocks"]), want, strict=True):
            np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-5)


def test_tied_embeddings_have_no_head():
    model = _model("d32-l1", tie_embeddings=True)
    assert not hasattr(model, "head")
    logits = forward(model, jnp.ones((1, 4), jnp.int32))
    assert logits.shape == (1, 4, VOCAB) and np.isfinite(np.asarray(logits)).all()


def test_model_config_reads_config_and_rejects_bad_values():
    cfg = T.model_config(ml_collections.ConfigDict(dict(size="d96-l3", n_kv_heads=1)), 50, 32)
    assert cfg.size == sizes.get_size("d96-l3") and cfg.n_kv_heads == 1
    assert cfg.dtype == "float32" and cfg.attention == "xla"  # "auto" on CPU
    assert not cfg.scan_layers  # "auto" loops on CPU
    assert T.model_config({"size": "d96-l3"}, 50, 32).n_kv_heads == 3  # plain dicts work too
    with pytest.raises(ConfigError, match=r"config\.model\.dtype"):
        T.model_config(ml_collections.ConfigDict(dict(size="d96-l3", dtype="fp8")), 50, 32)
    with pytest.raises(ConfigError, match=r"config\.model\.n_kv_heads"):
        T.model_config(ml_collections.ConfigDict(dict(size="d96-l3", n_kv_heads=2)), 50, 32)
    with pytest.raises(ConfigError, match=r"config\.model\.scan_layers"):
        T.model_config(ml_collections.ConfigDict(dict(size="d96-l3", scan_layers="yes")), 50, 32)
    with pytest.raises(ConfigError, match=r"config\.model\.size"):
        T.model_config(ml_collections.ConfigDict(dict(size="big")), 50, 32)
    with pytest.raises(ConfigError, match=r"config\.model\.attention='cudnn'"):
        T.model_config(ml_collections.ConfigDict(dict(size="d96-l3", attention="cudnn")), 50, 32)
