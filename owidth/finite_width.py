"""Finite-width corrections at order 1/n: the four-point vertex, the NNGP correction and the NTK's fluctuations
and mean correction of deep MLPs.

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

The NTK (NTP: every parameter standard normal, trained at one learning rate). Layer ``l+1``'s NTK between
neurons ``i, j`` is ``Theta_ij(a,b) = delta_ij G(a,b) + (w^2/n) W_i^T M(a,b) W_j`` with ``M_km(a,b) =
phi'_k(a) phi'_m(b) Theta^(l)_km(a,b)`` (Jacot et al. 2018). Given the layers below, the rows ``W_i`` are
Gaussian and (Isserlis) ``E[Theta_ii | .] = Hhat := G + (w^2/n) tr M``, ``Cov(Theta_ii(ab), Theta_ii(cd) | .) =
(w^4/n^2) [tr M(ab) M(cd) + tr M(ab) M(cd)^T]`` and ``E[Theta_ij(ab) Theta_ij(cd) | .] = (w^4/n^2) tr M(ab)
M(cd)^T`` for ``i != j``. Both traces are ``O(n)``: the ``n`` diagonal terms and the ``n^2`` off-diagonal terms,
whose NTK entries ``Theta_km`` (``k != m``) are ``O(n^-1/2)``. So three tensors carry the NTK's ``1/n``
statistics (the book's ch. 8; Hanin & Nica 2020): ``A = n Cov(Hhat, Hhat)``, ``B[a,b,c,d] = n E Theta_km(a,b)
Theta_km(c,d)`` (``k != m``) and ``D = n Cov(Hhat, G)``. With ``Fdot = E phi' phi'``, ``Hhat`` the average of
``psi_k(ab) = phi_k(a) phi_k(b) + phi'_k(a) phi'_k(b) Theta_kk(ab)`` and ``psibar = F + Fdot H`` its mean, the
same law of total covariance gives::

    H^(l+1) = b^2 + w^2 [F + Fdot H]                                     (the NTK recursion)
    B^(l+1)[a,b,c,d] = w^4 [E phi'_a phi'_b phi'_c phi'_d H_ab H_cd + Fdot_ac Fdot_bd B[a,b,c,d]]
    D^(l+1) = w^4 [Cov(psi, phi phi) + Jpsi V J^T + Fdot D J^T]
    A^(l+1) = w^4 [Cov(psi, psi) + Jpsi V Jpsi^T + Jpsi D^T Fdot + Fdot D Jpsi^T + Fdot A Fdot]

with ``Jpsi = d psibar / dG`` (``Fdot`` as a diagonal matrix, single-neuron covariances under ``N(0, K)`` with
``Theta_kk = H``), from ``A = B = D = 0`` and ``H = K`` at the first layer. The output NTK of outputs ``i, j, k, l``
then has ``n Cov(Theta_ij(a,b), Theta_kl(c,d)) = delta_ij delta_kl A + delta_ik delta_jl B[a,b,c,d] +
delta_il delta_jk B[a,b,d,c]`` (:meth:`Expansion.ntk_covariance`, :func:`ntk_variance`). For one hidden layer
the neurons are i.i.d. and these are exact at every width.

The NTK's mean, ``E Theta_ii = H + H1 / n + O(1/n^2)`` (:func:`ntk_correction`). Since the row ``W_i`` is
independent of the layers below, ``E Theta^(l+1)_ii(a,b) = E G^(l+1)(a,b) + w^2 E[phi'_k(a) phi'_k(b)
Theta^l_kk(a,b)]`` exactly. The neuron's own NTK ``Theta^l_kk = G^l + (w_l^2/n) u^T M^(l-1) u`` and its
pre-activations ``z_k(c) = b beta + (w_l / sqrt n) u . phi^(l-1)_c`` share the Gaussian row ``u = W_k``, so
Gaussian integration by parts twice (``E[g u_i u_j] = delta_ij E g + E d_i d_j g``) gives, given the layers below,
``E[phi'_a phi'_b Theta_kk] = Fdot(G) Hhat + (w_l^4 / n) sum_cd E[d_c d_d (phi'_a phi'_b)] Q^(l-1)_cd(a,b)`` with
``Q^(m)_cd(a,b) = (1/n) sum_jj' phi_j(c) phi'_j(a) Theta^m_jj'(a,b) phi'_j'(b) phi_j'(d)`` over layer ``m``'s
neurons. ``Q`` is ``O(1)``: its ``n`` diagonal terms and its ``n^2`` off-diagonal ones, whose ``Theta_jj'`` has mean
``O(1/n)`` given the correlated ``phi_j``, ``phi_j'`` (Stein's lemma once on each row). At leading order::

    Q^(m)[c,d,a,b] = E[phi_c phi'_a phi'_b phi_d] H_ab + w_m^4 sum_ef r[c,a,e] r[d,b,f] Q^(m-1)[e,f,a,b]
    H1^(l+1) = K1^(l+1) + w^2 [(Jdot K1 + (1/2) Hdot : V) H + Fdot H1 + sum_q Jdot_pq D_pq
                               + w_l^4 sum_q Jdot_pq (Q^(l-1)_cd + Q^(l-1)_dc)(a,b)]

with ``r[c,a,e] = E d_e(phi_c phi'_a)`` (by Stein's lemma, ``K_S^-1 E[z_S phi_c phi'_a]`` on ``S = {c, a}``),
``Jdot``, ``Hdot`` the first and second derivatives of ``Fdot`` over the pairs ``q = (c, d)`` (Price's theorem:
``E d_c d_d g = (1 + delta_cd) dE[g]/dG_cd``, which includes the Dirac deltas of kinked activations), ``Q^(0) = 0``
(the first layer's NTK is deterministic and diagonal) and ``H1 = 0`` at the first layer: so ``H1 = 0`` with one
hidden layer, and for deep linear nets at any depth.

Numerics: ``F``, ``Fdot``, their derivatives and ``H`` come from the kernel engine's dual kernels (closed forms
for the ReLU family and ``Identity``, the engine's quadrature otherwise) differentiated by JAX. The fourth
moments ``E[g_a g_b g_c g_d]`` (``g`` = ``phi`` or ``phi'``) of the homogeneous piecewise activations (ReLU,
leaky ReLU, ``|x|``, rectified monomials, sign) are exact up to smooth 1-D quadrature: Price's theorem along
``Sigma(t) = D + t (Sigma - D)`` turns them into integrals over ``t`` of lower moments, and the Dirac deltas of
the steps' derivatives condition the Gaussian and remove a dimension (:func:`_price_expect`). Measured against
closed forms written independently (arc-cosine kernels of degrees 1 and 2, the bivariate and trivariate
orthant probabilities): 1e-12 relative at variances 1e-4..1e3; against scipy's Genz integrator for the
4-variate orthant probability: 4e-9. Accuracy falls for nearly identical inputs: for the steps' moments 1e-7 at
``1 - rho = 2e-3``, 4e-5 at ``2e-5`` and 4e-4 at ``2e-7``. Other activations use tensor-product Gauss-Hermite over the distinct
inputs of each entry (24 nodes per dimension; exact for polynomials). Deep linear networks are reproduced
exactly (``V = 2 (L-1) K^2`` for one input and ``E f^4 = 3 K^2 prod_l (1 + 2/n)``).

Checked against Monte Carlo (``tests/test_finite_width.py``, 40000 networks at widths 32 and 128,
extrapolated in 1/n): ReLU nets of 1 and 3 hidden layers, tanh of 2 and linear of 2 agree with ``V`` and
``K1`` within 3.5 standard errors. Measured with 100000 networks (3 inputs, ``w_std`` 1.3, ``b_std``
0.3): ``n Cov(G) / V - 1`` for a 3-hidden-layer ReLU net is 10%, 5.0%, 2.9%, 1.1% at widths 32, 64, 128,
256 (the ``O(1/n)`` next order), and ``n (E G - K)`` at the largest entry -0.50, -0.50, -0.43, -0.51 (SE 0.03..0.10) against
``K1 = -0.511``. The NTK's ``A``, ``B`` and ``A + B + B'``: exact against 20000 one-hidden-layer networks of width
8 (within 4 SE), and against 20000 networks at widths 32 and 128 extrapolated in 1/n for 3-hidden-layer ReLU,
2-hidden-layer tanh and linear nets (3.5 SE). Measured (3-hidden-layer ReLU, 20000 networks): the Monte Carlo
``n Var(Theta)`` is 6-14% above the leading order at width 32 and 3-5% at width 128.

Gradient descent (:func:`predict_correction`): the mean output of networks trained by full-batch gradient
descent is ``infinite + c / n + O(1/n^2)``. For one hidden layer and smooth activations ``c`` comes from the
neurons' dNTK and ddNTK and the NTK's fluctuations (``method="neurons"``, derivation in its docstring), checked
against ``ow.train`` ensembles of 40000 networks at widths 64..512. For any depth and activation
(``method="simulation"``): ``H1`` exactly, and the rest (the NTK fluctuations' second-order response, the dNTK and
ddNTK) from antithetic pairs of finite networks whose readouts are negated, with a standard error that does not grow
with the width. It agrees with ``"neurons"`` where both apply (|z| <= 1.7) and with ensembles of 2-hidden-layer tanh
nets. Measured: for tanh nets the simulated coefficient is the same at widths 128 and 256 (-0.168 +- 0.017,
-0.142 +- 0.017); for ReLU nets it is not: -0.36, -0.54, -0.72, -0.89 (SE 0.03) at widths 64, 128, 256, 512 on
the same problem, about -0.18 per doubling, and ensembles agree at equal width (-0.42 +- 0.03 at 64, -0.50 +-
0.04 at 128). A kinked activation's GD correction behaves like ``(a log n + b) / n``, not ``c / n``; there the
simulation at the target width estimates that width's mean.

Not yet implemented: the dNTK and ddNTK layer recursions of the book's ch. 11 (``"simulation"`` measures their
effect instead); convolutions, attention and normalisation layers (refused by name); other parametrizations than
NTP/SP.

References:
  - Roberts, Yaida & Hanin 2022, The Principles of Deep Learning Theory, ch. 4.
    <https://arxiv.org/abs/2106.10165>
  - Yaida 2020, Non-Gaussian processes and neural networks at finite widths.
    <https://arxiv.org/abs/1910.00019>
  - Hanin & Nica 2020, Products of Many Large Random Matrices and Gradients in Deep Neural Networks.
    <https://arxiv.org/abs/1812.05994>
  - Dyer & Gur-Ari 2020, Asymptotics of Wide Networks from Feynman Diagrams. <https://arxiv.org/abs/1909.11304>
  - Cho & Saul 2009, Kernel Methods for Deep Learning (arc-cosine kernels of degree 1 and 2).
  - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel. <https://arxiv.org/abs/1806.07572>
  - Price 1958, A useful theorem for nonlinear devices having Gaussian inputs (IRE Trans. Inf. Theory 4).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks

__all__ = ["Correction", "Expansion", "empirical_ntks", "expansion", "four_point", "last_layer_covariances",
           "nngp_correction", "ntk_correction", "ntk_variance", "predict_correction"]

_WHERE = "ow.finite_width"
# Gauss-Hermite nodes per dimension for M4 by the number of distinct inputs (1..4): smooth, kinked
# Gauss-Hermite nodes per dimension for the moments of smooth activations by the number of distinct inputs (1..4)
_NODES = {True: (24, 24, 24, 24), False: (64, 160, 64, 32)}  # smooth / kinked (not exact below)
# Gauss-Legendre nodes of the Price-theorem path integral (:func:`_price_expect`) by dimension
_PRICE_NODES = {2: 40, 3: 24, 4: 20}
# Gauss-Hermite nodes per readout weight in predict_correction (exact for polynomials of degree <= 15)
_A_NODES = 8


@dataclasses.dataclass(frozen=True)
class Expansion:
    """The 1/n expansion of an MLP's output statistics at initialisation (module docstring).

    Attributes:
      nngp: (N, N) ``K``, the infinite-width NNGP kernel of the outputs.
      nngp_correction: (N, N) ``K1``: ``E f_a f_b = K_ab + K1_ab / n + O(1/n^2)``.
      vertex: (N, N, N, N) ``V`` with ``V[a, b, c, d] = V_(ab)(cd)``.
      ntk: (N, N) ``H``, the infinite-width NTK (None when computed with ``ntk=False``).
      ntk_a, ntk_b: (N, N, N, N) the NTK's fluctuation tensors ``A`` and ``B`` (the book's ch. 8): for outputs
        ``i, j, k, l``, ``n Cov(Theta_ij(a,b), Theta_kl(c,d)) = delta_ij delta_kl A[a,b,c,d] + delta_ik delta_jl
        B[a,b,c,d] + delta_il delta_jk B[a,b,d,c] + O(1/n)``; see :meth:`ntk_covariance`.
      ntk_nngp: (N, N, N, N) ``D[a,b,c,d] = n Cov(Theta_ii(a,b), G_(cd))``, the NTK's covariance with the last
        layer's stochastic NNGP kernel ``G``, to leading order.
      ntk_correction: (N, N) ``H1``: ``E Theta_ii(a,b) = H_ab + H1_ab / n + O(1/n^2)`` (:meth:`ntk_mean`).
    """

    nngp: jax.Array
    nngp_correction: jax.Array
    vertex: jax.Array
    ntk: jax.Array | None = None
    ntk_a: jax.Array | None = None
    ntk_b: jax.Array | None = None
    ntk_nngp: jax.Array | None = None
    ntk_correction: jax.Array | None = None

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

    def ntk_mean(self, width: int) -> jax.Array:
        """``H + H1 / n``: the mean of the empirical NTK at width ``n`` to order 1/n."""
        if self.ntk_correction is None:
            raise ValueError(f"{_WHERE}: this Expansion was computed with ntk=False; call expansion(net, x) again")
        return self.ntk + self.ntk_correction / _checks.positive_int("width", width, where=_WHERE)

    def ntk_covariance(self, width: int, *, outputs: str = "same") -> jax.Array:
        """(N, N, N, N) covariance of the empirical NTK's entries at width ``n`` to order 1/n:

        - ``outputs="same"``: ``Cov(Theta_ii(a,b), Theta_ii(c,d)) = (A[a,b,c,d] + B[a,b,c,d] + B[a,b,d,c]) / n``;
        - ``"different"``: ``Cov(Theta_ii(a,b), Theta_jj(c,d)) = A[a,b,c,d] / n`` for ``i != j``;
        - ``"cross"``: ``E Theta_ij(a,b) Theta_ij(c,d) = B[a,b,c,d] / n`` for ``i != j`` (the off-diagonal
          output block, zero at infinite width).
        """
        n = _checks.positive_int("width", width, where=_WHERE)
        if self.ntk_a is None:
            raise ValueError(f"{_WHERE}: this Expansion was computed with ntk=False; call expansion(net, x) again")
        a, b = self.ntk_a, self.ntk_b
        parts = {"same": a + b + jnp.transpose(b, (0, 1, 3, 2)), "different": a, "cross": b}
        if outputs not in parts:
            raise ValueError(f"{_WHERE}: outputs must be 'same', 'different' or 'cross', got {outputs!r}")
        return parts[outputs] / n


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
    """``(F, Fdot)``: the vectors of ``E phi_a phi_b`` and ``E phi'_a phi'_b`` over the pairs, as functions of the
    pair vector of ``G`` (the kernel engine's dual kernels)."""
    n = int(pairs.max()) + 1
    pos = {(int(a), int(b)): i for i, (a, b) in enumerate(pairs)}
    diag_idx = np.array([pos[(a, a)] for a in range(n)])
    d1, d2 = diag_idx[pairs[:, 0]], diag_idx[pairs[:, 1]]
    same = pairs[:, 0] == pairs[:, 1]

    def fn(g):
        q1, q2 = g[d1], g[d2]
        off = act.dual(q1, q2, jnp.where(same, 0.0, g), need_dot=True)
        diag = act.dual_diag(q1, need_dot=True)
        return jnp.where(same, diag[0], off[0]), jnp.where(same, diag[1], off[1])

    return fn


def _gauss_hermite(k: int, nodes: int):
    u, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / np.sqrt(2.0 * np.pi)
    grid = np.stack(np.meshgrid(*([u] * k), indexing="ij"), -1).reshape(-1, k)
    weights = np.prod(np.stack(np.meshgrid(*([w] * k), indexing="ij"), -1).reshape(-1, k), axis=1)
    return grid, weights


def _slot_values(act, z):
    """``(phi(z), phi'(z), z)`` elementwise: the factors of kinds 0, 1, 2 in :func:`_moments`."""
    return act.fn(z), jnp.vectorize(jax.grad(act.fn))(z), z


def _piecewise_factor(act, kind: int):
    """``(m, c+, c-)`` with ``g(z) = z^m (c+ 1(z > 0) + c- 1(z < 0))`` for ``g = phi`` (kind 0) or ``phi'`` (1), for
    the homogeneous piecewise activations :func:`_price_expect` integrates exactly; None for the others."""
    from owidth.layers.activations import RectifiedMonomial, Sign

    if getattr(act, "_kink_at_zero_only", False):  # max(z, a z): relu, leaky relu, |z|
        return (1, 1.0, float(act.slope)) if kind == 0 else (0, 1.0, float(act.slope))
    if isinstance(act, RectifiedMonomial) and act.degree >= 1:
        return (act.degree, 1.0, 0.0) if kind == 0 else (act.degree - 1, float(act.degree), 0.0)
    if isinstance(act, Sign):
        return (0, 1.0, -1.0) if kind == 0 else (0, 0.0, 0.0)  # sign' = 0 almost everywhere, as in the network
    return None


def _half_moment(m: int) -> float:
    """``E u^m 1(u > 0)`` for ``u ~ N(0, 1)``."""
    return math.gamma((m + 1) / 2) * 2 ** (m / 2) / (2 * math.sqrt(math.pi))


def _price_nodes(n: int):
    """Gauss-Legendre on [0, 1] after ``t = 1 - (1 - u)^2``, which removes the square-root singularity that
    the bivariate density ``1 / sqrt(det)`` has at ``t = 1`` for nearly identical inputs."""
    u, w = np.polynomial.legendre.leggauss(n)
    u, w = 0.5 * (u + 1), 0.5 * w
    return 1 - (1 - u) ** 2, w * 2 * (1 - u)


def _condition(sig, keep: list, on: list):
    """Covariance of ``z[keep]`` given ``z[on] = 0`` (batched (B, k, k))."""
    b = sig[:, keep][:, :, on]
    return sig[:, keep][:, :, keep] - b @ np.linalg.solve(sig[:, on][:, :, on], np.swapaxes(b, 1, 2))


def _price_derivative(f):
    """``g'`` of a factor ``(m, c+, c-)`` as ``[(coefficient, factor)]``; factor None is ``delta(z)``."""
    m, cp, cm = f
    if m >= 1:
        return [(m, (m - 1, cp, cm))]
    return [(cp - cm, None)] if cp != cm else []


def _price_expect(sig: np.ndarray, factors: list) -> np.ndarray:
    """``E prod_i z_i^m_i (c+_i 1(z_i > 0) + c-_i 1(z_i < 0))`` for ``z ~ N(0, sig)``, ``sig`` (B, k, k), exactly
    up to smooth 1-D quadrature (Price's theorem along ``Sigma(t) = D + t (Sigma - D)``, ``D = diag(Sigma)``)::

        E_Sigma[g] = prod_i E[g_i(z_i)] + int_0^1 sum_(i<j) Sigma_ij E_Sigma(t)[d_i g_i d_j g_j prod_(other) g] dt

    where at ``t = 0`` the coordinates are independent (1-D closed forms ``E z^m 1(z>0) = q^(m/2) Gamma((m+1)/2)
    2^(m/2) / (2 sqrt(pi))``), and ``d g`` is again of this form or a Dirac delta, which conditions the Gaussian
    on ``z_i = 0`` and removes a dimension. The recursion ends at one dimension; the ``t``-integrands are smooth
    (Gauss-Legendre, :func:`_price_nodes`, ``_PRICE_NODES`` by dimension)."""
    const, keep = 1.0, []
    for i, (m, cp, cm) in enumerate(factors):
        if m == 0 and cp == cm:
            const *= cp  # a constant factor
        else:
            keep.append(i)
    sig, factors = sig[:, keep][:, :, keep], [factors[i] for i in keep]
    k = len(factors)
    out = np.full(sig.shape[0], const)
    if k == 0 or const == 0.0:
        return out
    diag = np.diagonal(sig, axis1=1, axis2=2)
    for i, (m, cp, cm) in enumerate(factors):
        out = out * (cp + (-1) ** m * cm) * _half_moment(m) * diag[:, i] ** (m / 2)
    if k == 1:
        return out
    t, w = _price_nodes(_PRICE_NODES[min(k, max(_PRICE_NODES))])
    dmat = np.eye(k)[None] * sig
    sig_t = (dmat[:, None] + t[None, :, None, None] * (sig - dmat)[:, None]).reshape(-1, k, k)
    total = np.zeros(sig_t.shape[0])
    for i, j in itertools.combinations(range(k), 2):
        coupling = np.repeat(sig[:, i, j], len(t))
        if not np.any(coupling):
            continue
        for ci, fi in _price_derivative(factors[i]):
            for cj, fj in _price_derivative(factors[j]):
                new = list(factors)
                new[i], new[j] = fi, fj
                deltas = [x for x in (i, j) if new[x] is None]
                rest = [x for x in range(k) if x not in deltas]
                if deltas:
                    sub = sig_t[:, deltas][:, :, deltas]
                    dens = 1.0 / np.sqrt((2 * np.pi) ** len(deltas) * np.linalg.det(sub))
                    inner = _price_expect(_condition(sig_t, rest, deltas), [new[x] for x in rest]) if rest else 1.0
                    total = total + coupling * ci * cj * dens * inner
                else:
                    total = total + coupling * ci * cj * _price_expect(sig_t, new)
    return out + const * total.reshape(sig.shape[0], len(t)) @ w


def _moments(act, kmat, entries: list) -> np.ndarray:
    """``E prod_s g_s(z_(i_s))`` under ``z ~ N(0, kmat)`` for each entry ``((i_1, g_1), ..., (i_m, g_m))`` with
    ``g = 0`` for ``phi``, ``1`` for ``phi'`` and ``2`` for ``z`` itself, at most 4 distinct inputs. The
    homogeneous piecewise activations (relu family, rectified monomials, sign; :func:`_piecewise_factor`)
    exactly by :func:`_price_expect`; any other activation by tensor-product Gauss-Hermite over the distinct
    inputs of the entry (``_NODES``)."""
    exact = _piecewise_factor(act, 0) is not None
    kmat_np = np.asarray(kmat, np.float64)
    groups: dict[Any, list] = {}
    for e, entry in enumerate(entries):
        distinct = sorted({i for i, _ in entry})
        mult = tuple(tuple(sum(1 for i, g in entry if i == d and g == kind) for kind in (0, 1, 2)) for d in distinct)
        groups.setdefault(mult if exact else len(distinct), []).append((e, distinct, mult))
    out = np.zeros(len(entries))
    for key, items in groups.items():
        sub = np.stack([kmat_np[np.ix_(d, d)] for _, d, _ in items])  # (Q, k, k)
        if exact:
            factors = []
            for counts in key:
                m, cp, cm = 0, 1.0, 1.0
                for kind, count in enumerate(counts):
                    fm, fp, fn = _piecewise_factor(act, kind) if kind < 2 else (1, 1.0, 1.0)  # z = z (1 + 1)
                    m, cp, cm = m + count * fm, cp * fp ** count, cm * fn ** count
                factors.append((m, cp, cm))
            vals = _price_expect(sub, factors)
        else:
            k = key
            grid, weights = _gauss_hermite(k, _NODES[getattr(act, "_smooth", True)][k - 1])
            lam, vec = np.linalg.eigh(sub)
            factor = jnp.asarray(vec * np.sqrt(np.clip(lam, 0.0, None))[:, None, :], kmat.dtype)  # sub = f f^T
            mult = jnp.asarray(np.array([m for *_, m in items]), kmat.dtype)  # (Q, k, 3)
            grid, weights = jnp.asarray(grid, kmat.dtype), jnp.asarray(weights, kmat.dtype)

            def one(args, grid=grid, weights=weights):
                a, m = args
                f, d, z = _slot_values(act, grid @ a.T)  # (G, k)
                return jnp.sum(weights * jnp.prod(f ** m[None, :, 0] * d ** m[None, :, 1] * z ** m[None, :, 2],
                                                  axis=-1))

            vals = np.asarray(jax.lax.map(one, (factor, mult), batch_size=max(1, 2 ** 22 // grid.shape[0])))
        for (e, _, _), v in zip(items, vals):
            out[e] = v
    return out


def _to_matrix(vec, pairs, n):
    m = jnp.zeros((n, n), vec.dtype).at[pairs[:, 0], pairs[:, 1]].set(vec)
    return m.at[pairs[:, 1], pairs[:, 0]].set(vec)


def _to_vertex(v, pairs, n):
    """(P, P) over unordered pairs ``p = (a, b)``, ``q = (c, d)`` -> (N, N, N, N), symmetric within each pair."""
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
def expansion(net, x, *, ntk: bool = True, memory_budget: int = 2**30) -> Expansion:
    """``K``, ``K1``, ``V`` and (with ``ntk=True``) the NTK's ``H``, ``A``, ``B``, ``D`` of ``net``'s outputs at the
    inputs ``x`` (module docstring).

    Args:
      net: ``ow.serial`` of ``Dense`` layers with at most one elementwise activation between two of them,
        hidden layers of width n (``out=None``), the last ``Dense(out=k)``. The output statistics are those of
        ``ow.finite(net, width=n)`` at initialisation under NTP or SP (same forward pass at init); the NTK's are
        NTP's (every parameter standard normal with the multipliers ``w_std / sqrt(fan_in)`` and ``b_std``: the
        NTK of :func:`ow.kernel`).
      x: (N, d) distinct inputs (identical or antipodal inputs make the ReLU dual kernel's derivatives
        infinite and are refused).
      ntk: also compute the NTK's mean, its 1/n correction and its fluctuation tensors (about 3x the work).
      memory_budget: bytes the (N, N, N, N) tensors may take together (default 1 GiB); larger requests are
        refused with their size.

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
    size = 8 * n_in ** 4 * (4 if ntk else 1)
    if size > memory_budget:
        raise ValueError(f"{_WHERE}: the (N, N, N, N) tensors of N = {n_in} inputs are N^4 = {n_in ** 4} entries each "
                         f"({size / 2**30:.2f} GiB in float64{' with the NTK' if ntk else ''}), above memory_budget = "
                         f"{memory_budget / 2**30:.2f} GiB; use fewer inputs or raise memory_budget")
    dtype = jnp.result_type(float)
    x = jnp.asarray(x, dtype)
    pairs = _pairs(n_in)
    npair = len(pairs)
    w, b, _ = layers[0]
    kmat = b ** 2 + w ** 2 * (x @ x.T) / x.shape[1]
    _check_distinct(kmat)
    kvec = kmat[pairs[:, 0], pairs[:, 1]]
    zeros = jnp.zeros((npair, npair), dtype)
    v, a, d, k1, h1 = zeros, zeros, zeros, jnp.zeros(npair, dtype), jnp.zeros(npair, dtype)
    h = kvec  # the first layer's NTK is its (deterministic) NNGP kernel
    bfull = jnp.zeros((n_in,) * 4, dtype)
    q = jnp.zeros((n_in,) * 4, dtype)  # Q^(l-1)[c, d, a, b]: zero below the first hidden layer
    w_prev = w
    for w, b, act in layers[1:]:
        fvec = _dual_vec(act, pairs)
        f, fd = fvec(kvec)
        jf, jd = jax.jacfwd(fvec)(kvec)
        hess = jax.hessian(lambda g: fvec(g)[0])(kvec)
        m_ff, m_df, m_dd = _four_point_moments(act, _to_matrix(kvec, pairs, n_in), pairs, ntk=ntk)
        k1_new = w ** 2 * (jf @ k1 + 0.5 * jnp.einsum("apq,pq->a", hess, v))
        v_new = w ** 4 * (m_ff - jnp.outer(f, f) + jf @ v @ jf.T)
        if ntk:
            # the NTK's mean correction: E[phi'_a phi'_b Theta_kk(a,b)] to order 1/n (module docstring, H1)
            hess_d = jax.hessian(lambda g: fvec(g)[1])(kvec)
            qs = q + jnp.transpose(q, (1, 0, 2, 3))
            qs_pairs = qs[pairs[:, 0, None], pairs[:, 1, None], pairs[None, :, 0], pairs[None, :, 1]]  # [q, p]
            stein = jnp.sum(jd * qs_pairs.T, axis=1)
            h1_new = k1_new + w ** 2 * ((jd @ k1 + 0.5 * jnp.einsum("apq,pq->a", hess_d, v)) * h + fd * h1
                                        + jnp.sum(jd * d, axis=1) + w_prev ** 4 * stein)
            # Q^(l)[c,d,a,b] = (1/n) sum_jm phi_j(c) phi'_j(a) Theta_jm(a,b) phi'_m(b) phi_m(d) at leading order
            r = _stein_factors(act, _to_matrix(kvec, pairs, n_in))
            hmat = _to_matrix(h, pairs, n_in)
            q = (jnp.transpose(_to_vertex(m_df, pairs, n_in), (2, 3, 0, 1)) * hmat[None, None]
                 + w_prev ** 4 * jnp.einsum("cae,dbf,efab->cdab", r, r, q))
            h1 = h1_new
            # psi_ab = phi_a phi_b + phi'_a phi'_b Theta_kk(a,b): the neuron's share of the next layer's NTK
            psi = f + fd * h
            jpsi = jf + h[:, None] * jd
            cov_pf = m_ff + h[:, None] * m_df - jnp.outer(psi, f)
            cov_pp = m_ff + h[:, None] * m_df + h[None, :] * m_df.T + jnp.outer(h, h) * m_dd - jnp.outer(psi, psi)
            fdv = fd[:, None] * d  # diag(Fdot) D
            d_new = w ** 4 * (cov_pf + jpsi @ v @ jf.T + fdv @ jf.T)
            a_new = w ** 4 * (cov_pp + jpsi @ v @ jpsi.T + jpsi @ fdv.T + fdv @ jpsi.T + fd[:, None] * a * fd[None, :])
            fdmat = _to_matrix(fd, pairs, n_in)
            mdd = _to_vertex(m_dd, pairs, n_in)
            bfull = w ** 4 * (mdd * hmat[:, :, None, None] * hmat[None, None, :, :]
                              + fdmat[:, None, :, None] * fdmat[None, :, None, :] * bfull)
            a, d, h = a_new, d_new, b ** 2 + w ** 2 * psi
        k1, v, kvec, w_prev = k1_new, v_new, b ** 2 + w ** 2 * f, w
    out = dict(nngp=_to_matrix(kvec, pairs, n_in), nngp_correction=_to_matrix(k1, pairs, n_in),
               vertex=_to_vertex(v, pairs, n_in))
    if ntk:
        out.update(ntk=_to_matrix(h, pairs, n_in), ntk_a=_to_vertex(a, pairs, n_in), ntk_b=bfull,
                   ntk_nngp=_to_vertex(d, pairs, n_in), ntk_correction=_to_matrix(h1, pairs, n_in))
    return Expansion(**out)


def _stein_factors(act, kmat):
    """(N, N, N) ``r[c, a, e] = E[d/dz_e (phi(z_c) phi'(z_a))]`` under ``z ~ N(0, kmat)``, by Stein's lemma
    ``E[z_S h] = K_S E[grad_S h]`` on the inputs ``S = {c, a}`` (so the Dirac deltas of kinked activations'
    ``phi''`` are included without differentiating ``phi'``)."""
    n_in = kmat.shape[0]
    kmat_np = np.asarray(kmat, np.float64)
    entries, where = [], []
    for c in range(n_in):
        for a in range(n_in):
            for e in sorted({c, a}):
                entries.append(((e, 2), (c, 0), (a, 1)))
                where.append((c, a, e))
    vals = dict(zip(where, _moments(act, kmat, entries)))
    r = np.zeros((n_in,) * 3)
    for c in range(n_in):
        for a in range(n_in):
            s = sorted({c, a})
            r[c, a, s] = np.linalg.solve(kmat_np[np.ix_(s, s)], [vals[(c, a, e)] for e in s])
    return jnp.asarray(r, kmat.dtype)


def _four_point_moments(act, kmat, pairs: np.ndarray, *, ntk: bool):
    """(P, P) matrices ``E[phi_a phi_b phi_c phi_d]``, ``E[phi'_a phi'_b phi_c phi_d]`` and ``E[phi'_a phi'_b
    phi'_c phi'_d]`` (the last two None without ``ntk``) under ``N(0, kmat)``, ``(a, b) = pairs[p]``,
    ``(c, d) = pairs[q]``; each distinct expectation is computed once."""
    kinds = [((0, 0), (0, 0))] + ([((1, 1), (0, 0)), ((1, 1), (1, 1))] if ntk else [])
    keys, index = [], {}
    slots = []
    for left, right in kinds:
        rows = []
        for a, b in pairs:
            row = []
            for c, dd in pairs:
                key = tuple(sorted(((int(a), left[0]), (int(b), left[1]), (int(c), right[0]), (int(dd), right[1]))))
                if key not in index:
                    index[key] = len(keys)
                    keys.append(key)
                row.append(index[key])
            rows.append(row)
        slots.append(np.array(rows))
    vals = jnp.asarray(_moments(act, kmat, keys), kmat.dtype)
    out = [vals[s] for s in slots]
    return (out + [None, None])[:3]


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
    return expansion(net, x, ntk=False, memory_budget=memory_budget).vertex


def nngp_correction(net, x, *, memory_budget: int = 2**30) -> jax.Array:
    """``K1`` (N, N): ``E f(x_a) f(x_b) = K_ab + K1_ab / n + O(1/n^2)`` at width ``n`` (see :func:`expansion`)."""
    return expansion(net, x, ntk=False, memory_budget=memory_budget).nngp_correction


def ntk_correction(net, x, *, memory_budget: int = 2**30) -> jax.Array:
    """``H1`` (N, N): the empirical NTK's mean at initialisation is ``E Theta(x_a, x_b) = H_ab + H1_ab / n +
    O(1/n^2)`` at width ``n`` (NTP; see :func:`expansion` and the module docstring). Zero with one hidden layer
    and for deep linear nets."""
    return expansion(net, x, memory_budget=memory_budget).ntk_correction


def ntk_variance(net, x, *, memory_budget: int = 2**30) -> jax.Array:
    """(N, N, N, N) ``n Cov(Theta(x_a, x_b), Theta(x_c, x_d))`` of one output's empirical NTK at initialisation,
    ``A[a,b,c,d] + B[a,b,c,d] + B[a,b,d,c]`` to leading order (Hanin & Nica 2020; the book's ch. 8): the variance
    of the NTK entry ``Theta_ab`` at width ``n`` is ``ntk_variance(...)[a, b, a, b] / n + O(1/n^2)``. The other
    output blocks: :meth:`Expansion.ntk_covariance`."""
    return expansion(net, x, memory_budget=memory_budget).ntk_covariance(1)


def last_layer_covariances(net, x, *, width: int, samples: int, seed: int = 0, memory: int = 2**30,
                           sampler: str = "weights") -> np.ndarray:
    """Monte Carlo over ``samples`` random networks ``ow.finite(net, width=width)`` of the last layer's
    conditional covariance ``G = b^2 + w^2 h h^T / fan_in`` (``h``: the last hidden features, ``w``, ``b``:
    the last ``Dense``'s ``w_std``, ``b_std``), shape (samples, N, N).

    Given ``h`` the outputs are exactly Gaussian with covariance ``G`` (independent across outputs), so
    ``E f_a f_b = E G_ab`` and, for two different outputs, the connected four-point function is
    ``Cov(G_ab, G_cd)``: the Rao-Blackwellised estimators of the quantities :func:`expansion` predicts,
    without the outputs' own sampling noise. Networks are drawn in compiled batches whose parameters fit in
    ``memory`` bytes; network ``s`` of the batch ``c`` uses ``jax.random.split(jax.random.key(seed * 10**6 + c))``.

    ``sampler="gaussian"`` draws the same law without the weights: given layer ``l``'s features ``h`` (n, N),
    layer ``l+1``'s pre-activations are i.i.d. over neurons and exactly ``N(0, b^2 + w^2 h h^T / fan_in)``, so
    each layer is sampled as ``S xi`` with ``S S^T`` that covariance and ``xi`` (N, n) standard normals. That
    costs ``O(L n N^2)`` per network instead of the weights' ``O(L n^2 N)`` and ``O(L n^2)`` random numbers
    (at width 1024 and 6 hidden layers, about 300x fewer for 3 inputs), and is the sampler that makes
    ``10^5`` networks of width 1024 practical on a CPU. The default ``"weights"`` builds the networks of
    ``ow.finite``: the independent check of the Gaussian law (``tests/test_finite_width.py`` compares the two).
    """
    where = f"{_WHERE}.last_layer_covariances"
    layers = _layers(net)
    w, b, _ = layers[-1]
    if sampler == "gaussian":
        return _sample_gaussian(layers, x, width=width, samples=samples, seed=seed, memory=memory, where=where)
    if sampler != "weights":
        raise ValueError(f"{where}: sampler must be 'weights' (ow.finite networks) or 'gaussian' (the layers' "
                         f"conditional Gaussian law), got {sampler!r}")

    def gram(model, key, x):
        h = model.intermediates(model.init(key, x), x).features
        return b ** 2 + w ** 2 * h @ h.T / h.shape[1]

    return _sample(net, x, gram, width=width, samples=samples, seed=seed, memory=memory, where=where, factor=1)


def _sample_gaussian(layers, x, *, width, samples, seed, memory, where) -> np.ndarray:
    """:func:`last_layer_covariances` with ``sampler="gaussian"``: each hidden layer's pre-activations drawn from
    their exact conditional law ``N(0, G)`` given the layer below (``G`` from that layer's features)."""
    width = _checks.positive_int("width", width, where=where)
    samples = _checks.positive_int("samples", samples, where=where)
    x = _checks.as_float_array("x", x, where=where, rank=2)
    dtype = jnp.result_type(float)
    x = jnp.asarray(x, dtype)
    w0, b0, _ = layers[0]
    g0 = b0 ** 2 + w0 ** 2 * x @ x.T / x.shape[1]
    n_in = x.shape[0]

    def one(key):
        g = g0
        for (w, b, act), k in zip(layers[1:], jax.random.split(key, len(layers) - 1)):
            h = act.fn(_psd_root(g) @ jax.random.normal(k, (n_in, width), dtype))
            g = b ** 2 + w ** 2 * h @ h.T / width
        return g

    chunk = max(1, min(samples, memory // max(1, 4 * n_in * width * jnp.dtype(dtype).itemsize)))
    return _batched(one, samples=samples, chunk=chunk, seed=seed)


def empirical_ntks(net, x, *, width: int, samples: int, seed: int = 0, memory: int = 2**30) -> np.ndarray:
    """Monte Carlo: the empirical NTKs ``Theta_ij(x_a, x_b)`` of ``samples`` random networks
    ``ow.finite(net, width=width)`` (NTP) at initialisation, shape (samples, k, k, N, N) for ``k`` outputs: the
    samples :meth:`Expansion.ntk_covariance` describes (``n Cov`` of same-output, different-output and
    cross-output entries). Batches and keys as :func:`last_layer_covariances`; each network's NTK is
    ``J J^T`` from one reverse-mode Jacobian."""
    where = f"{_WHERE}.empirical_ntks"
    _layers(net)

    def ntk(model, key, x):
        params = model.init(key, x)
        jac = jax.jacrev(model.apply)(params, x)  # leaves (N, k, *shape)
        flat = [j.reshape(j.shape[0], j.shape[1], -1) for j in jax.tree_util.tree_leaves(jac)]
        return sum(jnp.einsum("aip,bjp->ijab", j, j) for j in flat)

    return _sample(net, x, ntk, width=width, samples=samples, seed=seed, memory=memory, where=where, factor=4)


def _sample(net, x, fn, *, width, samples, seed, memory, where, factor):
    """``fn(model, key, x)`` for ``samples`` networks, vmapped in compiled batches of about ``memory`` bytes
    (``factor`` x the parameters per network), stacked on the host."""
    from owidth._finite import finite

    layers = _layers(net)
    width = _checks.positive_int("width", width, where=where)
    samples = _checks.positive_int("samples", samples, where=where)
    x = _checks.as_float_array("x", x, where=where, rank=2)
    model = finite(net, width=width)
    per_net = factor * (len(layers) - 1) * width * max(width, x.shape[1]) * jnp.dtype(jnp.result_type(float)).itemsize
    chunk = max(1, min(samples, memory // max(per_net, 1)))
    return _batched(lambda key: fn(model, key, x), samples=samples, chunk=chunk, seed=seed)


def _batched(fn, *, samples: int, chunk: int, seed: int) -> np.ndarray:
    """``fn(key)`` for ``samples`` keys, vmapped and compiled in batches of ``chunk``, stacked on the host; the
    batch ``c`` uses ``jax.random.split(jax.random.key(seed * 10**6 + c), chunk)``."""
    run = jax.jit(jax.vmap(fn))
    out = [np.asarray(run(jax.random.split(jax.random.key(seed * 10**6 + c), chunk)))
           for c in range(-(-samples // chunk))]
    return np.concatenate(out)[:samples]


def _psd_root(m):
    """``S`` with ``S S^T = m`` for a symmetric PSD ``m`` (eigenvectors scaled by the clipped roots)."""
    lam, vec = jnp.linalg.eigh(m)
    return vec * jnp.sqrt(jnp.clip(lam, 0.0, None))[None, :]


# --------------------------------------------------------------------------- #
# The 1/n correction of the mean prediction of gradient descent (one hidden layer)
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class Correction:
    """The mean output of an ensemble of GD-trained networks, ``E f_t = infinite_t + correction_t / n +
    O(1/n^2)`` (:func:`predict_correction`).

    Attributes:
      steps: (T,) the recorded steps.
      infinite: (T, N, k) the infinite-width mean (``ow.predict.gradient_descent`` with the NTK).
      correction: (T, N, k) the coefficient of ``1/n``.
      se: (T, N, k) its Monte Carlo standard error (over neurons, not networks).
      points: "test" or "train": the rows of the arrays.
      method: "neurons" or "simulation" (:func:`predict_correction`).
    """

    steps: np.ndarray
    infinite: np.ndarray
    correction: np.ndarray
    se: np.ndarray
    points: str
    method: str = "neurons"

    def mean(self, width: int) -> np.ndarray:
        """(T, N, k) ``infinite + correction / n``: the mean output at width ``n`` to order 1/n."""
        return self.infinite + self.correction / _checks.positive_int("width", width, where=_WHERE)


def predict_correction(net, x_train, y_train, x_test=None, *, lr: float, steps, center: bool = True,
                       method: str = "auto", neurons: int = 2**15, width: int = 256, pairs: int = 1024,
                       seed: int = 0) -> Correction:
    """The order-1/n correction to the mean prediction of networks trained by full-batch gradient descent.

    For ``ow.train(net, (x_train, y_train), lr=lr, steps=..., param=ow.NTP, optimizer="sgd", loss="mse",
    center=center)`` with hidden layers of width ``n``, the mean over initialisations of the outputs at step ``t``
    is ``infinite_t + correction_t / n + O(1/n^2)``. Two methods:

    - ``"neurons"`` (one hidden layer, smooth activation; the default there): exact up to a quasi-Monte Carlo
      error over one neuron's distribution, derived below.
    - ``"simulation"`` (any depth, any activation, the default otherwise): ``E f_t = E[f_t - flin_t] + E[flin_t]``
      with ``flin`` each network linearised at its initialisation. ``E[flin_t]`` to order 1/n is the NTK dynamics
      at ``H + H1/n`` (:func:`ntk_correction`, exact) plus its second-order response to the NTK's fluctuations;
      that response and ``E[f_t - flin_t]`` (the dNTK and ddNTK) are measured on ``pairs`` antithetic pairs of
      width-``width`` networks (the second with its readout negated, which cancels the dNTK's ``O(n^-1/2)``
      noise), so the coefficient's standard error does not grow with ``width``; its bias is ``O(1/width)`` for
      smooth activations. For kinked ones (ReLU) the coefficient itself grows like ``log width`` (module
      docstring): pass the width you predict for. Derivation: ``_simulated_correction`` in this module. With
      ``center=False`` the dNTK's correlation with the initial function is not cancelled and the error grows
      like ``sqrt(width)``. The cost is that of
      :func:`expansion` at all train and test points (which for the ReLU family grows steeply with their
      number: 5 points take ~1.5 min, 9 more than 10 min) and of training ``2 pairs`` networks.

    Derivation of ``"neurons"``. One hidden layer: ``f(x_e) = (w2 / sqrt n) sum_k a_k phi(z_k(x_e)) + b2 c`` with
    ``z_k = (w1 / sqrt d) W_k . x + b1 beta_k``. Gradient descent on ``L = 1/(2N) sum (f - y)^2`` moves each
    neuron's state ``s_k = (a_k, z_k(x_1..x_M))`` (every train and test input) by ``-lr eps v(s_k, r_t)``,
    ``eps = n^-1/2``, ``r_t = (f_t - y) / N`` on the train set, ``v(s, r) = (w2 phi(z)^T r, w2 K1[:, train]
    (phi'(z) * (r a)))`` with ``K1`` the first layer's kernel: the neurons interact only through ``r``. Write
    ``s_k(t) = s_k + eps delta_k(t)`` and ``Q_t(s) = (u(s + eps delta_t) - u(s)) / eps = Q0 + eps Q1 + eps^2 Q2``
    (``u(s) = w2 a phi(z)``) for a given residual path: ``Q0`` is linear in the path (the neuron's NTK), ``Q1``
    quadratic (the dNTK), ``Q2`` cubic (the ddNTK). The network's output is ``f_t - f_0 = <Q_t> + `` the output
    bias's part, with ``<.>`` the average over the ``n`` i.i.d. neurons, ``<g> = E g + eps Z[g]``, ``Z`` a
    Gaussian field with ``Cov(Z[g], Z[h]) = Cov(g, h)`` over one neuron and ``Cov(Z[g], f_0) = E g u``. With the
    residual expanded as ``r0 + eps r1 + eps^2 r2`` and the parity ``a -> -a`` (``E Q1 = 0``, ``Cov(NTK, u) = 0``),
    the mean output at order ``eps^2 = 1/n`` is the infinite-width NTK dynamics driven by the source::

        S_t = E[Q2_t[r0]]                       (ddNTK)
            + 2 E[Q1_t[A, B u(s)]]              (dNTK x initial function; not with center=True)
            + E[Z[Q0_t[r1]]]                    (NTK fluctuations; r1 is driven by Z[NTK] r0)

    where ``r0 = A + B f_0`` is the infinite-width residual path (``A``: from ``f_0 = 0``) and each expectation
    is over one neuron: ``E Z[X] Z[Y]`` becomes ``E (X(s) - E X)(Y(s) - E Y)``. The correction is then
    ``c_(t+1) = c_t + (S_(t+1) - S_t) - lr Theta[:, train] c_t[train] / N``. The ``eps``-derivatives of the
    neuron's trajectory (up to the third) are taken by forward-mode autodiff through the gradient-descent
    steps; the expectations over one neuron by randomised quasi-Monte Carlo over ``neurons`` neurons (and
    initial functions ``f_0`` when ``center=False``), with the standard error reported: the correction is
    exact up to that error, which is independent of ``n``.

    Args:
      net: an MLP of ``Dense`` layers and elementwise activations ending in ``ow.Dense(out=k, ...)``;
        ``method="neurons"`` needs one hidden layer and a smooth activation (kinked ones such as ReLU have a dNTK
        with Dirac deltas, which its forward-mode derivatives miss).
      x_train, y_train: (N, d) and (N,) or (N, k).
      x_test: (M, d) points to predict (default: the training points).
      lr: the learning rate (NTP: every parameter).
      steps: an int ``T`` (steps ``0..T``) or the list of steps to return.
      center: ``ow.train``'s ``center`` (default True: the network is ``f - f_0``).
      method: ``"auto"`` (``"neurons"`` where it applies, else ``"simulation"``), ``"neurons"`` or
        ``"simulation"``.
      neurons: ``"neurons"``: samples of one neuron: 16 independently scrambled Sobol sequences of
        ``neurons / 16`` points each (rounded up to a power of 2), whose spread gives the standard error.
      width: ``"simulation"``: the width of the simulated networks (default 256; the bias of the coefficient is
        ``O(1/width)``).
      pairs: ``"simulation"``: antithetic pairs of networks (default 1024).
      seed: of the scrambling, or of the simulated networks.

    Returns:
      :class:`Correction`.

    References:
      - Dyer & Gur-Ari 2020, Asymptotics of Wide Networks from Feynman Diagrams. <https://arxiv.org/abs/1909.11304>
      - Huang & Yau 2020, Dynamics of Deep Neural Networks and Neural Tangent Hierarchy. <https://arxiv.org/abs/1909.08156>
      - Roberts, Yaida & Hanin 2022, The Principles of Deep Learning Theory, ch. 11 (the dNTK and ddNTK).
    """
    where = f"{_WHERE}.predict_correction"
    layers = _layers(net)
    acts = [act for _, _, act in layers[1:]]
    smooth = all(getattr(act, "_smooth", True) for act in acts)
    if method == "auto":
        method = "neurons" if len(layers) == 2 and smooth else "simulation"
    if method not in ("neurons", "simulation"):
        raise ValueError(f"{where}: method must be 'auto', 'neurons' or 'simulation', got {method!r}")
    if method == "neurons" and len(layers) != 2:
        raise NotImplementedError(f"{where}: method='neurons' needs one hidden layer (Dense, activation, "
                                  f"Dense(out=k)); this net has {len(layers) - 1} hidden layers: use "
                                  "method='simulation'")
    if method == "neurons" and not smooth:
        raise NotImplementedError(f"{where}: {type(acts[-1]).__name__} is kinked: its dNTK has Dirac deltas at the "
                                  "kink, which method='neurons' (forward-mode derivatives of the activation) misses; "
                                  "use method='simulation' or a smooth activation (Tanh, Erf, Gelu, ...)")
    x_train = _checks.as_float_array("x_train", x_train, where=where, rank=2)
    y = np.asarray(y_train, np.float64)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != x_train.shape[0]:
        raise ValueError(f"{where}: y_train must be ({x_train.shape[0]},) or ({x_train.shape[0]}, k), got "
                         f"{np.shape(y_train)}")
    k = y.shape[1]
    n_out = [layer for layer in net.walk() if hasattr(layer, "out")][-1].out
    if n_out != k:
        raise ValueError(f"{where}: the net has {n_out} outputs but y_train has {k} columns")
    points = "train" if x_test is None else "test"
    x_test = x_train if x_test is None else _checks.as_float_array("x_test", x_test, where=where, rank=2)
    lr = float(lr)
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"{where}: lr must be a positive number, got {lr}")
    record = np.arange(int(steps) + 1) if np.ndim(steps) == 0 else np.asarray(steps, int)
    if record.size == 0 or record.min() < 0:
        raise ValueError(f"{where}: steps must be a non-negative int or a non-empty list of them, got {steps!r}")
    neurons = _checks.positive_int("neurons", neurons, where=where)
    big_t = int(record.max())

    from owidth._kernel import kernel  # the exact infinite-width NTK and NNGP

    dtype = jnp.result_type(float)
    ntr = x_train.shape[0]
    xs = jnp.asarray(np.concatenate([x_train, x_test]), dtype)
    sl = slice(ntr, None) if points == "test" else slice(0, ntr)
    if method == "simulation":
        width = _checks.positive_int("width", width, where=where)
        pairs = _checks.positive_int("pairs", pairs, where=where)
        if width < 2 or pairs < 2:
            raise ValueError(f"{where}: method='simulation' needs width >= 2 and pairs >= 2 (the standard error "
                             f"is the pairs' spread), got width={width}, pairs={pairs}")
        xs_sim = np.asarray(xs) if points == "test" else np.asarray(xs)[:ntr]  # no duplicated points
        f_inf, corr, se = _simulated_correction(net, x_train, xs_sim, np.asarray(y), lr=lr, big_t=big_t,
                                                center=center, width=width, pairs=pairs, seed=seed)
        return Correction(steps=record, infinite=f_inf[record][:, sl], correction=corr[record][:, sl],
                          se=se[record][:, sl], points=points, method="simulation")
    (w1, b1, _), (w2, b2, act) = layers
    kern = kernel(net, xs)
    theta, nngp = jnp.asarray(kern.ntk, dtype), jnp.asarray(kern.nngp, dtype)
    k1 = b1 ** 2 + w1 ** 2 * xs @ xs.T / xs.shape[1]
    k1_half, nngp_half = _psd_root(k1), _psd_root(nngp)
    yj = jnp.asarray(y, dtype)
    scale = 1.0 / ntr

    def infinite(f0, targets):
        """Infinite-width GD from ``f0`` (M, k): outputs (T+1, M, k) and train residuals (T, N, k)."""
        def step(f, _):
            r = scale * (f[:ntr] - targets)
            return f - lr * theta[:, :ntr] @ r, (f, r)

        f_end, (fs, rs) = jax.lax.scan(step, f0, None, length=big_t)
        return jnp.concatenate([fs, f_end[None]]), rs

    def u(s):
        return w2 * act.fn(s[k:])[:, None] * s[None, :k]

    def v(s, r):
        a, z = s[:k], s[k:]
        dphi = jnp.vectorize(jax.grad(act.fn))(z[:ntr])
        return jnp.concatenate([w2 * act.fn(z[:ntr]) @ r, w2 * k1[:, :ntr] @ (dphi * (r @ a))])

    def outputs(s, path, eps):
        """``u(s + eps delta_t)`` for t = 0..T under the residual path."""
        def step(delta, r):
            return delta - lr * v(s + eps * delta, r), u(s + eps * delta)

        d_end, us = jax.lax.scan(step, jnp.zeros_like(s), path)
        return jnp.concatenate([us, u(s + eps * d_end)[None]])

    def taylor(s, path, order):
        """The eps^order coefficient of ``u(s + eps delta_t)``: Q_(order-1)."""
        fn = lambda e: outputs(s, path, e)  # noqa: E731
        for _ in range(order):
            fn = jax.jacfwd(fn)
        return fn(jnp.zeros((), dtype)) / math.factorial(order)

    theta_bar = theta - b2 ** 2  # the mean NTK of one neuron (the output bias's part is deterministic)
    f_det, r_det = infinite(jnp.zeros((xs.shape[0], k), dtype), yj)

    m = xs.shape[0]
    # the sources are polynomials of low degree in the neuron's readout weights a: Gauss-Hermite in a (exact)
    a_nodes, a_weights = _gauss_hermite(k, _A_NODES)
    a_nodes, a_weights = jnp.asarray(a_nodes, dtype), jnp.asarray(a_weights, dtype)

    def source(g):
        """The three sources averaged over the readout weights ``a``, for the neuron's ``z`` and (uncentred)
        the initial function from the standard normals ``g``."""
        return jnp.tensordot(a_weights, jax.vmap(lambda a: source_at(a, g))(a_nodes), axes=1)

    def source_at(a, g):
        s = jnp.concatenate([a, k1_half @ g[:m]])
        if center:
            path = r_det
            total = 0.0
        else:
            f0 = nngp_half @ g[m:].reshape(m, k)
            path = infinite(f0, yj)[1]
            lin = infinite(u(s), jnp.zeros_like(yj))[1]  # B u(s)
            total = 2 * (taylor(s, r_det + lin, 2) - taylor(s, r_det - lin, 2)) / 4
        total = total + taylor(s, path, 3)

        def ntk_fluct(r):  # (NTK(s) - E NTK) r
            return jax.jvp(u, (s,), (v(s, r),))[1] - theta_bar[:, :ntr] @ r

        def step(carry, r0):
            g, acc = carry
            r1 = scale * g[:ntr]
            return (g - lr * theta[:, :ntr] @ r1 - lr * ntk_fluct(r0), acc - lr * ntk_fluct(r1)), acc

        (_, acc_end), accs = jax.lax.scan(step, (jnp.zeros((xs.shape[0], k), dtype),) * 2, path)
        return total + jnp.concatenate([accs, acc_end[None]])

    # 16 equal batches of neurons: the correction is linear in the source, so its standard error is the
    # spread of the 16 batch corrections
    # Randomised quasi-Monte Carlo: 16 independently scrambled Sobol sequences (Owen 1997) of the neuron's
    # (and, uncentred, the initial function's) standard normals; the correction is linear in the source,
    # so its standard error is the spread of the 16 estimates
    from scipy.special import ndtri
    from scipy.stats import qmc

    nb = 16
    per = 2 ** max(1, math.ceil(math.log2(max(1, neurons // nb))))
    dim = m + (0 if center else m * k)
    run = jax.jit(jax.vmap(source))
    chunk = max(1, 2 ** 21 // max(1, (big_t + 1) * m * k * 8))
    th = np.asarray(theta)
    corrs = []
    for b in range(nb):
        u01 = qmc.Sobol(dim, scramble=True, seed=np.random.default_rng([seed, b])).random(per)
        normals = jnp.asarray(ndtri(np.clip(u01, 1e-16, 1 - 1e-16)), dtype)
        src = sum(np.asarray(run(normals[c:c + chunk]), np.float64).sum(0) for c in range(0, per, chunk)) / per
        corr = np.zeros_like(src)  # c_(t+1) = c_t + (S_(t+1) - S_t) - lr Theta c_t[train] / N
        for t in range(big_t):
            corr[t + 1] = corr[t] + src[t + 1] - src[t] - lr * scale * th[:, :ntr] @ corr[t][:ntr]
        corrs.append(corr)
    corrs = np.stack(corrs)
    f_inf = np.asarray(f_det)
    return Correction(steps=record, infinite=f_inf[record][:, sl], correction=corrs.mean(0)[record][:, sl],
                      se=(corrs.std(0, ddof=1) / np.sqrt(nb))[record][:, sl], points=points, method="neurons")


def _linear_gd(theta, f_init, y, *, lr: float, ntr: int, big_t: int):
    """Gradient descent of the linearised network with NTK ``theta`` (M, M, k, k) on the first ``ntr`` of M
    points from ``f_init`` (M, k): outputs (T+1, M, k); the loss is ``1/(2 ntr) sum ||f - y||^2``."""
    def step(f, _):
        r = (f[:ntr] - y) / ntr
        return f - lr * jnp.einsum("abij,bj->ai", theta[:, :ntr], r), f

    f_end, fs = jax.lax.scan(step, f_init, None, length=big_t)
    return jnp.concatenate([fs, f_end[None]])


def _simulated_correction(net, x_train, xs, y, *, lr, big_t, center, width, pairs, seed):
    """``predict_correction(method="simulation")``: (infinite, correction, se), each (T+1, M, k) on all points.

    ``E f_t = E[f_t - flin_t] + E[flin_t]`` with ``flin`` the network linearised at its initialisation (kernel
    gradient descent with its empirical NTK ``That``; its initial function drops out of the mean by parity). With
    ``g(Theta)`` the linear dynamics, ``H_n = H + H1/n`` and ``R = g(That) - g(H_n) - Dg(H_n)[That - H_n]``::

        E f_t = g(H) + Dg(H)[H1] / n + E[f_t - flin_t + R] + O(1/n^2)

    The first two terms are exact (``H1``: :func:`ntk_correction`). ``R`` is the dynamics' second-order response
    to the NTK's fluctuations, ``O(1/n)`` with ``O(1/n)`` spread. ``f_t - flin_t`` (the dNTK and ddNTK) is
    ``O(n^-1/2)`` with a mean of ``O(1/n)``; its ``O(n^-1/2)`` part is odd under the readout flip ``W_L -> -W_L``
    (``f -> -f``, the NTK even), so antithetic pairs of networks cancel it. So ``n E[f_t - flin_t + R]`` is
    estimated from ``pairs`` antithetic pairs of width-``n`` networks trained by ``ow.train`` with a standard
    error independent of ``n``, and a bias ``O(1/n)`` (uncentred, the dNTK's correlation with the initial
    function leaves an ``O(n^-1/2)`` even part: the error grows like ``sqrt(n)``)."""
    from owidth._finite import finite
    from owidth._kernel import kernel
    from owidth._progress import progress
    from owidth._train import train
    from owidth.empirical import empirical_ntk

    dtype = jnp.result_type(float)
    m, ntr, k = xs.shape[0], x_train.shape[0], y.shape[1]
    eye = jnp.eye(k, dtype=dtype)
    h = jnp.asarray(kernel(net, jnp.asarray(xs, dtype)).ntk, dtype)[:, :, None, None] * eye[None, None]
    if len(_layers(net)) == 2:  # one hidden layer: H1 = 0 exactly (module docstring), no expansion needed
        h1 = jnp.zeros_like(h)
    else:
        h1 = jnp.asarray(expansion(net, xs).ntk_correction, dtype)[:, :, None, None] * eye[None, None]
    yj = jnp.asarray(y, dtype)

    def g(theta, f_init=None):
        return _linear_gd(theta, jnp.zeros((m, k), dtype) if f_init is None else f_init, yj, lr=lr, ntr=ntr,
                          big_t=big_t)

    f_inf, dg_h1 = jax.jvp(g, (h,), (h1,))
    h_n = h + h1 / width

    model = finite(net, width=width)
    n_last = 2 if _layers(net)[-1][1] != 0 else 1  # the readout's leaves: (b, w), or w without a bias

    def with_flips(keys):
        """Parameters of the networks from ``keys`` followed by the same networks with the readout negated."""
        params = jax.vmap(lambda key: model.init(key, jnp.asarray(x_train, dtype)))(keys)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        flipped = jax.tree_util.tree_unflatten(treedef, leaves[:-n_last] + [-leaf for leaf in leaves[-n_last:]])
        return jax.tree_util.tree_map(lambda u, v: jnp.concatenate([u, v]), params, flipped)

    def residual(p, f):
        """``f - flin + R`` of one network."""
        theta = empirical_ntk(model.apply, p, xs, outputs="full").reshape(m, m, k, k)
        f0 = model.apply(p, xs).reshape(m, k)
        lin = g(theta, None if center else f0)
        second = g(theta) - g(h_n) - jax.jvp(g, (h_n,), (theta - h_n,))[1]
        return f - lin + second

    run = jax.jit(jax.vmap(residual))
    n_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(
        jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x_train, dtype))))
    chunk = max(1, min(pairs, 2 ** 27 // (n_params * jnp.dtype(dtype).itemsize)))  # ~128 MiB of parameters
    keys = jax.random.split(jax.random.key(seed), pairs)
    res = []
    bar = progress(total=pairs, desc="predict_correction: antithetic pairs", delay=2.0)
    for c in range(0, pairs, chunk):
        both = with_flips(keys[c:c + chunk])
        q = len(keys[c:c + chunk])
        probe = jax.tree_util.tree_map(lambda leaf: leaf[jnp.array([0, q])], both)
        f_probe = jax.vmap(model.apply, in_axes=(0, None))(probe, jnp.asarray(xs, dtype))
        if not np.allclose(f_probe[1], -f_probe[0], rtol=1e-5, atol=1e-6):
            raise RuntimeError(f"{_WHERE}.predict_correction: negating the readout's parameters did not negate "
                               "the output; the antithetic pairs need the last Dense layer's parameters last")
        ds = train(net, (x_train, y), widths=width, lr=lr, steps=max(big_t, 1), seeds=2 * q, center=center,
                   init_params=jax.tree_util.tree_map(lambda leaf: leaf[:, None, None], both),
                   test=(xs, np.zeros((m, k))), record_outputs=True, record_every=1, progress_bar=False)
        out = ds.test_output.isel(width=0, lr=0, alpha=0).transpose("seed", "step", "point", ...).values
        f_net = jnp.asarray(out.reshape(2 * q, -1, m, k)[:, :big_t + 1], dtype)
        r = np.concatenate([np.asarray(run(jax.tree_util.tree_map(lambda leaf: leaf[i:i + 64], both),
                                           f_net[i:i + 64])) for i in range(0, 2 * q, 64)])
        res.append(width * 0.5 * (r[:q] + r[q:]))
        bar.update(q)
    bar.close()
    pair_means = np.concatenate(res)
    corr = np.asarray(dg_h1) + pair_means.mean(0)
    se = pair_means.std(0, ddof=1) / np.sqrt(pairs)
    return np.asarray(f_inf), corr, se
