"""Chinchilla approach 3: fit L(N, D) = E + A / N^alpha + B / D^beta to every run.

Chinchilla's form: with A = e^a, B = e^b, E = e^e, the prediction is
log L = LSE(a - alpha ln N, b - beta ln D, e), and the objective is the Huber loss (delta 1e-3)
of log residuals, minimised by L-BFGS from the best points of a grid of starts. The Huber loss
keeps a few bad runs from steering the exponents. Bootstrap intervals resample runs and restart
from the full fit's optimum and a few grid starts. The compute-optimal exponents follow as
a = beta / (alpha + beta) for N_opt and b = alpha / (alpha + beta) for D_opt (under C ~ N D).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import threadpoolctl
from absl import logging
from scipy import optimize, special

from analysis import powerlaw
from analysis.powerlaw import Estimate
from ehr_jax.errors import DataError

HUBER_DELTA = 1e-3  # Chinchilla's delta on log-loss residuals
DEFAULT_BOOT = 200
MIN_POINTS = 6  # five parameters; fewer points cannot pin them down
# Chinchilla's grid of starts (their alpha, beta, e, a, b ranges), a little coarser.
START_GRID = {"e": (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5), "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
              "alpha": (0.0, 0.5, 1.0, 1.5, 2.0), "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
              "beta": (0.0, 0.5, 1.0, 1.5, 2.0)}
# Bounds keep the exponents meaningful (a negative exponent is not a scaling law).
BOUNDS = [(-5.0, 5.0), (-20.0, 60.0), (0.0, 4.0), (-20.0, 60.0), (0.0, 4.0)]  # e, a, alpha, b, beta
N_REFINE = 8  # L-BFGS runs from this many best grid points


def predict_log_loss(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """log L for parameters theta = (e, a, alpha, b, beta); theta may be (5,) or (S, 5)."""
    e, a, alpha, b, beta = np.moveaxis(np.atleast_2d(theta), -1, 0)
    terms_SxPx3 = np.stack(np.broadcast_arrays(a[:, None] - alpha[:, None] * log_n,
                                               b[:, None] - beta[:, None] * log_d, e[:, None]), axis=-1)
    return special.logsumexp(terms_SxPx3, axis=-1)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    abs_r = np.abs(r)
    return np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))


def objective_terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                    weights: np.ndarray, delta: float = HUBER_DELTA) -> tuple[float, np.ndarray, np.ndarray]:
    """objective's value and gradient, plus its derivative per point in ln D.

    The last lets a law that transforms D (the data-constrained D') chain its own parameters on.
    """
    e, a, alpha, b, beta = theta
    terms_Px3 = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=1)
    top = terms_Px3.max(axis=1)  # log-sum-exp by hand: scipy's checks cost more than the sum here
    pred = top + np.log(np.exp(terms_Px3 - top[:, None]).sum(axis=1))
    r = pred - log_l
    scale = 1.0 / (delta * weights.sum())
    value = float(scale * (weights * _huber(r, delta)).sum())
    dr = scale * weights * np.clip(r, -delta, delta)  # Huber derivative
    soft_Px3 = np.exp(terms_Px3 - pred[:, None])
    grad = np.array([dr @ soft_Px3[:, 2], dr @ soft_Px3[:, 0], -(dr * soft_Px3[:, 0]) @ log_n,
                     dr @ soft_Px3[:, 1], -(dr * soft_Px3[:, 1]) @ log_d])
    return value, grad, -beta * dr * soft_Px3[:, 1]


def objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
              weights: np.ndarray, delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Weighted Huber loss of log residuals (scaled by 1/delta for L-BFGS's tolerances) and its gradient."""
    value, grad, _ = objective_terms(theta, log_n, log_d, log_l, weights, delta)
    return value, grad


def grid_starts(log_n, log_d, log_l, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` best points of START_GRID by Huber loss, and their losses."""
    grid_Sx5 = np.array(list(itertools.product(*START_GRID.values())))
    r_SxP = predict_log_loss(grid_Sx5, log_n, log_d) - log_l
    scores = _huber(r_SxP, HUBER_DELTA).sum(axis=1)
    best = np.argsort(scores)[:count]
    return grid_Sx5[best], scores[best]


def minimize(fun, starts: np.ndarray, args: tuple, bounds) -> np.ndarray | None:
    """Best L-BFGS-B optimum of fun (value, gradient) over the starts; None when none is finite."""
    best, best_value = None, np.inf
    for start in starts:
        result = optimize.minimize(fun, start, args=args, jac=True, method="L-BFGS-B", bounds=bounds,
                                   options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9})
        if np.isfinite(result.fun) and result.fun < best_value:
            best, best_value = result.x, result.fun
    return best


@dataclasses.dataclass
class ParametricFit:
    theta: np.ndarray  # (e, a, alpha, b, beta)
    boot_theta: np.ndarray  # (R, 5)
    level: float
    n_points: int
    warnings: list[str]

    def _derived(self, theta_Sx5: np.ndarray) -> dict[str, np.ndarray]:
        e, a, alpha, b, beta = np.atleast_2d(theta_Sx5).T
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"E": np.exp(e), "A": np.exp(a), "alpha": alpha, "B": np.exp(b), "beta": beta,
                    "a": beta / (alpha + beta), "b": alpha / (alpha + beta)}

    def estimates(self) -> dict[str, Estimate]:
        point = self._derived(self.theta)
        boot = self._derived(self.boot_theta) if len(self.boot_theta) else {k: np.zeros(0) for k in point}
        return {k: powerlaw.interval(float(point[k][0]), boot[k], self.level) for k in point}

    def predict(self, n: float, d: float) -> Estimate:
        """L(N, D) with the interval of the bootstrap fits' predictions."""
        log_n, log_d = np.log([n]), np.log([d])
        value = float(np.exp(predict_log_loss(self.theta, log_n, log_d))[0, 0])
        boot = np.exp(predict_log_loss(self.boot_theta, log_n, log_d))[:, 0] if len(self.boot_theta) else []
        return powerlaw.interval(value, np.asarray(boot), self.level)

    def to_json(self) -> dict:
        out = {k: v.to_json() for k, v in self.estimates().items()}
        out.update(huber_delta=HUBER_DELTA, n_points=self.n_points, n_boot_used=int(len(self.boot_theta)))
        return out


def check_bounds(theta: np.ndarray, names=("e", "a", "alpha", "b", "beta"), bounds=BOUNDS,
                 fit_name: str = "parametric fit") -> list[str]:
    """A parameter on its bound was not identified by the runs: say which."""
    notes = []
    for name, value, (lo, hi) in zip(names, theta, bounds):
        if np.isclose(value, lo, atol=1e-6) or np.isclose(value, hi, atol=1e-6):
            notes.append(f"{fit_name}: {name}={value:.3g} sits on its bound [{lo:.3g}, {hi:.3g}]: the runs "
                         "span too narrow a range to identify it; treat the exponents with care")
    return notes


def fit_parametric(n: np.ndarray, d: np.ndarray, loss: np.ndarray, n_boot: int = DEFAULT_BOOT,
                   seed: int = 0, level: float = powerlaw.DEFAULT_LEVEL) -> ParametricFit:
    """Approach-3 fit with bootstrap intervals; DataError when the runs cannot support five parameters."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    ok = np.isfinite(loss) & (loss > 0)
    n, d, loss = n[ok], d[ok], loss[ok]
    if len(loss) < MIN_POINTS or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        reason = (f"parametric L(N, D) needs >= {MIN_POINTS} runs with >= 2 distinct N and D; "
                  f"have {len(loss)} runs, {len(np.unique(n))} N, {len(np.unique(d))} D: not fitted")
        raise DataError(reason)
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    ones = np.ones_like(log_l)
    starts, _ = grid_starts(log_n, log_d, log_l, N_REFINE)
    rng = np.random.default_rng(seed)
    boot = []
    # L-BFGS-B's tiny BLAS calls otherwise wake OpenBLAS's spinning worker threads; on a busy
    # 2-core machine that made each fit about 25x slower in CPU time.
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        theta = minimize(objective, starts, (log_n, log_d, log_l, ones), BOUNDS)
        if theta is None:
            raise DataError("parametric L(N, D): L-BFGS found no finite optimum from any start; not fitted")
        boot_starts = theta[None, :]  # replicates sit near the full fit; one start suffices
        for counts in rng.multinomial(len(loss), ones / len(loss), size=n_boot):
            fitted = minimize(objective, boot_starts, (log_n, log_d, log_l, counts.astype(float)), BOUNDS)
            if fitted is not None:
                boot.append(fitted)
    fit = ParametricFit(theta, np.array(boot).reshape(-1, 5), level, len(loss), check_bounds(theta))
    for w in fit.warnings:
        logging.warning(w)
    return fit
