"""IsoFLOP sweeps: grid expansion (grid), the run loop (loop), results.jsonl (registry),
dry-run launch commands (commands) and more sweep processes on one host (workers). main passes
the trainer and evaluator in; nothing here imports a stage's entry point or the analysis."""

from ehr_jax.sweep import workers
from ehr_jax.sweep.loop import SweepFailed, check_config, raise_if_failed, run

__all__ = ["SweepFailed", "check_config", "raise_if_failed", "run", "workers"]
