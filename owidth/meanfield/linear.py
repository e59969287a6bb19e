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

Because the map from sources to fields is linear, expectations are exact (no sampling), and
the responses are the (sample-independent) Jacobians. Two solvers:

* :func:`sweep` (the default): one causal pass over time. Each field is carried as its row of
  coefficients over the ``N_src = d + 1 + (L - 1) tau (d + 1)`` source coordinates (``v_0``,
  ``w``, then ``u^{l+1}(t)`` and ``r^l(t)`` per hidden-to-hidden weight), so the kernels are
  quadratic forms ``M^l(t, s) = V^l(t) C V^l(s)^T`` with the block-diagonal source covariance
  ``C``, whose blocks are the kernels themselves (``sigma^2 M^l``, ``sigma^2 G^{l+1}``). By
  causality the entries of ``C`` that row ``t`` meets exist when it is formed; ``a^l`` and
  ``b^l`` are coefficient blocks. No factorisation, no iteration. Cost ``O(L^2 tau^3 d^3)``
  (the quadratic forms against the ``(tau d)^2`` blocks), memory ``O(L tau d N_src + L tau^2 d^2)``.
* :func:`iterate` (``method="picard"``): Picard iteration of the whole trajectory, pushing the
  columns of factors of the source covariances through the equations. Per iteration
  ``O(N_src tau^2 d)`` plus ``O((tau d)^3)`` for factoring ``M^l``; at least ``T`` iterations.

The number of training points enters only through ``e(t)`` (``O(T P d)``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from owidth.meanfield._spec import MLP, residual_weights

__all__ = ["initial_state", "iterate", "sweep"]


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


def _quad(mlp: MLP, cov, xa, xb):
    """``E[a b^T]`` for fields ``a = xa . s``, ``b = xb . s`` linear in the independent source blocks ``s``.

    ``xa`` (..., N), ``xb`` (..., N) are coefficients over the source coordinates of
    :func:`_layout`; ``cov`` holds the blocks' covariances: ``v0`` (diagonal, a vector), ``w`` (a scalar times I),
    ``u[j]`` (tau d, tau d) and ``r[j]`` (tau C, tau C). Result (..., ...) over xa's then xb's axes."""
    lay = _layout(mlp, cov["tau"], cov["d"])
    sl = lambda a, name: a[..., lay[name][0]:lay[name][1]]  # noqa: E731
    out = jnp.tensordot(sl(xa, "v0") @ jnp.diag(cov["v0"]), sl(xb, "v0"), axes=([-1], [-1]))
    out = out + cov["w"] * jnp.tensordot(sl(xa, "w"), sl(xb, "w"), axes=([-1], [-1]))
    for j in range(mlp.depth - 1):
        for name in (f"u{j}", f"r{j}"):
            out = out + jnp.tensordot(jnp.tensordot(sl(xa, name), cov[name], axes=([-1], [0])), sl(xb, name),
                                      axes=([-1], [-1]))
    return out


def _layout(mlp: MLP, tau: int, d: int) -> dict:
    """Source coordinates: ``v0`` (d), ``w`` (C), then per hidden-to-hidden weight j ``u{j}`` (tau d) and
    ``r{j}`` (tau C, time-major)."""
    C = mlp.out
    lay, k = {"v0": (0, d), "w": (d, d + C)}, d + C
    for j in range(mlp.depth - 1):
        lay[f"u{j}"] = (k, k + tau * d)
        lay[f"r{j}"] = (k + tau * d, k + tau * d + tau * C)
        k += tau * d + tau * C
    lay["N"] = (k, k)
    return lay


@functools.partial(jax.jit, static_argnames=("mlp", "tau", "loss"))
def sweep(mlp: MLP, c, gamma0, x, y, wt, *, tau: int, loss: str = "mse", lr=0.0):
    """The exact deep-linear DMFT in one causal sweep over time (no fixed-point iteration).

    Every field of a neuron is linear in its Gaussian sources, so it is carried as a row of
    coefficients over the source coordinates (:func:`_layout`): ``v^l(t)`` (d, N) and
    ``z^l_k(t)`` (C, N), one backward field per output ``k``. At step ``t`` the single-site
    equations need the kernels ``M^l(t, s)``, ``G^l_{kk'}(t, s)`` and responses only at
    ``s <= t``, and those are quadratic forms (:func:`_quad`) of coefficient rows that exist
    by then; the responses of a linear system are its coefficients themselves,
    ``a^l_k(t, s) = d v^l(t) / d r^l_k(s)`` and ``b^l_k(t, s) = d z^{l+1}_k(t) / d u^{l+1}(s)``,
    the same for every neuron. So one pass over ``t = 0..T`` in the order ``v^1..v^L``,
    ``z^L..z^1`` (each kernel row as soon as its fields exist) gives the solution that Picard
    iteration converges to. With C outputs the error vectors are ``e_k(t) = (1/P) sum_mu
    Delta_{mu k}(t) x_mu`` and every Delta-weighted sum runs over ``k`` too:

        v^{l+1}(t) = u^{l+1}(t) + sigma^2 sum_{s<t, k} [a^l_k(t, s) + c M^l(t, s) e_k(s)] z^{l+1}_k(s)
        z^l_k(t)   = r^l_k(t) + sigma^2 sum_{s<=t} b^l_k(t, s) . v^l(s) + c sigma^2 sum_{s<t, k'} G^{l+1}_{kk'}(t, s) v^l(s) . e_k'(s)

    Biases (``beta_l``, the ``b_std`` of Dense ``l``): with ``x~ = (x, 1)`` every field is affine,
    ``h^l(x) = v^l . x~``, and a hidden bias is one more source, constant in time, on the last
    coordinate: ``v_0 ~ N(0, diag(sigma_1^2 / D, .., beta_1^2))``, ``u^{l+1}`` gains covariance
    ``beta_{l+1}^2`` there, and learning adds ``c beta^2 sum_s e~_{D+1}(s) z(s)`` to it (the
    response terms do not see it: a bias is not part of ``W``). The readout bias adds a
    deterministic offset, ``B(t + 1) = B(t) + lr beta_{L+1}^2 sum_mu Delta_mu(t) / P``.

    Residual blocks ``h^{l+1} = h^l + m (W^l h^l + bias)``: the branch's ``W^l`` receives the gradient
    ``q = m z^{l+1}``, so its backward source has covariance ``sigma^2 m^2 G^{l+1}``, its response
    is ``b = dq/du = m dz^{l+1}/du``, its learning terms carry the branch's learning-rate factor,
    and the skips add ``v^l(t)`` to ``v^{l+1}(t)`` and ``z^{l+1}(t)`` to ``z^l(t)``.

    ``y`` is (P, C): targets (mse) or one-hot labels (xent); ``wt`` (tau, P) the weight of each point
    in step t's gradient (``1/P``, or a minibatch's counts / B), so ``e_k(t) = sum_mu wt_mu(t)
    Delta_{mu k}(t) x_mu``. Returns ``beta`` (tau, C, d) and
    ``offset`` (tau, C) with ``F_k(t, x) = beta_k(t) . x~ + offset_k(t)``, ``M`` (L, tau, d, tau, d),
    ``G`` (L, tau, C, tau, C), over ``d = D`` (``D + 1`` with biases) coordinates."""
    L, sig, C = mlp.depth, mlp.w_std, mlp.out
    din = x.shape[1]
    if mlp.biases:
        x = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
    p, d = x.shape
    dt = x.dtype
    lam = jnp.asarray([sig[0] ** 2 / din] * din + [mlp.beta(0) ** 2] * (d - din), dt)  # first-layer metric
    const = (jnp.arange(d) == d - 1).astype(dt) if mlp.biases else jnp.zeros(d, dt)  # the bias coordinate
    lay = _layout(mlp, tau, d)
    n = lay["N"][0]
    times = jnp.arange(tau)

    def rows(name, idx):  # unit coefficient rows of the coordinates lay[name][0] + idx
        return jnp.zeros((len(idx), n), dt).at[jnp.arange(len(idx)), lay[name][0] + jnp.asarray(idx)].set(1.0)

    def covs(M, G):
        cov = {"tau": tau, "d": d, "v0": lam, "w": 0.0 if mlp.zero_readout else 1.0}
        bias = jnp.tile(const, tau)  # the constant-in-time bias source on the last coordinate
        for j in range(L - 1):
            cov[f"u{j}"] = (sig[j + 1] ** 2 * M[j].reshape(tau * d, tau * d)
                            + mlp.beta(j + 1) ** 2 * jnp.outer(bias, bias))
            m = mlp.branch(j + 1)[1]  # r^j is the source of W^T (m g^{j+1}): covariance sigma^2 m^2 G^{j+1}
            cov[f"r{j}"] = (sig[j + 1] * m) ** 2 * G[j + 1].reshape(tau * C, tau * C)
        return cov

    def step(cr, t):
        past = (times < t).astype(dt)  # over s
        upto = (times <= t).astype(dt)
        e = cr["e"] * past[:, None, None]  # (tau, C, d): e_k(s) for s < t
        V, Z, M, G = cr["V"], cr["Z"], cr["M"], cr["G"]
        for l in range(L):  # forward fields v^l(t): (d, N)
            if l == 0:
                row = rows("v0", range(d)) + c * lam[:, None] * jnp.einsum("skd,skn->dn", e, Z[0])
            else:
                j = l - 1
                res, m, lrf = mlp.branch(l)  # W^j's output gets the gradient q = m z^l
                a = V[j, t][:, lay[f"r{j}"][0]:lay[f"r{j}"][1]].reshape(d, tau, C) * past[None, :, None]
                me = jnp.einsum("dse,ske->dsk", M[j, t], e)  # M^j(t, s) e_k(s): (d, tau, C)
                me = me + (mlp.beta(l) / sig[l]) ** 2 * const[:, None, None] * e[None, :, :, d - 1]  # bias
                row = rows(f"u{j}", t * d + jnp.arange(d)) + sig[j + 1] ** 2 * jnp.einsum(
                    "dsk,skn->dn", a + c * lrf * me, m * Z[l])
                if res:  # h^l = h^{l-1} + m (W^j phi(h^{l-1}) + bias)
                    row = V[j, t] + m * row
            V = V.at[l, t].set(row)
            m_row = _quad(mlp, covs(M, G), row, V[l])  # (d, tau, d): M^l(t, s)
            M = M.at[l, t].set(m_row).at[l, :, :, t, :].set(jnp.transpose(m_row, (1, 2, 0)))
        zl = rows("w", range(C)) + c * jnp.einsum("skd,sdn->kn", e, V[L - 1])  # (C, N)
        for l in reversed(range(L)):  # backward fields z^l_k(t): (C, N)
            if l < L - 1:
                res, m, lrf = mlp.branch(l + 1)  # q = m z^{l+1}: b = dq/du, G_q = m^2 G^{l+1}
                b = m * Z[l + 1, t][:, lay[f"u{l}"][0]:lay[f"u{l}"][1]].reshape(C, tau, d) * upto[None, :, None]
                ge = jnp.einsum("ksm,smd->ksd", G[l + 1, t], e)  # sum_k' G_{kk'}(t, s) e_k'(s)
                coef = sig[l + 1] ** 2 * (b + c * lrf * m**2 * ge)  # (C, tau, d)
                zl = rows(f"r{l}", t * C + jnp.arange(C)) + jnp.einsum("ksd,sdn->kn", coef, V[l])
                if res:  # z^l = z^{l+1} (the skip) + W^T q
                    zl = Z[l + 1, t] + zl
            Z = Z.at[l, t].set(zl)
            g_row = _quad(mlp, covs(M, G), zl, Z[l])  # (C, tau, C)
            G = G.at[l, t].set(g_row).at[l, :, :, t, :].set(jnp.transpose(g_row, (1, 2, 0)))
        cov = covs(M, G)
        zv = _quad(mlp, cov, Z[L - 1, t], V[L - 1, t]) - _quad(mlp, cov, Z[L - 1, 0], V[L - 1, 0])  # (C, d)
        beta = (mlp.c_out / gamma0) * zv
        off = cr["off"][t]
        delta = residual_weights(loss, x @ beta.T + off[None], y)  # (P, C)
        delta = delta * wt[t][:, None]  # the step's weights: 1/P, or a minibatch's
        off_next = off + lr * mlp.beta(L) ** 2 * delta.sum(0)  # the readout bias
        cr = dict(V=V, Z=Z, M=M, G=G, beta=cr["beta"].at[t].set(beta), e=cr["e"].at[t].set(delta.T @ x),
                  off=cr["off"].at[jnp.minimum(t + 1, tau - 1)].set(jnp.where(t + 1 < tau, off_next, off)))
        return cr, None

    cr = {"V": jnp.zeros((L, tau, d, n), dt), "Z": jnp.zeros((L, tau, C, n), dt),
          "M": jnp.zeros((L, tau, d, tau, d), dt), "G": jnp.zeros((L, tau, C, tau, C), dt),
          "beta": jnp.zeros((tau, C, d), dt), "e": jnp.zeros((tau, C, d), dt), "off": jnp.zeros((tau, C), dt)}
    cr, _ = jax.lax.scan(step, cr, times)
    return {"beta": cr["beta"], "offset": cr["off"], "M": cr["M"], "G": cr["G"]}
