"""Monte Carlo DMFT of nonlinear MLPs in function space, solved forward in time (internal; see
:mod:`owidth.meanfield`).

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

These equations are causal: the fields of every neuron at step ``t`` need the kernels and
responses only at ``(t, s)`` with ``s <= t``, and those need only the fields up to ``t``.
So a population of ``S`` Monte Carlo neurons per layer is advanced one step at a time,
layer by layer (forward fields ``h`` for ``l = 1..L``, then backward fields ``z`` for
``l = L..1``), and each new row ``(t, .)`` of the kernels is averaged from the population
as soon as its fields exist:

* Gaussian sources with the population's own kernel, causally: ``u^{l+1}_j(t) = sigma_{l+1}
  S^{-1/2} sum_i Xi_{ji} phi(h^l_i(t))`` with fixed ``Xi_{ji} ~ N(0, 1)`` (independent of
  everything else), so ``Cov(u^{l+1}) = sigma_{l+1}^2 Phi^l`` exactly for the sampled
  ``Phi^l`` and ``u(t)`` never changes once drawn. Likewise ``r^l`` from ``g^{l+1}``.
  No square roots, no ``(tau Q)^3`` factorisations.
* Responses ``A^l(t, s) = <d phi(h^l(t)) / d r^l(s)>`` and ``B^l(t, s) = <d g^{l+1}(t) / d
  u^{l+1}(s)>`` pathwise: the first ``S_r`` neurons carry forward-mode tangents of their
  fields with respect to every coordinate ``(s, nu)`` of their own source (the kernels held
  fixed, as in the DMFT), updated by the linearised single-site equations. The first
  layer's ``h`` and the readout's ``z`` have separable kernels, so their tangents need only
  running sums; by causality a tangent in direction ``(s, nu)`` vanishes before ``s``, so
  the steps run in time blocks, each on the tangents' leading corner.

There is no fixed-point iteration: for the given draws this is the fixed point that Picard
iteration of the whole trajectory converges to (one more exact step per iteration), reached
in one pass. (An earlier version iterated: ``>= T`` damped iterations, each with symmetric
square roots of the kernels and full Jacobians of every response neuron; the sweep agrees
with it within Monte Carlo error.)

Cost with ``Q`` points, ``tau = T + 1`` times and ``L`` hidden layers: fields and kernels
``O(L S tau^2 Q^2 + L S^2 tau Q)``; responses ``O((L - 1) S_r tau^3 Q^3)``; memory ``O(L S
tau Q + L S^2 + L (tau Q)^2 + (L - 1) S_r (tau Q)^2)`` (:func:`memory_bytes`). The last
terms, one ``tau Q x tau Q`` Jacobian per response neuron, bound ``tau Q`` to a few
thousand on a CPU: exact responses at ``P = T = 100`` (``tau Q = 10100``) would need
``2 x 64 x 10100^2`` float64 numbers (104 GB) for 64 response neurons.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from owidth.meanfield._spec import MLP, elementwise

__all__ = ["draws", "memory_bytes", "solve"]


def _sqrtm(s):
    lam, vec = jnp.linalg.eigh(0.5 * (s + s.T))
    return (vec * jnp.sqrt(jnp.clip(lam, 0.0))[None, :]) @ vec.T


def draws(key, mlp: MLP, samples: int, q: int, dtype):
    """Standard normals behind every source: ``chi`` (S, Q), readout ``w`` (S,), ``Xi`` (S, S) per hidden weight."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    n = max(mlp.depth - 1, 0)
    return {
        "chi": jax.random.normal(k1, (samples, q), dtype),
        "w": jnp.zeros(samples, dtype) if mlp.zero_readout else jax.random.normal(k2, (samples,), dtype),
        "xi_u": jax.random.normal(k3, (n, samples, samples), dtype),
        "xi_r": jax.random.normal(k4, (n, samples, samples), dtype),
    }


def memory_bytes(mlp: MLP, *, samples: int, response_samples: int, tau: int, q: int, itemsize: int) -> int:
    """The arrays :func:`solve` carries through its scan (measured peak RSS: 2.5-3x this, plus the process)."""
    L, n = mlp.depth, max(mlp.depth - 1, 0)
    d = tau * q
    histories = sum((k < L - 1) + (k >= 1) for k, _ in _tangent_sets(L).values())
    return itemsize * (2 * L * samples * d + 2 * n * samples**2 + (2 * L + 2 * n) * d * d
                       + histories * response_samples * d * d)


def _tangent_sets(L: int) -> dict:
    """Response tangents: d/d r^k for k = 0..L-2 (gives A^k), d/d u^k for k = 1..L-1 (gives B^{k-1})."""
    sets = {f"{k}r": (k, "r") for k in range(L - 1)}
    sets.update({f"{k}u": (k, "u") for k in range(1, L)})
    return sets


def _blocks(tau: int, q: int) -> list[int]:
    """Ends of the time blocks: about one per 256 tangent directions, at most 8 (compile time grows with them)."""
    nb = max(1, min(8, tau, math.ceil(tau * q / 256)))
    return [math.ceil((b + 1) * tau / nb) for b in range(nb)]


@functools.partial(jax.jit, static_argnames=("mlp", "tau", "p", "response_samples"))
def solve(mlp: MLP, eps, c, gamma0, kx, y, wt, *, tau: int, p: int, response_samples: int):
    """The whole trajectory: ``f`` (tau, Q), kernels ``Phi``, ``G`` (L, tau Q, tau Q), responses ``A``, ``B``.

    ``wt`` (tau, p): the weight of each training point in step t's gradient (``1/P`` full batch; a
    minibatch schedule: its counts / B), so ``w_mu(t) = wt[t, mu] Delta_mu(t)``."""
    q = kx.shape[0]
    L, sig = mlp.depth, mlp.w_std
    S, R = eps["chi"].shape[0], response_samples
    dt = kx.dtype
    D = tau * q  # tangent directions: source coordinates (s, nu)
    phis = [elementwise(mlp.phi(l)) for l in range(L)]
    d1 = [elementwise(mlp.dphi(l)) for l in range(L)]
    d2 = [(lambda f: (lambda a: jax.jvp(f, (a,), (jnp.ones_like(a),))[1]))(d1[l]) for l in range(L)]
    chi = eps["chi"] @ _sqrtm(sig[0] ** 2 * kx)
    times = jnp.arange(tau)
    eye = jnp.eye(q, dtype=dt)
    sets = _tangent_sets(L)
    zeros = lambda *shape: jnp.zeros(shape, dt)  # noqa: E731
    # Tangents of the response neurons, per set "k,s" (layer k, source s = "r" or "u"); every direction
    # d = (s', nu) is one coordinate of that source. History is kept only where a dense two-time
    # kernel needs it (the A-term of h^k for k >= 1, the B-term of z^k for k < L - 1); the
    # first layer's h and the readout's z have separable kernels, summed in running accumulators.
    carry0 = {
        "ph": zeros(L, S, tau, q), "g": zeros(L, S, tau, q), "zl": zeros(S, tau),
        "Phi": zeros(L, tau, q, tau, q), "G": zeros(L, tau, q, tau, q),
        "A": zeros(max(L - 1, 0), tau, q, tau, q), "B": zeros(max(L - 1, 0), tau, q, tau, q),
        "f": zeros(tau, q), "wts": zeros(tau, q),
        "tph": {n: zeros(R, 0, 0, q) for n, (k, _) in sets.items() if k < L - 1},
        "tg": {n: zeros(R, 0, 0, q) for n, (k, _) in sets.items() if k >= 1},
        "acc_g": {n: zeros(R, 0, q) for n, (k, _) in sets.items() if k == 0},
        "acc_ph": {n: zeros(R, 0) for n, (k, _) in sets.items() if k == L - 1},
    }

    def row(hist_t, hist):
        """Population kernel row ``K(t, s) = <a(t) a(s)^T>``: (Q, tau, Q)."""
        return jnp.einsum("im,isn->msn", hist_t, hist) / S

    def set_sym(k, l, t, r):
        k = k.at[l, t].set(r)
        return k.at[l, :, :, t, :].set(jnp.moveaxis(r, 0, 2))

    def step(cr, t, tp):
        """Step t; the tangents live on the first tp times (directions and history): all are zero beyond."""
        cr = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cr.items()}
        past = (times < t).astype(dt)[None, :, None]  # (1, tau, 1) over s
        upto = (times <= t).astype(dt)[None, :, None]
        wts = cr["wts"]
        src_dir = ((times[:tp] == t).astype(dt)[:, None, None] * eye[None]).reshape(tp * q, q)  # d source(t)/d(s, nu)

        def mean_row(tan):
            """Response row from the tangents at time t, (R, tp Q, Q) -> (Q, tau, Q)."""
            return jnp.zeros((q, tau, q), dt).at[:, :tp].set(tan.mean(0).T.reshape(q, tp, q))

        hs, dps, dh, dph, dg = [None] * L, [None] * L, {}, {}, {}  # h^k(t), phi'(h^k(t)), tangents
        for k in range(L):  # forward fields
            if k == 0:
                acc = jnp.einsum("sn,isn->in", wts * past[0], cr["g"][0])
                h = chi + c * sig[0] ** 2 * acc @ kx
            else:
                kh = sig[k] ** 2 * (cr["A"][k - 1, t] + c * cr["Phi"][k - 1, t] * wts[None]) * past
                u = sig[k] * eps["xi_u"][k - 1] @ cr["ph"][k - 1, :, t] / jnp.sqrt(S)
                h = u + jnp.einsum("msn,isn->im", kh, cr["g"][k])
            hs[k], dps[k] = h, d1[k](h)
            cr["ph"] = cr["ph"].at[k, :, t].set(phis[k](h))
            for n, (kk, src) in sets.items():
                if kk != k:
                    continue
                if k == 0:
                    dh[n] = c * sig[0] ** 2 * cr["acc_g"][n] @ kx
                else:
                    dh[n] = jnp.einsum("msn,rdsn->rdm", kh[:, :tp], cr["tg"][n]) + (src_dir[None] if src == "u" else 0.0)
                dph[n] = dps[k][:R, None, :] * dh[n]
                if n in cr["tph"]:
                    cr["tph"][n] = cr["tph"][n].at[:, :, t].set(dph[n])
                if src == "r":
                    cr["A"] = cr["A"].at[k, t].set(mean_row(dph[n]))
            cr["Phi"] = set_sym(cr["Phi"], k, t, row(cr["ph"][k, :, t], cr["ph"][k]))
        cr["zl"] = cr["zl"].at[:, t].set(eps["w"] + c * jnp.einsum("sn,isn->i", wts * past[0], cr["ph"][L - 1]))
        for k in reversed(range(L)):  # backward fields
            if k == L - 1:
                z = jnp.broadcast_to(cr["zl"][:, t, None], (S, q))
            else:
                kz = sig[k + 1] ** 2 * (cr["B"][k, t] * upto + c * cr["G"][k + 1, t] * wts[None] * past)
                r = sig[k + 1] * eps["xi_r"][k] @ cr["g"][k + 1, :, t] / jnp.sqrt(S)
                z = r + jnp.einsum("msn,isn->im", kz, cr["ph"][k])
            g = dps[k] * z
            cr["g"] = cr["g"].at[k, :, t].set(g)
            for n, (kk, src) in sets.items():
                if kk != k:
                    continue
                if k == L - 1:
                    dz = c * cr["acc_ph"][n][..., None]
                else:
                    dz = jnp.einsum("msn,rdsn->rdm", kz[:, :tp], cr["tph"][n]) + (src_dir[None] if src == "r" else 0.0)
                dg[n] = d2[k](hs[k][:R, None, :]) * z[:R, None, :] * dh[n] + dps[k][:R, None, :] * dz
                if n in cr["tg"]:
                    cr["tg"][n] = cr["tg"][n].at[:, :, t].set(dg[n])
                if src == "u":
                    cr["B"] = cr["B"].at[k - 1, t].set(mean_row(dg[n]))
            cr["G"] = set_sym(cr["G"], k, t, row(g, cr["g"][k]))
        out = cr["zl"][:, t, None] * cr["ph"][L - 1, :, t] - cr["zl"][:, 0, None] * cr["ph"][L - 1, :, 0]
        f_t = (mlp.c_out / gamma0) * out.mean(0)
        cr["f"] = cr["f"].at[t].set(f_t)
        w_t = jnp.zeros(q, dt).at[:p].set((y - f_t[:p]) * wt[t])
        cr["wts"] = wts.at[t].set(w_t)
        for n in cr["acc_g"]:  # the separable sums now include step t (used from step t + 1 on)
            cr["acc_g"][n] = cr["acc_g"][n] + w_t[None, None] * dg[n]
        for n in cr["acc_ph"]:
            cr["acc_ph"][n] = cr["acc_ph"][n] + dph[n] @ w_t
        return cr, None

    # Causality: at steps t < tp every tangent is zero in directions (s', nu) with s' >= tp and at
    # times >= tp, so the steps run in blocks, each on the tangents' leading tp x tp corner.
    cr = carry0
    ends = _blocks(tau, q)
    for start, end in zip([0] + ends[:-1], ends):
        def grow(a, axes):
            return jnp.pad(a, [(0, end * q - a.shape[i]) if i == axes[0] else
                               (0, end - a.shape[i]) if i in axes[1:] else (0, 0) for i in range(a.ndim)])

        for name, axes in (("tph", (1, 2)), ("tg", (1, 2)), ("acc_g", (1,)), ("acc_ph", (1,))):
            cr[name] = {n: grow(a, axes) for n, a in cr[name].items()}
        cr, _ = jax.lax.scan(functools.partial(step, tp=end), cr, times[start:end])
    flat = lambda a: a.reshape(a.shape[0], D, D)  # noqa: E731
    st = {"f": cr["f"], "Phi": flat(cr["Phi"]), "G": flat(cr["G"]), "A": flat(cr["A"]), "B": flat(cr["B"])}
    return st
