"""Closed-form and convex-program theory for implicit biases of trained networks.

- :mod:`owidth.theory.woodworth`: the two-layer diagonal linear network
  ``beta = u*u - v*v`` from ``u0 = v0 = alpha`` converges under gradient flow
  to ``argmin Q_alpha(beta) s.t. X beta = y`` (Woodworth et al. 2020, Theorem 1),
  interpolating between the minimum-l2 (large alpha) and minimum-l1 (small
  alpha) interpolators.
"""

from owidth.theory.woodworth import (
    Q_alpha,
    min_l1_solution,
    min_l2_solution,
    q,
    train_diagonal_network,
    woodworth_solution,
)

__all__ = [
    "Q_alpha",
    "min_l1_solution",
    "min_l2_solution",
    "q",
    "train_diagonal_network",
    "woodworth_solution",
]
