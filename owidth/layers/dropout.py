"""Dropout (Srivastava et al. 2014): its infinite-width kernel in train mode, and the finite layer."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from owidth import _checks
from owidth.kernels import spatial as sp
from owidth.layers._base import Caps, Layer

__all__ = ["Dropout"]


def _rate(cls: str, name: str, value) -> float:
    rate = _checks.nonneg_float(cls, name, value)
    if rate >= 1.0:
        raise ValueError(f"ow.{cls}: {name}={value!r} drops every unit (the output would be 0); use a rate in [0, 1)")
    return rate


@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """Dropout in train mode: each unit (and pixel) kept with probability ``keep = 1 - rate``, scaled by ``1/keep``.

    ``rate`` is the probability of *dropping* a unit, as in flax and PyTorch (neural-tangents'
    ``Dropout(rate)`` takes the probability of keeping it: NT ``Dropout(0.9)`` is
    ``ow.Dropout(0.1)``).

    Kernel rule (NT's, Novak et al. 2020): masks of different inputs, and of different pixels of
    one input, are independent with ``E[m / keep] = 1``, so only the covariance of a unit with
    itself changes, ``E[(m z / keep)^2] = E[z^2] / keep``:

        nngp'(x, x) = nngp(x, x) / keep,  ntk'(x, x) = ntk(x, x) / keep,  off-diagonal unchanged,

    where "the same input" means one row of ``x1`` against itself in ``ow.kernel(net, x1)``
    (``ow.kernel(net, x1, x2)`` treats ``x1`` and ``x2`` as different draws even where rows are
    equal). The output is not Gaussian (a Gaussian times a mask), so a weight layer must follow
    before an activation.

    Finite network: with ``model.apply(params, x, key=k)`` a fresh mask per call (train mode);
    without a key the layer is the identity (evaluation mode).

    Args:
      rate: drop probability in [0, 1).

    References:
      - Srivastava et al. 2014, Dropout: A Simple Way to Prevent Neural Networks from Overfitting. <https://jmlr.org/papers/v15/srivastava14a.html>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dropout(0.5), ow.Dense(out=1))
      >>> k = ow.kernel(net, np.eye(2), get="nngp")
      >>> print(np.round(np.asarray(k.nngp), 4))      # the diagonal doubles (keep = 1/2); the rest is ReLU's
      [[0.5    0.0796]
       [0.0796 0.5   ]]
    """

    caps = Caps(pixel_var=True, random=True)

    rate: float = _checks.field(0.5, converter=_rate)

    @property
    def keep(self) -> float:
        return 1.0 - self.rate

    def _kernel(self, ks):
        ks = ks.materialize()
        f = 1.0 / self.keep
        nsp, full = len(ks.spatial), ks.full
        if ks.var2 is None:  # entries of an input with itself, at the same pixel
            mask = sp.diag_mask(ks.nngp.shape[0], nsp, ks.spatial, full)
            nngp = jnp.where(mask, f * ks.nngp, ks.nngp)
            ntk = None if ks.ntk is None else jnp.where(mask, f * ks.ntk, ks.ntk)
        else:
            nngp, ntk = ks.nngp, ks.ntk

        def var(v):
            if v is None:
                return None
            if full and nsp and not ks.var_pixel:  # (n, *S, *S): same-pixel entries only
                return jnp.where(sp.pixel_eye(ks.spatial), f * v, v)
            return f * v

        return ks.replace(nngp=nngp, ntk=ntk, var1=var(ks.var1), var2=var(ks.var2), gaussian=False, pre=None,
                          act=None)

    def _init(self, key, dim, ctx):
        return (), dim

    def _apply(self, params, x, dim, ctx):
        if ctx.rng is None or self.rate == 0.0:
            return x, dim
        keep = jax.random.bernoulli(ctx.rng.next(), self.keep, x.shape)
        return jnp.where(keep, x / self.keep, 0.0).astype(x.dtype), dim
