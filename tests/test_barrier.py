"""The prepare barrier: process 0 works, the others wait on a status file (threads stand in for
processes; `broadcast` for the one start-up collective)."""

import json
import threading

import pytest

from ehr_jax.data import barrier
from ehr_jax.errors import DataError


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setattr(barrier, "POLL_S", 0.01)
    monkeypatch.setattr(barrier, "LOG_EVERY_S", 0.05)
    monkeypatch.setattr(barrier, "SHARED_GRACE_S", 0.3)


def _run_two(dirs, works, timeout_s=30.0):
    """Runs process 0 and 1 as threads; returns the exception each raised (or None)."""
    value, start = {}, threading.Barrier(2)

    def broadcast_for(index):
        def broadcast(nonce):
            if index == 0:
                value["nonce"] = nonce
            start.wait()
            return value["nonce"]
        return broadcast

    errors = [None, None]

    def process(index):
        try:
            barrier.run_on_first(dirs[index], works[index], process_index=index, process_count=2,
                                 broadcast=broadcast_for(index), timeout_s=timeout_s, what="test")
        except Exception as error:  # noqa: BLE001 - returned to the test
            errors[index] = error

    threads = [threading.Thread(target=process, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_the_others_wait_for_process_0_on_a_shared_filesystem(tmp_path, caplog):
    done, calls = threading.Event(), []

    def slow_work():
        calls.append(0)
        done.wait(0.3)  # long enough for process 1 to log that it waits
        (tmp_path / "manifest.json").write_text("{}")

    def never():
        calls.append(1)

    caplog.set_level("INFO")
    errors = _run_two([tmp_path, tmp_path], [slow_work, never])
    assert errors == [None, None] and calls == [0]
    assert json.loads((tmp_path / barrier.STATUS).read_text())["state"] == "done"
    assert "waiting for process 0" in caplog.text


def test_process_0s_error_reaches_the_others(tmp_path):
    def fail():
        raise ValueError("codes.parquet is broken")

    errors = _run_two([tmp_path, tmp_path], [fail, lambda: None])
    assert isinstance(errors[0], ValueError)
    assert isinstance(errors[1], DataError) and "ValueError: codes.parquet is broken" in str(errors[1])


def test_a_stale_status_from_an_earlier_job_is_not_trusted(tmp_path):
    (tmp_path / barrier.STATUS).write_text(json.dumps({"nonce": 7, "state": "done"}))
    finished = []
    errors = _run_two([tmp_path, tmp_path], [lambda: finished.append(0), lambda: None])
    assert errors == [None, None] and finished == [0]


def test_a_host_without_the_shared_filesystem_prepares_its_own_copy(tmp_path):
    calls = []
    errors = _run_two([tmp_path / "host0", tmp_path / "host1"],
                      [lambda: calls.append(0), lambda: calls.append(1)])
    assert errors == [None, None] and sorted(calls) == [0, 1]


def test_waiting_gives_up_after_the_timeout(tmp_path):
    release = threading.Event()
    errors = _run_two([tmp_path, tmp_path], [lambda: release.wait(5), lambda: None], timeout_s=0.5)
    release.set()
    assert isinstance(errors[1], DataError) and "data.prepare_wait_s=0.5" in str(errors[1])


def test_one_process_just_works(tmp_path):
    calls = []
    barrier.run_on_first(tmp_path, lambda: calls.append(1), process_index=0, process_count=1,
                         broadcast=None, timeout_s=1.0, what="test")
    assert calls == [1] and not (tmp_path / barrier.STATUS).exists()
