"""The size ladder, exact parameter counts and the one FLOP convention of the study.

Plain Python (no JAX at import) so sweeps, planners and analysis can count parameters and FLOPs
without building a model. tests/test_sizes.py checks every count against the real NNX parameter
tree and XLA's cost analysis.
"""

import dataclasses
import math

from ehr_jax.errors import ConfigError

FLOP_CONVENTION = (
    "training FLOPs = 3 x forward matmul FLOPs (2 per multiply-add, output head included, "
    "embedding lookup excluded), causal attention QK^T and AV counted at half (MaxText)"
)


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """One rung: width, depth and the shape of attention and MLP (SwiGLU) per block."""

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int
    d_ff: int


def _swiglu_ff(d_model: int) -> int:
    """8/3 d (SwiGLU at the cost of a 4d MLP), rounded up to 64 (32 for the tiny rungs)."""
    multiple = 64 if d_model >= 256 else 32
    return multiple * math.ceil(8 * d_model / 3 / multiple)


def _rung(d_model: int, n_layers: int, head_dim: int) -> ModelSize:
    return ModelSize(
        name=f"d{d_model}-l{n_layers}",
        d_model=d_model,
        n_layers=n_layers,
        n_heads=d_model // head_dim,
        head_dim=head_dim,
        d_ff=_swiglu_ff(d_model),
    )


# (d_model, n_layers, head_dim): depth and width grow together; head_dim 64 from d=192 up.
# Tiny rungs (1k-1M non-embedding parameters, at most ~2x apart) serve the CPU quickstart.
_RUNGS = (
    # Below 10k non-embedding: the CPU quickstart's smallest budgets, whose optimum (in total N,
    # embedding and head included) lies near d16-d24 and needs sizes on both sides.
    (8, 1, 8), (12, 1, 12), (16, 1, 16), (24, 1, 8),
    (32, 1, 16), (32, 2, 16), (48, 2, 16), (64, 2, 16), (80, 2, 16), (96, 3, 32), (128, 3, 32),
    (128, 4, 32), (160, 4, 32), (192, 4, 64), (256, 4, 64), (256, 6, 64), (320, 6, 64),
    (384, 8, 64), (512, 8, 64), (640, 10, 64), (768, 12, 64), (1024, 14, 64), (1280, 16, 64),
    (1536, 18, 64), (1792, 20, 64), (2048, 20, 64),
)
LADDER: dict[str, ModelSize] = {s.name: s for s in (_rung(*r) for r in _RUNGS)}


def get_size(name: str) -> ModelSize:
    """The rung called `name`; a ConfigError lists the valid names."""
    if name not in LADDER:
        raise ConfigError(
            f"config.model.size={name!r} is not a known size; expected one of: {', '.join(LADDER)}"
        )
    return LADDER[name]


def kv_heads(size: ModelSize, n_kv_heads: int) -> int:
    """0 means one KV head per query head; otherwise it must divide n_heads."""
    if n_kv_heads <= 0:
        return size.n_heads
    if size.n_heads % n_kv_heads:
        raise ConfigError(
            f"config.model.n_kv_heads={n_kv_heads} must divide the {size.n_heads} heads of "
            f"size {size.name}"
        )
    return n_kv_heads


def _block_matmul_params(size: ModelSize, n_kv_heads: int) -> int:
    """Weights of one block that take part in a matmul (attention + SwiGLU MLP)."""
    d, k = size.d_model, size.head_dim
    attention = d * k * (2 * size.n_heads + 2 * kv_heads(size, n_kv_heads))
    return attention + 3 * d * size.d_ff


def n_params(
    size: ModelSize, vocab_size: int, *, n_kv_heads: int = 0, tie_embeddings: bool = False
) -> tuple[int, int]:
    """(total, non_embedding) parameters; non-embedding excludes input embedding and head."""
    d = size.d_model
    per_block = _block_matmul_params(size, n_kv_heads) + 2 * d  # two RMSNorm scales
    non_embedding = size.n_layers * per_block + d  # final RMSNorm
    embedding = vocab_size * d * (1 if tie_embeddings else 2)
    return non_embedding + embedding, non_embedding


def forward_flops_per_token(
    size: ModelSize, vocab_size: int, seq_len: int, *, n_kv_heads: int = 0
) -> float:
    """Forward matmul FLOPs per token; causal attention at half (a token sees ~L/2 keys)."""
    matmul = 2 * size.n_layers * _block_matmul_params(size, n_kv_heads)
    head = 2 * size.d_model * vocab_size
    # QK^T and AV: 2 x (2 L H K) per token for full attention; causal counts half of that.
    attention = size.n_layers * 2 * seq_len * size.n_heads * size.head_dim
    return float(matmul + head + attention)


def flops_per_token(
    size: ModelSize, vocab_size: int, seq_len: int, *, n_kv_heads: int = 0
) -> float:
    """Training FLOPs per token under FLOP_CONVENTION (backward = 2 x forward)."""
    return 3.0 * forward_flops_per_token(size, vocab_size, seq_len, n_kv_heads=n_kv_heads)


def flops_6nd(n_parameters: int, n_tokens: float) -> float:
    """Kaplan/Chinchilla 6ND, kept beside our count so fits can say which they use."""
    return 6.0 * n_parameters * n_tokens
