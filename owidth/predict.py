"""Infinite-width predictions of training and inference from kernels.

Conventions. Training minimises the mean squared error

    L(theta) = 1/(2n) sum_i ||f(x_i) - y_i||^2        (n training points)

by gradient descent ``theta <- theta - lr grad L`` (or gradient flow
``d theta/dt = -grad L``). For a linear(ized) model with NTK ``Theta`` the
training residual ``r = f(X) - Y`` then evolves as (Lee et al. 2019, eq. 8-9)

    r_t = (I - lr Theta / n)^t r_0                     (discrete GD, step t)
    r_t = exp(-Theta t / n) r_0                        (gradient flow, time t)

and any test point follows ``f_t(x*) = f_0(x*) - Theta(x*, X) Theta^-1 (r_0 - r_t)``.
Everything is computed in the eigenbasis ``Theta = V diag(lam) V^T`` (``eigh``,
no explicit inverse), with ``(1 - (1 - lr lam/n)^t) / lam`` and
``(1 - exp(-lam t/n)) / lam`` evaluated by ``expm1``/``log1p`` so that
vanishing eigenvalues give the exact limits ``lr t / n`` and ``t / n``.

Over random initialisations of an infinitely wide network, ``f_0`` is the
centred Gaussian process with the NNGP kernel ``K``, so the output at time t
is Gaussian with (Lee et al. 2019, eq. 14-16)

    mean(x*)      = A_t(x*) Y
    cov(x*, x*')  = K(x*, x*') + A_t(x*) K(X, X) A_t(x*')^T
                    - A_t(x*) K(X, x*') - K(x*, X) A_t(x*')^T,
    A_t(x*)       = Theta(x*, X) Theta^-1 (I - M_t),   M_t = (I - lr Theta/n)^t or exp(-Theta t/n).

``ridge`` adds ``ridge * I`` to ``Theta(X, X)``; it keeps the solution well
defined for singular kernels (the NNGP posterior has ``noise`` instead).
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks
from owidth.kernels.state import Kernel

__all__ = ["Prediction", "gradient_descent", "gradient_flow", "log_marginal_likelihood", "max_learning_rate",
           "nngp_posterior"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predictions at a set of times.

    Attributes:
      times: (T,) steps (gradient descent) or times (gradient flow); ``None``
        for the Bayesian posterior.
      mean_train: (T, n, k) training-set outputs (mean over initialisations,
        or the given network's outputs when ``f0`` was passed).
      mean_test: (T, m, k) test outputs, or ``None`` without test kernels.
      cov_test: (T, m, m) covariance over random initialisations of the test
        outputs (per output unit), or ``None`` when no NNGP was given.
      cov_train: (T, n, n) the same for the training set, or ``None``.

    References:
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> k = np.array([[2.0, 0.0], [0.0, 2.0]]); y = np.array([[1.0], [-1.0]])
      >>> p = ow.predict.gradient_descent(k, None, y, lr=0.25, steps=[0, 1])
      >>> p.mean_train.shape, p.mean_test is None
      ((2, 2, 1), True)
    """

    times: jax.Array | None
    mean_train: jax.Array
    mean_test: jax.Array | None
    cov_test: jax.Array | None
    cov_train: jax.Array | None


def _split(k, what: str):
    """(ntk, nngp) arrays from a Kernel or a plain NTK array."""
    if k is None:
        return None, None
    if isinstance(k, Kernel):
        if k.ntk is None:
            raise ValueError(f"ow.predict: {what} has no NTK; compute it with get=('nngp', 'ntk')")
        return jnp.asarray(k.ntk), None if k.nngp is None else jnp.asarray(k.nngp)
    return jnp.asarray(k), None


def _nngp_only(k, what: str):
    if k is None:
        return None
    if isinstance(k, Kernel):
        if k.nngp is None:
            raise ValueError(f"ow.predict: {what} has no NNGP; compute it with get=('nngp', 'ntk')")
        return jnp.asarray(k.nngp)
    return jnp.asarray(k)


def _check_times(times, *, integer: bool) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(times))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"ow.predict: steps/times must be a number or a 1-D sequence, got {times!r}")
    if integer and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"ow.predict: gradient-descent steps must be integers, got {times!r}")
        arr = arr.astype(np.int64)
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"ow.predict: steps/times must be finite and >= 0, got {times!r}")
    return arr


def _factor(lam, times, n, lr, discrete):
    """(T, n_eig) arrays g = (1 - m(lam)) / lam and m(lam), the decay of each eigenmode."""
    t = times[:, None]
    if discrete:
        a = lr * lam[None, :] / n  # per-step contraction 1 - a
        safe = a < 1.0
        log1m = jnp.log1p(-jnp.where(safe, a, 0.0))
        one_minus_m = jnp.where(safe, -jnp.expm1(t * log1m), 1.0 - jnp.power(1.0 - a, t))
        small = jnp.abs(lam)[None, :] <= jnp.finfo(lam.dtype).eps * jnp.max(jnp.abs(lam))
        g = jnp.where(small, lr * t / n, one_minus_m / jnp.where(small, 1.0, lam[None, :]))
    else:
        one_minus_m = -jnp.expm1(-t * lam[None, :] / n)
        small = jnp.abs(lam)[None, :] <= jnp.finfo(lam.dtype).eps * jnp.max(jnp.abs(lam))
        g = jnp.where(small, t / n, one_minus_m / jnp.where(small, 1.0, lam[None, :]))
    return g, one_minus_m


def _as_outputs(y):
    y = jnp.asarray(y)
    return (y[:, None], True) if y.ndim == 1 else (y, False)


def _check_values(where: str, **blocks) -> None:
    """Concrete kernel blocks (arrays or ``ow.Kernel``), targets and outputs must be finite: a NaN or Inf
    anywhere would spread through ``eigh`` into every prediction. Run before anything is computed."""
    for name, value in blocks.items():
        if value is None:
            continue
        if isinstance(value, Kernel):
            for field in ("nngp", "ntk"):
                if getattr(value, field) is not None:
                    _checks.finite_values(f"{name}.{field}", getattr(value, field), where=where)
        else:
            _checks.finite_values(name, value, where=where)


def _check_shapes(where: str, *, k, y, kxt=None, ktt=None, f0_train=None, f0_test=None) -> None:
    """Shapes of the training kernel ``k`` (n, n), targets ``y`` (n,) or (n, k), test-train kernel
    ``kxt`` (m, n), test-test kernel ``ktt`` (m, m) and initial outputs (shaped like the targets)."""
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{where}: k_train must be square (n, n), got shape {tuple(k.shape)}")
    n = k.shape[0]
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"{where}: y_train must have shape ({n},) or ({n}, k), one row per training point of "
                         f"k_train ({n} x {n}), got shape {tuple(y.shape)}")
    if kxt is not None and (kxt.ndim != 2 or kxt.shape[1] != n):
        raise ValueError(f"{where}: k_test_train must have shape (m, {n}) (test points x the {n} training points "
                         f"of k_train), got shape {tuple(kxt.shape)}")
    if ktt is not None and kxt is not None and tuple(ktt.shape) != (kxt.shape[0],) * 2:
        m = kxt.shape[0]
        raise ValueError(f"{where}: k_test_test must have shape ({m}, {m}) for the {m} test points of "
                         f"k_test_train, got shape {tuple(ktt.shape)}")
    for name, f0, rows in (("f0_train", f0_train, n), ("f0_test", f0_test, None if kxt is None else kxt.shape[0])):
        if f0 is None:
            continue
        if rows is None:
            raise ValueError(f"{where}: f0_test needs k_test_train")
        want = (rows,) + tuple(y.shape[1:])
        if tuple(jnp.shape(f0)) != want:
            raise ValueError(f"{where}: {name} must have shape {want} (like y_train, one row per point), got "
                             f"shape {tuple(jnp.shape(f0))}")


def _dynamics(k_train, k_test_train, y_train, *, times, lr, discrete, k_test_test, ridge, f0_train, f0_test,
              where):
    if discrete:
        _checks.positive_number("lr", lr, where=where)
    ridge = _checks.nonneg_number("ridge", ridge, where=where)
    if y_train is None:
        raise TypeError(f"{where}: y_train is missing; pass the (n,) or (n, k) training targets")
    _check_values(where, k_train=k_train, k_test_train=k_test_train, k_test_test=k_test_test, y_train=y_train,
                  f0_train=f0_train, f0_test=f0_test)
    theta, nngp = _split(k_train, "k_train")
    theta_xt, nngp_xt = _split(k_test_train, "k_test_train")
    nngp_tt = _nngp_only(k_test_test, "k_test_test")
    _check_shapes(where, k=theta, y=jnp.asarray(y_train), kxt=theta_xt, ktt=nngp_tt, f0_train=f0_train,
                  f0_test=f0_test)
    if nngp is not None and nngp.shape != theta.shape:
        raise ValueError(f"{where}: k_train.nngp has shape {tuple(nngp.shape)}, its ntk {tuple(theta.shape)}")
    if nngp_xt is not None and nngp_xt.shape != theta_xt.shape:
        raise ValueError(f"{where}: k_test_train.nngp has shape {tuple(nngp_xt.shape)}, its ntk "
                         f"{tuple(theta_xt.shape)}")
    n = theta.shape[0]
    y, squeeze = _as_outputs(y_train)
    times_arr = jnp.asarray(times, dtype=theta.dtype)

    lam, v = jnp.linalg.eigh(theta + ridge * jnp.eye(n, dtype=theta.dtype))
    g, one_minus_m = _factor(lam, times_arr, n, lr, discrete)  # (T, n)
    f0x = jnp.zeros_like(y) if f0_train is None else _as_outputs(f0_train)[0]
    r0 = f0x - y  # initial residual
    vr0 = v.T @ r0  # (n, k)
    # train: f_t = f0 - V (1 - m) V^T r0
    mean_train = f0x[None] - jnp.einsum("ij,tj,jk->tik", v, one_minus_m, vr0)
    mean_test = None
    if theta_xt is not None:
        f0t = jnp.zeros((theta_xt.shape[0], y.shape[1]), y.dtype) if f0_test is None else _as_outputs(f0_test)[0]
        tv = theta_xt @ v  # (m, n)
        mean_test = f0t[None] - jnp.einsum("ij,tj,jk->tik", tv, g, vr0)

    cov_train = cov_test = None
    if nngp is not None:
        # A_t(train) = V (1 - m) V^T ; cov = K + A K A^T - A K - K A^T
        kv = v.T @ nngp @ v
        a_train = jnp.einsum("ij,tj,kj->tik", v, one_minus_m, v)
        ak = a_train @ nngp
        cov_train = nngp[None] + a_train @ nngp @ jnp.swapaxes(a_train, 1, 2) - ak - jnp.swapaxes(ak, 1, 2)
        if theta_xt is not None and nngp_xt is not None and nngp_tt is not None:
            a_test = jnp.einsum("ij,tj,kj->tik", tv, g, v)  # (T, m, n)
            akx = a_test @ nngp_xt.T  # A K(X, x*)
            cov_test = (
                nngp_tt[None]
                + jnp.einsum("tij,jk,tlk->til", a_test @ v, kv, a_test @ v)
                - akx
                - jnp.swapaxes(akx, 1, 2)
            )
    if squeeze:
        mean_train = mean_train[..., 0]
        mean_test = None if mean_test is None else mean_test[..., 0]
    return Prediction(times_arr, mean_train, mean_test, cov_test, cov_train)


def gradient_descent(k_train, k_test_train=None, y_train=None, *, lr: float, steps, k_test_test=None,
                     ridge: float = 0.0, f0_train=None, f0_test=None) -> Prediction:
    """Outputs of a linearised / infinitely wide network after ``steps`` of gradient descent.

    Args:
      k_train: NTK on the training set, (n, n) array, or an ``ow.Kernel``
        (then its NNGP gives the covariance over initialisations too).
      k_test_train: NTK between test and training points, (m, n) or Kernel.
      y_train: (n,) or (n, k) targets.
      lr: learning rate of ``theta <- theta - lr grad L`` with
        ``L = 1/(2n) sum ||f - y||^2``.
      steps: an int or a sequence of ints (all computed at once).
      k_test_test: ``ow.Kernel`` or NNGP array (m, m) for the test covariance.
      ridge: added to the NTK's diagonal (finite, >= 0).
      f0_train, f0_test: outputs of one particular network at initialisation;
        then the result is that (linearised) network's trajectory rather than
        the mean over initialisations.

    Bad input: NaN or Inf in a concrete kernel block, target or ``f0``, a
    non-finite or negative ``ridge``, and blocks whose shapes do not fit
    together raise ``ValueError`` before anything is computed (under
    ``jax.jit`` only the shapes are checked).

    Returns:
      :class:`Prediction` with leading time axis.

    References:
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> k = np.array([[2.0, 0.0], [0.0, 2.0]])      # an NTK on two orthogonal points
      >>> y = np.array([[1.0], [-1.0]])
      >>> p = ow.predict.gradient_descent(k, None, y, lr=0.25, steps=[1, 2])
      >>> print(np.round(np.asarray(p.mean_train[:, 0, 0]), 4))   # 1 - (1 - lr k / n)^t, k = n = 2
      [0.25   0.4375]
    """
    times = _check_times(steps, integer=True)
    return _dynamics(k_train, k_test_train, y_train, times=times, lr=lr, discrete=True, k_test_test=k_test_test,
                     ridge=ridge, f0_train=f0_train, f0_test=f0_test, where="ow.predict.gradient_descent")


def gradient_flow(k_train, k_test_train=None, y_train=None, *, times, k_test_test=None, ridge: float = 0.0,
                  f0_train=None, f0_test=None) -> Prediction:
    """As :func:`gradient_descent` for continuous time ``d theta/dt = -grad L`` (``times`` real >= 0).

    ``gradient_descent(..., lr, steps=t)`` approaches ``gradient_flow(..., times=lr t)`` as lr -> 0.

    References:
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> k = np.array([[2.0, 0.0], [0.0, 2.0]]); y = np.array([[1.0], [-1.0]])
      >>> p = ow.predict.gradient_flow(k, None, y, times=[0.5])
      >>> round(float(p.mean_train[0, 0, 0]), 4)      # 1 - exp(-k t / n), k = n = 2
      0.3935
    """
    times = _check_times(times, integer=False)
    return _dynamics(k_train, k_test_train, y_train, times=times, lr=1.0, discrete=False, k_test_test=k_test_test,
                     ridge=ridge, f0_train=f0_train, f0_test=f0_test, where="ow.predict.gradient_flow")


def max_learning_rate(k_train, *, momentum: float = 0.0) -> jax.Array:
    """The largest learning rate at which gradient descent on the MSE converges, in the kernel regime.

    With ``L = 1/(2n) sum ||f - y||^2`` the residual evolves as ``r <- (I - lr Theta / n) r``, a
    contraction iff ``lr < 2 n / lambda_max(Theta)``; with heavy-ball momentum ``beta`` the bound is
    ``2 (1 + beta) n / lambda_max`` (Polyak 1964; Goh 2017). Above it the linearised (infinitely wide)
    network diverges; finite networks between ``2 n / lambda_max`` and about twice that can instead
    leave the kernel regime and converge (the catapult phase of Lewkowycz et al. 2020).

    Args:
      k_train: the NTK on the ``n`` training points, (n, n), or an ``ow.Kernel`` (its ``ntk``).
      momentum: heavy-ball momentum ``beta`` in [0, 1).

    Returns:
      The learning rate, a scalar array (``jax.jit``-able).

    References:
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>
      - Lewkowycz et al. 2020, The large learning rate phase of deep learning: the catapult mechanism. <https://arxiv.org/abs/2003.02218>
      - Goh 2017, Why Momentum Really Works. Distill. <https://distill.pub/2017/momentum/>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> float(ow.predict.max_learning_rate(np.array([[3.0, 1.0], [1.0, 3.0]])))   # 2 n / lambda_max = 4 / 4
      1.0
    """
    where = "ow.predict.max_learning_rate"
    ntk, _ = _split(k_train, "k_train")
    if ntk.ndim != 2 or ntk.shape[0] != ntk.shape[1]:
        raise ValueError(f"{where}: k_train must be a square (n, n) NTK, got shape {ntk.shape}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)) or not 0 <= momentum < 1:
        raise ValueError(f"{where}: momentum={momentum!r} must be a float in [0, 1)")
    if _concrete(ntk):
        _check_values(where, k_train=ntk)
    lam_max = jnp.linalg.eigvalsh(ntk)[-1]
    return 2.0 * (1.0 + momentum) * ntk.shape[0] / lam_max


def nngp_posterior(k_train, k_test_train, y_train, *, noise: float = 0.0, k_test_test=None) -> Prediction:
    """Exact Bayesian posterior of the NNGP prior (Lee et al. 2018), observation noise variance ``noise``.

        mean = K(x*, X) (K + noise I)^-1 Y,    cov = K(x*, x*) - K(x*, X) (K + noise I)^-1 K(X, x*)

    computed through ``eigh`` of ``K + noise I``. Kernels may be ``ow.Kernel``
    (their NNGP is used) or NNGP arrays: ``k_train`` (n, n), ``k_test_train``
    (m, n), ``k_test_test`` (m, m), with ``y_train`` (n,) or (n, k).
    ``noise`` must be finite and >= 0; NaN or Inf in a concrete kernel block or
    target, and shapes that do not fit together, raise ``ValueError`` before
    anything is computed.

    References:
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>
      - Rasmussen & Williams 2006, Gaussian Processes for Machine Learning (MIT Press), Ch. 2 and 5.

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> k = np.array([[1.0, 0.0], [0.0, 1.0]]); y = np.array([[1.0], [-1.0]])
      >>> p = ow.predict.nngp_posterior(k, np.array([[0.5, 0.0]]), y, noise=1.0, k_test_test=np.array([[1.0]]))
      >>> round(float(p.mean_test[0, 0, 0]), 4), round(float(p.cov_test[0, 0, 0]), 4)   # 0.5 / 2; 1 - 0.25 / 2
      (0.25, 0.875)
    """
    where = "ow.predict.nngp_posterior"
    noise = _checks.nonneg_number("noise", noise, where=where, what=" (a variance)")
    if k_test_train is None or y_train is None:
        raise TypeError(f"{where}: pass k_test_train (m, n) and y_train (n,) or (n, k)")
    _check_values(where, k_train=k_train, k_test_train=k_test_train, k_test_test=k_test_test, y_train=y_train)
    k = _nngp_only(k_train, "k_train")
    kxt = _nngp_only(k_test_train, "k_test_train")
    ktt = _nngp_only(k_test_test, "k_test_test")
    _check_shapes(where, k=k, y=jnp.asarray(y_train), kxt=kxt, ktt=ktt)
    n = k.shape[0]
    y, squeeze = _as_outputs(y_train)
    lam, v = jnp.linalg.eigh(k + noise * jnp.eye(n, dtype=k.dtype))
    cutoff = jnp.finfo(lam.dtype).eps * n * jnp.max(jnp.abs(lam))
    inv = jnp.where(lam > cutoff, 1.0 / jnp.where(lam > cutoff, lam, 1.0), 0.0)  # pseudo-inverse on the spectrum
    kv = kxt @ v
    mean = kv @ (inv[:, None] * (v.T @ y))
    cov = None if ktt is None else ktt - (kv * inv[None, :]) @ kv.T
    mean_train = (k @ v) @ (inv[:, None] * (v.T @ y))
    if squeeze:
        mean, mean_train = mean[..., 0], mean_train[..., 0]
    return Prediction(None, mean_train[None], mean[None], None if cov is None else cov[None], None)


def _concrete(*values) -> bool:
    return not any(isinstance(v, jax.core.Tracer) for v in values)


def log_marginal_likelihood(k_train, y, noise) -> jax.Array:
    """Log evidence of targets ``y`` under the centred Gaussian process with kernel ``k_train`` plus noise.

    For each output column ``y_c`` (n,) of ``Y`` (n, k), with ``s^2 = noise``
    (Rasmussen & Williams 2006, eq. 2.30):

        log p(y_c) = -1/2 y_c^T (K + s^2 I)^-1 y_c - 1/2 log det(K + s^2 I) - n/2 log 2 pi

    and the result is the sum over the k columns (output units are
    independent with the same kernel, see :class:`ow.Kernel`). It is computed
    from one Cholesky factor ``L L^T = K + s^2 I`` (R&W 2006, Algorithm 2.1):
    ``alpha = L^-T L^-1 Y``, ``log p = -1/2 sum(Y * alpha) - k sum_i log L_ii
    - n k/2 log 2 pi``, without an explicit inverse or determinant. Maximising
    it over the kernel's hyperparameters is evidence maximisation (type-II
    maximum likelihood, R&W 2006, sec. 5.4): ``jax.grad`` through
    :func:`ow.kernel` gives its gradient with respect to ``w_std``,
    ``b_std``, activation parameters and ``noise``.

    Args:
      k_train: (n, n) kernel of the training inputs (an NNGP for the Bayesian
        posterior of an infinitely wide network, Lee et al. 2018), or an
        ``ow.Kernel`` (its ``nngp`` is used).
      y: (n,) or (n, k) targets.
      noise: observation noise *variance* ``s^2`` (as in
        :func:`nngp_posterior`), a number or JAX scalar >= 0. ``0`` is allowed
        when ``K`` is positive definite; a small positive value (e.g. 1e-6
        times the mean of ``diag K`` in float64, more in float32) also
        regularises a singular ``K``.

    Returns:
      The scalar ``sum_c log p(y_c)``.

    Bad input. Shapes are checked always. With concrete inputs (the eager
    path), NaN/Inf in ``k_train`` or ``y``, a negative or non-finite
    ``noise``, and a ``K + s^2 I`` that is not numerically positive definite
    raise ``ValueError`` saying what to change. Under a transformation
    (``jax.grad``/``jit``/``vmap``, where values are unknown) such cases give
    ``-inf`` (as scikit-learn's GaussianProcessRegressor does), never NaN; its
    gradient is then 0 when the kernel itself is finite (a non-finite
    ``w_std`` gives a non-finite kernel, whose gradient cannot be finite).

    References:
      - Rasmussen & Williams 2006, Gaussian Processes for Machine Learning (MIT Press), Ch. 2 and 5.
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> k = np.eye(2); y = np.zeros((2, 1))
      >>> round(float(ow.predict.log_marginal_likelihood(k, y, 0.0)), 4)   # -n/2 log(2 pi)
      -1.8379
    """
    k = _nngp_only(k_train, "k_train")
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"ow.predict.log_marginal_likelihood: k_train must be square (n, n), got shape {k.shape}")
    if not jnp.issubdtype(k.dtype, jnp.floating):
        k = k.astype(jnp.result_type(float))
    n = k.shape[0]
    y = jnp.asarray(y)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"ow.predict.log_marginal_likelihood: y must be (n,) or (n, k) with n = {n} rows "
                         f"(those of k_train), got shape {y.shape}")
    y = (y[:, None] if y.ndim == 1 else y).astype(k.dtype)
    if isinstance(noise, bool) or not (isinstance(noise, (int, float)) or jnp.ndim(noise) == 0):
        raise TypeError(f"ow.predict.log_marginal_likelihood: noise must be a scalar (a variance), got {noise!r}")
    concrete = _concrete(k, y, noise)
    if _concrete(noise) and not (np.isfinite(float(noise)) and float(noise) >= 0):
        raise ValueError(f"ow.predict.log_marginal_likelihood: noise is a variance and must be finite and >= 0, "
                         f"got {float(noise)!r}")
    for name, a in (("k_train", k), ("y", y)):
        if _concrete(a) and not np.all(np.isfinite(np.asarray(a))):
            raise ValueError(f"ow.predict.log_marginal_likelihood: {name} contains NaN or Inf"
                             + ("; check the kernel's hyperparameters and inputs" if name == "k_train" else ""))
    a = k + noise * jnp.eye(n, dtype=k.dtype)
    if concrete:
        lml = _lml_cholesky(a, y)
        if not np.isfinite(float(lml)):
            raise ValueError(
                "ow.predict.log_marginal_likelihood: K + noise I is not numerically positive definite (its "
                f"Cholesky factorisation failed, n = {n}); increase noise (e.g. to 1e-6 mean(diag K) in float64, "
                "1e-3 in float32) or remove duplicated inputs")
        return lml
    # Traced: where the factorisation fails, factor I instead (so that the gradient is 0, not NaN) and return -inf.
    ok = jnp.all(jnp.isfinite(jax.lax.stop_gradient(jnp.linalg.cholesky(a))))
    lml = _lml_cholesky(jnp.where(ok, a, jnp.eye(n, dtype=k.dtype)), y)
    return jnp.where(ok, lml, -jnp.inf)


def _lml_cholesky(a, y):
    """``sum_c log N(y_c; 0, a)`` from the Cholesky factor of ``a`` (R&W 2006, Algorithm 2.1)."""
    n, k = y.shape
    chol = jnp.linalg.cholesky(a)
    alpha = jax.scipy.linalg.cho_solve((chol, True), y)
    return (-0.5 * jnp.sum(y * alpha) - k * jnp.sum(jnp.log(jnp.diagonal(chol)))
            - 0.5 * n * k * jnp.log(2.0 * jnp.pi))
