"""Two sweeps of the same grid side by side: validation loss per grid point and their ratio.

  python -m ehr_jax.sweep.compare --a=runs/wsd_check --b=runs/wsd_check_cosine

Made for configs/quickstart.py:wsd_check (cooldown branches) against :wsd_check_cosine
(independent cosine runs of the same points): a branch is as good as a run of its own when the
losses agree to about 1%.
"""

from __future__ import annotations

import sys

from absl import app, flags

from ehr_jax.sweep import registry

_A = flags.DEFINE_string("a", None, "Sweep workdir (its results.jsonl) A.")
_B = flags.DEFINE_string("b", None, "Sweep workdir B, the reference.")


def _points(workdir: str) -> dict[tuple, dict]:
    lines = registry.read_results(workdir)
    out = {}
    for line in lines:
        point = line.get("grid_point") or {}
        out[(point.get("budget"), point.get("size"), point.get("seed", 0))] = line
    return out


def compare(workdir_a: str, workdir_b: str) -> list[dict]:
    """One row per grid point in both sweeps: budget, size, seed, val_loss a and b, a / b - 1."""
    a, b = _points(workdir_a), _points(workdir_b)
    rows = []
    for key in sorted(set(a) & set(b), key=lambda k: (k[0], a[k]["n_params"], k[2])):
        loss_a, loss_b = a[key]["val_loss"], b[key]["val_loss"]
        rows.append({"budget": key[0], "size": key[1], "seed": key[2],
                     "schedule_a": a[key].get("schedule"), "schedule_b": b[key].get("schedule"),
                     "val_loss_a": loss_a, "val_loss_b": loss_b,
                     "relative": loss_a / loss_b - 1.0})
    return rows


def main(argv: list[str]) -> None:
    del argv
    rows = compare(_A.value, _B.value)
    if not rows:
        sys.exit(f"no grid point is in both {_A.value} and {_B.value}")
    print(f"{'budget':>8} {'size':>8} {'seed':>4} {'val a':>8} {'val b':>8} {'a/b-1':>8}")
    for r in rows:
        print(f"{r['budget']:8.2g} {r['size']:>8} {r['seed']:4d} {r['val_loss_a']:8.4f} "
              f"{r['val_loss_b']:8.4f} {100 * r['relative']:+7.2f}%")
    worst = max(abs(r["relative"]) for r in rows)
    print(f"{len(rows)} points ({rows[0]['schedule_a']} vs {rows[0]['schedule_b']}), largest "
          f"difference {100 * worst:.2f}%")


if __name__ == "__main__":
    flags.mark_flags_as_required(["a", "b"])
    app.run(main)
