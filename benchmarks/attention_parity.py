"""cuDNN flash attention vs the XLA reference: outputs and gradients on random bf16 inputs.

  python benchmarks/attention_parity.py --batch=4 --seq_len=2048 --heads=16 --head_dim=128

Prints the largest absolute differences (causal attention, as the model uses it) and exits 1 when
they exceed bf16 tolerances. Where cuDNN is not available (CPU, old GPUs) it says so and exits 0.
"""

import sys

import jax
import jax.numpy as jnp
from absl import app, flags

_BATCH = flags.DEFINE_integer("batch", 4, "Sequences.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "Tokens per sequence.")
_HEADS = flags.DEFINE_integer("heads", 16, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dimension.")
_TOLERANCE = flags.DEFINE_float("tolerance", 2e-2, "Largest allowed |difference| (bf16).")


def attention_and_grads(implementation: str, q, k, v):
    def loss(q, k, v):
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
        return out.astype(jnp.float32).sum(), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def main(argv) -> None:
    del argv
    keys = jax.random.split(jax.random.key(0), 3)
    shape = (_BATCH.value, _SEQ_LEN.value, _HEADS.value, _HEAD_DIM.value)
    q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)
    reference = jax.jit(lambda q, k, v: attention_and_grads("xla", q, k, v))(q, k, v)
    try:
        cudnn = jax.jit(lambda q, k, v: attention_and_grads("cudnn", q, k, v))(q, k, v)
    except Exception as e:  # noqa: BLE001 - the message is the finding
        print(f"cudnn attention not available on {jax.devices()[0].device_kind}: "
              f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return
    diffs = {name: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
             for name, a, b in [("out", cudnn[0], reference[0]),
                                *[(f"d{n}", g1, g2) for n, g1, g2 in zip("qkv", cudnn[1],
                                                                        reference[1])]]}
    print(f"cudnn vs xla attention on {jax.devices()[0].device_kind}, shape {shape}: "
          + ", ".join(f"max |{n} diff| {d:.2e}" for n, d in diffs.items()))
    if max(diffs.values()) > _TOLERANCE.value:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
