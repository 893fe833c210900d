"""Zero-shot risk from the generative model itself: sampled futures and next-token odds.

Rollouts (ETHOS): each case's history is prefilled once into a KV cache, copied to N rollouts,
and extended by a fixed-shape `jax.lax.while_loop` of decode steps (one compile per shape, not
per step; the loop exits once every rollout has stopped). With a window (the runner passes the
training length) the cache is a ring buffer of that many slots, so rollouts longer than the
training window still attend only to spans the model was trained on. A rollout stops at an
outcome token, at a stopping token (a discharge, a death; tokens of the same timestamp that
follow may still carry the outcome), when its summed time-interval tokens pass the task's
horizon, or at its token cap. The cap follows from the time the rollout may need (the task's
horizon, or a long hospital stay) and the data's tokens per day (`token_caps`); a capped
rollout is censored: it says nothing about the outcome, so it never counts as a negative.
The risk is the outcome share among the rollouts that resolved.

Next-token (cheap, deterministic): from the distribution over the token right after the
history, P(outcome) / (P(outcome) + P(stopping token)): the chance that, if the stay's next
decisive token came now, it would be the outcome. It ignores the horizon and the time until
that token, so it ranks cases but is not a calibrated probability. Only for tasks with both
kinds of token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from ehr_jax import parallel
from ehr_jax.data import tokenize
from ehr_jax.evaluation.tasks import DIED_SUFFIXES, DISCHARGE, OutcomeRule
from ehr_jax.model import transformer

GRACE_TOKENS = 8  # after a stopping token, tokens of the same timestamp that may still hold the outcome
GROUP_BATCHES = 8  # cases prefilled into one pool of case caches: 8 x cases_per_batch
REFILL_FRACTION = 1 / 8  # the decode loop returns for a refill once this share of slots is free
MIN_TOKEN_CAP = 16  # a budget never below this (a horizon minutes away still needs its tokens)
# Stop reasons per rollout (CAPPED: censored at its token cap).
RUNNING, OUTCOME, STOPPED, HORIZON, CAPPED = 0, 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class TokenRule:
    """An OutcomeRule resolved against a vocabulary: one flag or duration per token id."""

    positive_V: np.ndarray  # bool: generating it means the outcome happened
    negative_V: np.ndarray  # bool: generating it ends the stay without the outcome
    seconds_V: np.ndarray  # float32: duration of interval tokens, 0 for every other token
    horizon_days: float | None
    horizon_anchor: str
    horizon_outcome: bool


def interval_seconds(vocab: list[str]) -> np.ndarray:
    """Durations of the tokenizer's interval tokens (their lower edges, TIME//6mo = 180 days) in
    seconds; 0 for every other token."""
    edge_s = dict(zip(tokenize.INTERVAL_TOKENS, tokenize.INTERVAL_EDGES_S))
    return np.array([edge_s.get(token, 0) for token in vocab], np.float32)


def resolve_rule(rule: OutcomeRule, vocab: list[str]) -> TokenRule:
    """Token ids whose strings start with the rule's prefixes; a DIED discharge counts as death."""
    def matches(prefixes: tuple[str, ...]) -> np.ndarray:
        return np.array([any(t.startswith(p) for p in prefixes) for t in vocab], bool)

    positive = matches(rule.positive)
    if any(p.startswith("MEDS_DEATH") for p in rule.positive):
        positive |= np.array([t.startswith(DISCHARGE) and any(f"//{s}" in t.upper() for s in DIED_SUFFIXES)
                              for t in vocab], bool)
    negative = matches(rule.negative) & ~positive
    return TokenRule(positive, negative, interval_seconds(vocab), rule.horizon_days,
                     rule.horizon_anchor, rule.horizon_outcome)


def token_caps(budget_days_C: np.ndarray, tokens_per_day: float, max_new_tokens: int) -> np.ndarray:
    """Per-case rollout token caps: the days a rollout may need times the data's tokens per
    day (ehr_jax.data.prepare.DayDensity), within [MIN_TOKEN_CAP, max_new_tokens]."""
    wanted = np.ceil(np.asarray(budget_days_C, np.float64) * max(float(tokens_per_day), 0.0))
    wanted = np.nan_to_num(wanted, nan=max_new_tokens, posinf=max_new_tokens)
    return np.clip(wanted, min(MIN_TOKEN_CAP, max_new_tokens), max_new_tokens).astype(np.int32)


@dataclasses.dataclass
class RolloutResult:
    """Per rollout (case-major, num_rollouts per case): outcome, why it stopped, tokens made."""

    outcome_CxR: np.ndarray
    reason_CxR: np.ndarray
    new_tokens_CxR: np.ndarray
    tokens_CxRxT: np.ndarray | None = None  # generated tokens (record_tokens), 0 after the last

    @property
    def capped_share(self) -> float:
        """Fraction of rollouts censored at their token cap."""
        return float((self.reason_CxR == CAPPED).mean()) if self.reason_CxR.size else 0.0

    @property
    def probability_C(self) -> np.ndarray:
        """ETHOS with censoring: the outcome share among a case's resolved rollouts (capped
        ones are censored, never negatives); a case whose rollouts were all capped gets the
        pooled resolved rate of all cases (it carries no information of its own)."""
        return self.resolved_probability_C(prior_weight=0.0)

    def resolved_probability_C(self, prior_weight: float = 1.0) -> np.ndarray:
        """Outcome share among rollouts that resolved before their token cap, shrunk towards the
        pooled resolved rate of all cases with `prior_weight` pseudo-rollouts.

        A capped rollout is censored, not negative: counting it as 'no outcome' biases cases
        whose outcome lies far ahead (a death days into a stay) towards 0. The shrinkage steadies
        cases with few resolved rollouts. Uses no labels.
        """
        resolved = (self.reason_CxR != RUNNING) & (self.reason_CxR != CAPPED)
        n_resolved = resolved.sum(axis=1)
        n_outcome = (self.outcome_CxR & resolved).sum(axis=1)
        pooled = n_outcome.sum() / max(n_resolved.sum(), 1)
        denominator = n_resolved + prior_weight
        with np.errstate(invalid="ignore", divide="ignore"):
            share = (n_outcome + prior_weight * pooled) / denominator
        return np.where(denominator > 0, share, pooled)


class RolloutSampler:
    """Rollouts over a fixed pool of decode slots that are refilled as rollouts finish.

    Cases are prefilled `cases_per_batch` at a time into a pool of per-case KV caches (a group
    of GROUP_BATCHES such chunks); `cases_per_batch * num_rollouts` slots then decode in a
    jitted while_loop that returns to the host whenever a REFILL_FRACTION of the slots has
    finished, and the next rollouts of the group take their places (a copy of their case's
    cache, rotated so the ring buffer keeps its oldest token next in line). Without the
    refill, every batch would decode until its longest rollout hit the cap while most slots
    sat finished. Shapes are fixed, so each jitted function compiles once; `traces` counts the
    decode loop's traces (tests check it is one).
    """

    def __init__(self, model: nnx.Module, *, prompt_len: int, max_new_tokens: int,
                 num_rollouts: int, cases_per_batch: int, temperature: float = 1.0,
                 window: int | None = None, record_tokens: bool = False,
                 mesh: jax.sharding.Mesh | None = None):
        """window: attend to at most this many most recent tokens (the training length), so a
        long rollout never uses attention spans the model was not trained on; the cache then
        holds `window` slots used as a ring buffer, so a step costs the same however long the
        rollout (RoPE depends only on relative positions: nothing is re-encoded). Without a
        window the ring holds prompt_len + max_new_tokens, so nothing is ever dropped.
        record_tokens: also return every rollout's generated tokens (RolloutResult.tokens_CxRxT).
        mesh: split the slots over its data axes (the model keeps its own, training, sharding);
        the slot count must divide evenly. Results equal those on one device."""
        if window is not None and prompt_len > window:
            raise ValueError(f"prompt_len {prompt_len} is longer than the attention window {window}")
        self.graphdef, self.state = nnx.split(model)
        self.capacity = window or prompt_len + max_new_tokens
        self.prompt_len, self.max_new_tokens = prompt_len, max_new_tokens
        self.num_rollouts, self.cases_per_batch = num_rollouts, cases_per_batch
        self.num_slots = cases_per_batch * num_rollouts
        self.mesh = mesh
        self._place = batch_placer(mesh, cases_per_batch)  # prefill chunks split over the devices too
        if mesh is not None and self.num_slots % slot_ways(mesh):
            raise ValueError(f"{self.num_slots} rollout slots do not split over {slot_ways(mesh)} devices")
        self.temperature = temperature
        self.record_tokens = record_tokens
        self.traces = 0
        self.timings: dict[str, float] = {}  # seconds per phase over every run (see _timed)
        self._prefill = jax.jit(self._prefill_chunk)
        self._refill = jax.jit(self._refill_slots)
        self._init = None  # jitted _idle_state, made on first use (its shardings need the pool's shapes)
        self._decode = jax.jit(self._decode_until, static_argnames=("horizon_outcome",))

    def run(self, prompts_CxP: np.ndarray, valid_CxP: np.ndarray, horizon_s_C: np.ndarray,
            rule: TokenRule, seed: int = 0, cap_C: np.ndarray | None = None) -> RolloutResult:
        """Rollouts for any number of cases, in groups of cases sharing the slots.

        cap_C: each case's token cap (at most max_new_tokens, the default); a rollout reaching
        it is censored (reason CAPPED). Caps vary per case without a recompile.
        """
        n_cases, r = len(prompts_CxP), self.num_rollouts
        if cap_C is None:
            cap_C = np.full(n_cases, self.max_new_tokens, np.int32)
        cap_C = np.minimum(np.asarray(cap_C, np.int32), self.max_new_tokens)
        tables = (rule.positive_V, rule.negative_V, rule.seconds_V)
        shapes = [(bool, ()), (np.int32, ()), (np.int32, ())]
        shapes += [(np.int32, (self.max_new_tokens,))] if self.record_tokens else []
        outputs = [np.zeros((n_cases, r) + shape, dtype) for dtype, shape in shapes]
        group = self.cases_per_batch * GROUP_BATCHES
        start = time.perf_counter()
        for g, first in enumerate(range(0, n_cases, group)):
            cases = np.arange(first, min(first + group, n_cases))
            with self._timed("prefill_s"):
                pool = jax.block_until_ready(self._prefill_pool(prompts_CxP[cases], valid_CxP[cases]))
            rollout = self._run_group(pool, horizon_s_C[cases], cap_C[cases], tables, (seed, g),
                                      rule.horizon_outcome)
            for out, x in zip(outputs, rollout):
                out[cases] = x.reshape((len(cases), r) + x.shape[1:])
            logging.info("rollouts: %d of %d cases done, %d tokens generated in %.0fs", cases[-1] + 1, n_cases,
                         int(outputs[2][:cases[-1] + 1].sum()), time.perf_counter() - start)
        return RolloutResult(*outputs)

    def _prefill_pool(self, prompts_GxP: np.ndarray, valid_GxP: np.ndarray) -> dict:
        """Last logits and KV cache of every case of a group, prefilled cases_per_batch at a time."""
        n, c = len(prompts_GxP), self.cases_per_batch
        chunks = []
        for start in range(0, n, c):
            rows = np.arange(start, start + c) % n  # padding rows repeat real cases
            chunks.append(self._prefill(self.state, self._place(prompts_GxP[rows]), self._place(valid_GxP[rows])))
        def join(path, *xs):
            axis = _slot_axis(path, xs[0])
            return jax.lax.slice_in_dim(jnp.concatenate(xs, axis=axis), 0, n, axis=axis)

        return jax.tree_util.tree_map_with_path(join, *chunks)

    def _prefill_chunk(self, state, prompts_CxP, valid_CxP) -> dict:
        model = nnx.merge(self.graphdef, state)
        logits_CxV, cache = model.prefill(prompts_CxP, valid_CxP, max_len=self.capacity)
        return {"logits": logits_CxV, "k": cache.k, "v": cache.v, "valid": cache.valid_BxS, "pos": cache.pos_B}

    def _run_group(self, pool: dict, horizon_G: np.ndarray, cap_G: np.ndarray, tables, seed_group: tuple,
                   horizon_outcome: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every rollout of a group's cases through the slots; per rollout (case-major) arrays."""
        r, n_slots = self.num_rollouts, self.num_slots
        total = len(horizon_G) * r
        names = ("outcome", "reason", "new_tokens") + (("tokens",) if self.record_tokens else ())
        out = [np.zeros(total, bool), np.zeros(total, np.int32), np.zeros(total, np.int32)]
        if self.record_tokens:
            out.append(np.zeros((total, self.max_new_tokens), np.int32))
        slot_rollout = np.full(n_slots, -1)  # rollout each slot decodes, -1: idle
        carry = self._empty_slots(pool, *seed_group)
        queued = 0
        refill_at = max(1, int(n_slots * REFILL_FRACTION))
        while True:
            idle = np.flatnonzero(slot_rollout < 0)[: total - queued]
            if idle.size:
                rollouts = np.arange(queued, queued + idle.size)
                queued += idle.size
                slot_rollout[idle] = rollouts
                assign = np.full(n_slots, -1, np.int32)
                assign[idle] = rollouts // r
                with self._timed("refill_s"):
                    carry = jax.block_until_ready(
                        self._refill(carry, pool, assign, np.asarray(horizon_G, np.float32), cap_G))
            if (slot_rollout < 0).all():
                return tuple(out)
            min_free = refill_at if queued < total else n_slots
            with self._timed("decode_s"):
                carry = jax.block_until_ready(
                    self._decode(self.state, carry, np.int32(min_free), *tables, horizon_outcome=horizon_outcome))
            with self._timed("host_s"):
                reason = to_host(carry["reason"])
                done = np.flatnonzero((slot_rollout >= 0) & (reason != RUNNING))
                for i, name in enumerate(names):
                    out[i][slot_rollout[done]] = to_host(carry[name])[done]
                slot_rollout[done] = -1

    @contextlib.contextmanager
    def _timed(self, phase: str):
        """Adds the block's wall time to timings[phase] (prefill, refill, decode loop, host)."""
        start = time.perf_counter()
        yield
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    def _empty_slots(self, pool: dict, seed: int, group: int) -> dict:
        """Decode state with every slot idle (reason STOPPED), the ring's write head after the
        prompt; built by one jitted program, on the mesh with the slots split over its data axes."""
        if self._init is None:
            shardings = None
            if self.mesh is not None:
                whole = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
                shapes = jax.eval_shape(self._idle_state, pool, 0, 0)
                def spec(path, x):
                    axis = _slot_axis(path, x)
                    if not x.ndim or x.shape[axis] != self.num_slots:
                        return whole
                    return jax.sharding.NamedSharding(
                        self.mesh, jax.sharding.PartitionSpec(*(None,) * axis, parallel.BATCH_AXES))

                shardings = jax.tree_util.tree_map_with_path(spec, shapes)
            self._init = jax.jit(self._idle_state, out_shardings=shardings)
        return self._init(pool, np.int32(seed), np.int32(group))

    def _idle_state(self, pool: dict, seed, group) -> dict:
        n = self.num_slots
        zeros_b, zeros_i = jnp.zeros(n, bool), jnp.zeros(n, jnp.int32)
        def idle(path, x):
            axis = _slot_axis(path, x)
            return jnp.zeros(x.shape[:axis] + (n,) + x.shape[axis + 1:], x.dtype)

        slots = jax.tree_util.tree_map_with_path(idle, pool)
        cache = transformer.KVCache(k=slots["k"], v=slots["v"], valid_BxS=slots["valid"], pos_B=slots["pos"],
                                    index=jnp.int32(self.prompt_len))
        carry = dict(logits=slots["logits"], cache=cache, key=jax.random.fold_in(jax.random.key(seed), group),
                     reason=jnp.full(n, STOPPED, jnp.int32), outcome=zeros_b, grace=zeros_i, new_tokens=zeros_i,
                     elapsed=jnp.zeros(n, jnp.float32), horizon=jnp.zeros(n, jnp.float32), cap=zeros_i)
        if self.record_tokens:
            carry["tokens"] = jnp.zeros((n, self.max_new_tokens), jnp.int32)
        return carry

    def _refill_slots(self, carry: dict, pool: dict, case_N, horizon_G, cap_G) -> dict:
        """Slots with case_N >= 0 start a rollout of that case: its prefilled cache, rotated so
        its prompt ends right before the ring's write head, and fresh stop-rule state."""
        fill = case_N >= 0
        case = jnp.maximum(case_N, 0)
        cache = carry["cache"]
        shift = (cache.index - self.prompt_len) % self.capacity

        def put(pool_x, slot_x, ring: bool, axis: int = 0):
            x = jnp.take(pool_x, case, axis=axis)
            x = jnp.roll(x, shift, axis=axis + 1) if ring else x
            return jnp.where(fill.reshape((1,) * axis + (-1,) + (1,) * (x.ndim - axis - 1)), x, slot_x)

        def put_kv(pool_x, slot_x):  # [..., slots, S, KV, K]: a layer axis first when scanned
            return put(pool_x, slot_x, True, axis=slot_x.ndim - 4)

        cache = cache._replace(k=jax.tree.map(put_kv, pool["k"], cache.k),
                               v=jax.tree.map(put_kv, pool["v"], cache.v),
                               valid_BxS=put(pool["valid"], cache.valid_BxS, True),
                               pos_B=put(pool["pos"], cache.pos_B, False))
        if "tokens" in carry:
            carry = dict(carry, tokens=jnp.where(fill[:, None], 0, carry["tokens"]))
        return dict(carry, cache=cache, logits=put(pool["logits"], carry["logits"], False),
                    reason=jnp.where(fill, RUNNING, carry["reason"]), outcome=carry["outcome"] & ~fill,
                    grace=jnp.where(fill, 0, carry["grace"]), new_tokens=jnp.where(fill, 0, carry["new_tokens"]),
                    elapsed=jnp.where(fill, 0.0, carry["elapsed"]),
                    horizon=jnp.where(fill, horizon_G[case], carry["horizon"]),
                    cap=jnp.where(fill, cap_G[case], carry["cap"]))

    def _decode_until(self, state, carry: dict, min_free, positive_V, negative_V, seconds_V, *,
                      horizon_outcome: bool) -> dict:
        """Decode steps until no slot runs or at least min_free slots are not running."""
        self.traces += 1  # runs at trace time only

        def step(c):
            # A fresh copy of the model inside the loop body: NNX transforms in it (the layer scan
            # of model.scan_layers) refuse variables made at the enclosing jit's trace level.
            model = nnx.merge(self.graphdef, state, copy=True)
            return _decode_step(model, positive_V, negative_V, seconds_V, horizon_outcome, self.temperature,
                                self.capacity, c)

        def more(c):
            running = c["reason"] == RUNNING
            return jnp.any(running) & (jnp.sum(~running) < min_free)

        return jax.lax.while_loop(more, step, carry)


def _decode_step(model, positive_V, negative_V, seconds_V, horizon_outcome: bool, temperature: float,
                 capacity: int, carry: dict) -> dict:
    """Sample one token per slot, apply the stop rules, feed the token back through the cache."""
    key, sample_key = jax.random.split(carry["key"])
    token_N = sample_tokens(sample_key, carry["logits"] / temperature)
    running = carry["reason"] == RUNNING
    closing = running & (carry["grace"] > 0)
    is_positive, is_negative = positive_V[token_N], negative_V[token_N]
    is_time = seconds_V[token_N] > 0
    elapsed = carry["elapsed"] + jnp.where(running, seconds_V[token_N], 0.0)
    hit_outcome = running & is_positive
    past_horizon = running & ~closing & ~hit_outcome & (elapsed > carry["horizon"])
    # A stopping token opens a grace window over the rest of its timestamp (e.g. MEDS_DEATH
    # written after HOSPITAL_DISCHARGE at the same time); a time token or the cap closes it.
    grace = jnp.where(running & ~closing & is_negative & ~past_horizon, 1,
                      jnp.where(closing, carry["grace"] + 1, carry["grace"]))
    closed = closing & ~hit_outcome & (is_time | (grace > GRACE_TOKENS))
    new_tokens = carry["new_tokens"] + running.astype(jnp.int32)
    capped = running & (new_tokens >= carry["cap"])
    reason = jnp.select([hit_outcome, past_horizon, closed, capped], [OUTCOME, HORIZON, STOPPED, CAPPED],
                        carry["reason"])
    outcome = carry["outcome"] | hit_outcome | (past_horizon & horizon_outcome)
    logits, cache = model.decode_step(token_N, _slide(carry["cache"], capacity))
    out = dict(carry, logits=logits, cache=cache, key=key, reason=reason, outcome=outcome, grace=grace,
               elapsed=elapsed, new_tokens=new_tokens)
    if "tokens" in carry:  # record_tokens: the token at its rollout position (others dropped)
        column = jnp.where(running, carry["new_tokens"], carry["tokens"].shape[1])
        out["tokens"] = carry["tokens"].at[jnp.arange(token_N.shape[0]), column].set(token_N, mode="drop")
    return out


def slot_ways(mesh: jax.sharding.Mesh) -> int:
    """Devices the rollout slots are split over: the mesh's batch (data x fsdp) axes."""
    return int(np.prod([mesh.shape[axis] for axis in parallel.BATCH_AXES]))


def _slot_axis(path, x) -> int:
    """The case/slot axis of a decode-state leaf: K/V caches are [..., B, S, KV, K] (a leading
    layer axis when the model scans its layers, model.scan_layers); every other leaf is
    batch-major."""
    names = {getattr(key, "key", getattr(key, "name", None)) for key in path}
    return x.ndim - 4 if names & {"k", "v"} else 0


def batch_placer(mesh: jax.sharding.Mesh | None, batch: int):
    """A function putting a host batch [batch, ...] on the mesh split over its data axes (on the
    default device without a mesh, or when the batch does not split evenly)."""
    if mesh is None or batch % slot_ways(mesh):
        return jnp.asarray
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.BATCH_AXES))
    if jax.process_count() == 1:
        return lambda x: jax.device_put(x, sharding)
    return lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly sharded, possibly multi-process) array as one numpy array on every host."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _slide(cache, window: int | None):
    """Ring buffer: with a cache of `window` slots, the next token overwrites the oldest one.

    Attention reads every valid slot regardless of order and RoPE positions come from pos_B,
    so the model sees exactly the last `window` tokens at their true relative positions.
    """
    if window is None:
        return cache
    return cache._replace(index=cache.index % window)


def sample_tokens(key: jax.Array, logits_NxV: jax.Array) -> jax.Array:
    """One draw per row by inverting the CDF: one uniform per row instead of the V Gumbel
    draws of jax.random.categorical (random bits dominated the CPU decode step)."""
    cdf_NxV = jnp.cumsum(jax.nn.softmax(logits_NxV.astype(jnp.float32), axis=-1), axis=-1)
    u_Nx1 = jax.random.uniform(key, (logits_NxV.shape[0], 1)) * cdf_NxV[:, -1:]
    token_N = jnp.sum(cdf_NxV <= u_Nx1, axis=-1, dtype=jnp.int32)
    return jnp.minimum(token_N, logits_NxV.shape[-1] - 1)


class NextTokenScorer:
    """P(outcome) / (P(outcome) + P(stop)) for the token after the history; jitted once per shape."""

    def __init__(self, model: nnx.Module, *, cases_per_batch: int, mesh: jax.sharding.Mesh | None = None):
        """mesh: split each batch of prompts over its data axes (cases_per_batch must divide)."""
        self.graphdef, self.state = nnx.split(model)
        self.cases_per_batch = cases_per_batch
        self.place = batch_placer(mesh, cases_per_batch)
        self._score = jax.jit(self._score_batch)

    def run(self, prompts_CxP: np.ndarray, valid_CxP: np.ndarray, rule: TokenRule) -> np.ndarray:
        n_cases, c = len(prompts_CxP), self.cases_per_batch
        scores = []
        for start in range(0, n_cases, c):
            rows = np.arange(start, start + c) % n_cases
            out = self._score(self.state, self.place(prompts_CxP[rows]), self.place(valid_CxP[rows]),
                              jnp.asarray(rule.positive_V), jnp.asarray(rule.negative_V))
            scores.append(to_host(out)[: min(c, n_cases - start)])
        return np.concatenate(scores)

    def _score_batch(self, state, prompts_CxP, valid_CxP, positive_V, negative_V):
        model = nnx.merge(self.graphdef, state)
        logits_CxV, _ = model.prefill(prompts_CxP, valid_CxP, max_len=prompts_CxP.shape[1])
        probs_CxV = jax.nn.softmax(logits_CxV, axis=-1)
        p_outcome = jnp.sum(jnp.where(positive_V, probs_CxV, 0.0), axis=-1)
        p_stop = jnp.sum(jnp.where(negative_V, probs_CxV, 0.0), axis=-1)
        return p_outcome / jnp.maximum(p_outcome + p_stop, 1e-30)


def supports_next_token(rule: TokenRule) -> bool:
    return bool(rule.positive_V.any() and rule.negative_V.any())


def left_pad(prompts: list[np.ndarray], prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack prompts into [C, P] with padding on the left (the last column is always real)."""
    tokens = np.zeros((len(prompts), prompt_len), np.int32)
    valid = np.zeros((len(prompts), prompt_len), bool)
    for i, prompt in enumerate(prompts):
        n = len(prompt)
        if n:
            tokens[i, prompt_len - n:] = prompt
            valid[i, prompt_len - n:] = True
    return tokens, valid
