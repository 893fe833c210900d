"""The old entry point `python -m ehr_jax.prepare`, kept working: see ehr_jax.data.prepare."""

from absl import app

from ehr_jax.data import prepare

if __name__ == "__main__":
    prepare.define_flags()
    app.run(prepare.main)
