"""Linear probe: L2 logistic regression on the model's hidden state at the prediction time.

Fitted on train-split cases and scored on held_out ones, it measures what the representation
knows, apart from how well the model samples futures. Features are standardized with train
statistics; the L2 strength is picked by k-fold cross-validated log loss on train only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import optimize, special

from ehr_jax.evaluation import zero_shot

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # penalty per case on standardized features
CV_FOLDS = 3


class Representer:
    """Hidden state of each prompt's last token, jitted once per (batch, length) shape.

    Prompts are right-padded: causal attention keeps padding after the last token harmless,
    and positions start at 0 as in training.
    """

    def __init__(self, model: nnx.Module, *, prompt_len: int, batch_size: int,
                 mesh: jax.sharding.Mesh | None = None):
        """mesh: split each batch over its data axes (batch_size must divide)."""
        self.graphdef, self.state = nnx.split(model)
        self.prompt_len, self.batch_size = prompt_len, batch_size
        self.place = zero_shot.batch_placer(mesh, batch_size)
        self._hidden = jax.jit(self._last_hidden)

    def run(self, prompts: list[np.ndarray]) -> np.ndarray:
        n, b = len(prompts), self.batch_size
        out = []
        for start in range(0, n, b):
            rows = [prompts[i % n] for i in range(start, start + b)]
            tokens = np.zeros((b, self.prompt_len), np.int32)
            lengths = np.array([len(p) for p in rows], np.int32)
            for i, prompt in enumerate(rows):
                tokens[i, :len(prompt)] = prompt
            hidden = self._hidden(self.state, self.place(tokens), self.place(lengths - 1))
            out.append(zero_shot.to_host(hidden)[: min(b, n - start)])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def _last_hidden(self, state, tokens_BxL, last_B):
        model = nnx.merge(self.graphdef, state)
        hidden_BxLxD = model.hidden(tokens_BxL)
        return jnp.take_along_axis(hidden_BxLxD, last_B[:, None, None], axis=1)[:, 0]


@dataclasses.dataclass
class LinearProbe:
    weights_D: np.ndarray
    bias: float
    mean_D: np.ndarray
    scale_D: np.ndarray
    l2: float

    def predict_proba(self, features_CxD: np.ndarray) -> np.ndarray:
        z = (features_CxD - self.mean_D) / self.scale_D
        return special.expit(z @ self.weights_D + self.bias)


def fit(features_CxD: np.ndarray, labels_C: np.ndarray, *, seed: int = 0) -> LinearProbe | None:
    """Standardize, pick the L2 strength by CV log loss, refit on all train cases.

    None when the train labels hold a single class (nothing to learn).
    """
    labels_C = np.asarray(labels_C, bool)
    if labels_C.all() or not labels_C.any():
        return None
    mean = features_CxD.mean(axis=0)
    scale = features_CxD.std(axis=0) + 1e-6
    z = (features_CxD - mean) / scale
    folds = np.random.default_rng(seed).permutation(len(labels_C)) % CV_FOLDS
    best = min(L2_GRID, key=lambda l2: _cv_log_loss(z, labels_C, folds, l2))
    weights, bias = _fit_logistic(z, labels_C, best)
    return LinearProbe(weights, bias, mean, scale, best)


def _cv_log_loss(z: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float) -> float:
    losses = []
    for k in range(CV_FOLDS):
        train, test = folds != k, folds == k
        if not test.any() or y[train].all() or not y[train].any():
            continue
        w, b = _fit_logistic(z[train], y[train], l2)
        logits = z[test] @ w + b
        losses.append(np.mean(np.logaddexp(0.0, logits) - y[test] * logits))
    return float(np.mean(losses)) if losses else float("inf")


def _fit_logistic(z: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Mean log loss + l2/2 |w|^2 (bias unpenalized), minimized by L-BFGS with exact gradients."""
    y = y.astype(np.float64)
    z = z.astype(np.float64)

    def loss_and_grad(params):
        w, b = params[:-1], params[-1]
        logits = z @ w + b
        loss = np.mean(np.logaddexp(0.0, logits) - y * logits) + 0.5 * l2 * w @ w
        residual = (special.expit(logits) - y) / len(y)
        return loss, np.r_[z.T @ residual + l2 * w, residual.sum()]

    result = optimize.minimize(loss_and_grad, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B",
                               options={"maxiter": 500})
    return result.x[:-1], float(result.x[-1])
