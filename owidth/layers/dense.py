"""Fully connected layers."""

from __future__ import annotations

import dataclasses

from owidth import _checks
from owidth.kernels.state import KState
from owidth.layers._base import (
    Caps,
    Dim,
    FiniteCtx,
    WeightLayer,
    enter_weights,
    has_bias,
    init_weights,
    own_ntk,
)
from owidth.param import Role

__all__ = ["Dense"]


@dataclasses.dataclass(frozen=True)
class Dense(WeightLayer):
    """Fully connected layer ``z = W x + b`` in the NTK convention.

    ``W_ij ~ N(0, w_std^2 / fan_in)``, ``b_i ~ N(0, b_std^2)`` at
    initialisation (for finite networks, the scale is then distributed between
    multiplier and initialisation by the parametrization).

    Kernel rule (Lee et al. 2018; Jacot et al. 2018):

        nngp' = w_std^2 nngp + b_std^2
        ntk'  = w_std^2 ntk + nngp'

    Args:
      out: output width. ``None`` (default): a hidden layer, infinitely wide
        for kernels and ``width`` wide for finite networks. An int fixes it.
      w_std: weight standard deviation (times ``1/sqrt(fan_in)``).
      b_std: bias standard deviation; ``0`` means no bias parameter.

    ``w_std`` and ``b_std`` may be JAX scalars, so that ``jax.grad`` of any
    function of :func:`ow.kernel` (e.g. the evidence
    :func:`ow.predict.log_marginal_likelihood`) with respect to them works,
    under ``jax.jit`` too; with Python floats the layer is a hashable static
    value. A negative traced value acts as its absolute value (only squares
    enter the kernel); concrete negative or non-finite values raise
    ``ValueError``. In a finite network a JAX-scalar ``b_std`` always creates
    a bias tensor (the parameter structure cannot depend on a traced value).

    References:
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[3.0, 4.0]])                 # |x|^2 / d = 12.5
      >>> k = ow.kernel(ow.Dense(out=1, w_std=2.0, b_std=1.0), x)
      >>> float(k.nngp[0, 0]), float(k.ntk[0, 0])    # 4 * 12.5 + 1; a first layer's NTK is its NNGP
      (51.0, 51.0)
    """

    caps = Caps(weights=True, dense=True, pixel_var=True)
    _standard_ntk = True

    out: int | None = _checks.field(None, converter=_checks.optional_positive)
    w_std: float = _checks.field(1.0, converter=_checks.std)
    b_std: float = _checks.field(0.0, converter=_checks.std)

    def _kernel(self, ks: KState) -> KState:
        channels = ks.x1.shape[-1] if ks.is_input else None
        ks, first = enter_weights(
            ks, "ow.kernel: a Dense layer follows a Dense(out=k) layer. The infinite-width kernel "
            "needs every layer but the readout to be hidden: leave out=None on all but the last Dense.")
        w2, b2 = self.w_std**2, self.b_std**2
        nngp = w2 * ks.nngp + b2
        # NTK parametrization: the term of the layer's own parameters is the NNGP itself
        own = nngp if ks.sp_width is None else own_ntk(ks, channels, 1, self, ks.nngp)
        ntk = None if ks.ntk is None else own if first else w2 * ks.ntk + own
        # The same elementwise map on the variances: without x2 they stay the diagonal of nngp
        # (which the previous layer made equal to var1), and no per-layer gather of that diagonal
        # splits XLA's fusion of the whole recursion into one pass over the (n1, n2) entries.
        var1 = w2 * ks.var1 + b2
        var2 = None if ks.var2 is None else w2 * ks.var2 + b2
        return ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, gaussian=True, fixed=self.out is not None,
                          pre=None, act=None, mean1=None, mean2=None, width_mult=1)

    def _out_dim(self, ctx: FiniteCtx) -> Dim:
        return Dim(ctx.width, True) if self.out is None else Dim(self.out, False)

    def _out_like(self, dim: Dim, ctx: FiniteCtx) -> Dim:
        return dataclasses.replace(self._out_dim(ctx), spatial=dim.spatial)

    def _scale(self, dim: Dim, ctx: FiniteCtx):
        out = self._out_like(dim, ctx)
        role = Role.of(dim.scales, out.scales)
        return out, ctx.param.dense(role, fan_in=dim.size, width=ctx.width, w_std=self.w_std, b_std=self.b_std)

    def _init(self, key, dim, ctx):
        out, s = self._scale(dim, ctx)
        return init_weights(key, (dim.size, out.size), out.size, s, has_bias(self.b_std)), out

    def _forward(self, params, x, dim, ctx):
        out, s = self._scale(dim, ctx)
        if params["w"].shape != (dim.size, out.size):
            raise ValueError(
                f"Dense: parameters have shape {params['w'].shape} but the layer maps {dim.size} -> {out.size} "
                "features here; were the params made by init() with inputs of this feature size and this width?"
            )
        y = x @ (s.w_mult * params["w"])
        if "b" in params:
            y = y + s.b_mult * params["b"].reshape((1,) * (y.ndim - 1) + (-1,))
        return y, out, s

