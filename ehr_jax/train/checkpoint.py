"""Orbax checkpoints, saved asynchronously: items model, optimizer, loader and meta.

The loader state travels with the parameters so a resumed run reads exactly the batches the
uninterrupted run would have read: together they make kill-and-resume bit-exact on CPU. The
model is an item of its own, so evaluation restores it without the optimizer state (a third of
the bytes) and without knowing how the optimizer was built.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from ehr_jax.errors import ConfigError, DataError

ITEMS = ("model", "optimizer", "loader", "meta")


class _QuietOrbaxInfo(std_logging.Filter):
    """Orbax logs a dozen INFO lines per save; keep its warnings, drop the chatter."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno > std_logging.INFO or "orbax" not in record.pathname


logging.get_absl_logger().addFilter(_QuietOrbaxInfo())


@dataclasses.dataclass
class Restored:
    """What a resumed run continues from."""

    step: int  # steps completed when the checkpoint was taken
    state: tuple[Any, Any]  # (model, optimizer) states, sharded like the abstract targets
    loader_state: dict  # JSON state of the training loader
    meta: dict  # small JSON facts saved beside it (e.g. tokens seen)


class Checkpointer:
    """Keep-N asynchronous CheckpointManager under <workdir>/checkpoints.

    `keep_steps` are kept whatever `keep` says: a wsd sweep's stable run keeps the step at
    which each cooldown branch starts (ehr_jax.sweep). `read_only` opens another run's
    checkpoints (a branch's source) without ever deleting or writing there.
    Every process must call save/restore (Orbax coordinates the writes); only the primary
    host writes the metadata files.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int, keep_steps: tuple = (),
                 use_async: bool = True, read_only: bool = False):
        if keep < 1:
            raise ConfigError(f"train.keep_checkpoints must be >= 1; got {keep}")
        _use_whole_arrays_on_cpu()
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True)
        elif keep_steps:
            options = ocp.CheckpointManagerOptions(
                create=True, enable_async_checkpointing=use_async,
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy([
                    ocp.checkpoint_managers.LatestN(keep),
                    ocp.checkpoint_managers.CustomSteps(sorted(int(s) for s in keep_steps))]))
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=use_async)
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: tuple[Any, Any], loader_state: dict,
             meta: dict | None = None) -> None:
        """Starts an async save of step `step`; returns once the arrays are copied off device.

        `state` is the pair (model, optimizer). Blocking on it first makes sure the step that
        produced it has finished (and, on a non-finite loss, the caller has had the chance to
        refuse to save it).
        """
        jax.block_until_ready(state)
        model, optimizer = state
        self._manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model),
            optimizer=ocp.args.StandardSave(optimizer),
            loader=ocp.args.JsonSave(loader_state),
            meta=ocp.args.JsonSave({"step": step, **(meta or {})})), force=True)
        logging.info("checkpoint: saving step %d to %s", step, self.directory)

    def restore_latest(self, abstract_state: tuple[Any, Any]) -> Restored | None:
        """The newest complete checkpoint restored onto the (model, optimizer) targets' shardings,
        or None when there is none."""
        step = self._latest_with_items()
        return None if step is None else self.restore(step, abstract_state)

    def restore(self, step: int, abstract_state: tuple[Any, Any]) -> Restored:
        """The checkpoint of `step` (which must exist) onto the (model, optimizer) targets."""
        model, optimizer = abstract_state
        restored = self._manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(model),
            optimizer=ocp.args.StandardRestore(optimizer),
            loader=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        logging.info("checkpoint: restored step %d from %s", step, self.directory)
        return Restored(step, (restored.model, restored.optimizer), dict(restored.loader),
                        dict(restored.meta or {}))

    def restore_model(self, abstract_model: Any) -> tuple[int, Any] | None:
        """(step, model state) of the newest checkpoint, the model item alone; None when none."""
        step = self._latest_with_items()
        if step is None:
            return None
        restored = self._manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(abstract_model)))
        return step, restored.model

    def latest_meta(self) -> dict | None:
        """The meta item of the newest checkpoint (small JSON), or None when there is none."""
        step = self._latest_with_items()
        if step is None:
            return None
        return dict(self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta or {})

    def model_shape(self, *path: str) -> tuple[int, ...] | None:
        """Shape of one array of the newest model item (e.g. "embed"), read from its metadata
        without restoring; None when there is no checkpoint or no such array."""
        step = self._latest_with_items()
        if step is None:
            return None
        tree = ocp.StandardCheckpointer().metadata(
            os.path.join(self.directory, str(step), "model")).item_metadata.tree
        for key in (*path, "value"):
            if not isinstance(tree, dict) or key not in tree:
                return None
            tree = tree[key]
        return tuple(tree.shape)

    def _latest_with_items(self) -> int | None:
        """The newest step, refusing checkpoints from before the model/optimizer split."""
        step = self._manager.latest_step()
        if step is not None and not os.path.isdir(os.path.join(self.directory, str(step), "model")):
            raise DataError(f"{self.directory}/{step} has no 'model' item (a checkpoint written "
                            "before items model/optimizer were split); retrain with a fresh "
                            "--workdir")
        return step

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _use_whole_arrays_on_cpu() -> None:
    """On CPU, save each replicated array once instead of a slice per replica.

    Replica-parallel saving speeds up pods, but with fake CPU devices it compiles one slice
    per (array shape, device), which dominates a small run's first save.
    """
    if jax.default_backend() == "cpu":
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs with shardings: the restore target for a state of this shape."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
