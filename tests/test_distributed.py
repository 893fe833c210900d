"""Device-count and multi-process invariance: the same global batch gives the same run.

The reference trains in this process on the 8 fake CPU devices of conftest (data axis 8).
Children train the same config on 1 device, and as two jax.distributed processes on localhost
with 2 devices each (coordinator on 127.0.0.1), each process loading only its half of every batch.
Float sums are reduced in a different order across devices, so parameters agree to rounding.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ehr_jax.train import trainer

import train_fixtures

pytestmark = pytest.mark.slow  # every test here trains a model or starts processes

STEPS = 8
CHILD = os.path.join(train_fixtures.REPO, "tests", "train_child.py")


@pytest.fixture(scope="module")
def reference(prepared_dir, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("eight_devices"))
    summary = trainer.run(train_fixtures.tiny_config(prepared_dir, steps=STEPS), run_dir, prepared_dir)
    assert summary["num_devices"] == 8
    return run_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_close_runs(run_dir, ref_dir):
    leaves = train_fixtures.final_state_leaves(run_dir)
    ref_leaves = train_fixtures.final_state_leaves(ref_dir)
    assert len(leaves) == len(ref_leaves)
    for leaf, ref_leaf in zip(leaves, ref_leaves):
        np.testing.assert_allclose(leaf, ref_leaf, rtol=2e-4, atol=2e-5)
    losses, ref_losses = train_fixtures.losses_by_step(run_dir), train_fixtures.losses_by_step(ref_dir)
    assert losses.keys() == ref_losses.keys()
    np.testing.assert_allclose(list(losses.values()), list(ref_losses.values()), rtol=1e-5)


def test_one_device_matches_eight_devices(prepared_dir, reference, tmp_path):
    result = subprocess.run([sys.executable, CHILD, prepared_dir, str(tmp_path), str(STEPS)],
                            env=train_fixtures.child_env(1), capture_output=True, timeout=240)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["num_devices"] == 1
    _assert_close_runs(str(tmp_path), reference)


def test_two_processes_match_one_process(prepared_dir, reference, tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    children = [subprocess.Popen(
        [sys.executable, CHILD, prepared_dir, str(tmp_path), str(STEPS)],
        env=train_fixtures.child_env(2, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                                     JAX_PROCESS_ID=str(i)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
    errors = []
    for child in children:
        try:
            _, stderr = child.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            child.kill()
            _, stderr = child.communicate()
        errors.append((child.returncode, stderr.decode()[-3000:]))
    assert all(code == 0 for code, _ in errors), errors
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_devices"] == 4
    _assert_close_runs(str(tmp_path), reference)


def test_fsdp_and_tensor_sharding_matches_data_parallel(prepared_dir, reference, tmp_path):
    config = train_fixtures.tiny_config(prepared_dir, steps=STEPS)
    config.mesh.shape = (2, 2, 2)  # data x fsdp x tensor: weights and Adam moments split
    trainer.run(config, str(tmp_path), config.data.prepared_dir)
    _assert_close_runs(str(tmp_path), reference)
