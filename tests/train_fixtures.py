"""Tiny prepared datasets and configs for the trainer tests (no MEDS, no tokenizer fitting)."""

import os

import ml_collections
import numpy as np

from ehr_jax import config_files, rundir
from ehr_jax.data import shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = ["[PAD]", "[UNK]", "[TIMELINE_START]", "[TIMELINE_END]", "TIME//1h", "TIME//1d", "Q//1",
         "Q//2", "AGE//40-44", "GENDER//F", "DIAGNOSIS//ICD//10//I10", "LAB//123//mg/dL",
         "MEDICATION//ATC//A10", "HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE", "MEDS_DEATH"]


def child_env(num_devices: int, **extra: str) -> dict:
    """Environment for a child training process with `num_devices` CPU devices (sharing this
    pytest run's XLA cache, see conftest.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=os.environ["JAX_COMPILATION_CACHE_DIR"],
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"],
               **extra)
    return env


def write_prepared(out_dir: str, *, subjects: int = 24, seed: int = 0) -> str:
    """A prepared dir whose timelines follow a simple pattern (learnable, so losses fall)."""
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    splits = {}
    for split_no, split in enumerate(shards.SPLITS):
        records = []
        for i in range(subjects):
            n = int(rng.integers(20, 120))
            body = (np.arange(n) * 3 + i) % (len(VOCAB) - 4) + 4
            tokens = np.concatenate([[2, 8, 9], body[:n - 3]]).astype(np.int32)
            times = np.arange(n, dtype=np.int64) * 3600
            records.append(shards.PatientRecord(1000 * split_no + i, tokens, times, 3))
        entries = shards.write_split(records, out_dir, split, records_per_shard=10)
        splits[split] = {"num_subjects": subjects, "num_tokens": sum(e["num_tokens"] for e in entries),
                         "num_events": 0, "dropped": {}, "shards": entries}
    rundir.write_json_atomic(os.path.join(out_dir, shards.VOCAB), {"tokens": VOCAB})
    rundir.write_json_atomic(os.path.join(out_dir, shards.MANIFEST), {
        "vocab_size": len(VOCAB), "settings": {}, "tokenizer_hash": "test-hash",
        "meds_dir": "", "provenance": {"etl_name": "test", "etl_version": "0", "meds_version": "0.4"},
        "splits": splits})
    return out_dir


def base_config() -> ml_collections.ConfigDict:
    return config_files.load_sibling(os.path.join(REPO, "configs", "base.py"))


def tiny_config(prepared_dir: str, *, steps: int = 12) -> ml_collections.ConfigDict:
    """d32-l1 on the tiny prepared data: a step takes milliseconds on CPU."""
    config = base_config()
    config.data.prepared_dir = prepared_dir
    config.data.seq_len = 32
    config.model.size = "d32-l1"
    config.train.global_batch_size = 8
    config.train.steps = steps
    config.train.lr = 3e-3
    config.train.log_every = 2
    config.train.eval_every = 4
    config.train.eval_tokens = 256
    config.train.checkpoint_every = 4
    config.train.keep_checkpoints = 3
    config.mesh.shape = (-1, 1, 1)
    return config


def final_state_leaves(run_dir: str) -> list[np.ndarray]:
    """Every array of the newest checkpoint (model, then optimizer state), as numpy."""
    import jax
    import orbax.checkpoint as ocp

    directory = os.path.join(run_dir, "checkpoints")
    step = max(int(name) for name in os.listdir(directory) if name.isdigit())
    checkpointer = ocp.StandardCheckpointer()
    # Restore onto this process's first device, whatever topology wrote the checkpoint.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    leaves = []
    for item in ("model", "optimizer"):
        path = os.path.join(directory, str(step), item)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              checkpointer.metadata(path).item_metadata.tree)
        leaves += [np.asarray(leaf) for leaf in jax.tree.leaves(checkpointer.restore(path, target))]
    checkpointer.close()
    return leaves


def losses_by_step(run_dir: str) -> dict[int, float]:
    import json

    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}
