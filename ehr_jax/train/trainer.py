"""One training run: mesh -> data -> model and optimizer -> restore -> loop -> summary.json.

The run is a pure function of its config: batch i depends only on (seed, i) and the checkpoint
carries parameters, optimizer state and the loader position together, so rerunning the same
command after a kill continues exactly where the last checkpoint left off.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from ehr_jax import parallel, rundir
from ehr_jax.data import loader as data_loader
from ehr_jax.data import shards
from ehr_jax.errors import ConfigError, EhrJaxError
from ehr_jax.model import init as model_init
from ehr_jax.model import sizes, transformer
from ehr_jax.train import branch, checkpoint, memory, metrics, optim
from ehr_jax.train.profiler import StepProfiler

Batch = dict[str, np.ndarray]


class NonFiniteLossError(EhrJaxError):
    """Training diverged; the last good checkpoint is kept so the run can be retried."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run will do, fixed before the first step."""

    steps: int
    global_batch_size: int
    seq_len: int
    peak_lr: float
    flops_per_token: float
    n_params: int
    n_params_non_embedding: int
    vocab_size: int
    scan_layers: bool  # the parameter layout, recorded in every checkpoint for evaluation

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len


def run(config: ml_collections.ConfigDict, workdir: str, prepared_dir: str) -> dict:
    """Trains (or resumes) the run in `workdir` on `prepared_dir`; returns its summary (also
    summary.json)."""
    wall_start = time.perf_counter()
    workdir = os.path.abspath(workdir)
    is_writer = jax.process_index() == 0
    sizes.get_size(config.model.size)  # config mistakes surface before data is prepared
    mesh = parallel.make_mesh(tuple(config.mesh.shape))
    batch_shards = parallel.check_batch_size(config.train.global_batch_size,
                                             tuple(mesh.shape.values()))
    parallel.check_batch_layout(mesh, config.train.global_batch_size)

    # Data: every process reads its rows of each batch.
    manifest = shards.read_manifest(prepared_dir)
    model_cfg = transformer.model_config(config.model, manifest["vocab_size"], config.data.seq_len,
                                         packed=config.data.pack)
    plan = make_plan(config, model_cfg)
    memory.check_config(config.train)
    if config.train.grad_accum_steps:
        memory.check_accumulation(config.train.grad_accum_steps, plan.global_batch_size,
                                  batch_shards, tuple(config.mesh.shape))
    loader = data_loader.train_loader(
        prepared_dir, seq_len=plan.seq_len, global_batch_size=plan.global_batch_size,
        seed=config.seed, num_workers=config.data.num_workers, pack=config.data.pack)

    # Programs compiled once per model shape (the schedule's numbers are inputs of the train
    # step, not part of it); the memory pre-flight compiles the step ahead of time and picks
    # remat / accumulation so that it fits a device (train/memory.py).
    schedule = optim.make_schedule(config.train, plan.peak_lr, plan.steps)
    settings = optim.static_settings(config.train, schedule)
    fit = fit_memory(config.train, model_cfg, mesh, settings, plan.global_batch_size)
    model_cfg = dataclasses.replace(model_cfg, remat=fit.setting.remat)
    programs = compiled_programs(model_cfg, mesh, settings, plan.global_batch_size,
                                 fit.setting.accum_steps)
    # Validation batches no larger than a micro-batch: what fits for training fits for eval.
    val_batches = data_loader.eval_batches(
        prepared_dir, "tuning", seq_len=plan.seq_len,
        batch_size=plan.global_batch_size // fit.setting.accum_steps,
        max_tokens=config.train.eval_tokens)
    if is_writer:
        os.makedirs(workdir, exist_ok=True)
        rundir.write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())

    # Model and optimizer, created directly in their shardings.
    state = programs.init(config.seed)
    batch_sharding = programs.batch_sharding
    schedule_inputs = jax.device_put(schedule.inputs(), programs.replicated)
    eval_step = programs.eval_step
    step_program = programs.compiled_train_step or programs.train_step

    def train_step(state, batch):
        return step_program(state, batch, schedule_inputs)

    # Restore: parameters, optimizer state and loader position come back together.
    # A cooldown branch starts from its source run's checkpoint (ehr_jax.train.branch) until it
    # has one of its own.
    checkpointer = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
        keep_steps=tuple(config.train.keep_steps))
    restored = checkpointer.restore_latest(checkpoint.abstract_like(state))
    if restored is None and config.train.branch_from:
        restored = branch.restore(config, schedule, checkpoint.abstract_like(state),
                                  tokens_per_step=plan.tokens_per_step,
                                  flops_per_token=plan.flops_per_token)
    meta: dict = {}
    if restored is not None:
        if restored.step > plan.steps:
            raise ConfigError(f"{checkpointer.directory} holds step {restored.step}, past "
                              f"this config's {plan.steps} steps; use a fresh --workdir")
        state, meta = restored.state, restored.meta
        loader.set_state(restored.loader_state)
    start_step = restored.step if restored is not None else 0
    logging.info("run %s: %d params (%d non-embedding), %d steps of %d tokens, peak lr %.2e, "
                 "%s attention, %s compute, starting at step %d", os.path.basename(workdir),
                 plan.n_params, plan.n_params_non_embedding, plan.steps, plan.tokens_per_step,
                 plan.peak_lr, model_cfg.attention, model_cfg.dtype, start_step)

    # Loop.
    peak_total = metrics.peak_flops(jax.devices()[0]) * jax.device_count()
    chrono = metrics.Chrono(plan.steps, plan.flops_per_token, peak_total)
    writer = metrics.MetricsWriter(workdir, enabled=is_writer, resume_step=start_step)
    profiler = StepProfiler(workdir, config.train.profile_steps, enabled=is_writer)
    loop = TrainLoop(plan, config.train, train_step, eval_step, loader, val_batches,
                     batch_sharding, checkpointer, writer, chrono, meta, profiler)
    try:
        # Steps trace under the mesh so the model's activation constraints apply.
        with jax.set_mesh(mesh):
            state = loop.run(state, start_step)
            # Final validation and loss by token type on the same fixed tuning windows.
            val = validation_losses(eval_step, state, val_batches, batch_sharding,
                                    model_cfg.vocab_size)
        writer.write(plan.steps, {"val_loss": val.mean})
    finally:
        loader.close()
        checkpointer.close()  # waits for the last async save
        writer.close()
    type_names = metrics.token_type_names(shards.read_vocab(prepared_dir))

    wall_s = meta.get("wall_s", 0.0) + time.perf_counter() - wall_start
    summary = build_summary(config, workdir, plan, schedule, model_cfg, manifest, loop, val,
                            type_names, wall_s, fit, epoch_tokens=data_loader.epoch_stats(
                                prepared_dir, "train", plan.seq_len)["tokens"])
    if is_writer:  # summary.json last: a run dir holding it is done for the sweep
        rundir.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return summary


def make_plan(config: ml_collections.ConfigDict, model_cfg: transformer.ModelConfig) -> Plan:
    """Counts and run length from the config, in the study's one FLOP convention."""
    size = model_cfg.size
    flops_per_token = sizes.flops_per_token(size, model_cfg.vocab_size, model_cfg.seq_len,
                                            n_kv_heads=model_cfg.n_kv_heads)
    total, non_embedding = sizes.n_params(size, model_cfg.vocab_size,
                                          n_kv_heads=model_cfg.n_kv_heads,
                                          tie_embeddings=model_cfg.tie_embeddings)
    batch = int(config.train.global_batch_size)
    for key in ("log_every", "checkpoint_every"):
        if int(config.train[key]) < 1:
            raise ConfigError(f"train.{key} must be >= 1; got {config.train[key]}")
    if int(config.train.eval_every) < 0:
        raise ConfigError(f"train.eval_every must be >= 0 (0: only at the end); "
                          f"got {config.train.eval_every}")
    steps = optim.num_steps(config.train, tokens_per_step=batch * model_cfg.seq_len,
                            flops_per_token=flops_per_token)
    return Plan(steps=steps, global_batch_size=batch, seq_len=model_cfg.seq_len,
                peak_lr=optim.peak_learning_rate(config.train, size.d_model),
                flops_per_token=flops_per_token, n_params=total,
                n_params_non_embedding=non_embedding, vocab_size=model_cfg.vocab_size,
                scan_layers=model_cfg.scan_layers)


@dataclasses.dataclass
class Programs:
    """The jit-compiled programs of one model shape (model config, mesh, optimizer settings).

    Every run of that shape in this process shares them, so a sweep traces and compiles its
    init, train and eval programs once per size, not once per grid point; the persistent
    compilation cache then shares them across processes too.
    """

    graphdef: tuple[nnx.GraphDef, nnx.GraphDef]
    state_sharding: Any
    batch_sharding: Any
    replicated: Any
    init: Callable  # seed -> (model, optimizer) state, initialised in its shardings
    train_step: Callable  # (state, batch, schedule_inputs) -> (state, metrics); state donated
    eval_step: Callable  # (state, batch) -> per-position masked losses
    abstract_args: tuple  # (state, batch, schedule_inputs) as sharded ShapeDtypeStructs
    compiled_train_step: Any = None  # train_step compiled ahead of time (the memory pre-flight)

    def compile_train_step(self) -> Any:
        """train_step compiled ahead of time for abstract arguments (kept: training runs it)."""
        if self.compiled_train_step is None:
            with jax.set_mesh(self.batch_sharding.mesh):
                self.compiled_train_step = self.train_step.fn.lower(*self.abstract_args).compile()
        return self.compiled_train_step


@functools.lru_cache(maxsize=16)
def compiled_programs(model_cfg: transformer.ModelConfig, mesh: jax.sharding.Mesh,
                      settings: tuple, global_batch_size: int, accum_steps: int = 1) -> Programs:
    """The Programs of a shape; settings: optim.static_settings (what shapes the step)."""
    static = dict(settings)
    tx = optim.make_optimizer(ml_collections.ConfigDict(static))
    graphdef, state_sharding, init = model_init.make_init(model_cfg, mesh, tx)
    _, abstract_state = model_init.abstract(model_cfg, mesh, tx)
    batch_sharding = parallel.batch_sharding(mesh)
    replicated = parallel.replicated(mesh)
    shape = (global_batch_size, model_cfg.seq_len)
    keys = (("tokens", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))
    if model_cfg.packed:  # the loader's packed rows (data.pack)
        keys += (("segment_ids", jnp.int32), ("positions", jnp.int32))
    abstract_batch = {key: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
                      for key, dtype in keys}
    abstract_inputs = {key: jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
                       for key in optim.Schedule(static["schedule"], 1.0, 2, 0, 0, 0.0).inputs()}
    what = (f"{model_cfg.size.name} (batch {global_batch_size} x {model_cfg.seq_len}, "
            f"{model_cfg.dtype}, {static['schedule']} schedule, {mesh.size} devices)")
    return Programs(
        graphdef, state_sharding, batch_sharding, replicated,
        _LogFirstCall(init, f"init program for {what}"),
        _LogFirstCall(make_train_step(graphdef, state_sharding, batch_sharding,
                                      static["schedule"], static["cooldown_shape"], accum_steps),
                      f"train step for {what}"),
        _LogFirstCall(make_eval_step(graphdef, state_sharding, batch_sharding),
                      f"eval step for {what}"),
        (abstract_state, abstract_batch, abstract_inputs))


def fit_memory(train: ml_collections.ConfigDict, model_cfg: transformer.ModelConfig,
               mesh: jax.sharding.Mesh, settings: tuple, global_batch_size: int) -> memory.Fit:
    """The remat / accumulation setting whose train step fits one device, its step compiled
    ahead of time and kept in compiled_programs (see ehr_jax/train/memory.py)."""
    def compile_step(setting: memory.Setting) -> Any:
        cfg = dataclasses.replace(model_cfg, remat=setting.remat)
        return compiled_programs(cfg, mesh, settings, global_batch_size,
                                 setting.accum_steps).compile_train_step()

    rows = global_batch_size // (mesh.shape["data"] * mesh.shape["fsdp"])
    fit = memory.choose(train, remat=model_cfg.remat, rows_per_shard=rows,
                        limit_bytes=memory.device_memory_bytes(train, jax.local_devices()[0]),
                        compile_step=compile_step,
                        what=f"{model_cfg.size.name} at {rows} rows x {model_cfg.seq_len} "
                             f"tokens per batch shard")
    logging.info("memory: %s%s", fit.setting.describe(), "" if fit.need_bytes is None else
                 f", {fit.need_bytes / memory.GIB:.2f} GiB per device of "
                 f"{fit.limit_bytes / memory.GIB:.2f}")
    return fit


class _LogFirstCall:
    """A jitted function whose first call (trace and compile) is logged with its duration."""

    def __init__(self, fn: Callable, what: str):
        self.fn, self.what, self.called = fn, what, False

    def __call__(self, *args):
        if self.called:
            return self.fn(*args)
        logging.info("compiling %s", self.what)
        start = time.perf_counter()
        out = jax.block_until_ready(self.fn(*args))
        self.called = True
        logging.info("compiled %s in %.1f s (with its first call; the persistent cache may have "
                     "served it)", self.what, time.perf_counter() - start)
        return out


def masked_token_losses(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                        mask_BxL: jax.Array) -> jax.Array:
    """Per-position cross-entropy (float32), zero where the mask is 0."""
    losses_BxL = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxLxV.astype(jnp.float32), targets_BxL)
    return losses_BxL * mask_BxL


def train_step_fn(graphdef: tuple[nnx.GraphDef, nnx.GraphDef], schedule_kind: str,
                  cooldown_shape: str = "linear", accum_steps: int = 1,
                  grad_sharding: Any = None) -> Callable:
    """The pure (state, batch, schedule_inputs) -> (state, metrics) of one run, not jitted:
    make_train_step jits it with shardings, ehr_jax.train.packed vmaps it over runs.

    The learning rate is computed inside from the optimizer's step and the schedule's numbers
    (optim.Schedule.inputs), so the compiled step does not depend on a run's length or peak.
    With accum_steps > 1 the global batch is cut into that many micro-batches, run one after
    another (lax.scan: activations of one micro-batch at a time) with their gradients summed
    (in `grad_sharding`, the parameters' sharding). The loss stays the token-weighted mean over
    the whole global batch (every per-token loss divided by the batch's total target count, not
    a mean of micro-batch means), so loss and update equal the single-pass step's up to float
    summation order.
    """
    def train_step(state, batch, schedule_inputs):
        params, optimizer_state = state
        n_targets = batch["mask"].sum()
        denominator = jnp.maximum(n_targets, 1.0)

        def loss_fn(params, micro):
            # Packed rows (data.pack) carry segment ids and per-segment positions.
            logits_BxLxV = nnx.merge(graphdef[0], params)(
                micro["tokens"], micro.get("segment_ids"), micro.get("positions"))
            losses_BxL = masked_token_losses(logits_BxLxV, micro["targets"], micro["mask"])
            return losses_BxL.sum() / denominator

        grad_fn = jax.value_and_grad(loss_fn)
        if accum_steps == 1:
            loss, grads = grad_fn(params, batch)
        else:
            def accumulate(carry, micro):
                return jax.tree.map(jnp.add, carry, grad_fn(params, micro)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            if grad_sharding is not None:
                zeros = jax.lax.with_sharding_constraint(zeros, grad_sharding)
            (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros),
                                            split_micro_batches(batch, accum_steps))
        model, optimizer = nnx.merge(graphdef[0], params), nnx.merge(graphdef[1], optimizer_state)
        lr = optim.learning_rate(optimizer.step[...], schedule_inputs, schedule_kind,
                                 cooldown_shape)
        optimizer.update(model, grads, learning_rate=lr)
        step_metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr,
                        "target_tokens": n_targets,
                        "real_tokens": jnp.sum(batch["tokens"] != 0)}  # [PAD] is token 0
        return (nnx.state(model), nnx.state(optimizer)), step_metrics

    return train_step


def split_micro_batches(batch: dict, accum_steps: int) -> dict:
    """[B, ...] -> [accum_steps, B / accum_steps, ...]: micro-batch k takes rows k, k + A, ...

    Strided rows keep every micro-batch spread over all batch shards like the global batch, so
    the split moves no data between devices (each device's B / shards rows split A ways).
    """
    def split(x):
        micro = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
        return parallel.constrain(micro, (None, "batch") + (None,) * (x.ndim - 1), "micro-batches")

    return {key: split(value) for key, value in batch.items()}


def make_train_step(graphdef: tuple[nnx.GraphDef, nnx.GraphDef], state_sharding: Any,
                    batch_sharding: Any, schedule_kind: str,
                    cooldown_shape: str = "linear", accum_steps: int = 1) -> Callable:
    """jit'd (state, batch, schedule_inputs) -> (state, metrics) of train_step_fn; the state
    (model, optimizer) is donated (updated in place)."""
    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    step = train_step_fn(graphdef, schedule_kind, cooldown_shape, accum_steps, state_sharding[0])
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding, replicated),
                   out_shardings=(state_sharding, replicated), donate_argnums=0)


def make_eval_step(graphdef: tuple[nnx.GraphDef, nnx.GraphDef], state_sharding: Any,
                   batch_sharding: Any) -> Callable:
    """jit'd (state, batch) -> per-position masked losses, replicated to every process."""
    def eval_step(state, batch):
        model = nnx.merge(graphdef[0], state[0])
        return masked_token_losses(model(batch["tokens"]), batch["targets"], batch["mask"])

    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    return jax.jit(eval_step, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=replicated)


def local_batch_to_global(batch: Batch, sharding: Any, global_batch_size: int) -> dict:
    """This process's rows of a batch -> global arrays sharded over the batch axes."""
    return {key: jax.make_array_from_process_local_data(
        sharding, value, (global_batch_size, *value.shape[1:])) for key, value in batch.items()}


def full_batch_to_global(batch: Batch, sharding: Any) -> dict:
    """A batch every process holds whole (eval) -> global arrays; each keeps its own rows."""
    return {key: jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
            for key, value in batch.items()}


def validation_losses(eval_step: Callable, state: Any, batches: list[Batch], sharding: Any,
                      vocab_size: int) -> metrics.ValLosses:
    """Token-weighted mean loss over the fixed batches, plus loss sums per target token id."""
    sums, counts = np.zeros(vocab_size), np.zeros(vocab_size, np.int64)
    for batch in batches:
        losses_BxL = np.asarray(jax.device_get(eval_step(state, full_batch_to_global(batch, sharding))))
        mask = batch["mask"] > 0
        targets = batch["targets"][mask]
        sums += np.bincount(targets, weights=losses_BxL[mask], minlength=vocab_size)
        counts += np.bincount(targets, minlength=vocab_size)
    total = counts.sum()
    return metrics.ValLosses(float(sums.sum() / total) if total else math.nan, sums, counts)


class TrainLoop:
    """The step loop: dispatch step t, then read step t-1's metrics (one step late)."""

    def __init__(self, plan: Plan, train_cfg: ml_collections.ConfigDict, train_step: Callable,
                 eval_step: Callable, loader: Any, val_batches: list[Batch], batch_sharding: Any,
                 checkpointer: checkpoint.Checkpointer, writer: metrics.MetricsWriter,
                 chrono: metrics.Chrono, meta: dict, profiler: StepProfiler):
        self.plan, self.cfg = plan, train_cfg
        self.profiler = profiler
        self.train_step, self.eval_step = train_step, eval_step
        self.loader, self.val_batches, self.batch_sharding = loader, val_batches, batch_sharding
        self.checkpointer, self.writer, self.chrono = checkpointer, writer, chrono
        self.keep_steps = frozenset(int(s) for s in train_cfg.keep_steps)
        window = max(1, min(int(train_cfg.log_every), plan.steps))
        self.recent_losses = collections.deque(meta.get("recent_losses", []), maxlen=window)
        self.target_tokens = int(meta.get("target_tokens", 0))
        self.real_tokens = meta.get("real_tokens")  # non-pad input tokens trained on so far
        self.prior_wall_s = float(meta.get("wall_s", 0.0))
        self.session_start = time.perf_counter()
        self.val_loss = meta.get("val_loss")

    def run(self, state: Any, start_step: int) -> Any:
        if self.real_tokens is None:  # fresh, or a checkpoint that counted padding as tokens
            self.real_tokens = start_step * self.plan.tokens_per_step
        try:
            return self._run(state, start_step)
        finally:
            self.profiler.stop()

    def _run(self, state: Any, start_step: int) -> Any:
        pending = None  # (steps done, device metrics) of the step in flight
        for step in range(start_step, self.plan.steps):
            batch = local_batch_to_global(next(self.loader), self.batch_sharding,
                                          self.plan.global_batch_size)
            self.profiler.before_step(step)
            state, step_metrics = self.train_step(state, batch)
            self.profiler.after_step(step, step_metrics)
            if pending is not None:
                self.record(*pending)
            pending = (step + 1, step_metrics)
            done = step + 1
            eval_due = bool(self.cfg.eval_every) and done % self.cfg.eval_every == 0
            save_due = (done % self.cfg.checkpoint_every == 0 or done == self.plan.steps
                        or done in self.keep_steps)
            if (eval_due and done < self.plan.steps) or save_due:
                self.record(*pending)  # also the NaN check before anything is saved
                pending = None
                if eval_due and done < self.plan.steps:
                    self.validate(state, done)
                if save_due:
                    self.save(state, done)
                self.chrono.pause()
        if pending is not None:
            self.record(*pending)
        return state

    def record(self, step: int, step_metrics: dict) -> None:
        values = {key: float(value) for key, value in jax.device_get(step_metrics).items()}
        if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
            self.checkpointer.wait()
            latest = self.checkpointer.latest_step()
            kept = (f"the last good checkpoint (step {latest}) is kept, but resuming it with "
                    f"the same settings would diverge again" if latest is not None else
                    f"no checkpoint was saved yet (the first is due at step "
                    f"{min(self.cfg.checkpoint_every, self.plan.steps)}), so nothing is lost")
            raise NonFiniteLossError(
                f"training loss {values['loss']} / gradient norm {values['grad_norm']} at step "
                f"{step} is not finite; {kept}. Lower train.lr (peak {self.plan.peak_lr:.3g}) or "
                f"raise train.warmup_frac, and rerun"
                + (" in a new --workdir." if latest is not None else
                   " (the same --workdir accepts new settings while it holds no checkpoint)."))
        self.real_tokens += int(values["real_tokens"])
        self.chrono.mark(step, self.real_tokens)
        self.recent_losses.append(values["loss"])
        self.target_tokens += int(values["target_tokens"])
        if step % self.cfg.log_every == 0 or step == self.plan.steps:
            rates = self.chrono.window_rates()
            self.writer.write(step, {
                "loss": values["loss"], "lr": values["lr"], "grad_norm": values["grad_norm"],
                "tokens_per_s": rates["tokens_per_s"], "mfu": rates["mfu"],
                "tokens_seen": self.real_tokens,
                "flops_seen": self.real_tokens * self.plan.flops_per_token})
            logging.info(metrics.format_progress(step, self.plan.steps, values["loss"],
                                                 self.chrono.rates(), self.chrono.eta_s(step)))

    def validate(self, state: Any, step: int) -> None:
        self.val_loss = validation_losses(self.eval_step, state, self.val_batches,
                                          self.batch_sharding, self.plan.vocab_size).mean
        self.writer.write(step, {"val_loss": self.val_loss})
        logging.info("step %d: validation loss %.4f", step, self.val_loss)

    def save(self, state: Any, step: int) -> None:
        wall_s = self.prior_wall_s + time.perf_counter() - self.session_start
        self.checkpointer.save(step, state, self.loader.get_state(), {
            "recent_losses": list(self.recent_losses), "target_tokens": self.target_tokens,
            "real_tokens": self.real_tokens, "wall_s": wall_s, "val_loss": self.val_loss,
            "scan_layers": self.plan.scan_layers})


def build_summary(config: ml_collections.ConfigDict, workdir: str, plan: Plan,
                  schedule: optim.Schedule, model_cfg: transformer.ModelConfig, manifest: dict,
                  loop: TrainLoop, val: metrics.ValLosses, type_names: np.ndarray, wall_s: float,
                  fit: memory.Fit, epoch_tokens: int) -> dict:
    """summary.json: the fields ARCHITECTURE.md lists, nothing that identifies a patient.

    A cooldown branch's wall_s includes its source run's time up to the branch point (what an
    independent run would have taken); branched_from_step says where it started. Tokens,
    FLOPs, tokens/s, MFU and epochs count real tokens (padding excluded); the positions computed,
    padding included, are padded_tokens_seen (steps x batch x seq_len).
    """
    branch_from = config.train.branch_from
    tokens = loop.real_tokens
    rates = loop.chrono.rates()
    provenance = manifest.get("provenance", {})
    devices = jax.devices()
    summary = {
        "run_name": os.path.basename(workdir),
        "n_params": plan.n_params,
        "n_params_non_embedding": plan.n_params_non_embedding,
        "n_layers": model_cfg.size.n_layers,
        "d_model": model_cfg.size.d_model,
        "model_size": model_cfg.size.name,
        "vocab_size": model_cfg.vocab_size,
        "vocab_rows": model_cfg.vocab_rows,  # embedding rows with model.vocab_multiple padding
        "attention": model_cfg.attention,  # the implementation config.model.attention resolved to
        "tokens_seen": tokens,  # real (non-pad) input tokens: the D of the scaling fits
        "padded_tokens_seen": plan.steps * plan.tokens_per_step,
        "target_tokens_seen": loop.target_tokens,
        "flops": tokens * plan.flops_per_token,
        "flops_per_token": plan.flops_per_token,
        "flops_6nd": sizes.flops_6nd(plan.n_params, tokens),
        "flop_convention": sizes.FLOP_CONVENTION,
        # mean over the last log_every steps: one step's loss is too noisy for a fit
        "final_train_loss": float(np.mean(loop.recent_losses)) if loop.recent_losses else None,
        "val_loss": val.mean,
        "loss_by_token_type": metrics.loss_by_token_type(val, type_names),
        "epochs_over_data": tokens / max(epoch_tokens, 1),
        "unique_tokens": manifest["splits"]["train"]["num_tokens"],
        "seed": int(config.seed),
        "steps": plan.steps,
        "global_batch_size": plan.global_batch_size,
        "seq_len": plan.seq_len,
        "peak_lr": plan.peak_lr,
        **schedule.describe(),
        "branched_from": os.path.basename(os.path.normpath(branch_from)) if branch_from else None,
        "branched_from_step": int(config.train.branch_step) if branch_from else None,
        "wall_s": wall_s,
        "tokens_per_s": rates["tokens_per_s"],
        "mfu": rates["mfu"],
        "device_kind": devices[0].device_kind,
        "memory": fit.summary(),
        "num_devices": len(devices),
        "config": config.to_dict(),
        "etl_name": provenance.get("etl_name"),
        "etl_version": provenance.get("etl_version"),
        "meds_version": provenance.get("meds_version"),
        "tokenizer_hash": manifest.get("tokenizer_hash"),
    }
    if "grid_point" in config:
        summary["grid_point"] = config.grid_point.to_dict() if hasattr(
            config.grid_point, "to_dict") else config.grid_point
    return summary
