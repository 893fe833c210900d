"""CLI of the synthetic generator.

  python -m ehr_jax.synthetic --out=/tmp/meds --num_subjects=5000 --seed=0
  python -m ehr_jax.synthetic --out=gs://b/meds --num_subjects=10000000 --engine=beam -- BEAM_OPTIONS
"""

import json

from absl import flags

from ehr_jax import cli
from ehr_jax.errors import ConfigError, DataError
from ehr_jax.synthetic import generate


def define_flags() -> None:
    """CLI flags, defined only when run as a program (like every CLI of ehr_jax)."""
    flags.DEFINE_string("out", None, "Output MEDS root directory.")
    flags.DEFINE_integer("num_subjects", 5000, "Patients to generate.")
    flags.DEFINE_integer("seed", 0, "Random seed (same seed and size give the same data).")
    flags.DEFINE_integer("subjects_per_shard", 10_000, "Patients per parquet file.")
    flags.DEFINE_bool("overwrite", False, "Replace data/ and metadata/ if the output exists.")
    flags.DEFINE_enum("engine", "local", ["local", "beam"],
                      "local: this process; beam: an Apache Beam job (pipeline options after `--`).")


def main(argv: list[str]) -> None:
    f = flags.FLAGS
    if len(argv) > 1 and f.engine != "beam":
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (pipeline options need --engine=beam)")
    if not f.out:
        cli.fail("--out is required")
    try:
        if f.engine == "local":
            counts = generate(f.out, f.num_subjects, f.seed, f.subjects_per_shard, f.overwrite)
        else:
            try:
                from ehr_jax.synthetic import beam
            except ImportError as e:
                raise ConfigError(f"--engine=beam needs Apache Beam ({e}); pip install -e '.[beam]'") from None
            counts = beam.generate_beam(f.out, f.num_subjects, f.seed, f.subjects_per_shard, f.overwrite,
                                        argv[1:] or beam.DEFAULT_ARGS)
    except (ConfigError, DataError) as e:
        cli.fail(e)
    print(json.dumps(counts, indent=2))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
