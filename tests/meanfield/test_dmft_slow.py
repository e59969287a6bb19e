"""Finite muP networks approach the DMFT as the width grows (``pytest -m slow``)."""

import os

import numpy as np
import pytest

import owidth as ow
from owidth.experiments.dmft import _finite

# width-4096 ensembles and DMFT Monte Carlo: run optimised (tests/conftest.py)
pytestmark = [pytest.mark.slow, pytest.mark.compute_bound]
os.environ.setdefault("OWIDTH_NO_PROGRESS", "1")

WIDTHS = [256, 1024, 4096]


def _data(p, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, d))
    return x, np.sin(x[:, 0] + 0.5 * x[:, 1])


def _networks(net, x, y, *, gamma0, lr, steps, seeds):
    """Train outputs (width, seed, step, point) and final last-hidden-layer kernels (width, seed, P, P)."""
    return _finite(net, x, y, widths=WIDTHS, seeds=seeds, gamma0=gamma0, lr=lr, steps=steps)


def test_deep_linear_networks_approach_the_dmft():
    """Outputs over the whole trajectory and final feature kernels: distance ~ width^-1/2."""
    net = ow.serial(ow.Dense(), ow.Identity(), ow.Dense(), ow.Identity(), ow.Dense(out=1))
    x, y = _data(8, 4)
    r = ow.dmft(net, x, y, gamma0=1.0, lr=0.5, steps=20)
    f, k = _networks(net, x, y, gamma0=1.0, lr=0.5, steps=20, seeds=6)
    dist = np.sqrt(((f - r.f_train) ** 2).mean((-2, -1))).mean(1)
    slope = np.polyfit(np.log(WIDTHS), np.log(dist), 1)[0]
    assert -0.7 <= slope <= -0.3, (slope, dist)
    kdist = (np.linalg.norm(k - r.phi[-1, -1], axis=(-2, -1)) / np.linalg.norm(r.phi[-1, -1])).mean(1)
    kslope = np.polyfit(np.log(WIDTHS), np.log(kdist), 1)[0]
    assert kslope <= -0.3, (kslope, kdist)


def test_tanh_networks_approach_the_monte_carlo_dmft():
    """2 hidden tanh layers: the distance falls with width (log-log slope <= -0.3), the per-seed spread like
    width^-1/2, and the width-4096 ensemble mean lies within 4 combined standard errors (DMFT Monte Carlo
    replicas + seeds) of the DMFT at every step and point."""
    net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(), ow.Tanh(), ow.Dense(out=1))
    x, y = _data(6, 4)
    r = ow.dmft(net, x, y, gamma0=1.0, lr=0.5, steps=12, samples=4000, response_samples=128, replicas=16)
    f, _ = _networks(net, x, y, gamma0=1.0, lr=0.5, steps=12, seeds=6)
    dist = np.sqrt(((f - r.f_train) ** 2).mean((-2, -1))).mean(1)
    assert dist[0] > dist[1] > dist[2], dist
    assert np.polyfit(np.log(WIDTHS), np.log(dist), 1)[0] <= -0.3, dist
    spread = np.sqrt(f.var(1, ddof=1).mean((-2, -1)))
    assert -0.7 <= np.polyfit(np.log(WIDTHS), np.log(spread), 1)[0] <= -0.3, spread
    se = np.sqrt(r.f_train_se**2 + f[-1].var(0, ddof=1) / f.shape[1])
    z = (f[-1].mean(0) - r.f_train)[1:] / se[1:]
    assert np.all(np.abs(z) < 4), z
    assert r.train_loss[-1] < 0.5 * r.train_loss[0]
