"""Power laws y = k x^e fitted in log-log space, with bootstrap replicates carried along.

A fit keeps its replicates (not just an interval) so a prediction at a new x gets its interval
from the same replicates: the spread of k and e is strongly correlated, and combining their
separate intervals would overstate the uncertainty of an extrapolation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_LEVEL = 0.95  # two-sided bootstrap percentile interval


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate and its (percentile bootstrap) interval; NaN bounds when unavailable."""

    value: float
    lo: float
    hi: float

    def to_json(self) -> dict:
        clean = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
        return {"value": clean(self.value), "ci": [clean(self.lo), clean(self.hi)]}

    def covers(self, truth: float) -> bool:
        return bool(self.lo <= truth <= self.hi)


def interval(value: float, replicates: np.ndarray, level: float = DEFAULT_LEVEL) -> Estimate:
    """Percentile interval of the finite replicates around a point estimate."""
    finite = np.asarray(replicates, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2:
        return Estimate(float(value), np.nan, np.nan)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return Estimate(float(value), float(lo), float(hi))


def fit_lines(log_x: np.ndarray, log_y_RxP: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares lines through each row of log_y against log_x; returns (intercepts_R, slopes_R).

    Vectorised over replicates because bootstraps fit thousands of tiny lines.
    """
    log_y_RxP = np.atleast_2d(log_y_RxP)
    x_centered = log_x - log_x.mean()
    slopes = (log_y_RxP - log_y_RxP.mean(axis=1, keepdims=True)) @ x_centered / (x_centered @ x_centered)
    intercepts = log_y_RxP.mean(axis=1) - slopes * log_x.mean()
    return intercepts, slopes


@dataclasses.dataclass
class PowerLaw:
    """y = exp(log_k) * x^exponent; boot_* hold the bootstrap replicates (finite rows only)."""

    log_k: float
    exponent: float
    boot_log_k: np.ndarray
    boot_exponent: np.ndarray
    x: np.ndarray  # the points the law was fitted to
    y: np.ndarray
    level: float = DEFAULT_LEVEL

    @property
    def k(self) -> Estimate:
        return interval(np.exp(self.log_k), np.exp(self.boot_log_k), self.level)

    @property
    def exponent_ci(self) -> Estimate:
        return interval(self.exponent, self.boot_exponent, self.level)

    def predict(self, x: float) -> Estimate:
        """Value at x with the interval of the replicates' predictions at x."""
        value = np.exp(self.log_k + self.exponent * np.log(x))
        return interval(value, np.exp(self.boot_log_k + self.boot_exponent * np.log(x)), self.level)

    def band(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fit, lower, upper) over an array of x, for plotting."""
        estimates = [self.predict(float(v)) for v in x]
        return tuple(np.array([getattr(e, f) for e in estimates]) for f in ("value", "lo", "hi"))

    def to_json(self, exponent_name: str = "exponent") -> dict:
        return {"k": self.k.to_json(), exponent_name: self.exponent_ci.to_json(),
                "n_points": int(len(self.x)), "n_boot_used": int(len(self.boot_exponent))}


def from_replicates(x: np.ndarray, y: np.ndarray, boot_y_RxP: np.ndarray,
                    level: float = DEFAULT_LEVEL) -> PowerLaw:
    """Power law through (x, y) with replicates from refits of bootstrapped y rows (NaN rows dropped)."""
    log_x = np.log(x)
    (log_k,), (exponent,) = fit_lines(log_x, np.log(y)[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_boot = np.log(boot_y_RxP)
    ok = np.isfinite(log_boot).all(axis=1)
    boot_log_k, boot_exponent = fit_lines(log_x, log_boot[ok]) if ok.any() else (np.zeros(0), np.zeros(0))
    return PowerLaw(float(log_k), float(exponent), boot_log_k, boot_exponent, np.asarray(x), np.asarray(y), level)


def bootstrap_pairs(x: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator,
                    level: float = DEFAULT_LEVEL) -> PowerLaw:
    """Power law with CIs from resampling (x, y) pairs; resamples with a single distinct x are dropped."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    log_x, log_y = np.log(x), np.log(y)
    (log_k,), (exponent,) = fit_lines(log_x, log_y[None, :])
    idx_RxP = rng.integers(0, len(x), size=(n_boot, len(x)))
    lx, ly = log_x[idx_RxP], log_y[idx_RxP]
    lx_c = lx - lx.mean(axis=1, keepdims=True)
    sxx = (lx_c * lx_c).sum(axis=1)
    ok = sxx > 1e-12
    slopes = (lx_c[ok] * (ly[ok] - ly[ok].mean(axis=1, keepdims=True))).sum(axis=1) / sxx[ok]
    intercepts = ly[ok].mean(axis=1) - slopes * lx[ok].mean(axis=1)
    return PowerLaw(float(log_k), float(exponent), intercepts, slopes, x, y, level)


def loglog_interp(x: np.ndarray, y: np.ndarray):
    """ln y as a function of ln x: piecewise linear through the points (y averaged per distinct x).

    Extended by the end segments: such curves (tokens or FLOPs per token against N) are nearly
    straight in log-log, and a polynomial would run away for a far-off bootstrap vertex.
    """
    log_x, inverse = np.unique(np.log(x), return_inverse=True)
    log_y = np.bincount(inverse, weights=np.log(y)) / np.bincount(inverse)
    if len(log_x) < 2:
        raise ValueError("loglog_interp needs >= 2 distinct x")

    def at(log_x_new):
        log_x_new = np.asarray(log_x_new, dtype=float)
        left = log_y[0] + (log_x_new - log_x[0]) * (log_y[1] - log_y[0]) / (log_x[1] - log_x[0])
        right = log_y[-1] + (log_x_new - log_x[-1]) * (log_y[-1] - log_y[-2]) / (log_x[-1] - log_x[-2])
        inside = np.interp(log_x_new, log_x, log_y)
        return np.where(log_x_new < log_x[0], left, np.where(log_x_new > log_x[-1], right, inside))

    return at
