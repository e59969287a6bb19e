"""Generalisation of kernel and random-feature ridge regression from the kernel's eigenstructure.

Setting: a population measure mu on inputs, a kernel ``K(x, x') = sum_i lambda_i
phi_i(x) phi_i(x')`` with ``phi_i`` orthonormal under mu, and a target
``f*(x) = sum_i v_i phi_i(x)``; training labels ``y = f*(x) + noise`` with
noise variance ``eps^2``. Everything here takes the eigenvalues ``lambda_i``
and the squared target coefficients ``v_i^2`` (summed over outputs for a
vector target) and returns the predicted population test MSE against the
clean target f*. For a finite pool of M points taken as the population,
``lambda_i, u_i = eigh(K_pool / M)`` and ``v_i = u_i . f*(pool) / sqrt(M)``
(see :func:`pool_spectrum`).

Kernel ridge regression (Bordelon, Canatar & Pehlevan 2020; Canatar et al.
2021; Simon et al. 2021, "eigenlearning", eqs. 4-8): the predictor
``f(x) = K(x, X) (K(X, X) + delta I)^-1 y`` trained on n i.i.d. samples has,
to leading order in the deterministic-equivalent approximation,

    sum_i lambda_i / (lambda_i + kappa) + delta / kappa = n        (kappa > 0)
    L_i = lambda_i / (lambda_i + kappa)                             (learnabilities)
    E0  = n / (n - sum_i L_i^2)                                     (overfitting coefficient)
    test MSE (noisy test labels) = E0 (sum_i (1 - L_i)^2 v_i^2 + eps^2).

Against the clean target, subtract ``eps^2``.

Random-feature ridge regression (RF; Simon et al. 2023 "More is Better",
Sec. 4; Bach 2023; Atanasov, Zavatone-Veth & Pehlevan 2024): features
``phi_j(x) = sigma(w_j . x) / sqrt(N)``, j = 1..N, with ``E_w[sum_j phi_j(x)
phi_j(x')] = K(x, x')``; ridge ``delta ||a||^2``. Conditional on the features,
RF regression is linear ridge regression with the feature covariance
``A = F^T F`` (F_jk = <phi_j, phi_k>_mu) in place of Lambda and the part of the
target outside the feature span acting as noise; its test error is
``E0(A) (kappa^2 v^T (A + kappa)^-2 v + eps^2)`` with ``n = tr A (A + kappa)^-1 +
delta / kappa``. Averaging over features with the sample-covariance
deterministic equivalent ``kappa (A + kappa)^-1 ~ gamma (Lambda + gamma)^-1``,

    n = df1(gamma) + delta / kappa,    kappa = gamma (1 - df1(gamma) / N),
    df1(gamma) = sum_i lambda_i / (lambda_i + gamma),
    df2(gamma) = sum_i lambda_i^2 / (lambda_i + gamma)^2,   gamma' = 1 / (1 - df2 / N),
    kappa^2 (A + kappa)^-2 ~ (gamma - kappa gamma') (Lambda + gamma)^-1 + kappa gamma gamma' (Lambda + gamma)^-2,
    tr A^2 (A + kappa)^-2 ~ sum_i [lambda_i / (lambda_i + gamma) - kappa gamma' lambda_i / (lambda_i + gamma)^2],

(the second-order equivalents follow from differentiating the first in kappa),
and the test MSE is ``n / (n - tr A^2 (A+kappa)^-2) * (v^T kappa^2 (A+kappa)^-2 v
+ eps^2)``. As N -> infinity, gamma = kappa and it reduces to kernel ridge
regression; at ``delta -> 0`` and ``N = n`` the overfitting coefficient
diverges (the double-descent peak).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import brentq

__all__ = ["KRRTheory", "RFTheory", "eigenlearning", "pool_spectrum", "random_feature_risk"]


@dataclasses.dataclass(frozen=True)
class KRRTheory:
    """Kernel ridge regression's predicted generalisation (:func:`eigenlearning`).

    Attributes:
      kappa: the effective regulariser, the root of ``sum_i lambda_i / (lambda_i + kappa) + delta / kappa = n``.
      e0: the overfitting coefficient ``n / (n - sum_i L_i^2)``.
      learnability: ``L_i = lambda_i / (lambda_i + kappa)`` per eigenmode.
      test_mse: the population test MSE against the clean target f*.

    References:
      - Simon et al. 2021, The Eigenlearning Framework: A Conservation Law Perspective on Kernel Regression
        and Wide Neural Networks. <https://arxiv.org/abs/2110.03922>
      - Bordelon, Canatar & Pehlevan 2020, Spectrum Dependent Learning Curves in Kernel Regression and Wide
        Neural Networks. <https://arxiv.org/abs/2002.02561>
    """

    kappa: float
    e0: float
    learnability: np.ndarray
    test_mse: float  # against the clean target


@dataclasses.dataclass(frozen=True)
class RFTheory:
    """Random-feature ridge regression's predicted generalisation (:func:`random_feature_risk`).

    Attributes:
      kappa: the effective regulariser ``gamma (1 - df1(gamma) / N)``.
      gamma: the feature-averaged scale solving ``n = df1(gamma) + delta / kappa``.
      e0: the overfitting coefficient ``n / (n - tr A^2 (A + kappa)^-2)`` (diverges at N = n, delta -> 0).
      test_mse: the population test MSE against the clean target f*.

    References:
      - Simon et al. 2023, More is Better in Modern Machine Learning: when Infinite Overparameterization is
        Optimal and Overfitting is Obligatory. <https://arxiv.org/abs/2311.14646>
      - Atanasov, Zavatone-Veth & Pehlevan 2024, Scaling and Renormalization in High-Dimensional Regression.
        <https://arxiv.org/abs/2405.00592>
    """

    kappa: float
    gamma: float
    e0: float
    test_mse: float  # against the clean target


def _check(eigvals, coeffs2, n, ridge):
    lam = np.clip(np.asarray(eigvals, dtype=np.float64), 0.0, None)
    v2 = np.asarray(coeffs2, dtype=np.float64)
    if lam.shape != v2.shape or lam.ndim != 1:
        raise ValueError(f"eigvals and coeffs2 must be 1-D of equal length, got {lam.shape} and {v2.shape}")
    if not n > 0:
        raise ValueError(f"n must be positive, got {n}")
    if not ridge > 0:
        raise ValueError(f"ridge must be positive (use a tiny value for the ridgeless limit), got {ridge}")
    return lam, v2


def pool_spectrum(k_pool: np.ndarray, f_pool: np.ndarray):
    """Eigenvalues ``lambda_i`` of ``K_pool / M`` and squared target coefficients ``v_i^2``.

    The pool's M points are the population (uniform measure); eigenfunctions
    ``phi_i(x_m) = sqrt(M) u_i[m]``, so ``v_i = u_i . f / sqrt(M)``. ``f_pool`` may
    be (M,) or (M, C); for C outputs ``v_i^2`` is averaged over outputs (so the
    predicted MSE is the per-output mean).

    References:
      - Simon, Dickens, Karkada & DeWeese 2021, The Eigenlearning Framework: A Conservation Law Perspective on Kernel Regression and Wide Neural Networks. <https://arxiv.org/abs/2110.03922>

    Examples:
      >>> import numpy as np
      >>> from owidth.theory.eigenlearning import pool_spectrum
      >>> lam, v2 = pool_spectrum(np.eye(4), np.array([1.0, 1.0, 1.0, 1.0]))
      >>> print(np.round(np.sort(lam), 4), round(float(v2.sum()), 4))   # K/M = I/4; ||f||^2 / M = 1
      [0.25 0.25 0.25 0.25] 1.0
    """
    k = np.asarray(k_pool, dtype=np.float64)
    m = k.shape[0]
    lam, u = np.linalg.eigh((k + k.T) / (2 * m))
    f = np.asarray(f_pool, dtype=np.float64).reshape(m, -1)
    v2 = ((u.T @ f) ** 2 / m).mean(1)
    return np.clip(lam[::-1], 0.0, None), v2[::-1]


def eigenlearning(eigvals, coeffs2, n: float, ridge: float, noise: float = 0.0) -> KRRTheory:
    """Predicted test MSE of kernel ridge regression ``K(x,X)(K(X,X) + ridge I)^-1 y`` on n samples.

    See the module docstring (Simon et al. 2021, eqs. 4-8). ``noise`` is the
    label-noise variance eps^2 of the training labels; the returned
    ``test_mse`` is against the clean target.

    References:
      - Simon, Dickens, Karkada & DeWeese 2021, The Eigenlearning Framework: A Conservation Law Perspective on Kernel Regression and Wide Neural Networks. <https://arxiv.org/abs/2110.03922>
      - Bordelon, Canatar & Pehlevan 2020, Spectrum Dependent Learning Curves in Kernel Regression and Wide Neural Networks. <https://arxiv.org/abs/2002.02561>
      - Canatar, Bordelon & Pehlevan 2021, Spectral bias and task-model alignment explain generalization in kernel regression and infinitely wide neural networks. <https://arxiv.org/abs/2006.13198>

    Examples:
      >>> import numpy as np
      >>> from owidth.theory.eigenlearning import eigenlearning
      >>> out = eigenlearning(np.array([1.0]), np.array([1.0]), n=10, ridge=1e-6)
      >>> type(out).__name__
      'KRRTheory'
    """
    lam, v2 = _check(eigvals, coeffs2, n, ridge)

    def excess(log_k):  # decreasing in kappa
        k = np.exp(log_k)
        return np.sum(lam / (lam + k)) + ridge / k - n

    lo, hi = np.log(ridge / n) - 1.0, np.log(lam.sum() / n + ridge / n * 4.0 + 1e-300) + 2.0
    while excess(lo) < 0:
        lo -= 5.0
    while excess(hi) > 0:
        hi += 5.0
    kappa = float(np.exp(brentq(excess, lo, hi, xtol=1e-13, rtol=1e-13)))
    L = lam / (lam + kappa)
    e0 = n / (n - np.sum(L**2))
    return KRRTheory(kappa, float(e0), L, float(e0 * (np.sum((1 - L) ** 2 * v2) + noise) - noise))


def random_feature_risk(eigvals, coeffs2, n: float, n_features: float, ridge: float, noise: float = 0.0) -> RFTheory:
    """Deterministic-equivalent test MSE of random-feature ridge regression (module docstring).

    Args:
      eigvals, coeffs2: spectrum of the limiting kernel ``E_w sigma(w.x) sigma(w.x')`` and
        the target's squared coefficients.
      n: number of training samples.
      n_features: number of random features N.
      ridge: ridge delta on ``||a||^2`` (features scaled by ``1/sqrt(N)``), > 0.
      noise: label-noise variance of the training labels.

    References:
      - Simon, Karkada, Ghosh & Belkin 2023, More is Better in Modern Machine Learning: when Infinite Overparameterization is Optimal and Overfitting is Obligatory. <https://arxiv.org/abs/2311.14646>

    Examples:
      >>> import numpy as np
      >>> from owidth.theory.eigenlearning import random_feature_risk
      >>> out = random_feature_risk(np.array([1.0, 0.5]), np.array([1.0, 0.0]), n=10, n_features=50, ridge=1e-3)
      >>> type(out).__name__
      'RFTheory'
    """
    lam, v2 = _check(eigvals, coeffs2, n, ridge)
    N = float(n_features)
    df1 = lambda g: np.sum(lam / (lam + g))  # noqa: E731
    cap = min(n, N)

    def excess(log_g):  # increasing in gamma on df1(gamma) < min(n, N)
        g = np.exp(log_g)
        d = df1(g)
        return (n - d) * g * (1 - d / N) - ridge

    hi = np.log(lam.sum() + ridge) + 2.0
    while excess(hi) < 0:
        hi += 5.0
    if np.count_nonzero(lam > 0) > cap:  # the smallest admissible gamma: df1(gamma) = min(n, N)
        lo_g = np.exp(brentq(lambda lg: df1(np.exp(lg)) - cap, np.log(lam[lam > 0].min()) - 60.0, hi,
                             xtol=1e-14, rtol=1e-14))
        lo = np.log(lo_g) + 1e-12
    else:
        lo = np.log(ridge) - 60.0
    while excess(lo) > 0:
        lo -= 5.0
    gamma = float(np.exp(brentq(excess, lo, hi, xtol=1e-14, rtol=1e-14)))
    d1 = df1(gamma)
    kappa = gamma * (1 - d1 / N)
    gp = 1.0 / (1.0 - np.sum(lam**2 / (lam + gamma) ** 2) / N)
    bias = np.sum(v2 * ((gamma - kappa * gp) / (lam + gamma) + kappa * gamma * gp / (lam + gamma) ** 2))
    t2 = np.sum(lam / (lam + gamma) - kappa * gp * lam / (lam + gamma) ** 2)
    e0 = n / (n - t2)
    return RFTheory(float(kappa), gamma, float(e0), float(e0 * (bias + noise) - noise))
