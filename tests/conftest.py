"""Test set-up: 8 fake CPU devices (so sharding is exercised) and parsed absl flags (for Grain)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    """A tiny prepared dir (tests/train_fixtures.py) shared by the trainer tests of a module."""
    import train_fixtures

    return train_fixtures.write_prepared(str(tmp_path_factory.mktemp("prepared")))
