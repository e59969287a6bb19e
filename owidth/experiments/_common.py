"""Small helpers shared by experiments (internal)."""

from __future__ import annotations

import numpy as np

from owidth._progress import progress

__all__ = ["centred_digits", "digits", "fit_loglog", "loglog_slope", "progress", "transfers"]


def fit_loglog(x: np.ndarray, y: np.ndarray, *, seed: int = 0, n_boot: int = 500) -> dict:
    """Least-squares slope of log(mean_s y[:, s]) vs log x, with a bootstrap SE over the seed axis.

    Args:
      x: (k,) positive abscissae (e.g. widths).
      y: (k, s) positive measurements, s repeats (seeds) per abscissa.
    """
    lx = np.log(x)
    slope, intercept = np.polyfit(lx, np.log(y.mean(1)), 1)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.shape[1], y.shape[1])
        boots.append(np.polyfit(lx, np.log(y[:, idx].mean(1)), 1)[0])
    return {"slope": float(slope), "intercept": float(intercept), "slope_se": float(np.std(boots, ddof=1))}


def digits(seed: int, *, n_test: int = 397):
    """scikit-learn's digits (shipped with the package, no download): inputs scaled to [0, 1],
    a seeded train/test split. Returns x_train, y_train, x_test, y_test (integer labels)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], data.target[order]
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def centred_digits(seed: int, n: int):
    """The first ``n`` training digits of :func:`digits`, features centred and each input rescaled to norm
    ``sqrt d`` (float32), with their integer labels."""
    x, labels, _, _ = digits(seed)
    x, labels = x[:n], labels[:n]
    x = x - x.mean(axis=0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(x.shape[1])
    return x.astype(np.float32), labels


def transfers(summary: dict) -> bool:
    """muTransfer's verdict (Yang et al. 2022): the best learning rate moves at most one grid step
    across widths under muP and more than one under SP."""
    return abs(summary["mup"]["shift_grid_steps"]) <= 1 and abs(summary["sp"]["shift_grid_steps"]) > 1


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of ``log y`` against ``log x`` for values already averaged (NaN if any y is not
    positive); :func:`fit_loglog` averages over a seed axis itself and adds a bootstrap error."""
    ys = np.asarray(ys, dtype=float)
    if not np.all(ys > 0):
        return float("nan")
    return float(np.polyfit(np.log(np.asarray(xs, dtype=float)), np.log(ys), 1)[0])
