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

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ehr_jax.data import tokenize
from ehr_jax.evaluation.tasks import DIED_SUFFIXES, DISCHARGE, OutcomeRule

GRACE_TOKENS = 8  # after a stopping token, tokens of the same timestamp that may still hold the outcome
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
    """Jitted prefill + decode loop for one (cases per batch, prompt length) shape.

    `traces` counts how often the sampler was traced (tests check it is compiled once).
    """

    def __init__(self, model: nnx.Module, *, prompt_len: int, max_new_tokens: int,
                 num_rollouts: int, cases_per_batch: int, temperature: float = 1.0,
                 window: int | None = None):
        """window: attend to at most this many most recent tokens (the training length), so a
        long rollout never uses attention spans the model was not trained on; the cache then
        holds `window` slots used as a ring buffer, so a step costs the same however long the
        rollout (RoPE depends only on relative positions: nothing is re-encoded)."""
        if window is not None and prompt_len > window:
            raise ValueError(f"prompt_len {prompt_len} is longer than the attention window {window}")
        self.graphdef, self.state = nnx.split(model)
        self.window = window
        self.prompt_len, self.max_new_tokens = prompt_len, max_new_tokens
        self.num_rollouts, self.cases_per_batch = num_rollouts, cases_per_batch
        self.temperature = temperature
        self.traces = 0
        self._sample = jax.jit(self._sample_batch, static_argnames=("horizon_outcome",))

    def run(self, prompts_CxP: np.ndarray, valid_CxP: np.ndarray, horizon_s_C: np.ndarray,
            rule: TokenRule, seed: int = 0, cap_C: np.ndarray | None = None) -> RolloutResult:
        """Rollouts for any number of cases, in fixed-size batches (the last one padded).

        cap_C: each case's token cap (at most max_new_tokens, the default); a rollout reaching
        it is censored (reason CAPPED). Caps vary per case without a recompile.
        """
        n_cases, c = len(prompts_CxP), self.cases_per_batch
        if cap_C is None:
            cap_C = np.full(n_cases, self.max_new_tokens, np.int32)
        cap_C = np.minimum(np.asarray(cap_C, np.int32), self.max_new_tokens)
        tables = (jnp.asarray(rule.positive_V), jnp.asarray(rule.negative_V), jnp.asarray(rule.seconds_V))
        outputs = []
        for batch, start in enumerate(range(0, n_cases, c)):
            rows = np.arange(start, start + c) % n_cases  # padding rows repeat real cases
            key = jax.random.fold_in(jax.random.key(seed), batch)
            out = self._sample(self.state, jnp.asarray(prompts_CxP[rows]), jnp.asarray(valid_CxP[rows]),
                               jnp.asarray(horizon_s_C[rows], jnp.float32), jnp.asarray(cap_C[rows]),
                               *tables, key, horizon_outcome=rule.horizon_outcome)
            outputs.append([np.asarray(x)[: min(c, n_cases - start)] for x in out])
        outcome, reason, new_tokens = (np.concatenate(parts) for parts in zip(*outputs))
        return RolloutResult(outcome, reason, new_tokens)

    def _sample_batch(self, state, prompts_CxP, valid_CxP, horizon_C, cap_C, positive_V, negative_V,
                      seconds_V, key, *, horizon_outcome: bool):
        self.traces += 1  # runs at trace time only
        model = nnx.merge(self.graphdef, state)
        r = self.num_rollouts
        capacity = self.window or self.prompt_len + self.max_new_tokens
        logits_CxV, cache = model.prefill(prompts_CxP, valid_CxP, max_len=capacity)
        # Prefill once per case, then give each of its r rollouts a copy of the cache.
        repeat = functools.partial(jnp.repeat, repeats=r, axis=0)
        cache = cache.repeat(r)
        n = prompts_CxP.shape[0] * r
        horizon_N = repeat(horizon_C)
        zeros_b, zeros_i = jnp.zeros(n, bool), jnp.zeros(n, jnp.int32)
        carry = dict(step=jnp.int32(0), logits=repeat(logits_CxV), cache=cache, key=key,
                     reason=zeros_i, outcome=zeros_b, grace=zeros_i, new_tokens=zeros_i,
                     elapsed=jnp.zeros(n, jnp.float32))
        step = functools.partial(_decode_step, model, positive_V, negative_V, seconds_V, horizon_N,
                                 repeat(cap_C), horizon_outcome, self.temperature, self.window)
        carry = jax.lax.while_loop(
            lambda c: (c["step"] < self.max_new_tokens) & jnp.any(c["reason"] == RUNNING), step, carry)
        shape = (prompts_CxP.shape[0], r)
        reason = jnp.where(carry["reason"] == RUNNING, CAPPED, carry["reason"])
        return (carry["outcome"].reshape(shape), reason.reshape(shape),
                carry["new_tokens"].reshape(shape))


def _decode_step(model, positive_V, negative_V, seconds_V, horizon_N, cap_N, horizon_outcome: bool,
                 temperature: float, window: int | None, carry: dict) -> dict:
    """Sample one token per rollout, apply the stop rules, feed the token back through the cache."""
    key, sample_key = jax.random.split(carry["key"])
    token_N = sample_tokens(sample_key, carry["logits"] / temperature)
    running = carry["reason"] == RUNNING
    closing = running & (carry["grace"] > 0)
    is_positive, is_negative = positive_V[token_N], negative_V[token_N]
    is_time = seconds_V[token_N] > 0
    elapsed = carry["elapsed"] + jnp.where(running, seconds_V[token_N], 0.0)
    hit_outcome = running & is_positive
    past_horizon = running & ~closing & ~hit_outcome & (elapsed > horizon_N)
    # A stopping token opens a grace window over the rest of its timestamp (e.g. MEDS_DEATH
    # written after HOSPITAL_DISCHARGE at the same time); a time token or the cap closes it.
    grace = jnp.where(running & ~closing & is_negative & ~past_horizon, 1,
                      jnp.where(closing, carry["grace"] + 1, carry["grace"]))
    closed = closing & ~hit_outcome & (is_time | (grace > GRACE_TOKENS))
    new_tokens = carry["new_tokens"] + running.astype(jnp.int32)
    capped = running & (new_tokens >= cap_N)
    reason = jnp.select([hit_outcome, past_horizon, closed, capped], [OUTCOME, HORIZON, STOPPED, CAPPED],
                        carry["reason"])
    outcome = carry["outcome"] | hit_outcome | (past_horizon & horizon_outcome)
    logits, cache = model.decode_step(token_N, _slide(carry["cache"], window))
    return dict(step=carry["step"] + 1, logits=logits, cache=cache, key=key, reason=reason,
                outcome=outcome, grace=grace, elapsed=elapsed, new_tokens=new_tokens)


def _slide(cache, window: int | None):
    """Ring buffer: with a cache of `window` slots, the next token overwrites the oldest one.

    Attention reads every valid slot regardless of order and RoPE positions come from pos_B,
    so the model sees exactly the last `window` tokens at their true relative positions.
    """
    if window is None:
        return cache
    return cache._replace(index=cache.index % cache.valid_BxS.shape[1])


def sample_tokens(key: jax.Array, logits_NxV: jax.Array) -> jax.Array:
    """One draw per row by inverting the CDF: one uniform per row instead of the V Gumbel
    draws of jax.random.categorical (random bits dominated the CPU decode step)."""
    cdf_NxV = jnp.cumsum(jax.nn.softmax(logits_NxV.astype(jnp.float32), axis=-1), axis=-1)
    u_Nx1 = jax.random.uniform(key, (logits_NxV.shape[0], 1)) * cdf_NxV[:, -1:]
    token_N = jnp.sum(cdf_NxV <= u_Nx1, axis=-1, dtype=jnp.int32)
    return jnp.minimum(token_N, logits_NxV.shape[-1] - 1)


class NextTokenScorer:
    """P(outcome) / (P(outcome) + P(stop)) for the token after the history; jitted once per shape."""

    def __init__(self, model: nnx.Module, *, cases_per_batch: int):
        self.graphdef, self.state = nnx.split(model)
        self.cases_per_batch = cases_per_batch
        self._score = jax.jit(self._score_batch)

    def run(self, prompts_CxP: np.ndarray, valid_CxP: np.ndarray, rule: TokenRule) -> np.ndarray:
        n_cases, c = len(prompts_CxP), self.cases_per_batch
        scores = []
        for start in range(0, n_cases, c):
            rows = np.arange(start, start + c) % n_cases
            out = self._score(self.state, jnp.asarray(prompts_CxP[rows]), jnp.asarray(valid_CxP[rows]),
                              jnp.asarray(rule.positive_V), jnp.asarray(rule.negative_V))
            scores.append(np.asarray(out)[: min(c, n_cases - start)])
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
