"""Monte Carlo DMFT of nonlinear MLPs in function space (internal; see :mod:`owidth.meanfield`).

Fields of one neuron on ``Q = P + M`` points (train, then test) at ``tau = T + 1`` times,
flattened to ``tau Q`` vectors. With ``c = gamma0 eta sigma_{L+1} / sqrt(n0)``,
``w_mu(s) = Delta_mu(s) / P`` on training points (0 on test points) and ``[s < t]`` the
causal mask, the single-site equations are

    h^1_mu(t)     = chi_mu + c sigma_1^2 sum_{s<t, nu} K^x_{mu nu} w_nu(s) g^1_nu(s),        chi ~ N(0, sigma_1^2 K^x)
    h^{l+1}_mu(t) = u_mu(t) + sigma_{l+1}^2 sum_{s<t, nu} [A^l + c Phi^l w_nu(s)]_{mu nu}(t, s) g^{l+1}_nu(s)
    z^L(t)        = w + c sum_{s<t, nu} w_nu(s) phi(h^L_nu(s)),                                w ~ N(0, 1)
    z^l_mu(t)     = r_mu(t) + sigma_{l+1}^2 sum_{s<=t, nu} [B^l + c G^{l+1} w_nu(s) [s<t]]_{mu nu}(t, s) phi(h^l_nu(s))
    g^l = phi'(h^l) z^l,  u ~ N(0, sigma_{l+1}^2 Phi^l),  r ~ N(0, sigma_{l+1}^2 G^{l+1}),
    A^l = <d phi(h^l) / d r^l>,  B^l = <d g^{l+1} / d u^{l+1}>,

``Phi^l = <phi(h^l) phi(h^l)^T>``, ``G^l = <g^l g^l^T>`` and the output
``f_mu(t) = (c_out / gamma0) <z^L(t) phi(h^L_mu(t)) - z^L(0) phi(h^L_mu(0))>``.

Sampling: the standard normals behind the sources are drawn once and kept across
iterations (common random numbers), the sources are ``S^{1/2} eps`` with the symmetric
(continuous) square root of the current covariance, so the iteration is a deterministic map
whose fixed point is the DMFT with ``samples`` Monte Carlo neurons. The responses are
pathwise: forward-mode Jacobians of each sample's fields with respect to its own sources,
averaged over the first ``response_samples`` samples.

Cost per iteration: ``O(S tau^2 Q^2 L)`` for the fields, ``O(S_r (tau Q)^3 L)`` for the
responses, ``O(L (tau Q)^3)`` for the square roots; memory ``O(L (tau Q)^2 + S tau Q L)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from owidth.meanfield._spec import MLP


def _sqrtm(s):
    lam, vec = jnp.linalg.eigh(0.5 * (s + s.T))
    return (vec * jnp.sqrt(jnp.clip(lam, 0.0))[None, :]) @ vec.T


def _coefficients(mlp: MLP, st, c, kx, y, p, horizon):
    tau, q = st["f"].shape
    L, sig = mlp.depth, mlp.w_std
    resid = y[None, :] - st["f"][:, :p]  # (tau, P)
    t_idx = jnp.arange(tau)
    wts = jnp.zeros((tau, q), resid.dtype).at[:, :p].set(resid / p) * (t_idx < horizon)[:, None]  # w_nu(s)
    lt = (t_idx[None, :] < t_idx[:, None]).astype(wts.dtype)  # [t, s]
    le = (t_idx[None, :] <= t_idx[:, None]).astype(wts.dtype)
    lt4 = lt[:, None, :, None]
    k1 = c * sig[0] ** 2 * lt4 * kx[None, :, None, :] * wts[None, None]  # (tau, Q, tau, Q)
    kh, kz = [], []
    for j in range(L - 1):
        s2 = sig[j + 1] ** 2
        phi = st["Phi"][j].reshape(tau, q, tau, q)
        a = st["A"][j].reshape(tau, q, tau, q)
        kh.append(s2 * lt4 * (a + c * phi * wts[None, None]))
        g = st["G"][j + 1].reshape(tau, q, tau, q)
        b = st["B"][j].reshape(tau, q, tau, q)
        kz.append(s2 * (le[:, None, :, None] * b + c * lt4 * g * wts[None, None]))
    kzl = c * lt[:, :, None] * wts[None]  # (tau, tau, Q)
    return k1, kh, kz, kzl, resid


def _single(mlp: MLP, coefs, chi, w, us, rs):
    """Fields of one neuron: H[l], Z[l] (tau, Q) for given sources (us, rs: (tau, Q) each)."""
    k1, kh, kz, kzl, _ = coefs
    tau, q = k1.shape[:2]
    L = mlp.depth
    phis = [mlp.phi(l) for l in range(L)]
    dphis = [mlp.dphi(l) for l in range(L)]

    def step(carry, t):
        hs, ph, zs, gs = (list(a) for a in carry)
        hs[0] = hs[0].at[t].set(chi + jnp.einsum("msn,sn->m", k1[t], gs[0]))
        ph[0] = ph[0].at[t].set(phis[0](hs[0][t]))
        for j in range(L - 1):
            hs[j + 1] = hs[j + 1].at[t].set(us[j][t] + jnp.einsum("msn,sn->m", kh[j][t], gs[j + 1]))
            ph[j + 1] = ph[j + 1].at[t].set(phis[j + 1](hs[j + 1][t]))
        zl = w + jnp.sum(kzl[t] * ph[L - 1])
        zs[L - 1] = zs[L - 1].at[t].set(jnp.full(q, zl))
        gs[L - 1] = gs[L - 1].at[t].set(dphis[L - 1](hs[L - 1][t]) * zl)
        for j in reversed(range(L - 1)):
            zs[j] = zs[j].at[t].set(rs[j][t] + jnp.einsum("msn,sn->m", kz[j][t], ph[j]))
            gs[j] = gs[j].at[t].set(dphis[j](hs[j][t]) * zs[j][t])
        return tuple(tuple(a) for a in (hs, ph, zs, gs)), None

    zero = tuple(jnp.zeros((tau, q), k1.dtype) for _ in range(L))
    (hs, ph, zs, gs), _ = jax.lax.scan(step, (zero, zero, zero, zero), jnp.arange(tau))
    return ph, zs, gs


def draws(key, mlp: MLP, samples: int, tau: int, q: int, dtype):
    """The fixed standard normals behind every source of ``samples`` neurons."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    L = mlp.depth
    return {
        "chi": jax.random.normal(k1, (samples, q), dtype),
        "w": jnp.zeros(samples, dtype) if mlp.zero_readout else jax.random.normal(k2, (samples,), dtype),
        "u": jax.random.normal(k3, (max(L - 1, 0), samples, tau * q), dtype),
        "r": jax.random.normal(k4, (max(L - 1, 0), samples, tau * q), dtype),
    }


@functools.partial(jax.jit, static_argnames=("mlp", "p", "response_samples", "chunk"))
def iterate(mlp: MLP, st, eps, c, gamma0, kx, y, horizon, *, p: int, response_samples: int, chunk: int):
    """One pass of the self-consistency map; returns the new state and per-entry standard errors."""
    tau, q = st["f"].shape
    L, sig = mlp.depth, mlp.w_std
    coefs = _coefficients(mlp, st, c, kx, y, p, horizon)
    single = functools.partial(_single, mlp, coefs)
    chi = eps["chi"] @ _sqrtm(sig[0] ** 2 * kx)
    roots_u = [_sqrtm(sig[j + 1] ** 2 * st["Phi"][j]) for j in range(L - 1)]
    roots_r = [_sqrtm(sig[j + 1] ** 2 * st["G"][j + 1]) for j in range(L - 1)]
    us = jnp.stack([eps["u"][j] @ roots_u[j] for j in range(L - 1)]) if L > 1 else eps["u"]
    rs = jnp.stack([eps["r"][j] @ roots_r[j] for j in range(L - 1)]) if L > 1 else eps["r"]
    us = us.reshape(us.shape[0], us.shape[1], tau, q)
    rs = rs.reshape(rs.shape[0], rs.shape[1], tau, q)
    srcs = (chi, eps["w"], jnp.moveaxis(us, 1, 0), jnp.moveaxis(rs, 1, 0))

    def run(src):
        ch, w, u, r = src
        return single(ch, w, list(u), list(r))

    ph, zs, gs = jax.lax.map(run, srcs, batch_size=chunk)  # each: (L, S, tau, Q) as tuples over L
    n = ph[0].shape[0]
    flat = lambda a: a.reshape(n, tau * q)  # noqa: E731
    new = {
        "Phi": jnp.stack([flat(a).T @ flat(a) / n for a in ph]),
        "G": jnp.stack([flat(a).T @ flat(a) / n for a in gs]),
    }
    out = zs[-1] * ph[-1] - (zs[-1][:, :1] * ph[-1][:, :1])  # (S, tau, Q)
    new["f"] = (mlp.c_out / gamma0) * out.mean(0)
    f_se = (mlp.c_out / gamma0) * out.std(0) / jnp.sqrt(n)
    if L > 1:
        def fields(u, r, ch, w):
            ph_, _, gs_ = single(ch, w, list(u), list(r))
            return jnp.stack(ph_), jnp.stack(gs_)

        jac = jax.jacfwd(fields, argnums=(0, 1))

        def responses(src):
            ch, w, u, r = src
            (dph_du, dph_dr), (dg_du, dg_dr) = jac(u, r, ch, w)  # (L, tau, Q, L-1, tau, Q)
            a = jnp.stack([dph_dr[j, :, :, j] for j in range(L - 1)])
            b = jnp.stack([dg_du[j + 1, :, :, j] for j in range(L - 1)])
            return a, b

        sub = jax.tree.map(lambda a: a[:response_samples], srcs)
        a, b = jax.lax.map(responses, sub, batch_size=min(chunk, response_samples))
        new["A"] = a.mean(0).reshape(L - 1, tau * q, tau * q)
        new["B"] = b.mean(0).reshape(L - 1, tau * q, tau * q)
    else:
        new["A"], new["B"] = st["A"], st["B"]
    return new, {"f": f_se}, coefs[-1]


def initial_state(mlp: MLP, tau: int, q: int, dtype):
    L = mlp.depth
    return {
        "f": jnp.zeros((tau, q), dtype),
        "Phi": jnp.zeros((L, tau * q, tau * q), dtype),
        "G": jnp.zeros((L, tau * q, tau * q), dtype),
        "A": jnp.zeros((max(L - 1, 0), tau * q, tau * q), dtype),
        "B": jnp.zeros((max(L - 1, 0), tau * q, tau * q), dtype),
    }
