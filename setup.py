"""ehr-jax: scaling laws for EHR foundation models in JAX."""
import setuptools

setuptools.setup(
    name="ehr-jax",
    version="0.1.0",
    description="JAX-native scaling-law studies of EHR foundation models on MEDS data.",
    packages=setuptools.find_packages(include=["ehr_jax", "ehr_jax.*", "analysis", "analysis.*"]),
    package_data={"analysis": ["example_results.jsonl", "notebooks/*.ipynb"]},
    python_requires=">=3.11",
    # Lower bounds admit this CPU machine (jax 0.10.2) and the accelerator image (jax 0.11.x).
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12.0",
        "grain>=0.2.18",
        "array-record>=0.8.1",
        "numpy>=1.26",
        "scipy>=1.12",
        "threadpoolctl>=3.1",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "tensorboardX>=2.6",
        "tensorboard>=2.16",  # `tensorboard --logdir runs/` (README): viewing what tensorboardX wrote
        "pyarrow>=16",
        "polars>=1.0,<2",
        "matplotlib>=3.8",
        "meds>=0.4,<0.5",
    ],
    extras_require={
        # The test extra includes beam so the Beam-vs-local equivalence test runs in CI.
        "test": ["pytest>=8", "ruff>=0.6", "meds-testing-helpers>=0.3", "nbclient>=0.10", "nbformat>=5.10",
                 "ipykernel>=6", "apache-beam>=2.77"],
        # prepare --engine=beam (DirectRunner, Dataflow, Flink, Spark); it pins pyarrow<26, protobuf<7.
        "beam": ["apache-beam>=2.77"],
        "notebooks": ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6"],
    },
)
