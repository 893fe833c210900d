"""The built-in MIMIC-like MEDS generator: the default dataset when no MEDS dir is given.

Other stages reach it only through `write_meds` (or its CLI, `python -m ehr_jax.synthetic`);
the generative model's modules (timeline, events, measure, tables, vocab) are its own business.
docs/SYNTHETIC.md describes the model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from absl import logging

from ehr_jax import rundir
from ehr_jax.synthetic.generate import generate

__all__ = ["generate", "write_meds"]

MARKER = "ehr_jax_synthetic.json"  # in metadata/, written last: the dataset is complete


def write_meds(meds_dir: str | os.PathLike, num_subjects: int, seed: int) -> None:
    """Writes the synthetic MEDS dataset once per (num_subjects, seed); reruns reuse it."""
    meds_dir = Path(meds_dir)
    marker = meds_dir / "metadata" / MARKER
    wanted = {"num_subjects": int(num_subjects), "seed": int(seed)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return
    if meds_dir.exists():
        shutil.rmtree(meds_dir)
    logging.info("Generating %d synthetic subjects (seed %d) into %s", num_subjects, seed, meds_dir)
    generate(str(meds_dir), num_subjects, seed)
    rundir.write_json_atomic(marker, wanted)
