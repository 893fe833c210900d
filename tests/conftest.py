"""Test set-up: 8 fake CPU devices (so sharding is exercised), parsed absl flags (for Grain) and one
XLA compilation cache per pytest run.

The cache: the CPU is small and the same tiny programs would otherwise be compiled again in every
test and child process. It starts empty in every run (a cache shared across runs would make a test's
cost, and any cache-dependent behaviour, depend on what ran before) and is deleted afterwards.
Set before JAX is imported, so this process and every child process that inherits the environment
(or gets it from train_fixtures.child_env) use it.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_COMPILE_CACHE = tempfile.mkdtemp(prefix="ehr_jax_test_xla_cache_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILE_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


def pytest_unconfigure(config):
    shutil.rmtree(_COMPILE_CACHE, ignore_errors=True)


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    """A tiny prepared dir (tests/train_fixtures.py) shared by the trainer tests of a module."""
    import train_fixtures

    return train_fixtures.write_prepared(str(tmp_path_factory.mktemp("prepared")))
