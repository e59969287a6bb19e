"""Finite-width corrections at order 1/n: the four-point vertex and the NNGP correction of deep MLPs.

At width ``n`` a network's outputs at initialisation are not Gaussian. For an MLP of ``Dense`` layers
(``z = b_std b + (w_std / sqrt(fan_in)) W phi(z_prev)``, NTP or SP, every hidden layer of width ``n``)
and inputs ``x_1..x_N`` the first corrections are (Roberts, Yaida & Hanin 2022, ch. 4; Yaida 2020)::

    E[f_i(x_a) f_j(x_b)]                 = delta_ij (K_ab + K1_ab / n) + O(1/n^2)
    E[f_i1 f_i2 f_i3 f_i4]_connected     = (delta_i1i2 delta_i3i4 V_(a1a2)(a3a4) + 2 perms) / n + O(1/n^2)

where ``f_i(x_a)`` are the outputs, ``K`` the NNGP kernel (:func:`ow.kernel`), and "connected" means
minus the three products of the (finite-width) two-point function.

Derivation (the recursion of the book's chapter 4, written with the layer's empirical kernel). Given
layer ``l``'s pre-activations, layer ``l+1``'s are exactly Gaussian, independent across neurons, with
the stochastic covariance ``G^(l+1) = b^2 + w^2 (1/n) sum_j phi(z_j) phi(z_j)^T``, an average over the
``n`` neurons of layer ``l``, which given ``G^(l)`` are i.i.d. ``N(0, G^(l))``. Write ``F(G)_ab =
E_{z ~ N(0, G)} phi(z_a) phi(z_b)`` (the activation's dual kernel, ``Activation.dual``), ``J = dF/dG``,
``H = d^2F/dG^2`` (over the ``P = N(N+1)/2`` entries ``a <= b``). With ``E G^(l) = K^(l) + K1^(l)/n`` and
``n Cov(G^(l)_p, G^(l)_q) = V^(l)_pq``, the law of total covariance and a second-order expansion of
``F`` around ``K`` give, with ``M4_(ab)(cd) = E phi_a phi_b phi_c phi_d`` under ``N(0, K^(l))``::

    K^(l+1)  = b^2 + w^2 F(K^(l))
    V^(l+1)  = w^4 [M4 - F F^T](K^(l)) + w^4 J V^(l) J^T
    K1^(l+1) = w^2 [J K1^(l) + (1/2) H : V^(l)]

starting from the first layer, whose covariance is deterministic (``V^(1) = K1^(1) = 0``). The output
layer's ``K``, ``K1`` and ``V`` are the quantities above. Third and higher cumulants of ``G`` are
``O(1/n^2)`` and drop out.

Numerics: ``F``, ``J`` and ``H`` come from the kernel engine's dual kernels (closed forms for the ReLU
family and ``Identity``, the engine's quadrature otherwise) differentiated by JAX; ``M4`` by
tensor-product Gauss-Hermite quadrature over the distinct inputs of each entry (1 to 4 dimensions;
exact for polynomial activations such as ``Identity``; 24 nodes per dimension for smooth activations,
more for kinked ones, see ``_NODES``). Measured accuracy of the ReLU fourth moments (float64): one input
exact (even node counts are symmetric about the kink), two inputs 2e-6 relative against the degree-2
arc-cosine kernel, three 2e-5 and four ~3e-3 (by node doubling: the kinks cut the Gauss-Hermite
grid; entries with four distinct inputs only). Deep linear networks are reproduced exactly
(``V = 2 (L-1) K^2`` for one input and ``E f^4 = 3 K^2 prod_l (1 + 2/n)``).

Checked against Monte Carlo (``tests/test_finite_width.py``, 40000 networks at widths 32 and 128,
extrapolated in 1/n): ReLU nets of 1 and 3 hidden layers, tanh of 2 and linear of 2 agree with ``V`` and
``K1`` within 3.5 standard errors. Measured with 100000 networks (3 inputs, ``w_std`` 1.3, ``b_std``
0.3): ``n Cov(G) / V - 1`` for a 3-hidden-layer ReLU net is 10%, 5.0%, 2.9%, 1.1% at widths 32, 64, 128,
256 (the ``O(1/n)`` next order), and ``n (E G - K)`` at the largest entry -0.50, -0.50, -0.43, -0.51 (SE 0.03..0.10) against
``K1 = -0.511``.

Not yet implemented: the NTK's 1/n fluctuations (Hanin & Nica 2020), the dNTK and the corrected
prediction of gradient descent (Dyer & Gur-Ari 2020; the book's ch. 11), convolutions, attention and
normalisation layers (refused by name), other parametrizations than NTP/SP.

References:
  - Roberts, Yaida & Hanin 2022, The Principles of Deep Learning Theory, ch. 4.
    <https://arxiv.org/abs/2106.10165>
  - Yaida 2020, Non-Gaussian processes and neural networks at finite widths.
    <https://arxiv.org/abs/1910.00019>
  - Hanin & Nica 2020, Products of Many Large Random Matrices and Gradients in Deep Neural Networks.
    <https://arxiv.org/abs/1812.05994>
  - Dyer & Gur-Ari 2020, Asymptotics of Wide Networks from Feynman Diagrams. <https://arxiv.org/abs/1909.11304>
  - Cho & Saul 2009, Kernel Methods for Deep Learning (arc-cosine kernels of degree 1 and 2).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks

__all__ = ["Expansion", "expansion", "four_point", "last_layer_covariances", "nngp_correction"]

_WHERE = "ow.finite_width"
# Gauss-Hermite nodes per dimension for M4 by the number of distinct inputs (1..4): smooth, kinked
_NODES = {True: (24, 24, 24, 24), False: (64, 160, 64, 32)}


@dataclasses.dataclass(frozen=True)
class Expansion:
    """The 1/n expansion of an MLP's output statistics at initialisation (module docstring).

    Attributes:
      nngp: (N, N) ``K``, the infinite-width NNGP kernel of the outputs.
      nngp_correction: (N, N) ``K1``: ``E f_a f_b = K_ab + K1_ab / n + O(1/n^2)``.
      vertex: (N, N, N, N) ``V`` with ``V[a, b, c, d] = V_(ab)(cd)``.
    """

    nngp: jax.Array
    nngp_correction: jax.Array
    vertex: jax.Array

    def covariance(self, width: int) -> jax.Array:
        """``K + K1 / n``: the output covariance at width ``n`` to order 1/n."""
        return self.nngp + self.nngp_correction / _checks.positive_int("width", width, where=_WHERE)

    def connected(self, width: int, *, same_output: bool = True) -> jax.Array:
        """(N, N, N, N) connected four-point function at width ``n`` to order 1/n: of one output
        (``V_(ab)(cd) + V_(ac)(bd) + V_(ad)(bc)``) or, with ``same_output=False``, of
        ``f_i(x_a) f_i(x_b) f_j(x_c) f_j(x_d)`` for two different outputs ``i != j`` (``V_(ab)(cd)``)."""
        n = _checks.positive_int("width", width, where=_WHERE)
        v = self.vertex
        if not same_output:
            return v / n
        return (v + jnp.transpose(v, (0, 2, 1, 3)) + jnp.transpose(v, (0, 3, 2, 1))) / n

    def kurtosis(self, width: int) -> jax.Array:
        """(N,) excess kurtosis of each output at each input, ``3 V_(aa)(aa) / (n K_aa^2)`` to order 1/n."""
        n = _checks.positive_int("width", width, where=_WHERE)
        idx = jnp.arange(self.nngp.shape[0])
        return 3.0 * self.vertex[idx, idx, idx, idx] / (n * jnp.diagonal(self.nngp) ** 2)


# --------------------------------------------------------------------------- #
# The network: Dense layers and one activation between them
# --------------------------------------------------------------------------- #
def _layers(net) -> list[tuple[float, float, Any]]:
    """``[(w_std, b_std, act_before), ...]`` per Dense layer (``act_before`` None for the first, ``Identity``
    where two Dense layers meet); checks the net is an MLP the expansion covers. Reads the layers as the DMFT's
    :func:`owidth.meanfield._spec.parse` does (``net.walk()`` without combinators), with its own policy:
    biases and any number of outputs are allowed, a missing activation is the identity."""
    from owidth.layers._base import Layer
    from owidth.layers.activations import Activation, Identity
    from owidth.layers.dense import Dense

    if not isinstance(net, Layer):
        raise TypeError(f"{_WHERE}: net must be an owidth network such as ow.serial(ow.Dense(), ow.Relu(), "
                        f"ow.Dense(out=1)), got {type(net).__name__}")
    for layer in net.walk():
        if layer.caps.branches:
            raise NotImplementedError(f"{_WHERE}: {type(layer).__name__} is not supported; the 1/n expansion is "
                                      "implemented for MLPs of Dense layers and elementwise activations")
    flat = [layer for layer in net.walk() if not layer.caps.transparent]
    out, act = [], None
    for i, layer in enumerate(flat):
        if isinstance(layer, Dense):
            for name in ("w_std", "b_std"):
                if isinstance(getattr(layer, name), jax.Array):
                    raise TypeError(f"{_WHERE}: Dense's {name} must be a Python number here, not a JAX array")
            if i < len(flat) - 1 and layer.out is not None:
                raise NotImplementedError(f"{_WHERE}: hidden Dense layers must have width n (out=None); "
                                          f"layer {i} has out={layer.out}")
            out.append((float(layer.w_std), float(layer.b_std), None if not out else act or Identity()))
            act = None
        elif isinstance(layer, Activation):
            if not out:
                raise NotImplementedError(f"{_WHERE}: an activation before the first Dense layer is not supported")
            if act is not None:
                raise NotImplementedError(f"{_WHERE}: consecutive activations ({type(act).__name__}, "
                                          f"{type(layer).__name__}) are not supported; use one activation per layer")
            act = layer
        else:
            raise NotImplementedError(f"{_WHERE}: {type(layer).__name__} is not supported; the 1/n expansion is "
                                      "implemented for MLPs of Dense layers and elementwise activations")
    if not out:
        raise NotImplementedError(f"{_WHERE}: the net has no Dense layer")
    if act is not None:
        raise NotImplementedError(f"{_WHERE}: the net ends in {type(act).__name__}; end it in a Dense layer (the "
                                  "expansion describes Gaussian-at-infinite-width outputs)")
    if flat[-1].out is None:
        raise NotImplementedError(f"{_WHERE}: the last Dense layer must have a fixed output size, e.g. Dense(out=1)")
    return out


# --------------------------------------------------------------------------- #
# Pieces: F, its derivatives, and the fourth moments
# --------------------------------------------------------------------------- #
def _pairs(n: int) -> np.ndarray:
    return np.array([(a, b) for a in range(n) for b in range(a, n)], dtype=np.int32)


def _dual_vec(act, pairs: np.ndarray):
    """``F``: the vector of ``E phi_a phi_b`` over the pairs, as a function of the pair vector of ``G``."""
    n = int(pairs.max()) + 1
    pos = {(int(a), int(b)): i for i, (a, b) in enumerate(pairs)}
    diag_idx = np.array([pos[(a, a)] for a in range(n)])
    d1, d2 = diag_idx[pairs[:, 0]], diag_idx[pairs[:, 1]]
    same = pairs[:, 0] == pairs[:, 1]

    def fn(g):
        q1, q2 = g[d1], g[d2]
        off = act.dual(q1, q2, jnp.where(same, 0.0, g), need_dot=False)[0]
        diag = act.dual_diag(q1, need_dot=False)[0]
        return jnp.where(same, diag, off)

    return fn


def _gauss_hermite(k: int, nodes: int):
    u, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / np.sqrt(2.0 * np.pi)
    grid = np.stack(np.meshgrid(*([u] * k), indexing="ij"), -1).reshape(-1, k)
    weights = np.prod(np.stack(np.meshgrid(*([w] * k), indexing="ij"), -1).reshape(-1, k), axis=1)
    return grid, weights


def _fourth_moments(act, kmat, pairs: np.ndarray, smooth: bool):
    """``M4[p, q] = E phi_a phi_b phi_c phi_d``, ``(a, b) = pairs[p]``, ``(c, d) = pairs[q]``, under
    ``N(0, kmat)``, by Gauss-Hermite over the distinct inputs of each entry."""
    npair = len(pairs)
    out = np.zeros((npair, npair))
    groups: dict[int, list] = {}
    for p, q in itertools.combinations_with_replacement(range(npair), 2):
        idx = list(pairs[p]) + list(pairs[q])
        distinct = sorted(set(idx))
        groups.setdefault(len(distinct), []).append((p, q, distinct, [idx.count(d) for d in distinct]))
    for k, items in groups.items():
        grid, weights = _gauss_hermite(k, _NODES[smooth][k - 1])
        grid, weights = jnp.asarray(grid, kmat.dtype), jnp.asarray(weights, kmat.dtype)
        sub = jnp.stack([kmat[np.ix_(d, d)] for _, _, d, _ in items])  # (Q, k, k)
        lam, vec = jnp.linalg.eigh(sub)
        factor = vec * jnp.sqrt(jnp.clip(lam, 0.0, None))[:, None, :]  # sub = factor factor^T
        mult = jnp.asarray(np.array([m for *_, m in items]), kmat.dtype)

        def one(args):
            a, m = args
            z = grid @ a.T  # (G, k)
            return jnp.sum(weights * jnp.prod(act.fn(z) ** m[None, :], axis=-1))

        vals = np.asarray(jax.lax.map(one, (factor, mult), batch_size=max(1, 2 ** 22 // grid.shape[0])))
        for (p, q, _, _), v in zip(items, vals):
            out[p, q] = out[q, p] = v
    return jnp.asarray(out, kmat.dtype)


def _to_matrix(vec, pairs, n):
    m = jnp.zeros((n, n), vec.dtype).at[pairs[:, 0], pairs[:, 1]].set(vec)
    return m.at[pairs[:, 1], pairs[:, 0]].set(vec)


def _to_vertex(v, pairs, n):
    full = np.zeros((n, n, n, n))
    v = np.asarray(v)
    for p, (a, b) in enumerate(pairs):
        for q, (c, d) in enumerate(pairs):
            for i, j in ((a, b), (b, a)):
                for k, l in ((c, d), (d, c)):
                    full[i, j, k, l] = v[p, q]
    return jnp.asarray(full)


# --------------------------------------------------------------------------- #
# Public entry points
# --------------------------------------------------------------------------- #
def expansion(net, x, *, memory_budget: int = 2**30) -> Expansion:
    """``K``, ``K1`` and ``V`` of ``net``'s outputs at the inputs ``x`` (module docstring).

    Args:
      net: ``ow.serial`` of ``Dense`` layers with at most one elementwise activation between two of them,
        hidden layers of width n (``out=None``), the last ``Dense(out=k)``. The statistics are those of
        ``ow.finite(net, width=n)`` at initialisation under NTP or SP (same forward pass at init).
      x: (N, d) distinct inputs (identical or antipodal inputs make the ReLU dual kernel's derivatives
        infinite and are refused).
      memory_budget: bytes the (N, N, N, N) vertex may take (default 1 GiB); larger requests are refused
        with their size.

    Returns:
      :class:`Expansion`. Computed in float64 when ``jax_enable_x64`` is on (recommended).

    Examples:
      Deep linear nets: one input, ``V = 2 (L - 1) K^2`` (L Dense layers):

      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Dense(), ow.Dense(), ow.Dense(out=1))
      >>> e = ow.finite_width.expansion(net, np.array([[1.0, 1.0]]))
      >>> [round(float(v), 10) for v in (e.nngp[0, 0], e.vertex[0, 0, 0, 0], e.nngp_correction[0, 0])]
      [1.0, 6.0, 0.0]
    """
    layers = _layers(net)
    x = _checks.as_float_array("x", x, where=_WHERE, rank=2)
    n_in = x.shape[0]
    size = 8 * n_in ** 4
    if size > memory_budget:
        raise ValueError(f"{_WHERE}: the vertex of N = {n_in} inputs is N^4 = {n_in ** 4} entries ({size / 2**30:.2f} "
                         f"GiB in float64), above memory_budget = {memory_budget / 2**30:.2f} GiB; use fewer inputs or "
                         "raise memory_budget")
    dtype = jnp.result_type(float)
    x = jnp.asarray(x, dtype)
    pairs = _pairs(n_in)
    w, b, _ = layers[0]
    kmat = b ** 2 + w ** 2 * (x @ x.T) / x.shape[1]
    _check_distinct(kmat)
    kvec = kmat[pairs[:, 0], pairs[:, 1]]
    npair = len(pairs)
    v = jnp.zeros((npair, npair), dtype)
    k1 = jnp.zeros(npair, dtype)
    for w, b, act in layers[1:]:
        fvec = _dual_vec(act, pairs)
        f = fvec(kvec)
        jac = jax.jacfwd(fvec)(kvec)
        hess = jax.hessian(fvec)(kvec)
        m4 = _fourth_moments(act, _to_matrix(kvec, pairs, n_in), pairs, getattr(act, "_smooth", True))
        k1 = w ** 2 * (jac @ k1 + 0.5 * jnp.einsum("apq,pq->a", hess, v))
        v = w ** 4 * (m4 - jnp.outer(f, f)) + w ** 4 * jac @ v @ jac.T
        kvec = b ** 2 + w ** 2 * f
    return Expansion(nngp=_to_matrix(kvec, pairs, n_in), nngp_correction=_to_matrix(k1, pairs, n_in),
                     vertex=_to_vertex(v, pairs, n_in))


def _check_distinct(kmat) -> None:
    d = jnp.sqrt(jnp.diagonal(kmat))
    rho = np.array(kmat / (d[:, None] * d[None, :]))
    np.fill_diagonal(rho, 0.0)
    bad = np.argwhere(np.abs(rho) > 1.0 - 1e-9)
    if bad.size:
        a, c = bad[0]
        raise ValueError(f"{_WHERE}: inputs {a} and {c} are identical or antipodal after the first layer "
                         f"(correlation {rho[a, c]:+.12f}); pass distinct inputs (drop duplicates)")


def four_point(net, x, *, memory_budget: int = 2**30) -> jax.Array:
    """The four-point vertex ``V`` (N, N, N, N) of ``net``'s outputs: the connected four-point function at
    width ``n`` is ``(V_(ab)(cd) + V_(ac)(bd) + V_(ad)(bc)) / n + O(1/n^2)`` for one output (see
    :class:`Expansion` and :func:`expansion`)."""
    return expansion(net, x, memory_budget=memory_budget).vertex


def nngp_correction(net, x, *, memory_budget: int = 2**30) -> jax.Array:
    """``K1`` (N, N): ``E f(x_a) f(x_b) = K_ab + K1_ab / n + O(1/n^2)`` at width ``n`` (see :func:`expansion`)."""
    return expansion(net, x, memory_budget=memory_budget).nngp_correction


def last_layer_covariances(net, x, *, width: int, samples: int, seed: int = 0, memory: int = 2**30) -> np.ndarray:
    """Monte Carlo over ``samples`` random networks ``ow.finite(net, width=width)`` of the last layer's
    conditional covariance ``G = b^2 + w^2 h h^T / fan_in`` (``h``: the last hidden features, ``w``, ``b``:
    the last ``Dense``'s ``w_std``, ``b_std``), shape (samples, N, N).

    Given ``h`` the outputs are exactly Gaussian with covariance ``G`` (independent across outputs), so
    ``E f_a f_b = E G_ab`` and, for two different outputs, the connected four-point function is
    ``Cov(G_ab, G_cd)``: the Rao-Blackwellised estimators of the quantities :func:`expansion` predicts,
    without the outputs' own sampling noise. Networks are drawn in compiled batches whose parameters fit in
    ``memory`` bytes; network ``s`` of the batch ``c`` uses ``jax.random.split(jax.random.key(seed * 10**6 + c))``.
    """
    from owidth._finite import finite

    where = f"{_WHERE}.last_layer_covariances"
    layers = _layers(net)
    width = _checks.positive_int("width", width, where=where)
    samples = _checks.positive_int("samples", samples, where=where)
    x = _checks.as_float_array("x", x, where=where, rank=2)
    w, b, _ = layers[-1]
    model = finite(net, width=width)
    per_net = (len(layers) - 1) * width * max(width, x.shape[1]) * jnp.dtype(jnp.result_type(float)).itemsize
    chunk = max(1, min(samples, memory // max(per_net, 1)))

    @jax.jit
    def gram(keys):
        def one(key):
            h = model.intermediates(model.init(key, x), x).features
            return b ** 2 + w ** 2 * h @ h.T / h.shape[1]

        return jax.vmap(one)(keys)

    out = []
    for c in range(-(-samples // chunk)):
        out.append(np.asarray(gram(jax.random.split(jax.random.key(seed * 10**6 + c), chunk))))
    return np.concatenate(out)[:samples]
