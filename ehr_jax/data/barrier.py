"""A file barrier: process 0 does slow work (preparing data) while the others poll a status file.

Waiting inside a device collective (multihost_utils.sync_global_devices) for the 10-30 minutes
a large prepare takes can kill the job on NCCL / ICI timeouts. Instead:

1. Process 0 writes `<directory>/.prepare-status.json` = {nonce, state: "running"} (a fresh
   random nonce per attempt), then every process takes part in one quick collective at start-up
   that broadcasts the nonce (all processes reach it within seconds of each other).
2. Process 0 does the work and rewrites the status as "done", or "error" with the message.
3. Every other process reads the status: with this attempt's nonce it polls it (every
   POLL_S, a progress line every LOG_EVERY_S) until "done", re-raises an "error" as a
   DataError, and gives up after `timeout_s`. A process that does not see this attempt's status
   within SHARED_GRACE_S has no shared filesystem with process 0 and does the work itself
   (preparing is deterministic, so every host gets the same copy).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Callable

from absl import logging

from ehr_jax import rundir
from ehr_jax.errors import DataError

STATUS = ".prepare-status.json"
POLL_S = 2.0
LOG_EVERY_S = 30.0
# How long a process looks for this attempt's status before deciding its filesystem is not
# shared with process 0 (network filesystems may cache a missing file for up to a minute).
SHARED_GRACE_S = 60.0


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or caught between write and rename on some filesystems
        return None


def run_on_first(directory: str | os.PathLike, work: Callable[[], None], *, process_index: int,
                 process_count: int, broadcast: Callable[[int], int], timeout_s: float,
                 what: str) -> None:
    """Runs `work` on process 0 while the others wait on the status file (see module docstring).

    `broadcast(value)` returns process 0's value on every process (multihost_utils'
    broadcast_one_to_all in a real job); it is called once, before the work starts.
    """
    if process_count == 1:
        work()
        return
    status = Path(directory) / STATUS
    nonce = 0
    if process_index == 0:
        nonce = random.SystemRandom().randrange(1, 2**31)
        status.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_json_atomic(status, {"nonce": nonce, "state": "running"})
    nonce = int(broadcast(nonce))
    if process_index == 0:
        try:
            work()
        except Exception as error:  # noqa: BLE001 - the waiting processes get its message
            rundir.write_json_atomic(status, {"nonce": nonce, "state": "error",
                                              "message": f"{type(error).__name__}: {error}"})
            raise
        rundir.write_json_atomic(status, {"nonce": nonce, "state": "done"})
        return
    _wait(status, nonce, work, timeout_s, what)


def _wait(status: Path, nonce: int, work: Callable[[], None], timeout_s: float, what: str) -> None:
    start = last_log = time.monotonic()
    seen = False
    while True:
        current = _read(status)
        ours = current is not None and current.get("nonce") == nonce
        waited = time.monotonic() - start
        if ours and current["state"] == "done":
            logging.info("%s: process 0 finished after %.0f s of waiting", what, waited)
            return
        if ours and current["state"] == "error":
            raise DataError(f"{what}: process 0 failed ({status}): {current.get('message')}")
        seen = seen or ours
        if not seen and waited > SHARED_GRACE_S:
            logging.warning("%s: %s does not show process 0's status after %.0f s: no shared "
                            "filesystem, so this process prepares its own copy", what, status,
                            waited)
            work()
            return
        if waited > timeout_s:
            raise DataError(f"{what}: process 0 has not finished after {waited:.0f} s "
                            f"(data.prepare_wait_s={timeout_s:g}); see its log, or raise the "
                            "limit")
        if time.monotonic() - last_log >= LOG_EVERY_S:
            last_log = time.monotonic()
            logging.info("%s: waiting for process 0 (%.0f s so far; status %s)", what, waited,
                         current.get("state") if ours else "not visible yet")
        time.sleep(POLL_S)
