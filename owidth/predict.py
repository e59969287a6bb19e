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

from owidth import _checks, _precision
from owidth.kernels.state import Kernel

__all__ = ["Prediction", "gradient_descent", "gradient_flow", "kernel_regression", "log_marginal_likelihood",
           "max_learning_rate", "nngp_posterior", "ntk_posterior"]


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


def _check_times(times, *, integer: bool, allow_inf: bool = False) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(times))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"ow.predict: steps/times must be a number or a 1-D sequence, got {times!r}")
    if integer and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"ow.predict: gradient-descent steps must be integers, got {times!r}")
        arr = arr.astype(np.int64)
    if allow_inf:
        if not np.issubdtype(arr.dtype, np.number) or np.any(np.isnan(arr)) or np.any(arr < 0):
            raise ValueError(f"ow.predict: times must be >= 0 (np.inf allowed), got {times!r}")
    elif np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"ow.predict: steps/times must be finite and >= 0, got {times!r}")
    return arr


def _factor(lam, times, n, lr, discrete, momentum=0.0, steps=None):
    """(T, n_eig) arrays g = (1 - m(lam)) / lam and 1 - m(lam), where m is the decay of each eigenmode.

    ``times`` (T,) as an array of the kernel's dtype; ``steps`` the same as concrete ints (discrete with
    momentum only). At ``t = inf`` (gradient flow) a mode with ``lam <= eps n max|lam|`` is never learned:
    ``1 - m = 0`` and ``g = 0`` (the pseudo-inverse, as in :func:`nngp_posterior`)."""
    if discrete and momentum != 0.0:
        g = _heavy_ball_factor(lam, steps, n, lr, momentum)
        return g, lam[None, :] * g
    t = times[:, None]
    small = jnp.abs(lam)[None, :] <= jnp.finfo(lam.dtype).eps * jnp.max(jnp.abs(lam))
    if discrete:
        a = lr * lam[None, :] / n  # per-step contraction 1 - a
        safe = a < 1.0
        log1m = jnp.log1p(-jnp.where(safe, a, 0.0))
        one_minus_m = jnp.where(safe, -jnp.expm1(t * log1m), 1.0 - jnp.power(1.0 - a, t))
        g = jnp.where(small, lr * t / n, one_minus_m / jnp.where(small, 1.0, lam[None, :]))
    else:
        inf = jnp.isinf(t)
        t_fin = jnp.where(inf, 0.0, t)
        one_minus_m = -jnp.expm1(-t_fin * lam[None, :] / n)
        g = jnp.where(small, t_fin / n, one_minus_m / jnp.where(small, 1.0, lam[None, :]))
        learned = jnp.abs(lam)[None, :] > jnp.finfo(lam.dtype).eps * lam.shape[0] * jnp.max(jnp.abs(lam))
        one_minus_m = jnp.where(inf, jnp.where(learned, 1.0, 0.0), one_minus_m)
        g = jnp.where(inf, jnp.where(learned, 1.0 / jnp.where(learned, lam[None, :], 1.0), 0.0), g)
    return g, one_minus_m


def _heavy_ball_factor(lam, steps, n, lr, beta):
    """(T, n_eig) ``g_t = (1 - m_t(lam)) / lam`` of heavy-ball gradient descent, exactly, by matrix powers.

    Per eigenmode the residual obeys ``r_{t+1} = (1 + beta - a) r_t - beta r_{t-1}``, ``a = lr lam / n``,
    ``r_{-1} = r_0``; ``g_t = (1 - r_t / r_0) / lam`` then obeys the affine recursion
    ``g_{t+1} = (1 + beta - a) g_t - beta g_{t-1} + lr / n`` from ``g_0 = g_{-1} = 0``, i.e.
    ``(g_t, g_{t-1}, 1) = C^t (0, 0, 1)`` with the 3 x 3 companion matrix ``C`` below. It contains no
    division by ``lam``, so vanishing eigenvalues give the exact limit. ``C^t`` for all requested ``t``
    at once by repeated squaring (``bit_length(max t)`` squarings, each result a product of at most as
    many matrices; rounding grows like ``log2(t) eps``, not ``t eps`` as a loop's would)."""
    dt = lam.dtype
    a = lr * lam / n
    zero, one = jnp.zeros_like(lam), jnp.ones_like(lam)
    c = jnp.stack([jnp.stack([1.0 + beta - a, -beta * one, lr / n * one], -1),
                   jnp.stack([one, zero, zero], -1),
                   jnp.stack([zero, zero, one], -1)], -2)  # (n_eig, 3, 3)
    steps = np.asarray(steps, dtype=np.int64)
    power = jnp.broadcast_to(jnp.eye(3, dtype=dt), (steps.size,) + c.shape)  # (T, n_eig, 3, 3)
    for b in range(max(1, int(steps.max()).bit_length())):
        bit = jnp.asarray((steps >> b) & 1, dtype=bool)[:, None, None, None]
        power = jnp.where(bit, power @ c[None], power)
        c = c @ c
    return power[..., 0, 2]


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


def _check_momentum(momentum, *, where: str) -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.integer, np.floating)) \
            or not 0 <= momentum < 1:
        raise ValueError(f"{where}: momentum={momentum!r} must be a number in [0, 1) (the heavy-ball "
                         "coefficient beta of optax.sgd(lr, momentum=beta); 0 for plain gradient descent)")
    return float(momentum)


def _check_loss(loss, y_train, *, where: str) -> None:
    """``loss`` must be a callable ``(f, y) -> scalar`` with ``f`` shaped like ``y_train`` (checked by
    ``jax.eval_shape``, nothing is compiled)."""
    if not callable(loss):
        raise ValueError(f"{where}: loss must be a callable (f, y) -> scalar, e.g. "
                         f"lambda f, y: -jnp.mean(jnp.sum(y * jax.nn.log_softmax(f), -1)); got {loss!r}")
    y = jnp.asarray(y_train)
    try:
        out = jax.eval_shape(loss, jax.ShapeDtypeStruct(y.shape, jnp.result_type(y.dtype, float)), y)
    except Exception as err:  # noqa: BLE001 - re-raised with the context the user needs
        raise ValueError(f"{where}: calling loss(f, y_train) with f shaped like y_train {tuple(y.shape)} "
                         f"failed: {type(err).__name__}: {err}") from err
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        raise ValueError(f"{where}: loss(f, y_train) must return a real scalar (the loss summed or averaged "
                         f"over the training set), got {out!r}")


def _prepare(k_train, k_test_train, y_train, *, k_test_test, ridge, f0_train, f0_test, where):
    """Validated (theta, nngp, theta_xt, nngp_xt, nngp_tt, ridge); raises before anything is computed."""
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
    return theta, nngp, theta_xt, nngp_xt, nngp_tt, ridge


def _dynamics(k_train, k_test_train, y_train, *, times, lr, discrete, k_test_test, ridge, f0_train, f0_test,
              where, momentum=0.0):
    if discrete:
        _checks.positive_number("lr", lr, where=where)
    theta, nngp, theta_xt, nngp_xt, nngp_tt, ridge = _prepare(
        k_train, k_test_train, y_train, k_test_test=k_test_test, ridge=ridge, f0_train=f0_train, f0_test=f0_test,
        where=where)
    n = theta.shape[0]
    y, squeeze = _as_outputs(y_train)
    times_arr = jnp.asarray(times, dtype=theta.dtype)

    lam, v = jnp.linalg.eigh(theta + ridge * jnp.eye(n, dtype=theta.dtype))
    g, one_minus_m = _factor(lam, times_arr, n, lr, discrete, momentum, times)  # (T, n)
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


def _loss_dynamics(k_train, k_test_train, y_train, *, loss, times, lr, momentum, discrete, k_test_test, ridge,
                   f0_train, f0_test, where):
    """Function-space trajectory of the linearised network under a general ``loss`` (no closed form).

    Discrete: ``f <- f + beta (f - f_prev) - lr Theta grad_f L(f)`` (and the test outputs with
    ``Theta(x*, X)``), iterated in one ``lax.fori_loop`` up to ``max(steps)``, the requested steps
    recorded on the way (memory ``O(T n k)``, not ``O(max(steps) n k)``). Continuous: the ODE
    ``df/dt = -Theta grad_f L(f)`` by ``jax.experimental.ode.odeint`` (adaptive Dormand-Prince)."""
    if discrete:
        _checks.positive_number("lr", lr, where=where)
    if k_test_test is not None:
        raise ValueError(f"{where}: k_test_test asks for the covariance over initialisations, which is Gaussian "
                         "(and computed) only for the mean squared error; drop k_test_test or loss")
    _check_loss(loss, y_train, where=where)
    theta, _, theta_xt, _, _, ridge = _prepare(k_train, k_test_train, y_train, k_test_test=None, ridge=ridge,
                                               f0_train=f0_train, f0_test=f0_test, where=where)
    n = theta.shape[0]
    y_in = jnp.asarray(y_train)
    y, squeeze = _as_outputs(y_in)
    dt = jnp.result_type(theta.dtype, y.dtype, float)
    theta = theta.astype(dt) + ridge * jnp.eye(n, dtype=dt)
    grad_loss = jax.grad(lambda f: loss(f[:, 0] if squeeze else f, y_in))
    f = (jnp.zeros(y.shape, dt) if f0_train is None else _as_outputs(f0_train)[0].astype(dt))
    has_test = theta_xt is not None
    ft = jnp.zeros((theta_xt.shape[0] if has_test else 0, y.shape[1]), dt)
    if has_test and f0_test is not None:
        ft = _as_outputs(f0_test)[0].astype(dt)
    kxt = theta_xt.astype(dt) if has_test else jnp.zeros((0, n), dt)

    def velocity(state):  # d(f, f_test) per unit of lr (discrete) or of time (flow)
        g = grad_loss(state[0])
        return -theta @ g, -kxt @ g

    if discrete:
        steps = jnp.asarray(times)

        def body(i, carry):
            (f, ft), (f_prev, ft_prev), (out, out_t) = carry
            hit = (steps == i)[:, None, None]
            out, out_t = jnp.where(hit, f[None], out), jnp.where(hit, ft[None], out_t)
            df, dft = velocity((f, ft))
            new = (f + momentum * (f - f_prev) + lr * df, ft + momentum * (ft - ft_prev) + lr * dft)
            return new, (f, ft), (out, out_t)

        out0 = (jnp.zeros((steps.size,) + f.shape, dt), jnp.zeros((steps.size,) + ft.shape, dt))
        _, _, (mean_train, mean_test) = jax.lax.fori_loop(0, int(np.max(times)) + 1, body, ((f, ft), (f, ft), out0))
    else:
        from jax.experimental.ode import odeint  # noqa: PLC0415 - only the loss path needs it

        grid = np.unique(np.concatenate([[0.0], np.asarray(times, dtype=float)]))  # odeint: increasing, from 0
        tol = 1e-10 if dt == jnp.float64 else 1e-6
        sol_f, sol_t = odeint(lambda state, _t: velocity(state), (f, ft), jnp.asarray(grid, dt), rtol=tol, atol=tol)
        idx = np.searchsorted(grid, np.asarray(times, dtype=float))
        mean_train, mean_test = sol_f[idx], sol_t[idx]
    if squeeze:
        mean_train, mean_test = mean_train[..., 0], mean_test[..., 0]
    return Prediction(jnp.asarray(times, dtype=dt), mean_train, mean_test if has_test else None, None, None)


@_precision.exact
def gradient_descent(k_train, k_test_train=None, y_train=None, *, lr: float, steps, momentum: float = 0.0,
                     loss=None, k_test_test=None, ridge: float = 0.0, f0_train=None, f0_test=None) -> Prediction:
    """Outputs of a linearised / infinitely wide network after ``steps`` of gradient descent.

    Mean squared error (``loss=None``), exactly, in closed form. With ``L = 1/(2n) sum ||f - y||^2`` and
    heavy-ball momentum ``beta`` in the convention of ``optax.sgd(lr, momentum=beta)`` (Polyak 1964;
    the same "standard", not Nesterov, momentum as neural-tangents)

        v_{t+1} = beta v_t + grad L(theta_t),   theta_{t+1} = theta_t - lr v_{t+1},   v_0 = 0,

    a linear model's outputs move by ``f_{t+1} - f_t = beta (f_t - f_{t-1}) - lr Theta grad_f L``, so
    per eigenmode ``lam`` of the NTK the residual obeys the two-term recursion

        r_{t+1} = (1 + beta - lr lam / n) r_t - beta r_{t-1},   r_{-1} = r_0,

    and any test point follows ``f_t(x*) = f_0(x*) - Theta(x*, X) V diag(g_t) V^T r_0`` with
    ``g_t = (1 - r_t / r_0) / lam`` (Lee et al. 2019, eq. 8-9 for ``beta = 0``, where
    ``r_t = (1 - lr lam / n)^t r_0``). For ``beta > 0``, ``g_t`` is a 3 x 3 companion-matrix power
    evaluated by repeated squaring for all steps at once, exact also for vanishing ``lam``; the
    recursion is stable iff ``lr < 2 (1 + beta) n / lam_max`` (:func:`max_learning_rate`).
    ``momentum=0`` uses the closed form above unchanged.

    General loss (``loss=callable``). ``loss(f, y_train) -> scalar`` with ``f`` shaped like ``y_train``
    (e.g. the mean cross-entropy). No closed form exists; the function-space recursion of the
    linearised network, exact under discrete gradient descent with the same momentum convention,

        f_{t+1} = f_t + beta (f_t - f_{t-1}) - lr Theta grad_f L(f_t),
        f_{t+1}(x*) = f_t(x*) + beta (f_t(x*) - f_{t-1}(x*)) - lr Theta(x*, X) grad_f L(f_t),

    is iterated up to ``max(steps)`` in one ``lax.fori_loop`` (cost ``max(steps)`` kernel-vector
    products). It starts from ``f0_train``/``f0_test`` (zero when not given, as in neural-tangents):
    for a non-quadratic loss the mean over initialisations is *not* the trajectory from the mean, so
    this is the trajectory of one (linearised) network; ``cov_*`` are ``None`` and NNGP blocks of
    ``ow.Kernel`` arguments are not used. ``loss=lambda f, y: 0.5 * jnp.sum((f - y) ** 2) / n``
    reproduces the closed form.

    Args:
      k_train: NTK on the training set, (n, n) array, or an ``ow.Kernel``
        (then its NNGP gives the covariance over initialisations too).
      k_test_train: NTK between test and training points, (m, n) or Kernel.
      y_train: (n,) or (n, k) targets.
      lr: learning rate of ``theta <- theta - lr grad L`` with
        ``L = 1/(2n) sum ||f - y||^2`` (or ``loss``).
      steps: an int or a sequence of ints (all computed at once).
      momentum: heavy-ball ``beta`` in [0, 1), as ``optax.sgd(lr, momentum=beta)``.
      loss: ``None`` for the mean squared error above, or a callable ``(f, y) -> scalar``.
      k_test_test: ``ow.Kernel`` or NNGP array (m, m) for the test covariance (MSE only).
      ridge: added to the NTK's diagonal (finite, >= 0).
      f0_train, f0_test: outputs of one particular network at initialisation;
        then the result is that (linearised) network's trajectory rather than
        the mean over initialisations.

    Bad input: NaN or Inf in a concrete kernel block, target or ``f0``, a
    non-finite or negative ``ridge``, ``momentum`` outside [0, 1), a ``loss``
    that is not a callable returning a real scalar, ``k_test_test`` with a
    ``loss``, and blocks whose shapes do not fit together raise
    ``ValueError`` before anything is computed (under ``jax.jit`` only the
    shapes are checked).

    Returns:
      :class:`Prediction` with leading time axis.

    References:
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>
      - Polyak 1964, Some methods of speeding up the convergence of iteration methods. USSR Comp. Math. and Math. Phys. 4(5).
      - Goh 2017, Why Momentum Really Works. Distill. <https://distill.pub/2017/momentum/>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> k = np.array([[2.0, 0.0], [0.0, 2.0]])      # an NTK on two orthogonal points
      >>> y = np.array([[1.0], [-1.0]])
      >>> p = ow.predict.gradient_descent(k, None, y, lr=0.25, steps=[1, 2])
      >>> print(np.round(np.asarray(p.mean_train[:, 0, 0]), 4))   # 1 - (1 - lr k / n)^t, k = n = 2
      [0.25   0.4375]
      >>> p = ow.predict.gradient_descent(k, None, y, lr=0.25, steps=[1, 2], momentum=0.5)
      >>> print(np.round(np.asarray(p.mean_train[:, 0, 0]), 4))   # r_2 = (1 + b - a) r_1 - b r_0 = 0.5625
      [0.25   0.5625]
      >>> import jax, jax.numpy as jnp
      >>> xent = lambda f, y: -jnp.mean(jnp.sum(y * jax.nn.log_softmax(f), -1))
      >>> p = ow.predict.gradient_descent(k, None, np.eye(2), lr=1.0, steps=[1], loss=xent)
      >>> print(np.round(np.asarray(p.mean_train[0]), 4))   # f_1 = lr Theta (y - softmax(0)) / n
      [[ 0.5 -0.5]
       [-0.5  0.5]]
    """
    where = "ow.predict.gradient_descent"
    times = _check_times(steps, integer=True)
    momentum = _check_momentum(momentum, where=where)
    if loss is not None:
        return _loss_dynamics(k_train, k_test_train, y_train, loss=loss, times=times, lr=lr, momentum=momentum,
                              discrete=True, k_test_test=k_test_test, ridge=ridge, f0_train=f0_train,
                              f0_test=f0_test, where=where)
    return _dynamics(k_train, k_test_train, y_train, times=times, lr=lr, discrete=True, k_test_test=k_test_test,
                     ridge=ridge, f0_train=f0_train, f0_test=f0_test, where=where, momentum=momentum)


@_precision.exact
def gradient_flow(k_train, k_test_train=None, y_train=None, *, times, loss=None, k_test_test=None,
                  ridge: float = 0.0, f0_train=None, f0_test=None) -> Prediction:
    """As :func:`gradient_descent` for continuous time ``d theta/dt = -grad L`` (``times`` real >= 0).

    ``gradient_descent(..., lr, steps=t)`` approaches ``gradient_flow(..., times=lr t)`` as lr -> 0.
    With ``loss=None`` (MSE) in closed form, ``r_t = exp(-Theta t / n) r_0``. With a callable
    ``loss(f, y_train) -> scalar`` the linearised network's function-space ODE (Lee et al. 2019, eq. 7)

        df/dt = -Theta grad_f L(f),     df(x*)/dt = -Theta(x*, X) grad_f L(f)

    is integrated from ``f0_train``/``f0_test`` (zero when not given) by
    ``jax.experimental.ode.odeint`` (adaptive Dormand-Prince, ``rtol = atol = 1e-10`` in float64,
    ``1e-6`` in float32), as neural-tangents' ``predict.gradient_descent(loss, ...)`` does; then
    ``cov_*`` are ``None`` (see :func:`gradient_descent`).

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
      >>> mse = lambda f, y: 0.25 * ((f - y) ** 2).sum()   # 1/(2n) sum ||f - y||^2, n = 2
      >>> round(float(ow.predict.gradient_flow(k, None, y, times=[0.5], loss=mse).mean_train[0, 0, 0]), 4)
      0.3935
    """
    where = "ow.predict.gradient_flow"
    times = _check_times(times, integer=False)
    if loss is not None:
        return _loss_dynamics(k_train, k_test_train, y_train, loss=loss, times=times, lr=1.0, momentum=0.0,
                              discrete=False, k_test_test=k_test_test, ridge=ridge, f0_train=f0_train,
                              f0_test=f0_test, where=where)
    return _dynamics(k_train, k_test_train, y_train, times=times, lr=1.0, discrete=False, k_test_test=k_test_test,
                     ridge=ridge, f0_train=f0_train, f0_test=f0_test, where=where)


@_precision.exact
def ntk_posterior(k_train, k_test_train=None, y_train=None, *, times=np.inf, k_test_test=None,
                  ridge: float = 0.0) -> Prediction:
    """The NTK-GP: outputs of infinitely wide networks trained by gradient flow on the MSE, over initialisations.

    Over random initialisations ``f_0`` is the centred Gaussian process with the NNGP kernel ``K``, and
    training is linear in ``f_0``, so the outputs at time ``t`` are Gaussian with (Lee et al. 2019,
    eq. 14-16; the module docstring gives the finite-``t`` form)

        mean(x*)     = Theta(x*, X) Theta^-1 (I - exp(-Theta t / n)) Y
        cov(x*, x*') = K(x*, x*') + A_t(x*) K A_t(x*')^T - A_t(x*) K(X, x*') - K(x*, X) A_t(x*')^T,

    ``A_t(x*) = Theta(x*, X) Theta^-1 (I - exp(-Theta t / n))``. At ``t = inf`` (the default) this is
    neural-tangents' ``gp_inference(...)(get='ntk')``: ``mean = Theta(x*, X) Theta^-1 Y`` and
    ``A = Theta(x*, X) Theta^-1``; on the training set the mean is ``Y`` and the covariance 0. NTK
    eigenvalues ``<= eps n max(lam)`` count as zero at ``t = inf`` (never learned: the pseudo-inverse);
    ``ridge > 0`` regularises instead. The NNGP-only posterior is :func:`nngp_posterior`; passing
    ``ow.Kernel(nngp=K, ntk=K)`` gives neural-tangents' ``get='nngp'`` training dynamics (only the
    readout trained).

    Args:
      k_train: ``ow.Kernel`` on the n training points with both ``nngp`` and ``ntk``.
      k_test_train: ``ow.Kernel`` (m, n) test-train blocks with both, or ``None`` (training set only).
      y_train: (n,) or (n, k) targets.
      times: a time or a sequence of times >= 0 (``np.inf`` allowed), all computed at once; in the
        units of :func:`gradient_flow` (``lr`` times steps, for ``L = 1/(2n) sum ||f - y||^2``).
      k_test_test: ``ow.Kernel`` or NNGP array (m, m) for the test covariance, or ``None``.
      ridge: added to the NTK's diagonal (finite, >= 0).

    Returns:
      :class:`Prediction` with leading time axis: ``mean_train``, ``mean_test``, ``cov_train`` and
      ``cov_test`` (``None`` without ``k_test_test``).

    Bad input: kernels without both blocks, NaN or Inf, negative or NaN times, a negative ridge and
    shapes that do not fit raise ``ValueError`` before anything is computed.

    References:
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>
      - He, Lakshminarayanan & Teh 2020, Bayesian Deep Ensembles via the Neural Tangent Kernel. <https://arxiv.org/abs/2007.05864>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0]]); xt = np.array([[1.0, 1.0]])
      >>> net = ow.serial(ow.Dense(w_std=1.0), ow.Relu(), ow.Dense(out=1, w_std=1.0))
      >>> p = ow.predict.ntk_posterior(ow.kernel(net, x), ow.kernel(net, xt, x), np.array([1.0, -1.0]),
      ...                              times=[1.0, np.inf], k_test_test=ow.kernel(net, xt))
      >>> p.mean_test.shape, p.cov_test.shape
      ((2, 1), (2, 1, 1))
      >>> print(np.round(np.asarray(p.mean_train[-1]), 6), float(np.abs(p.cov_train[-1]).max()) < 1e-12)
      [ 1. -1.] True
    """
    where = "ow.predict.ntk_posterior"
    for name, k in (("k_train", k_train), ("k_test_train", k_test_train)):
        if k is None and name == "k_test_train":
            continue
        if not isinstance(k, Kernel) or k.ntk is None or k.nngp is None:
            raise ValueError(f"{where}: {name} must be an ow.Kernel with both nngp and ntk (the NNGP gives the "
                             f"spread over initialisations, the NTK the training); compute it with "
                             f"ow.kernel(net, x1, x2, get=('nngp', 'ntk')), got {type(k).__name__}")
    times = _check_times(times, integer=False, allow_inf=True)
    return _dynamics(k_train, k_test_train, y_train, times=times, lr=1.0, discrete=False, k_test_test=k_test_test,
                     ridge=ridge, f0_train=None, f0_test=None, where=where)


@_precision.exact
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


@_precision.exact
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
    v, inv = _pinv_eigh(k + noise * jnp.eye(n, dtype=k.dtype))
    kv = kxt @ v
    mean = kv @ (inv[:, None] * (v.T @ y))
    cov = None if ktt is None else ktt - (kv * inv[None, :]) @ kv.T
    mean_train = (k @ v) @ (inv[:, None] * (v.T @ y))
    if squeeze:
        mean, mean_train = mean[..., 0], mean_train[..., 0]
    return Prediction(None, mean_train[None], mean[None], None if cov is None else cov[None], None)


@_precision.exact
def kernel_regression(k_train, y_train, k_test_train=None, *, ridge: float = 0.0, solver: str = "direct",
                      tol: float = 1e-10, maxiter: int | None = None, rank: int | None = None, seed: int = 0
                      ) -> Prediction:
    """Kernel ridge regression, ``alpha = (K + ridge I)^-1 Y``: ``mean_train = K alpha``, ``mean_test = K(x*, X)
    alpha`` (the NNGP posterior mean with ``noise = ridge``; the NTK-GP's at ``t = inf`` with ``ridge = 0``).

    ``solver="direct"`` factorises ``K + ridge I`` (``eigh``; memory ``n^2``, time ``n^3``). ``solver="cg"``
    solves by conjugate gradients (``jax.scipy.sparse.linalg.cg``) with a randomised Nystroem preconditioner
    of rank ``rank`` (Frangella, Tropp & Udell 2023, algorithms 2.1 and 5.3: ``K ~ U Lam U^T`` from ``K Omega``
    for a Gaussian ``Omega`` (n, rank); ``P^-1 = (lam_r + ridge) U (Lam + ridge)^-1 U^T + (I - U U^T)``), so
    the iterations grow with the effective dimension of ``K`` beyond rank ``rank`` rather than with its
    condition number. ``k_train`` may then also be a function ``v -> K v`` (a matrix-free kernel, e.g. from
    :func:`ow.empirical_ntk_vp` or tiles on disk), with ``v`` of shape (n, k). The solution is checked:
    ``||(K + ridge I) alpha - Y|| <= 10 tol ||Y||`` or ``RuntimeError`` says how to get there.

    Args:
      k_train: (n, n) kernel (array or ``ow.Kernel``: its NTK, else NNGP) or, for ``"cg"``, ``v -> K v``.
      y_train: (n,) or (n, k) targets.
      k_test_train: (m, n) test-train kernel, optional.
      ridge: ``>= 0`` added to the diagonal (needed > 0 for ``"cg"`` on singular kernels).
      solver: ``"direct"`` or ``"cg"``.
      tol: relative residual of the ``"cg"`` solve.
      maxiter: ``"cg"`` iterations (default ``n``).
      rank: the preconditioner's rank (default ``min(n, 256)``; 0: no preconditioner).
      seed: of the preconditioner's test matrix.

    Returns:
      :class:`Prediction` with ``times = None``, ``mean_train`` (1, n, k) and ``mean_test`` (1, m, k) (without
      the trailing axis for 1-D ``y_train``).

    References:
      - Frangella, Tropp & Udell 2023, Randomized Nystroem Preconditioning. SIAM J. Matrix Anal. Appl. 44(2).
        <https://arxiv.org/abs/2110.02820>
      - Hestenes & Stiefel 1952, Methods of Conjugate Gradients for Solving Linear Systems.

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> k = np.array([[2.0, 1.0], [1.0, 2.0]]); y = np.array([1.0, -1.0])
      >>> direct = ow.predict.kernel_regression(k, y, ridge=1.0)
      >>> cg = ow.predict.kernel_regression(k, y, ridge=1.0, solver="cg")
      >>> [round(float(v), 6) for v in direct.mean_train[0]], bool(np.allclose(cg.mean_train, direct.mean_train))
      ([0.5, -0.5], True)
    """
    where = "ow.predict.kernel_regression"
    ridge = _checks.nonneg_number("ridge", ridge, where=where)
    if solver not in ("direct", "cg"):
        raise ValueError(f"{where}: solver must be 'direct' or 'cg', got {solver!r}")
    if callable(k_train) and not isinstance(k_train, (Kernel, np.ndarray, jax.Array)):
        if solver != "cg":
            raise ValueError(f"{where}: a kernel given as a function v -> K v needs solver='cg'")
        matvec, n = k_train, int(np.shape(y_train)[0])
        kmat = None
    else:
        kmat = k_train.ntk if isinstance(k_train, Kernel) and k_train.ntk is not None else _nngp_only(k_train, "k_train")
        kmat = jnp.asarray(kmat)
        if kmat.ndim != 2 or kmat.shape[0] != kmat.shape[1]:
            raise ValueError(f"{where}: k_train must be a square (n, n) kernel, got shape {kmat.shape}")
        n = kmat.shape[0]

        def matvec(v):
            return kmat @ v
    kxt = None
    if k_test_train is not None:
        kxt = k_test_train.ntk if isinstance(k_test_train, Kernel) and k_test_train.ntk is not None else \
            _nngp_only(k_test_train, "k_test_train")
        kxt = jnp.asarray(kxt)
        if kxt.ndim != 2 or kxt.shape[1] != n:
            raise ValueError(f"{where}: k_test_train must be (m, {n}), got shape {kxt.shape}")
    y, squeeze = _as_outputs(y_train)
    if y.shape[0] != n:
        raise ValueError(f"{where}: y_train has {y.shape[0]} rows but the kernel is {n} x {n}")
    if solver == "direct":
        v, inv = _pinv_eigh(kmat + ridge * jnp.eye(n, dtype=kmat.dtype))
        alpha = v @ (inv[:, None] * (v.T @ y))
    else:
        alpha = _cg_solve(matvec, y, n, ridge=ridge, tol=float(tol), maxiter=maxiter,
                          rank=min(n, 256) if rank is None else int(rank), seed=seed, where=where)
    mean_train = matvec(alpha)
    mean_test = None if kxt is None else kxt @ alpha
    if squeeze:
        mean_train = mean_train[..., 0]
        mean_test = None if mean_test is None else mean_test[..., 0]
    return Prediction(None, mean_train[None], None if mean_test is None else mean_test[None], None, None)


def _cg_solve(matvec, y, n, *, ridge, tol, maxiter, rank, seed, where):
    """``(K + ridge I)^-1 y`` by preconditioned conjugate gradients (:func:`kernel_regression`)."""
    def op(v):
        return matvec(v) + ridge * v

    m_inv = None
    if rank > 0:
        # randomised Nystroem approximation K ~ U diag(lam) U^T (Frangella, Tropp & Udell 2023, alg. 2.1)
        omega, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (n, rank), y.dtype))
        sketch = matvec(omega)
        shift = jnp.sqrt(n) * jnp.finfo(y.dtype).eps * jnp.linalg.norm(sketch)
        sketch = sketch + shift * omega
        chol = jnp.linalg.cholesky(omega.T @ sketch)
        b = jax.scipy.linalg.solve_triangular(chol, sketch.T, lower=True).T
        u, sig, _ = jnp.linalg.svd(b, full_matrices=False)
        lam = jnp.maximum(sig ** 2 - shift, 0.0)
        lam_r = lam[-1]

        def nystrom(v):  # alg. 5.3: P^-1 v
            uv = u.T @ v
            return (lam_r + ridge) * (u @ (uv / (lam + ridge)[:, None])) + v - u @ uv

        m_inv = nystrom

    alpha, _ = jax.scipy.sparse.linalg.cg(op, y, tol=tol, atol=0.0, maxiter=maxiter or n, M=m_inv)
    residual = float(jnp.linalg.norm(op(alpha) - y) / jnp.maximum(jnp.linalg.norm(y), 1e-300))
    if not np.isfinite(residual) or residual > 10 * tol:
        raise RuntimeError(f"{where}: conjugate gradients stopped at relative residual {residual:.2e} > 10 tol = "
                           f"{10 * tol:.1e}; raise maxiter (now {maxiter or n}), the preconditioner's rank (now "
                           f"{rank}) or ridge (now {ridge}), or use solver='direct' if K fits in memory")
    return alpha


def _pinv_eigh(a):
    """``(V, inv)`` with ``a = V diag(lam) V^T`` and ``inv`` the pseudo-inverse of the spectrum (eigenvalues below
    ``eps n max|lam|`` dropped)."""
    lam, v = jnp.linalg.eigh(a)
    cutoff = jnp.finfo(lam.dtype).eps * a.shape[0] * jnp.max(jnp.abs(lam))
    return v, jnp.where(lam > cutoff, 1.0 / jnp.where(lam > cutoff, lam, 1.0), 0.0)


def _concrete(*values) -> bool:
    return not any(isinstance(v, jax.core.Tracer) for v in values)


@_precision.exact
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
