"""DMFT by finite populations extrapolated in their size (internal; see :mod:`owidth.meanfield`).

The DMFT is the ``n -> inf`` limit of the network that ``ow.train(..., param=MUP, gamma0=)``
trains. A population of ``n`` neurons per layer that interact through the weights is that
network at width ``n``, written in the mean-field form of :mod:`owidth.meanfield` (``N(0, 1)``
weights ``W^0`` (n, D), ``W^l`` (n, n), readout ``w`` (n,)):

    h^1 = s_1 W^0 x / sqrt(D),   h^{l+1} = s_{l+1} W^l phi(h^l) / sqrt(n),   f = (c_out / n) w . phi(h^L)
    z^L = w,   g^l = phi'(h^l) z^l,   z^l = s_{l+1} W^l^T g^{l+1} / sqrt(n)

(plus ``beta_l b^l`` with ``N(0, 1)`` biases ``b^l`` where the Dense layers have ``b_std``; a
residual step is ``h^{l+1} = h^l + m (s_{l+1} W^l phi(h^l) / sqrt(n) + beta b)`` with the branch
multiplier ``m = scale (L / L0)^-alpha`` and the branch's learning-rate factor ``(L / L0)^-c``
of a depth parametrization, and then ``g^l = g^{l+1} + m phi'(h^l) s W^T g^{l+1} / sqrt(n)``)

and full-batch gradient descent ``theta <- theta + (lr gamma0 n / n0) (1/P) sum_mu Delta_mu df_mu/dtheta``
on ``F = (f - f_0) / gamma0`` (``Delta = y - F``). Its kernels ``Phi^l = phi^T phi / n``,
``G^l = g^T g / n`` and output are the DMFT's up to finite-size corrections: the mean over
independent populations is ``X(n) = X_inf + a / n + O(n^-2)`` (the 1/n expansion of
Roberts, Yaida & Hanin 2022; Bordelon & Pehlevan 2023), and the spread between populations is
``O(n^-1/2)``. So two sizes ``n/2`` and ``n`` with ``R`` populations each give the Richardson
estimate ``X_inf ~ 2 X(n) - X(n/2)`` with error ``O(n^-2)`` plus its standard error
the spread of the paired estimates ``2 X_r(n) - X_r(n/2)`` over ``r``. The pair ``r``
shares its first ``n/2`` neurons' initial weights (common random numbers): their ``O(n^-1/2)``
fluctuations are correlated, which makes the paired estimate's variance about a third of that
of independent pairs (``6 sigma^2 / n`` for independent pairs).

Unlike the function-space sweep (:mod:`owidth.meanfield.nonlinear`) nothing here grows with
``(T Q)^2``: the response functions of the DMFT are carried implicitly by the weights (the
part of ``W^l phi(h^l)`` correlated with ``W^l`` through the backward pass ``W^l^T g``).
Cost per population and step ``O(L n^2 Q + n D Q)``, memory ``O(L n^2 + L n Q)`` plus the
recorded ``O(L T P^2)`` kernels.

References:
  - Bordelon & Pehlevan 2022, Self-Consistent Dynamical Field Theory of Kernel Evolution in Wide
    Neural Networks. <https://arxiv.org/abs/2205.09653>
  - Bordelon & Pehlevan 2023, Dynamics of Finite Width Kernel and Prediction Fluctuations in Mean
    Field Neural Networks (the 1/n corrections). <https://arxiv.org/abs/2304.03408>
  - Roberts, Yaida & Hanin 2022, The Principles of Deep Learning Theory (the 1/n expansion).
    <https://arxiv.org/abs/2106.10165>
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from owidth.meanfield._spec import MLP, elementwise, residual_weights

__all__ = ["simulate"]


def _init(key, mlp: MLP, n: int, d: int, dtype):
    """Weights ``W^0`` (n, D), ``W^l`` (n, n), readout ``w`` (n, C) and hidden biases (L, n), all ``N(0, 1)``."""
    keys = jax.random.split(key, mlp.depth + 2)
    ws = [jax.random.normal(keys[0], (n, d), dtype)]
    ws += [jax.random.normal(keys[l], (n, n), dtype) for l in range(1, mlp.depth)]
    shape = (n, mlp.out)
    w = jnp.zeros(shape, dtype) if mlp.zero_readout else jax.random.normal(keys[-2], shape, dtype)
    return ws, w, jax.random.normal(keys[-1], (mlp.depth, n), dtype)


def _fields(mlp: MLP, ws, w, bs, x):
    """Forward and backward fields on the points x: phi(h^l) (Q, n) and g^l_k (C, Q, n) per layer, output f (Q, C)
    (without the readout bias, which :func:`simulate` carries as a deterministic offset)."""
    L, s = mlp.depth, mlp.w_std
    n = w.shape[0]
    hs, ph = [], []
    h = s[0] * x @ ws[0].T / math.sqrt(x.shape[1]) + mlp.beta(0) * bs[0][None]
    for l in range(L):
        if l:
            res, m, _ = mlp.branch(l)
            branch = s[l] * ph[-1] @ ws[l].T / math.sqrt(n) + mlp.beta(l) * bs[l][None]
            h = hs[-1] + m * branch if res else branch
        hs.append(h)
        ph.append(elementwise(mlp.phi(l))(h))
    f = mlp.c_out / n * ph[-1] @ w
    gs = [None] * L
    dps = [elementwise(mlp.dphi(l))(hs[l])[None] for l in range(L)]
    gs[L - 1] = dps[L - 1] * jnp.broadcast_to(w.T[:, None, :], (mlp.out,) + hs[-1].shape)  # z^L_k = w_k
    for l in reversed(range(1, L)):  # g^{l-1} = d(n f / c_out) / d h^{l-1}, through the branch and the skip
        res, m, _ = mlp.branch(l)
        back = m * dps[l - 1] * (s[l] * gs[l] @ ws[l] / math.sqrt(n))
        gs[l - 1] = gs[l] + back if res else back
    return ph, gs, f


@functools.partial(jax.jit, static_argnames=("mlp", "n", "nest", "steps", "p", "loss"))
def simulate(mlp: MLP, key, x, y, wt, *, gamma0, lr, n: int, nest: int, steps: int, p: int, loss: str = "mse"):
    """One population of width ``n`` trained for ``steps`` steps on the first ``p`` rows of ``x`` (the rest: test).

    ``y`` (p, C): targets (mse) or one-hot labels (xent); ``wt`` (tau, p) each point's weight in step
    t's gradient (``1/p``, or a minibatch's counts / B). The initial weights are the leading ``n``
    rows (and columns) of a width-``nest`` draw from ``key``, so populations of two sizes from one
    key share their first neurons (common random numbers). Returns ``f`` (tau, Q, C), ``phi``
    (L, tau, p, p) and ``g`` (L, tau, p, p, C, C): the output and the equal-time kernels on the
    training points at every step ``0..steps``."""
    L, s = mlp.depth, mlp.w_std
    d = x.shape[1]
    ws, w, bs = _init(key, mlp, nest, d, x.dtype)
    ws = [ws[0][:n]] + [a[:n, :n] for a in ws[1:]]
    w, bs = w[:n], bs[:, :n]
    eta = lr * gamma0 * n / mlp.base_width
    xtr = x[:p]

    def record(ph, gs, f, f0):
        phi = jnp.stack([a[:p] @ a[:p].T / n for a in ph])
        g = jnp.stack([jnp.einsum("kpi,mqi->pqkm", a[:, :p], a[:, :p]) / n for a in gs])
        return {"f": (f - f0) / gamma0, "phi": phi, "g": g}

    def step(carry, w_t):
        ws, w, bs, off, f0 = carry
        ph, gs, f = _fields(mlp, ws, w, bs, x)
        rec = record(ph, gs, f + off[None], f0)
        delta = residual_weights(loss, rec["f"][:p], y) * w_t[:, None]  # (1/P) Delta_{mu k}, or a minibatch's
        pre = eta * mlp.c_out / n  # lr gamma0 n / n0 times df/d(.)'s prefactor c_out / n
        gd = [jnp.einsum("pk,kpi->pi", delta, a[:, :p]) for a in gs]  # sum_k Delta_k g^l_k
        new_w = w + pre * ph[-1][:p].T @ delta
        new_ws = [ws[0] + pre * s[0] / math.sqrt(d) * gd[0].T @ xtr]
        scale = [1.0] + [mlp.branch(l)[1] * mlp.branch(l)[2] for l in range(1, L)]  # multiplier x lr factor
        for l in range(1, L):
            new_ws.append(ws[l] + scale[l] * pre * s[l] / math.sqrt(n) * gd[l].T @ ph[l - 1][:p])
        new_bs = bs + pre * jnp.stack([scale[l] * mlp.beta(l) * gd[l].sum(0) for l in range(L)])
        # the readout bias (a fixed-size tensor, learning rate lr gamma0^2) moves F by lr beta^2 sum_mu Delta_mu / P
        new_off = off + gamma0 * lr * mlp.beta(L) ** 2 * delta.sum(0)
        return (new_ws, new_w, new_bs, new_off, f0), rec

    off = jnp.zeros(mlp.out, x.dtype)  # the readout bias's change, in f's units
    _, _, f0 = _fields(mlp, ws, w, bs, x)
    (ws, w, bs, off, _), recs = jax.lax.scan(step, (ws, w, bs, off, f0), wt[:steps])
    ph, gs, f = _fields(mlp, ws, w, bs, x)
    last = record(ph, gs, f + off[None], f0)
    out = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), recs, last)
    return {"f": out["f"], "phi": jnp.moveaxis(out["phi"], 0, 1), "g": jnp.moveaxis(out["g"], 0, 1)}
