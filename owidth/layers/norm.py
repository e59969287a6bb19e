"""Normalisation layers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from owidth import _checks
from owidth.kernels import spatial as sp
from owidth.kernels.state import KState, self_var
from owidth.layers._base import Layer

__all__ = ["LayerNorm"]


@dataclasses.dataclass(frozen=True)
class LayerNorm(Layer):
    """Layer normalisation over the features (channels, per pixel), without learned scale or shift.

    Finite network: ``y = (h - mean_k h_k) / sqrt(var_k h_k + eps)`` over the
    last (feature) axis. There are no parameters: a learned gain/bias would
    add its own NTK term, which this layer does not model.

    Kernel rule (Novak et al. 2020, LayerNorm; Yang 2019, Tensor Programs I):
    at infinite width the feature mean and variance are deterministic,
    ``m(x) = E h(x)`` and ``v(x) = E h(x)^2 - m(x)^2``, so

        nngp'(x, x') = (nngp(x, x') - m(x) m(x')) / sqrt((v(x) + eps)(v(x') + eps))
        ntk'(x, x')  = ntk(x, x') / sqrt((v(x) + eps)(v(x') + eps))

    (the gradients of the mean and variance are O(1/width)). After a weight
    layer ``m = 0`` and this is neural-tangents' rule; after an activation
    ``m = E phi(u)`` is not zero (E relu(u) = sqrt(q / 2 pi)) and the
    centring matters. A LayerNorm of post-activations is not Gaussian, so a
    nonlinearity right after it is refused; a weight layer after it is exact.
    Applied to the data (before any weight layer) it normalises the data.

    Args:
      eps: added to the variance, as in the finite network (default 1e-12).

    References:
      - Ba, Kiros & Hinton 2016, Layer Normalization. <https://arxiv.org/abs/1607.06450>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>
      - Yang 2019, Tensor Programs I: Wide Feedforward or Recurrent Neural Networks of Any Architecture are Gaussian Processes. <https://arxiv.org/abs/1910.12478>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 1.0], [1.0, -1.0]])
      >>> net = ow.serial(ow.Dense(w_std=3.0), ow.LayerNorm(), ow.Dense(out=1))
      >>> k = ow.kernel(net, x, get="nngp")
      >>> round(float(k.nngp[0, 0]), 4), round(float(k.nngp[0, 1]), 4) + 0.0   # normalised: 9 q / 9 q = 1
      (1.0, 0.0)
    """

    eps: float = _checks.field(1e-12, converter=_checks.nonneg_float)

    def _odd_linear(self) -> bool:
        return True

    def fn(self, x: jax.Array) -> jax.Array:
        m = jnp.mean(x, axis=-1, keepdims=True)
        c = x - m
        return c / jnp.sqrt(jnp.mean(c * c, axis=-1, keepdims=True) + self.eps)

    def _kernel(self, ks: KState) -> KState:
        if ks.is_input:
            return ks.replace(x1=self.fn(ks.x1), x2=None if ks.x2 is None else self.fn(ks.x2))
        if ks.fixed:
            # over k features the mean and variance are random (k = 1: the output is exactly 0), not the
            # deterministic infinite-width statistics this rule uses
            raise ValueError(
                "ow.kernel: LayerNorm follows a weight layer with a fixed out=k: over k features its mean and "
                "variance are random (k = 1: the network's output is exactly 0), not the infinite-width limit. "
                "Leave out=None on that layer (a hidden layer) and put the readout Dense(out=k) after the LayerNorm.")
        if ks.act is not None and not ks.act._has_mean:
            raise NotImplementedError(
                f"ow.kernel: LayerNorm after {type(ks.act).__name__}, whose mean E phi(u) is not known (a kernel-only "
                "or user-supplied dual): LayerNorm centres its input. Put a Dense layer between them."
            )
        nsp, full = len(ks.spatial), ks.full
        p1 = sp.pixel_var(ks.var1, nsp, full)
        p2 = p1 if ks.var2 is None else sp.pixel_var(ks.var2, nsp, full)
        m1 = ks.mean1
        m2 = m1 if ks.var2 is None else ks.mean2
        v1 = p1 + self.eps if m1 is None else p1 - m1 * m1 + self.eps
        v2 = p2 + self.eps if m2 is None else p2 - m2 * m2 + self.eps
        a, b = sp.outer(v1, v2, nsp, full)
        scale = jax.lax.rsqrt(a * b)  # one product: (i, j) and (j, i) get the same factor
        nngp = ks.nngp
        if m1 is not None or m2 is not None:
            ma, mb = sp.outer(jnp.zeros_like(p1) if m1 is None else m1, jnp.zeros_like(p2) if m2 is None else m2,
                              nsp, full)
            nngp = nngp - ma * mb
        nngp = nngp * scale
        ntk = None if ks.ntk is None else ks.ntk * scale
        if ks.var2 is None:
            var1, var2 = self_var(nngp), None
        else:
            var1, var2 = self._block(ks.var1, v1, m1, ks), self._block(ks.var2, v2, m2, ks)
        return ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, mean1=None, mean2=None, pre=None, act=None)

    def _block(self, var, v, m, ks):
        """The rule on a same-input block (per pixel, or all pixel pairs)."""
        if ks.full:
            a, b = sp.block(v, len(ks.spatial))
            c = var if m is None else var - sp.block(m, len(ks.spatial))[0] * sp.block(m, len(ks.spatial))[1]
            return c * jax.lax.rsqrt(a * b)
        return (var if m is None else var - m * m) / v

    def _init(self, key, dim, ctx):
        return (), dim

    def _apply(self, params, x, dim, ctx):
        return self.fn(x), dim
