"""Causal self-attention behind one function, with the kernel chosen per backend.

`attention(q, k, v, segment_ids=..., implementation=...)`: q [B, L, H, K], k and v [B, L, KV, K]
(grouped-query when KV < H), causal, and, with segment_ids [B, L] int32, a query sees only keys
of its own segment (packed rows: one patient never sees another). Implementations:

- "xla": jax.nn.dot_product_attention; builds the [B, H, L, L] logits. The reference every
  other path is tested against, and the fastest on CPU at the quickstart's lengths.
- "chunked": pure JAX flash attention (online softmax over key blocks, scans over blocks,
  blocks above the diagonal skipped, a custom VJP that recomputes probabilities block by block),
  so memory grows with L, not L^2. Runs anywhere: CPU, float32, pre-Ampere GPUs.
- "cudnn": cuDNN flash attention through jax.nn.dot_product_attention (NVIDIA compute
  capability >= 8.0, bfloat16, head_dim a multiple of 8 up to 128). jax.nn has no segment ids,
  so it cannot serve packed rows.
- "triton": the Pallas GPU flash kernel (jax.experimental.pallas.ops.gpu.attention.mha), which
  takes segment ids: the GPU kernel for packed rows.
- "splash": the Pallas TPU splash kernel (jax.experimental.pallas.ops.tpu.splash_attention),
  with segment ids; needs L a multiple of 128.

`resolve` turns config.model.attention ("auto" or a name) into the one implementation a run
uses, and raises ConfigError when the named one cannot run on this backend. The Pallas kernels
run per device under jax.shard_map when a mesh is set (batch over the batch axes, heads over
the tensor axis); `interpret=True` runs them on CPU for tests.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ehr_jax import parallel
from ehr_jax.errors import ConfigError

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn", "triton", "splash")
# Query and key block of "chunked". CPU: 64 measured fastest for fwd+bwd at L 128-1024 (blocks
# above the diagonal are skipped; at L=256 4x faster than 256-blocks). Accelerators: fewer,
# larger matmuls.
CHUNK_CPU, CHUNK_ACCELERATOR = 64, 512
_SPLASH_BLOCK = 512  # largest splash block tried; it must divide L and be a multiple of 128
_TRITON_BLOCKS = (128, 128, 32, 32, 32, 32)  # the Pallas GPU kernel's default block sizes


def resolve(requested: str, *, dtype: str, head_dim: int, seq_len: int, packed: bool,
            backend: str | None = None) -> str:
    """The implementation a run uses for config.model.attention=`requested`.

    "auto": splash on TPU, cuDNN on Ampere-or-newer GPUs with bfloat16 (triton when rows are
    packed), the reference "xla" on CPU (fastest there at the quickstart's lengths), "chunked"
    everywhere else. A named implementation that cannot run here is a ConfigError.
    """
    backend = backend or jax.default_backend()
    if requested not in IMPLEMENTATIONS:
        raise ConfigError(f"config.model.attention={requested!r}; expected one of "
                          f"{', '.join(IMPLEMENTATIONS)}")
    if requested == "auto":
        order = {"tpu": ("splash",), "gpu": ("triton",) if packed else ("cudnn",)}.get(
            backend, ("xla",))
        for name in (*order, "chunked"):
            if _why_not(name, dtype, head_dim, seq_len, packed, backend) is None:
                return name
    reason = _why_not(requested, dtype, head_dim, seq_len, packed, backend)
    if reason is not None:
        raise ConfigError(f"config.model.attention={requested!r} cannot run here: {reason}; use "
                          f"'auto' (picks per backend) or 'chunked' (runs anywhere)")
    return requested


def _why_not(name: str, dtype: str, head_dim: int, seq_len: int, packed: bool,
             backend: str) -> str | None:
    """None when `name` can run with these settings, else the reason it cannot."""
    if name in ("xla", "chunked"):
        return None
    if name == "cudnn":
        if backend != "gpu" or not _cuda_capability_at_least(8.0):
            return f"cuDNN flash attention needs an NVIDIA GPU of compute capability >= 8.0 " \
                   f"(backend is {backend!r})"
        if dtype != "bfloat16":
            return f"cuDNN flash attention needs config.model.dtype bfloat16 (got {dtype!r})"
        if head_dim % 8 or head_dim > 128:
            return f"cuDNN flash attention needs head_dim a multiple of 8 up to 128 " \
                   f"(got {head_dim})"
        if packed:
            return "jax.nn.dot_product_attention takes no segment ids, so cuDNN cannot mask " \
                   "packed rows (data.pack=True); 'triton' can"
        return None
    device = {"triton": "gpu", "splash": "tpu"}[name]
    if backend != device:
        return f"{name} is a Pallas kernel for {device.upper()}s (backend is {backend!r})"
    if not _tiles(name, seq_len):
        return f"{name} needs data.seq_len a multiple of 128 (got {seq_len})"
    return None


def _tiles(name: str, length: int) -> bool:
    """Whether the Pallas kernel `name` can tile a sequence of this length."""
    if name == "triton":
        return length >= 16 and not any(length % min(b, length) for b in _TRITON_BLOCKS)
    return length % 128 == 0  # splash: blocks are multiples of 128 lanes


def _cuda_capability_at_least(minimum: float) -> bool:
    capability = getattr(jax.devices()[0], "compute_capability", "0")
    return float(capability or 0) >= minimum


def attention(q_BxLxHxK: jax.Array, k_BxLxNxK: jax.Array, v_BxLxNxK: jax.Array, *,
              segment_ids_BxL: jax.Array | None = None, implementation: str = "xla",
              interpret: bool = False) -> jax.Array:
    """Causal attention output [B, L, H, K]; with segment ids, only within a segment.

    `implementation` is a resolved name (not "auto"); `interpret` runs the Pallas kernels in
    Pallas's interpreter (CPU tests). A length a Pallas kernel cannot tile (an evaluation
    prompt that is not a multiple of 128) runs "chunked", which computes the same function.
    """
    if implementation == "xla":
        return _xla(q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL)
    if implementation == "chunked":
        return chunked(q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL)
    if implementation == "cudnn":
        if segment_ids_BxL is not None:
            raise ValueError("cuDNN attention through jax.nn takes no segment ids")
        return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, is_causal=True,
                                            implementation="cudnn")
    kernels = {"triton": _triton, "splash": _splash}
    if implementation not in kernels:
        raise ValueError(f"unknown attention implementation {implementation!r}")
    if not _tiles(implementation, q_BxLxHxK.shape[1]):
        return chunked(q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL)
    kernel = functools.partial(kernels[implementation], interpret=interpret)
    return _per_device(kernel, q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL)


def _segment_mask(segment_ids_BxL: jax.Array | None):
    if segment_ids_BxL is None:
        return None
    return (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])[:, None]


def _xla(q, k, v, segment_ids):
    """Today's reference: the whole [B, H, L, L] logits (a [B, 1, L, L] mask when packed)."""
    return jax.nn.dot_product_attention(q, k, v, mask=_segment_mask(segment_ids), is_causal=True)


# ----- "chunked": flash attention in pure JAX -----------------------------------------------

def _blocks(x, n_blocks: int, block: int):
    """[B, L, ...] -> [n_blocks, B, block, ...], zero-padded at the end of L."""
    pad = n_blocks * block - x.shape[1]
    x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], n_blocks, block, *x.shape[2:]), 1, 0)


def _unblock(x, length: int):
    """[n_blocks, B, block, ...] -> [B, L, ...]."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _block_mask(i, j, block: int, seg_q, seg_k):
    """[B, 1, 1, Bq, Bk] (or [1, 1, Bq, Bk]): causal within blocks i, j, and same segment."""
    pos = jnp.arange(block)
    causal = (i * block + pos)[:, None] >= (j * block + pos)[None, :]
    if seg_q is None:
        return causal[None, None]
    return causal & (seg_q[:, None, None, :, None] == seg_k[:, None, None, None, :])


def _scores(q_i, k_j, scale: float):
    """[B, Bq, N, G, K] x [B, Bk, N, K] -> float32 logits [B, N, G, Bq, Bk]."""
    s = jnp.einsum("bqngk,bsnk->bngqs", q_i, k_j, preferred_element_type=jnp.float32)
    return s * scale


def _layout(q, k, v, segment_ids, block: int):
    """Blocked operands: q [nb, B, blk, N, G, K], k/v [nb, B, blk, N, K], segments [nb, B, blk]."""
    b, length, h, d = q.shape
    n = k.shape[2]
    n_blocks = -(-length // block)
    q = _blocks(q.reshape(b, length, n, h // n, d), n_blocks, block)
    seg = None if segment_ids is None else _blocks(segment_ids, n_blocks, block)
    return q, _blocks(k, n_blocks, block), _blocks(v, n_blocks, block), seg, n_blocks


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked(q, k, v, segment_ids, block: int):
    return _chunked_fwd(q, k, v, segment_ids, block)[0]


def _chunked_fwd(q, k, v, segment_ids, block: int):
    """Outer scan over query blocks, inner scan over key blocks (diagonal and below only)."""
    length, scale = q.shape[1], q.shape[-1] ** -0.5
    q_b, k_b, v_b, seg_b, n_blocks = _layout(q, k, v, segment_ids, block)

    def query_block(_, i):
        q_i = q_b[i]
        seg_q = None if seg_b is None else seg_b[i]
        b, _, n, g, d = q_i.shape
        init = (jnp.full((b, n, g, block), -jnp.inf), jnp.zeros((b, n, g, block)),
                jnp.zeros((b, n, g, block, d)))

        def key_block(carry, j):
            def update(carry):
                m, l, acc = carry
                mask = _block_mask(i, j, block, seg_q, None if seg_b is None else seg_b[j])
                s = jnp.where(mask, _scores(q_i, k_b[j], scale), -jnp.inf)
                m_new = jnp.maximum(m, s.max(axis=-1))
                m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # row fully masked so far
                p = jnp.exp(s - m_safe[..., None])
                correction = jnp.exp(m - m_safe)
                pv = jnp.einsum("bngqs,bsnk->bngqk", p.astype(v_b.dtype), v_b[j],
                                preferred_element_type=jnp.float32)
                return (m_new, l * correction + p.sum(axis=-1),
                        acc * correction[..., None] + pv)

            return jax.lax.cond(j <= i, update, lambda c: c, carry), None

        (m, l, acc), _ = jax.lax.scan(key_block, init, jnp.arange(n_blocks))
        out = jnp.moveaxis(acc / l[..., None], 3, 1)  # [B, Bq, N, G, K]; every row sees itself
        return None, (out.astype(q.dtype), m + jnp.log(l))

    _, (out_b, lse_b) = jax.lax.scan(query_block, None, jnp.arange(n_blocks))
    out = _unblock(out_b, length).reshape(q.shape)
    return out, (q, k, v, segment_ids, out, lse_b)


def _chunked_bwd(block: int, residuals, d_out):
    """Flash backward: per key block j, recompute p over query blocks i >= j; accumulate dk_j and
    dv_j in the inner carry and dq in a carry over all query blocks."""
    q, k, v, segment_ids, out, lse_b = residuals
    length, scale = q.shape[1], q.shape[-1] ** -0.5
    q_b, k_b, v_b, seg_b, n_blocks = _layout(q, k, v, segment_ids, block)
    do_b = _layout(d_out, k, v, None, block)[0]
    o_b = _layout(out, k, v, None, block)[0]
    # delta_i = rowsum(dO * O): [nb, B, N, G, Bq]
    delta_b = jnp.moveaxis(jnp.sum(do_b.astype(jnp.float32) * o_b.astype(jnp.float32), -1), 2, -1)

    def key_block(dq_b, j):
        k_j, v_j = k_b[j], v_b[j]
        seg_k = None if seg_b is None else seg_b[j]

        def query_block(carry, i):
            def update(carry):
                dq_b, dk, dv = carry
                q_i, do_i = q_b[i], do_b[i]
                mask = _block_mask(i, j, block, None if seg_b is None else seg_b[i], seg_k)
                p = jnp.where(mask, jnp.exp(_scores(q_i, k_j, scale) - lse_b[i][..., None]), 0.0)
                dv = dv + jnp.einsum("bngqs,bqngk->bsnk", p.astype(do_i.dtype), do_i,
                                     preferred_element_type=jnp.float32)
                dp = jnp.einsum("bqngk,bsnk->bngqs", do_i, v_j,
                                preferred_element_type=jnp.float32)
                ds = (p * (dp - delta_b[i][..., None]) * scale).astype(q_i.dtype)
                dq_i = jnp.einsum("bngqs,bsnk->bqngk", ds, k_j,
                                  preferred_element_type=jnp.float32)
                dk = dk + jnp.einsum("bngqs,bqngk->bsnk", ds, q_i,
                                     preferred_element_type=jnp.float32)
                return dq_b.at[i].add(dq_i), dk, dv

            return jax.lax.cond(i >= j, update, lambda c: c, carry), None

        zeros = jnp.zeros(k_j.shape, jnp.float32)
        (dq_b, dk, dv), _ = jax.lax.scan(query_block, (dq_b, zeros, zeros),
                                         jnp.arange(n_blocks))
        return dq_b, (dk, dv)

    dq_b, (dk_b, dv_b) = jax.lax.scan(key_block, jnp.zeros(q_b.shape, jnp.float32),
                                      jnp.arange(n_blocks))
    dq = _unblock(dq_b, length).reshape(q.shape).astype(q.dtype)
    return dq, _unblock(dk_b, length).astype(k.dtype), _unblock(dv_b, length).astype(v.dtype), \
        None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked(q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL=None, *,
            block: int | None = None):
    """Flash attention in pure JAX: activations O(L x block) in forward and backward."""
    if block is None:
        block = CHUNK_CPU if jax.default_backend() == "cpu" else CHUNK_ACCELERATOR
    block = min(block, q_BxLxHxK.shape[1])
    return _chunked(q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL, block)


# ----- Pallas kernels (GPU Triton, TPU splash) ------------------------------------------------

def _per_device(kernel, q, k, v, segment_ids):
    """Run a Pallas kernel on each device's shard under a mesh (XLA cannot partition it)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q, k, v, segment_ids)
    spec = parallel.logical_spec(("batch", "length", "kv_heads", "head_dim"), k.shape, mesh,
                                 "attention keys")
    # KV heads split over the tensor axis imply the query heads split the same way (H = G KV).
    seg_spec = jax.sharding.PartitionSpec(spec[0], None)
    if segment_ids is None:
        run = jax.shard_map(lambda q, k, v: kernel(q, k, v, None), in_specs=(spec,) * 3,
                            out_specs=spec, check_vma=False)
        return run(q, k, v)
    run = jax.shard_map(kernel, in_specs=(spec, spec, spec, seg_spec), out_specs=spec,
                        check_vma=False)
    return run(q, k, v, segment_ids)


def _triton(q, k, v, segment_ids, *, interpret: bool):
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    length, group = q.shape[1], q.shape[2] // k.shape[2]
    sizes = gpu_attention.BlockSizes(*(min(b, length) for b in _TRITON_BLOCKS))
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)  # kernel wants H == KV
    return gpu_attention.mha(q, k, v, segment_ids, sm_scale=q.shape[-1] ** -0.5, causal=True,
                             block_sizes=sizes, interpret=interpret)


def _splash(q, k, v, segment_ids, *, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    length, heads = q.shape[1], q.shape[2]
    block = math.gcd(length, _SPLASH_BLOCK)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * heads)
    kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes,
                                    interpret=interpret)
    heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)  # [B, H, L, K]
    q = heads_first(q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype))  # splash does not scale
    if segment_ids is None:
        out = jax.vmap(kernel)(q, heads_first(k), heads_first(v))
    else:
        segments = splash.SegmentIds(q=segment_ids, kv=segment_ids)
        out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(
            q, heads_first(k), heads_first(v), segments)
    return heads_first(out)
