"""Linear probe: the logistic fit is a true optimum, generalizes, and reads the right hidden state."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from scipy import special

from ehr_jax.evaluation import metrics, probe
from ehr_jax.model import transformer


def _data(n, rng, d=6):
    x = rng.normal(size=(n, d)) * np.array([5.0, 1, 1, 1, 1, 0.1]) + 3.0
    logits = 0.8 * (x[:, 0] - 3.0) / 5.0 * 3 - 1.5 * (x[:, 1] - 3.0)
    return x, rng.random(n) < special.expit(logits)


def test_fit_is_a_stationary_point_of_the_penalized_loss():
    rng = np.random.default_rng(0)
    x, y = _data(300, rng)
    z = (x - x.mean(0)) / x.std(0)
    w, b = probe._fit_logistic(z, y, l2=0.1)
    residual = special.expit(z @ w + b) - y
    np.testing.assert_allclose(z.T @ residual / len(y) + 0.1 * w, 0.0, atol=1e-4)
    assert abs(residual.mean()) < 1e-4  # the unpenalized bias matches the prevalence


def test_probe_generalizes_and_beats_chance():
    rng = np.random.default_rng(1)
    x_train, y_train = _data(400, rng)
    x_test, y_test = _data(400, rng)
    fitted = probe.fit(x_train, y_train)
    assert fitted.l2 in probe.L2_GRID
    p = fitted.predict_proba(x_test)
    assert ((p > 0) & (p < 1)).all()
    assert metrics.auroc(y_test, p) > 0.75
    assert metrics.brier(y_test, p) < metrics.brier(y_test, np.full(len(y_test), y_train.mean()))


def test_single_class_cannot_be_fitted():
    assert probe.fit(np.zeros((5, 2)), np.ones(5, bool)) is None


@pytest.mark.slow
def test_representer_reads_the_last_real_token():
    cfg = transformer.model_config(ml_collections.ConfigDict({"size": "d32-l1", "dtype": "float32"}), 17, 16)
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    prompts = [np.array([3, 4, 5, 6, 7], np.int32), np.array([8, 9], np.int32), np.array([2, 9, 11], np.int32)]
    rep = probe.Representer(model, prompt_len=8, batch_size=2)
    features = rep.run(prompts)
    assert features.shape == (3, 32)
    hidden = nnx.jit(lambda m, tokens: m.hidden(tokens))
    for prompt, feature in zip(prompts, features):  # unpadded, one prompt at a time
        expected = np.asarray(hidden(model, jnp.asarray(prompt[None])))[0, -1]
        np.testing.assert_allclose(feature, expected, atol=1e-5)
