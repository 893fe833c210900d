"""Clinical evaluation of a trained run: tasks (labels), zero-shot rollouts, next-token and
probe predictors, metrics with bootstrap CIs. Entry point: `evaluate(run_dir, config,
prepared_dir)`, or `python -m ehr_jax.evaluation --workdir=RUN_DIR`."""


def evaluate(run_dir: str, config, prepared_dir: str) -> dict:
    """See ehr_jax.evaluation.runner.evaluate (imported here lazily: it pulls in JAX and Flax)."""
    from ehr_jax.evaluation import runner

    return runner.evaluate(run_dir, config, prepared_dir)
