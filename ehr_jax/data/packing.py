"""Sequence packing: several patient windows per training row, still one patient per segment.

Windows (ehr_jax.data.loader) never span two patients; packing puts several of them side by
side in one row of seq_len positions, each its own segment (attention is masked per segment and
RoPE positions restart), so short patients stop filling rows with padding.

Which windows share a row is fixed by best-fit decreasing over the window sizes (input
positions per window), computed once: every window size gets a slot (row, offset), and since
the multiset of sizes is the same every epoch, every epoch has the same number of rows R. Epoch
e then (1) shuffles the windows with a seed drawn from (seed, e) and stably sorts them by size,
so slots are filled by a random choice among same-sized windows, and (2) shuffles the row order.
Global row g is row perm_e[g mod R] of epoch e = g div R: a pure function of (seed, g), so batch
i (rows i*B .. i*B+B-1) is too, and any process can build its own rows of it.
"""

from __future__ import annotations

import numpy as np


def best_fit_decreasing(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """Row of each item of `sizes` sorted decreasingly (stable), packed best-fit.

    Each item goes into the open row with the least room that still fits it, else a new row:
    near-optimal for many small items (padding within a few percent of the minimum).
    """
    sizes_desc = np.sort(np.asarray(sizes, np.int64))[::-1]
    if len(sizes_desc) and (sizes_desc[0] > capacity or sizes_desc[-1] < 1):
        raise ValueError(f"item sizes must be in [1, {capacity}]")
    row_of = np.empty(len(sizes_desc), np.int64)
    full = int(np.searchsorted(-sizes_desc, -capacity, side="right"))  # items that fill a row
    row_of[:full] = np.arange(full)
    rows_with_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # room -> open rows
    has_room = np.zeros(capacity + 1, bool)
    n_rows = full
    for k in range(full, len(sizes_desc)):
        size = int(sizes_desc[k])
        fits = np.flatnonzero(has_room[size:])
        if len(fits):
            room = size + int(fits[0])
            row = rows_with_room[room].pop()
            has_room[room] = bool(rows_with_room[room])
        else:
            room, row = capacity, n_rows
            n_rows += 1
        row_of[k] = row
        if room - size:
            rows_with_room[room - size].append(row)
            has_room[room - size] = True
    return row_of


class PackedEpochs:
    """Global packed row g -> ids of the windows it holds, in order (picklable for workers)."""

    def __init__(self, sizes: np.ndarray, capacity: int, seed: int):
        self._sizes = np.asarray(sizes, np.int64)
        self._seed = seed
        row_of_slot = best_fit_decreasing(self._sizes, capacity)
        # Slots grouped by row: row r holds slots _slots[_starts[r]:_starts[r + 1]].
        self._slots = np.argsort(row_of_slot, kind="stable")
        counts = np.bincount(row_of_slot, minlength=int(row_of_slot.max(initial=-1)) + 1)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None  # cache of the last epoch

    @property
    def rows_per_epoch(self) -> int:
        return len(self._starts) - 1

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(window of each slot, row order) of one epoch."""
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self._seed, epoch])
            shuffled = rng.permutation(len(self._sizes))
            window_of_slot = shuffled[np.argsort(-self._sizes[shuffled], kind="stable")]
            self._epoch = (epoch, window_of_slot, rng.permutation(self.rows_per_epoch))
        return self._epoch[1], self._epoch[2]

    def windows(self, global_row: int) -> np.ndarray:
        epoch, position = divmod(global_row, self.rows_per_epoch)
        window_of_slot, row_order = self._plan(epoch)
        row = row_order[position]
        return window_of_slot[self._slots[self._starts[row]:self._starts[row + 1]]]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_epoch": None}
