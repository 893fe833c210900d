"""Llama-style decoder in Flax NNX: RMSNorm, RoPE, SwiGLU, causal (grouped-query) attention.

Attention runs through ehr_jax.model.attention (config.model.attention picks the kernel). Packed
rows pass segment ids (no token sees another segment) and per-segment RoPE positions.

Parameters are float32 and carry logical axis names only (embed, mlp, heads, ...); ehr_jax.parallel
maps them onto a mesh. Compute runs in config.model.dtype and logits come back float32. A KV
cache (prefill + decode_step, fixed shapes) serves zero-shot rollouts. Training, prefill and
decode run the same residual block; with scan_layers the blocks' parameters are stacked along a
leading "layers" axis and applied with one nnx.scan, so compile time stops growing with depth.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ehr_jax import parallel
from ehr_jax.errors import ConfigError
from ehr_jax.model import attention as attention_lib
from ehr_jax.model import sizes

# Logit of the padding ids (config.model.vocab_multiple): exp() of it underflows to exactly 0
# next to any real logit, while staying finite (no inf - inf in a softmax).
PADDED_LOGIT = -1e9
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The residual stream is split by batch only (weights are gathered for it: FSDP); no-op off-mesh.
_ACTIVATION_AXES = ("batch", "length", None)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the parameter tree and the forward computation."""

    vocab_size: int  # real tokens; ids from vocab_size up to padded_vocab are never predicted
    seq_len: int  # training window; prefill's default cache capacity adds this much room
    size: sizes.ModelSize  # the ladder rung: width, depth, heads, MLP width
    n_kv_heads: int  # resolved: n_heads when the config says 0
    tie_embeddings: bool = False
    remat: bool = False
    scan_layers: bool = False  # resolved: one nnx.scan over stacked blocks, or a Python loop
    dtype: str = "float32"  # resolved compute dtype: float32 or bfloat16
    attention: str = "xla"  # resolved implementation, a name in attention.IMPLEMENTATIONS
    packed: bool = False  # training rows hold several segments (data.pack): segment ids, positions
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    padded_vocab: int = 0  # embedding rows / head columns, vocab_size rounded up (0: vocab_size)

    @property
    def vocab_rows(self) -> int:
        """Rows of the embedding table and columns of the head (padded_vocab, or vocab_size)."""
        return max(self.padded_vocab, self.vocab_size)

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]


def model_config(model_cfg, vocab_size: int, seq_len: int, *, packed: bool = False,
                 padded_vocab: int | None = None) -> ModelConfig:
    """ModelConfig from config.model (size name, n_kv_heads, tie_embeddings, remat,
    scan_layers, dtype, attention, vocab_multiple); `packed` says whether rows hold several
    segments (data.pack).

    `model_cfg` is a ConfigDict or plain dict; missing optional keys take base.py's defaults.
    `padded_vocab` (a checkpoint's embedding rows) overrides what vocab_multiple resolves to.
    """
    size = sizes.get_size(model_cfg["size"])
    dtype = model_cfg.get("dtype", "auto")
    if dtype == "auto":
        dtype = "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
    if dtype not in _DTYPES:
        raise ConfigError(f"config.model.dtype={dtype!r}; expected auto, float32 or bfloat16")
    n_kv_heads = sizes.kv_heads(size, int(model_cfg.get("n_kv_heads", 0)))
    if vocab_size < 1 or seq_len < 1:
        raise ConfigError(f"vocab_size={vocab_size} and seq_len={seq_len} must be positive")
    attention = attention_lib.resolve(model_cfg.get("attention", "auto"), dtype=dtype,
                                      head_dim=size.head_dim, seq_len=seq_len, packed=packed)
    if padded_vocab is None:
        padded_vocab = pad_vocab(vocab_size, model_cfg.get("vocab_multiple", 0))
    return ModelConfig(
        vocab_size=vocab_size, seq_len=seq_len, size=size, n_kv_heads=n_kv_heads,
        tie_embeddings=bool(model_cfg.get("tie_embeddings", False)),
        remat=bool(model_cfg.get("remat", False)),
        scan_layers=_scan_layers(model_cfg.get("scan_layers", "auto")), dtype=dtype,
        attention=attention, packed=packed, padded_vocab=padded_vocab,
    )


def _scan_layers(value: str) -> bool:
    """config.model.scan_layers: "auto" scans on GPU/TPU and loops on CPU (docs/PERFORMANCE.md,
    "Compile time with and without layer scan")."""
    if value not in ("auto", "on", "off"):
        raise ConfigError(f"config.model.scan_layers={value!r}; expected auto, on or off")
    if value == "auto":
        return jax.default_backend() in ("gpu", "tpu")
    return value == "on"


def pad_vocab(vocab_size: int, multiple: int) -> int:
    """vocab_size rounded up to config.model.vocab_multiple (0: auto, 128 on GPU/TPU, 1 on CPU).

    A multiple of 128 lets the embedding and head split over the tensor axis and fill matmul
    tiles (Levanter pads the same way); on CPU auto keeps the vocabulary as it is, so the
    quickstart's numbers do not change. Padded ids are never predicted (masked in _logits) and
    never counted in the study's N (sizes.n_params takes the real vocab_size).
    """
    if not isinstance(multiple, int) or multiple < 0:
        raise ConfigError(f"config.model.vocab_multiple={multiple!r}; expected 0 (auto: 128 on "
                          "GPU/TPU, 1 on CPU) or a positive integer")
    multiple = multiple or (128 if jax.default_backend() in ("gpu", "tpu") else 1)
    return -(-vocab_size // multiple) * multiple


def _param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str, ...]) -> nnx.Param:
    """A float32 parameter annotated with logical axes; sharded later by ehr_jax.parallel."""
    init = nnx.with_partitioning(init, axes, eager_sharding=False)
    return nnx.Param(init(rngs.params(), shape, jnp.float32))


def _fan_in(in_axis, out_axis, scale: float = 1.0):
    return nnx.initializers.variance_scaling(scale, "fan_in", "truncated_normal", in_axis, out_axis)


def _project(x, w, n_contract: int = 1, out_dtype=None):
    """x[..., C] @ w[C, O] over the last n_contract dims, as one 2-D matmul.

    Flattening tokens to rows lets XLA:CPU compute weight gradients without transposing
    activations (about 25% faster backward than 3-D einsums); reshapes here are free bitcasts.
    """
    lead, out = x.shape[: x.ndim - n_contract], w.shape[n_contract:]
    c = math.prod(w.shape[:n_contract])
    w_CxO = w.reshape(c, -1).astype(x.dtype)
    y = jnp.dot(x.reshape(-1, c), w_CxO, preferred_element_type=out_dtype)
    return y.reshape(*lead, *out)


def rope_tables(positions, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """sin, cos of shape [B or 1, L, 1, head_dim/2] (float32) for integer positions [.., L]."""
    positions = jnp.atleast_2d(positions).astype(jnp.float32)
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions[..., None, None] * inv_freq
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x_BxLxHxK, sin, cos):
    """Rotate the two halves of each head (Llama's rotate-half layout)."""
    x = x_BxLxHxK.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxK.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, d_model: int, eps: float, *, rngs: nnx.Rngs):
        self.scale = _param(rngs, nnx.initializers.ones, (d_model,), ("norm",))
        self.eps = eps

    def __call__(self, x_BxLxD):
        x = x_BxLxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * self.scale[...]).astype(x_BxLxD.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, k = cfg.size.d_model, cfg.size.n_heads, cfg.n_kv_heads, cfg.size.head_dim
        self.wq = _param(rngs, _fan_in(0, (1, 2)), (d, h, k), ("embed", "heads", "head_dim"))
        self.wk = _param(rngs, _fan_in(0, (1, 2)), (d, kv, k), ("embed", "kv_heads", "head_dim"))
        self.wv = _param(rngs, _fan_in(0, (1, 2)), (d, kv, k), ("embed", "kv_heads", "head_dim"))
        out_init = _fan_in((0, 1), 2, 1.0 / (2 * cfg.size.n_layers))  # residual branches add up
        self.wo = _param(rngs, out_init, (h, k, d), ("heads", "head_dim", "embed"))
        self.cfg = cfg

    def _qkv(self, x_BxLxD, sin, cos):
        q = _project(x_BxLxD, self.wq[...])
        k = _project(x_BxLxD, self.wk[...])
        v = _project(x_BxLxD, self.wv[...])
        return apply_rope(q, sin, cos), apply_rope(k, sin, cos), v

    def _out(self, o_BxLxHxK):
        return _project(o_BxLxHxK, self.wo[...], n_contract=2)

    def __call__(self, x_BxLxD, sin, cos, segment_ids_BxL=None, step: "CacheStep | None" = None,
                 k_cache=None, v_cache=None):
        """Training (no step): causal self-attention over x, inside each segment when rows are
        packed. Prefill and decode: write x's K/V into the layer's cache at step.index, then
        attend to the cache slots step's mask allows.

        Returns (output, k_cache, v_cache); the caches are None in training.
        """
        q, k, v = self._qkv(x_BxLxD, sin, cos)
        if step is None:
            o = attention_lib.attention(q, k, v, segment_ids_BxL=segment_ids_BxL,
                                        implementation=self.cfg.attention)
            return self._out(o), None, None
        k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k, step.index, axis=1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v, step.index, axis=1)
        o = jax.nn.dot_product_attention(q, k_cache, v_cache, mask=step.mask_Bx1xQxS)
        return self._out(o), k_cache, v_cache


class MLP(nnx.Module):
    """SwiGLU: down(silu(x W_gate) * x W_up)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.size.d_model, cfg.size.d_ff
        self.w_gate = _param(rngs, _fan_in(0, 1), (d, f), ("embed", "mlp"))
        self.w_up = _param(rngs, _fan_in(0, 1), (d, f), ("embed", "mlp"))
        down_init = _fan_in(0, 1, 1.0 / (2 * cfg.size.n_layers))
        self.w_down = _param(rngs, down_init, (f, d), ("mlp", "embed"))

    def __call__(self, x_BxLxD):
        gate_BxLxF = _project(x_BxLxD, self.w_gate[...])
        up_BxLxF = _project(x_BxLxD, self.w_up[...])
        return _project(jax.nn.silu(gate_BxLxF) * up_BxLxF, self.w_down[...])


class CacheStep(NamedTuple):
    """What prefill and decode tell every layer's attention: where the new tokens' K/V go and
    which cache slots each new token may attend to."""

    mask_Bx1xQxS: jax.Array  # bool
    index: jax.Array  # int32 scalar: cache slot of the first new token


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d = cfg.size.d_model
        self.attn_norm = RMSNorm(d, cfg.norm_eps, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_BxLxD, sin, cos, segment_ids_BxL=None, step: CacheStep | None = None,
                 k_cache=None, v_cache=None):
        """The one residual block of training, prefill and decode (see Attention.__call__)."""
        attn_BxLxD, k_cache, v_cache = self.attn(self.attn_norm(x_BxLxD), sin, cos,
                                                 segment_ids_BxL, step, k_cache, v_cache)
        x_BxLxD = x_BxLxD + attn_BxLxD
        return x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD)), k_cache, v_cache


def _run_block(block: Block, x_BxLxD, sin, cos, segment_ids_BxL, step, k_cache, v_cache):
    return block(x_BxLxD, sin, cos, segment_ids_BxL, step, k_cache, v_cache)


_run_block_remat = nnx.remat(_run_block)  # recompute the block's activations in the backward pass


def _stack(blocks: list[Block]) -> Block:
    """One Block whose parameters carry a leading "layers" axis, for nnx.scan.

    The blocks are created one by one first, so a scanned model starts from exactly the
    parameters of the looped one (same seed, same values).
    """
    def stack(*variables: nnx.Variable) -> nnx.Variable:
        axes = variables[0].get_metadata()["out_sharding"]
        values = jnp.stack([v.get_value() for v in variables])
        return variables[0].replace(values, out_sharding=("layers", *axes))

    is_variable = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    states = [nnx.state(block) for block in blocks]
    return nnx.merge(nnx.graphdef(blocks[0]), jax.tree.map(stack, *states, is_leaf=is_variable))


class KVCache(NamedTuple):
    """Keys/values [B, S, KV, K] per layer (a tuple; stacked [n_layers, B, S, KV, K] with
    scan_layers) with capacity S; slots are shared across the batch."""

    k: tuple[jax.Array, ...] | jax.Array
    v: tuple[jax.Array, ...] | jax.Array
    valid_BxS: jax.Array  # bool: slot holds a real token
    pos_B: jax.Array  # int32 RoPE position of the next token (counts valid tokens only)
    index: jax.Array  # int32 scalar: slot the next token is written to

    def repeat(self, r: int) -> "KVCache":
        """Each row r times in a row: one prefilled prompt, r rollouts."""
        def rows(a):  # the batch axis is the 4th from the end in both layouts
            return jnp.repeat(a, r, axis=a.ndim - 4)

        return self._replace(k=jax.tree.map(rows, self.k), v=jax.tree.map(rows, self.v),
                             valid_BxS=jnp.repeat(self.valid_BxS, r, axis=0),
                             pos_B=jnp.repeat(self.pos_B, r, axis=0))


class Transformer(nnx.Module):
    """Decoder-only LM: tokens [B, L] -> float32 logits [B, L, V].

    Packed rows also pass segment_ids [B, L] (attention stays inside a segment) and positions
    [B, L] (RoPE restarts at each segment); without them a row is one sequence from position 0.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, vocab = cfg.size.d_model, cfg.vocab_rows
        # Tied: the table doubles as the head, so it is drawn at 1/sqrt(d) (unit-variance logits)
        # and inputs are scaled back up by sqrt(d) (Gemma). Untied: unit-variance embeddings.
        embed_std = 1.0 / math.sqrt(d) if cfg.tie_embeddings else 1.0
        embed_init = nnx.initializers.normal(embed_std)
        self.embed = _param(rngs, embed_init, (vocab, d), ("vocab", "embed"))
        blocks = [Block(cfg, rngs=rngs) for _ in range(cfg.size.n_layers)]
        self.blocks = _stack(blocks) if cfg.scan_layers else nnx.List(blocks)
        self.final_norm = RMSNorm(d, cfg.norm_eps, rngs=rngs)
        if not cfg.tie_embeddings:
            self.head = _param(rngs, _fan_in(0, 1), (d, vocab), ("embed", "vocab"))

    def _embed(self, tokens):
        table_VxD = parallel.constrain(self.embed[...], (None, None))  # gather whole, then look up
        x = jnp.take(table_VxD, tokens, axis=0).astype(self.cfg.compute_dtype)
        return x * math.sqrt(self.cfg.size.d_model) if self.cfg.tie_embeddings else x

    def _logits(self, h_BxLxD):
        w_DxV = self.embed[...].T if self.cfg.tie_embeddings else self.head[...]
        logits = _project(h_BxLxD, w_DxV, out_dtype=jnp.float32)
        if self.cfg.vocab_rows > self.cfg.vocab_size:  # padded ids: probability 0 everywhere
            real_V = jnp.arange(self.cfg.vocab_rows) < self.cfg.vocab_size
            logits = jnp.where(real_V, logits, PADDED_LOGIT)
        axes = ("batch", "length", "vocab") if logits.ndim == 3 else ("batch", "vocab")
        return parallel.constrain(logits, axes)

    def _hidden(self, tokens_BxL, segment_ids_BxL=None, positions_BxL=None):
        x = parallel.constrain(self._embed(tokens_BxL), _ACTIVATION_AXES)
        if positions_BxL is None:
            positions_BxL = jnp.arange(tokens_BxL.shape[1])
        sin, cos = rope_tables(positions_BxL, self.cfg.size.head_dim, self.cfg.rope_theta)
        return self.final_norm(self._layers(x, sin, cos, segment_ids_BxL)[0])

    def _layers(self, x_BxLxD, sin, cos, segment_ids_BxL=None, step: CacheStep | None = None,
                k=None, v=None):
        """Every block in order: a Python loop, or one nnx.scan over the stacked blocks.

        Returns (x, k, v): with a cache step, every layer's updated K/V in the cache's layout.
        """
        run = _run_block_remat if self.cfg.remat else _run_block
        if self.cfg.scan_layers:
            def body(x_BxLxD, block, k_cache, v_cache):
                x_BxLxD, k_cache, v_cache = run(block, x_BxLxD, sin, cos, segment_ids_BxL, step,
                                                k_cache, v_cache)
                return parallel.constrain(x_BxLxD, _ACTIVATION_AXES), (k_cache, v_cache)

            scan = nnx.scan(body, in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0),
                            transform_metadata={nnx.PARTITION_NAME: "layers"})
            x_BxLxD, (k, v) = scan(x_BxLxD, self.blocks, k, v)
            return x_BxLxD, k, v
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x_BxLxD, k_i, v_i = run(block, x_BxLxD, sin, cos, segment_ids_BxL, step,
                                    None if k is None else k[i], None if v is None else v[i])
            x_BxLxD = parallel.constrain(x_BxLxD, _ACTIVATION_AXES)
            ks.append(k_i)
            vs.append(v_i)
        return x_BxLxD, tuple(ks), tuple(vs)

    def __call__(self, tokens_BxL, segment_ids_BxL=None, positions_BxL=None):
        return self._logits(self._hidden(tokens_BxL, segment_ids_BxL, positions_BxL))

    def hidden(self, tokens_BxL):
        """Final-norm output (float32): the representation linear probes read."""
        return self._hidden(tokens_BxL).astype(jnp.float32)

    def prefill(self, tokens_BxP, valid_BxP=None, *, max_len: int | None = None):
        """Run left-padded prompts; returns the last position's logits [B, V] and a KV cache.

        max_len (static) is the cache capacity in tokens, prompt included (default P + seq_len);
        decode_step must not be called more than max_len - P times. Every row needs at least one
        valid token, and the last column must be valid (left padding).
        """
        b, p = tokens_BxP.shape
        capacity = p + self.cfg.seq_len if max_len is None else max_len
        if capacity < p:
            raise ValueError(f"max_len={capacity} is shorter than the prompt length {p}")
        if valid_BxP is None:
            valid_BxP = jnp.ones((b, p), bool)
        valid_BxS = jnp.pad(valid_BxP.astype(bool), ((0, 0), (0, capacity - p)))
        positions_BxP = jnp.maximum(jnp.cumsum(valid_BxP, axis=1) - 1, 0)
        causal_PxS = jnp.arange(capacity)[None, :] <= jnp.arange(p)[:, None]
        # Pads are never keys; token i sees slots 0..i (its own prompt, nothing later).
        mask = valid_BxS[:, None, None, :] & causal_PxS[None, None]
        step = CacheStep(mask, jnp.asarray(0, jnp.int32))
        size = self.cfg.size
        empty = jnp.zeros((b, capacity, self.cfg.n_kv_heads, size.head_dim),
                          self.cfg.compute_dtype)
        k = v = (jnp.stack([empty] * size.n_layers) if self.cfg.scan_layers
                 else (empty,) * size.n_layers)
        logits_BxV, k, v = self._cached_forward(tokens_BxP, positions_BxP, step, k, v)
        cache = KVCache(k=k, v=v, valid_BxS=valid_BxS,
                        pos_B=jnp.sum(valid_BxP, axis=1, dtype=jnp.int32),
                        index=jnp.asarray(p, jnp.int32))
        return logits_BxV, cache

    def decode_step(self, token_B, cache: KVCache):
        """Append one token per row; returns its next-token logits [B, V] and the new cache."""
        valid_BxS = jax.lax.dynamic_update_slice_in_dim(
            cache.valid_BxS, jnp.ones((cache.valid_BxS.shape[0], 1), bool), cache.index, axis=1
        )
        step = CacheStep(valid_BxS[:, None, None, :], cache.index)
        logits_BxV, k, v = self._cached_forward(token_B[:, None], cache.pos_B[:, None], step,
                                                cache.k, cache.v)
        return logits_BxV, KVCache(k, v, valid_BxS, cache.pos_B + 1, cache.index + 1)

    def _cached_forward(self, tokens_BxQ, positions_BxQ, step: CacheStep, k, v):
        """New tokens through every layer's cache; the last one's logits [B, V] and the K/V."""
        sin, cos = rope_tables(positions_BxQ, self.cfg.size.head_dim, self.cfg.rope_theta)
        x, k, v = self._layers(self._embed(tokens_BxQ), sin, cos, None, step, k, v)
        return self._logits(self.final_norm(x[:, -1])), k, v
