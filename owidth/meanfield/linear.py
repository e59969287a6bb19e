"""Deterministic DMFT of deep linear networks in weight space (internal; see :mod:`owidth.meanfield`).

For ``phi(h) = h`` every field of one neuron is linear in the Gaussian sources, and the
backward fields do not depend on the input: ``h^l_i(x, t) = v^l_i(t) . x`` with a
``d``-vector ``v^l_i(t)`` and ``g^l_i(x, t) = z^l_i(t)`` a scalar. With the error vectors
``e(t) = (1/P) sum_mu Delta_mu(t) x_mu`` (``Delta = y - f``) the single-site equations read
(``c = gamma0 eta sigma_{L+1} / sqrt(n0)``, ``sigma_l`` the ``w_std`` of the l-th Dense,
``D`` the input dimension, ``M^l(t, s) = <v^l(t) v^l(s)^T>`` so that
``Phi^l(x, t; x', s) = x^T M^l(t, s) x'``, ``G^l(t, s) = <z^l(t) z^l(s)>``):

    v^1(t)     = v_0 + (c sigma_1^2 / D) sum_{s<t} z^1(s) e(s),             v_0 ~ N(0, sigma_1^2 / D I)
    v^{l+1}(t) = u^{l+1}(t) + sigma_{l+1}^2 sum_{s<t} [a^l(t, s) + c M^l(t, s) e(s)] z^{l+1}(s)
    z^L(t)     = w + c sum_{s<t} v^L(s) . e(s),                               w ~ N(0, 1)
    z^l(t)     = r^l(t) + sigma_{l+1}^2 sum_{s<=t} b^l(t, s) . v^l(s) + c sigma_{l+1}^2 sum_{s<t} G^{l+1}(t, s) v^l(s) . e(s)

with Gaussian sources ``u^{l+1} ~ N(0, sigma_{l+1}^2 M^l)`` (a process over ``(t, d)``),
``r^l ~ N(0, sigma_{l+1}^2 G^{l+1})`` and the response functions ``a^l(t, s) = <d v^l(t) / d r^l(s)>``,
``b^l(t, s) = <d z^{l+1}(t) / d u^{l+1}(s)>``. The network function is ``f_t(x) = beta_t . x``,
``beta_t = (c_out / gamma0) <z^L(t) v^L(t) - z^L(0) v^L(0)>``, ``c_out = sigma_{L+1} sqrt(n0)``.

Because the map from sources to fields is linear, expectations are exact sums over the
columns of factors of the source covariances (no sampling), and the responses are the
(sample-independent) Jacobians. Cost per iteration: ``O(N_src tau^2 d)`` with
``N_src = d + 1 + (L - 1) tau (d + 1)`` source directions and ``tau = T + 1`` times,
plus ``O((tau d)^3)`` for factoring ``M^l``; memory ``O(L tau^2 d^2)``. The number of
training points enters only through ``e(t)`` (``O(T P d)``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from owidth.meanfield._spec import MLP

__all__ = ["iterate", "initial_state"]


def _factor(s):
    """A factor ``F`` with ``F F^T = s`` for a PSD matrix (eigenvalues clipped at 0)."""
    lam, vec = jnp.linalg.eigh(0.5 * (s + s.T))
    return vec * jnp.sqrt(jnp.clip(lam, 0.0))[None, :]


def _coefficients(mlp: MLP, st, c, x, y, horizon):
    """The kernels of the single-site equations for the current state."""
    tau, d = st["beta"].shape
    L, sig = mlp.depth, mlp.w_std
    p = x.shape[0]
    resid = y[None, :] - st["beta"] @ x.T  # (tau, P): Delta(t)
    e = resid @ x / p  # (tau, d)
    t_idx = jnp.arange(tau)
    e = e * (t_idx < horizon)[:, None]  # no update after the last step (or after the horizon)
    lt = (t_idx[None, :] < t_idx[:, None]).astype(e.dtype)  # [t, s] = s < t
    le = (t_idx[None, :] <= t_idx[:, None]).astype(e.dtype)
    kv1 = (c * sig[0] ** 2 / x.shape[1]) * lt[:, :, None] * e[None]  # (tau, tau, d)
    kf, kz = [], []
    for j in range(L - 1):
        s2 = sig[j + 1] ** 2
        me = jnp.einsum("tdse,se->tsd", st["M"][j], e)
        kf.append(s2 * lt[:, :, None] * (jnp.transpose(st["a"][j], (0, 2, 1)) + c * me))
        kz.append(s2 * (le[:, :, None] * st["b"][j] + c * lt[:, :, None] * st["G"][j + 1][:, :, None] * e[None]))
    kzl = c * lt[:, :, None] * e[None]
    return kv1, kf, kz, kzl, resid


def _single(mlp: MLP, coefs, v0, w, us, rs):
    """Fields ``V[l]`` (tau, d) and ``Z[l]`` (tau,) of one neuron for given sources."""
    kv1, kf, kz, kzl, _ = coefs
    tau, _, d = kv1.shape
    L = mlp.depth

    def step(carry, t):
        vs, zs = carry
        vs, zs = list(vs), list(zs)
        vs[0] = vs[0].at[t].set(v0 + jnp.einsum("sd,s->d", kv1[t], zs[0]))
        for j in range(L - 1):
            vs[j + 1] = vs[j + 1].at[t].set(us[j][t] + jnp.einsum("sd,s->d", kf[j][t], zs[j + 1]))
        zs[L - 1] = zs[L - 1].at[t].set(w + jnp.sum(kzl[t] * vs[L - 1]))
        for j in reversed(range(L - 1)):
            zs[j] = zs[j].at[t].set(rs[j][t] + jnp.sum(kz[j][t] * vs[j]))
        return (tuple(vs), tuple(zs)), None

    init = (tuple(jnp.zeros((tau, d), kv1.dtype) for _ in range(L)), tuple(jnp.zeros(tau, kv1.dtype) for _ in range(L)))
    (vs, zs), _ = jax.lax.scan(step, init, jnp.arange(tau))
    return vs, zs


@functools.partial(jax.jit, static_argnames=("mlp",))
def iterate(mlp: MLP, st, c, gamma0, x, y, horizon):
    """One pass of the self-consistency map: new state (no damping) from ``st``.

    Learning stops at ``horizon`` (the truncated problem: a causal continuation that keeps
    the Picard iteration from blowing up on a wrong late-time guess)."""
    tau, d = st["beta"].shape
    L, sig = mlp.depth, mlp.w_std
    dt = st["beta"].dtype
    coefs = _coefficients(mlp, st, c, x, y, horizon)
    single = functools.partial(_single, mlp, coefs)
    zero_v, zero_u, zero_r = jnp.zeros(d, dt), jnp.zeros((tau, d), dt), jnp.zeros(tau, dt)
    zu = [zero_u] * (L - 1)
    zr = [zero_r] * (L - 1)

    groups = []
    # v_0 ~ N(0, sigma_1^2 / D I): columns sigma_1 / sqrt(D) e_i
    cols = sig[0] / jnp.sqrt(float(x.shape[1])) * jnp.eye(d, dtype=dt)
    groups.append(jax.vmap(lambda v: single(v, 0.0, zu, zr))(cols))
    if not mlp.zero_readout:
        groups.append(jax.vmap(lambda w: single(zero_v, w, zu, zr))(jnp.ones(1, dt)))
    for j in range(L - 1):
        fu = _factor(sig[j + 1] ** 2 * st["M"][j].reshape(tau * d, tau * d))  # columns: directions of u^{j+2}
        fu = fu.T.reshape(tau * d, tau, d)
        groups.append(jax.vmap(lambda u, j=j: single(zero_v, 0.0, zu[:j] + [u] + zu[j + 1:], zr))(fu))
        fr = _factor(sig[j + 1] ** 2 * st["G"][j + 1]).T  # (tau, tau)
        groups.append(jax.vmap(lambda r, j=j: single(zero_v, 0.0, zu, zr[:j] + [r] + zr[j + 1:]))(fr))
    vs = [jnp.concatenate([g[0][l] for g in groups]) for l in range(L)]  # (N, tau, d)
    zs = [jnp.concatenate([g[1][l] for g in groups]) for l in range(L)]  # (N, tau)

    new = {
        "M": jnp.stack([jnp.einsum("ntd,nse->tdse", v, v) for v in vs]),
        "G": jnp.stack([jnp.einsum("nt,ns->ts", z, z) for z in zs]),
    }
    zl, vl = zs[-1], vs[-1]
    zv = jnp.einsum("nt,ntd->td", zl, vl)
    new["beta"] = (mlp.c_out / gamma0) * (zv - jnp.einsum("n,nd->d", zl[:, 0], vl[:, 0])[None])
    if L > 1:
        def fields(us, rs):
            return single(zero_v, 0.0, us, rs)

        jac_v, jac_z = jax.jacfwd(fields, argnums=(0, 1))(zu, zr)  # each leaf: (d/d us, d/d rs)
        new["a"] = jnp.stack([jac_v[j][1][j] for j in range(L - 1)])  # d V[j] / d r[j]: (tau, d, tau)
        new["b"] = jnp.stack([jac_z[j + 1][0][j] for j in range(L - 1)])  # d Z[j+1] / d u[j]: (tau, tau, d)
    else:
        new["a"], new["b"] = st["a"], st["b"]
    return new, coefs[-1]


def initial_state(mlp: MLP, tau: int, d: int, dtype):
    L = mlp.depth
    return {
        "beta": jnp.zeros((tau, d), dtype),
        "M": jnp.zeros((L, tau, d, tau, d), dtype),
        "G": jnp.zeros((L, tau, tau), dtype),
        "a": jnp.zeros((max(L - 1, 0), tau, d, tau), dtype),
        "b": jnp.zeros((max(L - 1, 0), tau, tau, d), dtype),
    }
