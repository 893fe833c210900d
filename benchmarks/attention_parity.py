"""Every attention kernel this backend can run vs the XLA reference: outputs and gradients.

  python benchmarks/attention_parity.py --batch=4 --seq_len=2048 --heads=16 --head_dim=128

Random inputs in --dtype (bfloat16 by default), causal attention as the model uses it, through
ehr_jax.model.attention: each implementation config.model.attention can name (cudnn, triton,
splash, chunked) is compared with "xla", unpacked and, for those that take segment ids, with
packed rows (4 segments of random lengths per row). Prints, per case and per output (out, dq,
dk, dv), the largest absolute difference relative to the reference's largest magnitude, names the
kernels this backend cannot run (and why), and exits 1 when one exceeds --tolerance.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ehr_jax.errors import ConfigError
from ehr_jax.model import attention

_BATCH = flags.DEFINE_integer("batch", 4, "Sequences.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "Tokens per sequence.")
_HEADS = flags.DEFINE_integer("heads", 16, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dimension.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Input dtype: bfloat16 or float32.")
_TOLERANCE = flags.DEFINE_float("tolerance", 2e-2, "Largest allowed max |difference| / max "
                                 "|reference| (a few bf16 ulps).")


def _segments(batch: int, length: int) -> jax.Array:
    """Packed rows: 4 segments of random lengths, then 16 padding positions (segment 0)."""
    rng = np.random.default_rng(0)
    ids = np.zeros((batch, length), np.int32)
    for row in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, length - 16), 3, replace=False))
        ids[row, :length - 16] = 1 + np.searchsorted(cuts, np.arange(length - 16), side="right")
    return jnp.asarray(ids)


def outputs_and_grads(implementation: str, q, k, v, segment_ids):
    def loss(q, k, v):
        out = attention.attention(q, k, v, segment_ids_BxL=segment_ids,
                                  implementation=implementation)
        return out.astype(jnp.float32).sum(), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def _relative_diffs(got, reference) -> dict[str, float]:
    pairs = [("out", got[0], reference[0]), *zip(("dq", "dk", "dv"), got[1], reference[1])]
    diffs = {}
    for name, a, b in pairs:
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        diffs[name] = float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
    return diffs


def main(argv) -> None:
    del argv
    keys = jax.random.split(jax.random.key(0), 3)
    shape = (_BATCH.value, _SEQ_LEN.value, _HEADS.value, _HEAD_DIM.value)
    q, k, v = (jax.random.normal(key, shape, _DTYPE.value) for key in keys)
    device = jax.devices()[0].device_kind
    print(f"{device}, jax {jax.__version__}, shape {shape}, {_DTYPE.value}")
    worst = 0.0
    for packed in (False, True):
        segment_ids = _segments(_BATCH.value, _SEQ_LEN.value) if packed else None
        run = jax.jit(outputs_and_grads, static_argnums=0)
        reference = run("xla", q, k, v, segment_ids)
        for name in ("cudnn", "triton", "splash", "chunked"):
            try:
                attention.resolve(name, dtype=_DTYPE.value, head_dim=_HEAD_DIM.value,
                                  seq_len=_SEQ_LEN.value, packed=packed)
            except ConfigError as e:
                print(f"  {name:8s} {'packed' if packed else 'unpacked':8s} skipped: "
                      f"{str(e).split('cannot run here: ')[-1].split('; use ')[0]}")
                continue
            diffs = _relative_diffs(run(name, q, k, v, segment_ids), reference)
            worst = max(worst, *diffs.values())
            print(f"  {name:8s} {'packed' if packed else 'unpacked':8s} vs xla, max |diff| / "
                  f"max |ref|: " + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items()))
    if worst > _TOLERANCE.value:
        print(f"FAIL: a difference {worst:.2e} exceeds --tolerance={_TOLERANCE.value}")
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
