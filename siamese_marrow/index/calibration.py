"""Temperature scaling of the consensus g: apply a fitted temperature, fit one, read a bank's.

g is a softmax of the consensus logits z, so ``log g = z - logsumexp(z)`` and, for a scalar
temperature T > 0, ``softmax(log g / T) = softmax(z / T)``: the temperature is applied to the
probabilities directly, without the logits. It divides the logits the model's own tau already
divides, so it is a second, post-hoc temperature fitted on held-out images (Guo et al. 2017). It
never changes the top class, only how confident g is, and so which calls ``--abstain-below`` keeps.

The fitted value is kept in the bank's manifest (``calibration``: ``{"temperature": T, ...}``),
written by ``bank calibrate`` and used by ``classify``; a bank without one uses T = 1.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import BankError
from ..utils import brief

#: Probabilities are floored here before the log (float32 g underflows to 0 far from the top).
_FLOOR = 1e-40

#: The temperatures :func:`fit_temperature` searches between.
T_RANGE = (0.05, 20.0)


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature {temperature!r} must be a finite number > 0")
    return t


def _log_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities of shape {p.shape}; expected (N, C)")
    return np.log(np.clip(p, _FLOOR, None))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)`` row by row: g ``(N, C)`` -> temperature-scaled g ``(N, C)``
    float32. T = 1 returns the probabilities unchanged."""
    t = _check_temperature(temperature)
    if t == 1.0:
        return np.asarray(probs, dtype=np.float32)
    z = _log_probs(probs) / t
    z -= z.max(axis=1, keepdims=True) if z.size else 0.0
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, labels: Sequence[int] | np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes ``labels (N,)`` under g ``(N, C)``
    scaled by ``temperature``."""
    t = _check_temperature(temperature)
    y = np.asarray(labels, dtype=np.int64)
    z = _log_probs(probs) / t
    if len(y) != len(z):
        raise ValueError(f"{len(z)} rows of probabilities but {len(y)} labels")
    if not len(y):
        return 0.0
    top = z.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def fit_temperature(
    probs: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    bounds: tuple[float, float] = T_RANGE,
    tol: float = 1e-6,
) -> float:
    """The temperature T in ``bounds`` that minimises :func:`nll` of ``labels (N,)`` under
    g ``(N, C)``.

    The NLL is convex in ``1 / T`` (a log-sum-exp of linear functions of it, minus a linear one),
    so a golden-section search over ``1 / T`` finds the minimum; no scipy. A set the model gets
    all right is best served by ever smaller T: the result is then near the lower bound.
    """
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("fit_temperature needs at least one labelled image")
    logp = _log_probs(probs)
    rows = np.arange(len(y))

    def loss(beta: float) -> float:
        z = logp * beta
        top = z.max(axis=1, keepdims=True)
        return float(np.mean(top[:, 0] + np.log(np.exp(z - top).sum(axis=1)) - z[rows, y]))

    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol * max(1.0, lo):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return 2.0 / (lo + hi)


def bank_temperature(bank: Any) -> float:
    """The temperature stored in a bank's manifest (``bank.calibration``), 1.0 when none.

    A value that is not a finite number > 0 (a hand-edited manifest) is refused with
    :class:`BankError`, naming it."""
    cal = getattr(bank, "calibration", None) or {}
    if not isinstance(cal, dict):
        raise BankError(
            f"the bank's manifest has calibration {brief(cal)}, not a mapping; run "
            "siamese-marrow bank calibrate again"
        )
    t = cal.get("temperature", 1.0)
    ok = isinstance(t, numbers.Real) and not isinstance(t, bool) and math.isfinite(t) and t > 0
    if not ok:
        raise BankError(
            f"the bank's manifest has calibration temperature {brief(t)}, not a number > 0; run "
            "siamese-marrow bank calibrate again"
        )
    return float(t)
