"""Data-constrained L(N, D) (Muennighoff et al. 2023): repeated tokens are worth less than new ones.

L(N, D) = E + A / N^alpha + B / D'^beta, where a run that saw D tokens of a dataset of U unique
tokens learned from the effective data D' = U_D + U_D R*_D (1 - exp(-R_D / R*_D)), with
U_D = min(D, U) and R_D = D / U_D - 1 repeated epochs: the first pass counts in full, each
repetition a little less, and D' saturates at U_D (1 + R*_D). R*_D is fitted with the other five
parameters, as in approach 3 (Huber loss on log loss, L-BFGS-B from the best grid starts over
several R*_D, runs resampled for the intervals).

N' = N: the paper's excess-parameter term (R*_N) needs models far larger than U can feed at
every budget, which an IsoFLOP grid centred on the optimum does not have; it is not fitted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import threadpoolctl
from absl import logging

from analysis import parametric, powerlaw
from analysis.powerlaw import Estimate
from ehr_jax.errors import DataError

DEFAULT_BOOT = 200
MIN_POINTS = 7  # six parameters
# ln R*_D: from "a repeat is worth a tenth of a new token" to "repeats are as good as new" over any
# plausible number of epochs (the paper fitted R*_D = 15.4).
LOG_R_STAR_BOUNDS = (float(np.log(0.1)), float(np.log(1e4)))
BOUNDS = parametric.BOUNDS + [LOG_R_STAR_BOUNDS]
NAMES = ("e", "a", "alpha", "b", "beta", "ln_R_star_D")
R_STAR_STARTS = (1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)
STARTS_PER_R = 2  # best grid starts kept for each R*_D start


def effective_data(d, u, r_star):
    """D' for D tokens seen of U unique ones (broadcasts); D' = D within the first epoch."""
    d, u = np.asarray(d, dtype=float), np.asarray(u, dtype=float)
    u_d = np.minimum(d, u)
    repeats = d / u_d - 1
    return u_d * (1 + r_star * -np.expm1(-repeats / r_star))


def _effective_log_data(log_d: np.ndarray, log_u: np.ndarray, log_r_star: float) -> tuple[np.ndarray, np.ndarray]:
    """ln D' and its derivative in ln R*_D, per run."""
    r_star = np.exp(log_r_star)
    log_u_d = np.minimum(log_d, log_u)
    x = np.expm1(log_d - log_u_d) / r_star  # R_D / R*_D
    saturation = -np.expm1(-x)  # 1 - exp(-x)
    log_d_eff = log_u_d + np.log1p(r_star * saturation)
    # dD'/dR* = U_D (1 - e^-x - x e^-x); times R* / D' for the log-log derivative.
    grad = r_star * np.exp(log_u_d - log_d_eff) * (saturation - x * np.exp(-x))
    return log_d_eff, grad


def objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_u: np.ndarray,
              log_l: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Approach 3's Huber objective at D' instead of D, with the gradient chained to ln R*_D."""
    log_d_eff, d_log_d_eff = _effective_log_data(log_d, log_u, theta[5])
    value, grad, per_log_d = parametric.objective_terms(theta[:5], log_n, log_d_eff, log_l, weights)
    return value, np.append(grad, per_log_d @ d_log_d_eff)


def predict_log_loss(theta_Sx6: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_u: np.ndarray) -> np.ndarray:
    """log L for each parameter row (S, P)."""
    theta_Sx6 = np.atleast_2d(theta_Sx6)
    rows = [parametric.predict_log_loss(t[:5], log_n, _effective_log_data(log_d, log_u, t[5])[0])[0]
            for t in theta_Sx6]
    return np.array(rows)


def _starts(log_n, log_d, log_u, log_l) -> np.ndarray:
    """Chinchilla's grid of starts scored at several R*_D; the best few for each R*_D."""
    starts = []
    for r_star in R_STAR_STARTS:
        log_d_eff = _effective_log_data(log_d, log_u, np.log(r_star))[0]
        best, _ = parametric.grid_starts(log_n, log_d_eff, log_l, STARTS_PER_R)
        starts += [np.append(t, np.log(r_star)) for t in best]
    return np.array(starts)


@dataclasses.dataclass
class DataConstrainedFit:
    theta: np.ndarray  # (e, a, alpha, b, beta, ln R*_D)
    boot_theta: np.ndarray  # (R, 6): the refits that converged
    n_boot: int  # refits attempted
    level: float
    n_points: int
    unique_tokens: list[float]  # the datasets' sizes (U) the runs trained on
    max_epochs: float  # the most any run repeated its data
    warnings: list[str]

    def _derived(self, theta_Sx6: np.ndarray) -> dict[str, np.ndarray]:
        e, a, alpha, b, beta, log_r = np.atleast_2d(theta_Sx6).T
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"E": np.exp(e), "A": np.exp(a), "alpha": alpha, "B": np.exp(b), "beta": beta,
                    "R_star_D": np.exp(log_r), "a": beta / (alpha + beta), "b": alpha / (alpha + beta)}

    def estimates(self) -> dict[str, Estimate]:
        point = self._derived(self.theta)
        boot = self._derived(self.boot_theta) if len(self.boot_theta) else {k: np.zeros(0) for k in point}
        return {k: powerlaw.interval(float(point[k][0]), boot[k], self.level) for k in point}

    def predict_grid(self, n, d, u) -> tuple[np.ndarray, np.ndarray]:
        """(L at the fit, L per bootstrap refit (R, P)) at arrays n, d, u of one shape P."""
        log_n, log_d, log_u = (np.log(np.broadcast_to(np.asarray(v, dtype=float), np.shape(n)).ravel())
                               for v in (n, d, u))
        value = np.exp(predict_log_loss(self.theta, log_n, log_d, log_u)[0])
        boot = np.exp(predict_log_loss(self.boot_theta, log_n, log_d, log_u)) if len(self.boot_theta) \
            else np.zeros((0, len(log_n)))
        return value, boot

    def predict(self, n: float, d: float, u: float) -> Estimate:
        """L(N, D; U) with the interval of the bootstrap refits' predictions."""
        value, boot = self.predict_grid([n], [d], [u])
        return powerlaw.interval(float(value[0]), boot[:, 0], self.level)

    def to_json(self) -> dict:
        out = {k: v.to_json() for k, v in self.estimates().items()}
        out.update(form="L = E + A/N^alpha + B/D'^beta, D' = U_D + U_D R*_D (1 - exp(-R_D/R*_D))",
                   R_star_N=None, n_effective="N' = N (excess-parameter term not fitted)",
                   huber_delta=parametric.HUBER_DELTA, n_points=self.n_points, n_boot=self.n_boot,
                   n_boot_used=int(len(self.boot_theta)), n_boot_failed=self.n_boot - int(len(self.boot_theta)),
                   unique_tokens=self.unique_tokens, max_epochs=self.max_epochs)
        return out


def _check_inputs(n, d, u, loss) -> None:
    if len(loss) < MIN_POINTS or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise DataError(f"data-constrained L(N, D) needs >= {MIN_POINTS} runs with a known dataset size and "
                        f">= 2 distinct N and D; have {len(loss)} runs, {len(np.unique(n))} N, "
                        f"{len(np.unique(d))} D: not fitted")
    if not (d > u * 1.01).any():
        raise DataError("data-constrained L(N, D): no run repeats its data (every run saw <= 1 epoch), so "
                        "R*_D cannot be identified: not fitted (approach 3 applies as is)")


def _bound_notes(theta: np.ndarray, max_epochs: float) -> list[str]:
    """Parameters on a bound; R*_D on its upper one has a meaning of its own."""
    notes = parametric.check_bounds(theta[:5], NAMES[:5], parametric.BOUNDS, "data-constrained fit")
    if np.isclose(theta[5], LOG_R_STAR_BOUNDS[1], atol=1e-6):
        notes.append(f"data-constrained fit: R*_D sits on its upper bound ({np.exp(theta[5]):.3g}): over the "
                     f"<= {max_epochs:.1f} epochs tried, repeated tokens were worth as much as new ones")
    elif np.isclose(theta[5], LOG_R_STAR_BOUNDS[0], atol=1e-6):
        notes.append(f"data-constrained fit: R*_D sits on its lower bound ({np.exp(theta[5]):.3g}): repeats "
                     "looked worthless; check the runs that repeated their data")
    return notes


def fit_data_constrained(n: np.ndarray, d: np.ndarray, u: np.ndarray, loss: np.ndarray,
                         n_boot: int = DEFAULT_BOOT, seed: int = 0,
                         level: float = powerlaw.DEFAULT_LEVEL) -> DataConstrainedFit:
    """Six-parameter fit over runs with a known dataset size U; DataError when they cannot support it."""
    n, d, u, loss = (np.asarray(v, dtype=float) for v in (n, d, u, loss))
    ok = np.isfinite(loss) & (loss > 0) & np.isfinite(u) & (u > 0)
    n, d, u, loss = n[ok], d[ok], u[ok], loss[ok]
    _check_inputs(n, d, u, loss)
    args = (np.log(n), np.log(d), np.log(u), np.log(loss))
    ones = np.ones(len(loss))
    rng = np.random.default_rng(seed)
    boot = []
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):  # see parametric.fit_parametric
        theta = parametric.minimize(objective, _starts(*args), args + (ones,), BOUNDS)
        if theta is None:
            raise DataError("data-constrained L(N, D): L-BFGS found no finite optimum from any start; not fitted")
        for counts in rng.multinomial(len(loss), ones / len(loss), size=n_boot):
            fitted = parametric.minimize(objective, theta[None, :], args + (counts.astype(float),), BOUNDS)
            if fitted is not None:
                boot.append(fitted)
    datasets = sorted({float(x) for x in np.unique(u)})
    fit = DataConstrainedFit(theta, np.array(boot).reshape(-1, 6), n_boot, level, len(loss), datasets,
                             float((d / u).max()), _bound_notes(theta, float((d / u).max())))
    for w in fit.warnings:
        logging.warning(w)
    return fit
