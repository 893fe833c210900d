"""Rollout sampling: stop rules on a hand-built Markov model, one compile per shape, and the
KV cache reproducing the full forward pass of the real Transformer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ehr_jax.evaluation import zero_shot
from ehr_jax.evaluation.tasks import BUILTIN_RULES, OutcomeRule
from ehr_jax.model import transformer

VOCAB = ["[PAD]", "A", "B", "TIME//1d", "MEDS_DEATH", "HOSPITAL_DISCHARGE", "HOSPITAL_DISCHARGE//DIED",
         "HOSPITAL_ADMISSION", "C"]
ID = {t: i for i, t in enumerate(VOCAB)}
NEG = -1e9


class MarkovModel(nnx.Module):
    """Next-token logits depend only on the current token: a transition table we write by hand."""

    def __init__(self, transitions: dict[str, dict[str, float]]):
        table = np.full((len(VOCAB), len(VOCAB)), NEG, np.float32)
        for src, targets in transitions.items():
            for dst, prob in targets.items():
                table[ID[src], ID[dst]] = np.log(prob)
        self.table = nnx.Param(jnp.asarray(table))

    def prefill(self, tokens_BxP, valid_BxP, *, max_len):
        b = tokens_BxP.shape[0]
        zeros = jnp.zeros((b, max_len, 1, 1))
        cache = transformer.KVCache(k=(zeros,), v=(zeros,), valid_BxS=jnp.zeros((b, max_len), bool),
                                    pos_B=jnp.zeros(b, jnp.int32), index=jnp.int32(tokens_BxP.shape[1]))
        return self.table[...][tokens_BxP[:, -1]], cache

    def decode_step(self, token_B, cache):
        return self.table[...][token_B], cache._replace(index=cache.index + 1)


def _run(transitions, rule, *, horizon_s=1e12, max_new=16, rollouts=4, cases=2, n_cases=3, seed=0,
         caps=None):
    sampler = zero_shot.RolloutSampler(MarkovModel(transitions), prompt_len=3, max_new_tokens=max_new,
                                       num_rollouts=rollouts, cases_per_batch=cases)
    prompts, valid = zero_shot.left_pad([np.array([ID["B"], ID["A"]])] * n_cases, 3)
    token_rule = zero_shot.resolve_rule(rule, VOCAB)
    result = sampler.run(prompts, valid, np.full(n_cases, horizon_s), token_rule, seed=seed, cap_C=caps)
    return sampler, result


MORTALITY = BUILTIN_RULES["mortality"]


def test_outcome_token_stops_with_outcome():
    _, result = _run({"A": {"C": 1.0}, "C": {"MEDS_DEATH": 1.0}, "MEDS_DEATH": {"C": 1.0}}, MORTALITY)
    assert result.outcome_CxR.all() and (result.reason_CxR == zero_shot.OUTCOME).all()
    assert (result.new_tokens_CxR == 2).all()


def test_stop_token_then_time_is_negative():
    _, result = _run({"A": {"HOSPITAL_DISCHARGE": 1.0}, "HOSPITAL_DISCHARGE": {"TIME//1d": 1.0},
                      "TIME//1d": {"MEDS_DEATH": 1.0}, "MEDS_DEATH": {"C": 1.0}}, MORTALITY)
    assert not result.outcome_CxR.any() and (result.reason_CxR == zero_shot.STOPPED).all()
    assert (result.new_tokens_CxR == 2).all()  # the death after the time token is never reached


def test_death_in_the_discharge_timestamp_counts():
    """MEDS_DEATH written after HOSPITAL_DISCHARGE at the same time is still an in-stay death."""
    _, result = _run({"A": {"HOSPITAL_DISCHARGE": 1.0}, "HOSPITAL_DISCHARGE": {"C": 1.0},
                      "C": {"MEDS_DEATH": 1.0}, "MEDS_DEATH": {"C": 1.0}}, MORTALITY)
    assert result.outcome_CxR.all()


def test_died_discharge_token_is_an_outcome():
    rule = zero_shot.resolve_rule(MORTALITY, VOCAB)
    assert rule.positive_V[ID["HOSPITAL_DISCHARGE//DIED"]] and not rule.negative_V[ID["HOSPITAL_DISCHARGE//DIED"]]
    assert rule.negative_V[ID["HOSPITAL_DISCHARGE"]] and rule.positive_V[ID["MEDS_DEATH"]]


def test_horizon_from_summed_time_tokens():
    long_stay = BUILTIN_RULES["long_stay"]  # running past the horizon means the outcome
    transitions = {"A": {"TIME//1d": 1.0}, "TIME//1d": {"TIME//1d": 1.0}}
    _, result = _run(transitions, long_stay, horizon_s=2.5 * 86_400)
    assert result.outcome_CxR.all() and (result.reason_CxR == zero_shot.HORIZON).all()
    assert (result.new_tokens_CxR == 3).all()  # 3 days > 2.5 days at the third interval token
    readmission = BUILTIN_RULES["readmission_30d"]  # for readmission it means no outcome
    _, result = _run(transitions, readmission, horizon_s=2.5 * 86_400)
    assert not result.outcome_CxR.any() and (result.reason_CxR == zero_shot.HORIZON).all()


def test_token_cap():
    _, result = _run({"A": {"C": 1.0}, "C": {"C": 1.0}}, MORTALITY, max_new=5)
    assert (result.reason_CxR == zero_shot.CAPPED).all() and (result.new_tokens_CxR == 5).all()
    assert not result.outcome_CxR.any() and result.capped_share == 1.0


def test_per_case_caps_censor_instead_of_counting_negatives():
    """Case 0 (cap 2) never reaches the death at its 4th token; case 1 (cap 16) always does. The
    capped case is censored: it gets the pooled rate, not 0."""
    transitions = {"A": {"C": 1.0}, "C": {"B": 1.0}, "B": {"TIME//1d": 1.0}, "TIME//1d": {"MEDS_DEATH": 1.0},
                   "MEDS_DEATH": {"C": 1.0}}
    sampler, result = _run(transitions, MORTALITY, n_cases=2, caps=np.array([2, 16]))
    assert (result.reason_CxR[0] == zero_shot.CAPPED).all() and (result.new_tokens_CxR[0] == 2).all()
    assert (result.reason_CxR[1] == zero_shot.OUTCOME).all() and (result.new_tokens_CxR[1] == 4).all()
    assert result.capped_share == 0.5
    np.testing.assert_allclose(result.probability_C, [1.0, 1.0])  # never 0 for the capped case
    assert sampler.traces == 1


def test_token_caps_follow_days_and_tokens_per_day():
    caps = zero_shot.token_caps(np.array([0.0, 0.5, 2.0, np.inf]), tokens_per_day=100, max_new_tokens=150)
    np.testing.assert_array_equal(caps, [zero_shot.MIN_TOKEN_CAP, 50, 150, 150])


def test_probability_is_fraction_of_rollouts():
    transitions = {"A": {"MEDS_DEATH": 0.3, "HOSPITAL_DISCHARGE": 0.7}, "HOSPITAL_DISCHARGE": {"TIME//1d": 1.0},
                   "MEDS_DEATH": {"C": 1.0}, "TIME//1d": {"C": 1.0}, "C": {"C": 1.0}}
    sampler, result = _run(transitions, MORTALITY, rollouts=200, cases=1, n_cases=2)
    assert result.outcome_CxR.shape == (2, 200)
    np.testing.assert_allclose(result.probability_C, 0.3, atol=0.1)
    prompts, valid = zero_shot.left_pad([np.array([ID["B"], ID["A"]])] * 2, 3)
    again = sampler.run(prompts, valid, np.full(2, 1e12), zero_shot.resolve_rule(MORTALITY, VOCAB))
    np.testing.assert_array_equal(result.outcome_CxR, again.outcome_CxR)  # seeded


def test_decode_loop_compiles_once_per_shape():
    transitions = {"A": {"C": 0.5, "MEDS_DEATH": 0.5}, "C": {"C": 0.9, "MEDS_DEATH": 0.1},
                   "MEDS_DEATH": {"C": 1.0}}
    sampler, _ = _run(transitions, MORTALITY, n_cases=5, cases=2, max_new=32)  # 3 batches
    assert sampler.traces == 1
    prompts, valid = zero_shot.left_pad([np.array([ID["A"]])] * 4, 3)
    sampler.run(prompts, valid, np.full(4, 1e9), zero_shot.resolve_rule(MORTALITY, VOCAB), seed=3)
    assert sampler.traces == 1


def test_next_token_ratio():
    transitions = {"A": {"MEDS_DEATH": 0.1, "HOSPITAL_DISCHARGE": 0.3, "C": 0.6}}
    scorer = zero_shot.NextTokenScorer(MarkovModel(transitions), cases_per_batch=2)
    prompts, valid = zero_shot.left_pad([np.array([ID["A"]])] * 3, 2)
    rule = zero_shot.resolve_rule(MORTALITY, VOCAB)
    np.testing.assert_allclose(scorer.run(prompts, valid, rule), 0.25, rtol=1e-5)
    assert zero_shot.supports_next_token(rule)
    assert not zero_shot.supports_next_token(zero_shot.resolve_rule(BUILTIN_RULES["long_stay"], VOCAB))


def test_interval_seconds():
    seconds = zero_shot.interval_seconds(["TIME//5m", "TIME//2h", "TIME//1d", "TIME//6mo", "Q//1", "A"])
    np.testing.assert_allclose(seconds, [300, 7200, 86_400, 180 * 86_400, 0, 0])  # the tokenizer's 6mo


@pytest.fixture(scope="module")
def tiny_transformer():
    """One real model for the module: building it costs several small compiles."""
    model_cfg = ml_collections.ConfigDict({"size": "d32-l1", "dtype": "float32"})
    cfg = transformer.model_config(model_cfg, vocab_size=len(BIG_VOCAB), seq_len=16)
    return transformer.Transformer(cfg, rngs=nnx.Rngs(0))


BIG_VOCAB = VOCAB + [f"X{i}" for i in range(14)]


@pytest.mark.slow
def test_kv_cache_matches_full_forward_pass(tiny_transformer):
    """Left-padded prefill + decode steps give the logits of the unpadded full forward pass."""
    model = tiny_transformer
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 23, n) for n in (5, 8, 3)]
    continuations = rng.integers(1, 23, (3, 4)).astype(np.int32)
    tokens, valid = zero_shot.left_pad(prompts, 8)

    @nnx.jit
    def generate(model, tokens, valid, continuations):
        logits, cache = model.prefill(tokens, valid, max_len=12)
        step_logits = [logits]
        for t in range(continuations.shape[1]):
            logits, cache = model.decode_step(continuations[:, t], cache)
            step_logits.append(logits)
        return step_logits

    step_logits = generate(model, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(continuations))
    # One right-padded full pass: causal attention makes the padding after each row harmless.
    full = np.zeros((3, 12), np.int32)
    for i, prompt in enumerate(prompts):
        full[i, :len(prompt) + 4] = np.concatenate([prompt, continuations[i]])
    full_logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(full)))
    for i, prompt in enumerate(prompts):
        expected = full_logits[i, len(prompt) - 1:len(prompt) + 4]
        got = np.stack([np.asarray(s[i]) for s in step_logits])
        np.testing.assert_allclose(jax.nn.softmax(got), jax.nn.softmax(expected), atol=1e-5)


@pytest.mark.slow
def test_sliding_window_matches_a_fresh_pass_over_the_window(tiny_transformer):
    """One layer: K/V depend on the token alone, so attending to the last W cached tokens must
    equal a fresh forward pass over those W tokens (RoPE sees relative positions only)."""
    window = 4
    tokens = np.random.default_rng(1).integers(1, 23, (2, 10)).astype(np.int32)

    @nnx.jit
    def windowed(model, tokens):
        logits, cache = model.prefill(tokens[:, :window], jnp.ones((2, window), bool), max_len=window)
        out = [logits]
        for t in range(window, tokens.shape[1]):
            logits, cache = model.decode_step(tokens[:, t], zero_shot._slide(cache, window))
            out.append(logits)
        return out

    got = windowed(tiny_transformer, jnp.asarray(tokens))
    fresh = nnx.jit(lambda m, x: m(x)[:, -1])
    for k, logits in enumerate(got):
        expected = fresh(tiny_transformer, jnp.asarray(tokens[:, k:k + window]))
        np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-4)


@pytest.mark.slow
def test_rollouts_run_with_the_real_transformer(tiny_transformer):
    sampler = zero_shot.RolloutSampler(tiny_transformer, prompt_len=4, max_new_tokens=8, num_rollouts=3,
                                       cases_per_batch=2, window=4)
    prompts, valid = zero_shot.left_pad([np.array([1, 2]), np.array([3, 1, 2, 1])], 4)
    rule = zero_shot.resolve_rule(OutcomeRule(positive=("MEDS_DEATH",), negative=("HOSPITAL_DISCHARGE",)), BIG_VOCAB)
    result = sampler.run(prompts, valid, np.full(2, 1e9), rule)
    assert result.outcome_CxR.shape == (2, 3)
    assert ((result.new_tokens_CxR >= 1) & (result.new_tokens_CxR <= 8)).all()
    assert sampler.traces == 1


def test_resolved_probability_treats_capped_rollouts_as_censored():
    outcome = np.array([[True, False, False, False], [False, False, False, False], [False] * 4])
    reason = np.array([[zero_shot.OUTCOME, zero_shot.STOPPED, zero_shot.CAPPED, zero_shot.CAPPED],
                       [zero_shot.STOPPED] * 4, [zero_shot.CAPPED] * 4])
    result = zero_shot.RolloutResult(outcome, reason, np.ones((3, 4), np.int32))
    pooled = 1 / 6  # one outcome among six resolved rollouts
    np.testing.assert_allclose(result.probability_C, [0.5, 0, pooled])
    np.testing.assert_allclose(result.resolved_probability_C(1.0),
                               [(1 + pooled) / 3, pooled / 5, pooled])


@pytest.mark.slow
def test_refilled_slots_decode_as_a_fresh_sliding_window(tiny_transformer):
    """Greedy rollouts (tiny temperature) through 2 slots, refilled 3 times at shifted ring
    positions, equal those through 6 slots filled at once and a plain greedy loop over the
    last `window` tokens (one layer: the ring equals a fresh pass over the window)."""
    window, caps = 4, np.array([5, 7, 9])
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, 23, n) for n in (2, 4, 3)]
    tokens, valid = zero_shot.left_pad(prompts, window)
    rule = zero_shot.resolve_rule(OutcomeRule(positive=("NEVER",), negative=("NEVER",)), BIG_VOCAB)
    results = []
    for cases_per_batch in (1, 3):
        sampler = zero_shot.RolloutSampler(tiny_transformer, prompt_len=window, max_new_tokens=9, num_rollouts=2,
                                           cases_per_batch=cases_per_batch, window=window, temperature=1e-6,
                                           record_tokens=True)
        results.append(sampler.run(tokens, valid, np.full(3, np.inf), rule, cap_C=caps))
    np.testing.assert_array_equal(results[0].tokens_CxRxT, results[1].tokens_CxRxT)
    np.testing.assert_array_equal(results[0].new_tokens_CxR, np.repeat(caps[:, None], 2, axis=1))
    last_logits = nnx.jit(lambda m, x: m(x)[:, -1])
    for case, prompt in enumerate(prompts):
        sequence = list(prompt)
        for _ in range(caps[case]):
            sequence.append(int(np.argmax(last_logits(tiny_transformer, jnp.asarray([sequence[-window:]]))[0])))
        for rollout in range(2):
            assert results[0].tokens_CxRxT[case, rollout, :caps[case]].tolist() == sequence[len(prompt):]
        assert (results[0].tokens_CxRxT[case, :, caps[case]:] == 0).all()


@pytest.mark.slow
def test_slots_split_over_8_devices_give_the_one_device_result(tiny_transformer):
    """Sampled (not greedy) rollouts with their slots sharded over the data axis of 8 devices
    equal those on one device: same draws, same stops, same tokens."""
    from ehr_jax import parallel

    mesh = parallel.make_mesh((8, 1, 1))
    graphdef, state = nnx.split(tiny_transformer)
    on_mesh = nnx.merge(graphdef, jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())))
    rng = np.random.default_rng(3)
    tokens, valid = zero_shot.left_pad([rng.integers(1, 23, n) for n in (2, 4, 3, 1, 4, 2)], 4)
    rule = zero_shot.resolve_rule(OutcomeRule(positive=("X3",), negative=("X4",)), BIG_VOCAB)
    results = []
    for model, sampler_mesh in ((tiny_transformer, None), (on_mesh, mesh)):
        sampler = zero_shot.RolloutSampler(model, prompt_len=4, max_new_tokens=12, num_rollouts=2, cases_per_batch=4,
                                           window=4, record_tokens=True, mesh=sampler_mesh)
        results.append(sampler.run(tokens, valid, np.full(6, np.inf), rule, seed=5, cap_C=np.array([3, 12] * 3)))
    one, sharded = results
    for field in ("outcome_CxR", "reason_CxR", "new_tokens_CxR", "tokens_CxRxT"):
        np.testing.assert_array_equal(getattr(one, field), getattr(sharded, field))
    assert (one.reason_CxR != zero_shot.CAPPED).any() and one.outcome_CxR.any()  # the rules did fire


@pytest.mark.slow
def test_rollouts_with_scanned_layers_equal_the_loop():
    """model.scan_layers stacks the K/V caches ([layers, B, S, KV, K]): the case pool, slot
    refills (12 rollouts through 8 slots) and the slot sharding over 8 devices find the slot axis there too, and greedy
    rollouts equal those of the same parameters run as a loop, on one device and on 8."""
    from ehr_jax import parallel

    rng = np.random.default_rng(4)
    tokens, valid = zero_shot.left_pad([rng.integers(1, 23, n) for n in (2, 4, 3, 1, 4, 2)], 4)
    rule = zero_shot.resolve_rule(OutcomeRule(positive=("X3",), negative=("X4",)), BIG_VOCAB)
    mesh = parallel.make_mesh((8, 1, 1))
    results = {}
    for scan in ("off", "on"):
        model_cfg = ml_collections.ConfigDict({"size": "d32-l2", "dtype": "float32", "scan_layers": scan})
        model = transformer.Transformer(transformer.model_config(model_cfg, vocab_size=len(BIG_VOCAB), seq_len=16),
                                        rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        on_mesh = nnx.merge(graphdef, jax.device_put(state, replicated))
        for where, m, sampler_mesh in (("one", model, None), ("mesh", on_mesh, mesh)):
            sampler = zero_shot.RolloutSampler(m, prompt_len=4, max_new_tokens=6, num_rollouts=2, cases_per_batch=4,
                                               window=4, temperature=1e-6, record_tokens=True, mesh=sampler_mesh)
            results[scan, where] = sampler.run(tokens, valid, np.full(6, np.inf), rule, cap_C=np.array([3, 6] * 3))
    assert not isinstance(on_mesh.blocks, nnx.List)  # the last model built is the scanned one
    reference = results["off", "one"]
    for key, result in results.items():
        for field in ("reason_CxR", "new_tokens_CxR", "tokens_CxRxT"):
            np.testing.assert_array_equal(getattr(result, field), getattr(reference, field), err_msg=str(key))
