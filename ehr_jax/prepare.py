"""The old entry point `python -m ehr_jax.prepare`, kept working: see ehr_jax.data.prepare."""

from ehr_jax import cli
from ehr_jax.data import prepare

if __name__ == "__main__":
    prepare.define_flags()
    cli.run(prepare.main)
