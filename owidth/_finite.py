"""``ow.finite``: the same width-free spec as a finite network of width n."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from owidth import _checks
from owidth._protocol import Intermediates, flat_features
from owidth.flax_bridge import FlaxModel, FlaxNet
from owidth.layers import masking
from owidth.layers._base import BRANCH_TAG, Dim, FiniteCtx, Layer, Rng, Tape, after, residual_depth, zero_padding
from owidth.layers.graph import adjacency_pair
from owidth.param import NTP, Parametrization, Role, roles_from_shapes

__all__ = ["FiniteModel", "finite"]


@dataclasses.dataclass(frozen=True)
class FiniteModel:
    """A finite network: ``net`` at ``width`` under ``param``.

    ``init(key, x)`` returns a parameter pytree (no metadata on arrays: every
    width- and parametrization-dependent constant is a Python float derived
    from this frozen value, so params survive jit, vmap and checkpoints);
    ``apply(params, x)`` is a pure function of them. Both are jit-compatible
    and ``init`` vmaps over keys for ensembles::

        params = jax.vmap(model.init, in_axes=(0, None))(keys, x)
        out = jax.vmap(model.apply, in_axes=(0, None))(params, x)

    References:
      - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks. <https://arxiv.org/abs/2011.14522>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> isinstance(model, ow.FiniteModel), isinstance(model, ow.FiniteNetwork)
      (True, True)
      >>> rec = model.intermediates(model.init(jax.random.key(0), np.ones((2, 3))), np.ones((2, 3)))
      >>> rec.names, rec.features.shape
      (('dense', 'dense'), (2, 8))
    """

    net: Layer
    width: int
    param: Parametrization = NTP

    def __post_init__(self):
        if not isinstance(self.net, Layer):
            raise TypeError(f"ow.finite: net must be an owidth layer or ow.serial(...), got {type(self.net).__name__}")
        object.__setattr__(self, "width", _checks.positive_int("width", self.width, where="ow.finite"))
        if not isinstance(self.param, Parametrization):
            raise TypeError(f"ow.finite: param must be an ow.Parametrization such as ow.NTP, got {self.param!r}")

    @property
    def depth(self) -> int:
        """``L``, the residual blocks of the network (:func:`ow.Residual`, ``ow.repeat`` copies counted): the
        depth of the parametrization's depth factors ``(L / L0)^...``."""
        return residual_depth(self.net)

    @property
    def _ctx(self) -> FiniteCtx:
        return FiniteCtx(self.width, self.param, depth=self.depth)

    def init(self, key: jax.Array, x) -> Any:
        """Random parameters for inputs shaped like ``x``: (batch, features), or
        (batch, *spatial, channels) for convolutional networks."""
        padded = masking.check_padding("x", x, where="FiniteModel.init")
        x = _checks.as_float_array("x", x, where="FiniteModel.init", rank=None, padding=padded)
        params, _ = self.net._init(key, _input_dim(x), self._ctx)
        return params

    def apply(self, params: Any, x, *, adjacency=None, key: jax.Array | None = None, mask=None) -> jax.Array:
        """Network output for inputs ``x`` shaped as for :meth:`init`; ``adjacency`` (batch, V, V): the
        graphs of node features ``x`` (batch, V, C), for nets with :class:`ow.Aggregate` (only); ``key``:
        a PRNG key for the masks of :class:`ow.Dropout` layers (train mode; without it they are the
        identity); ``mask`` (batch, *S), True at padding positions of variable-size inputs (or NaN in
        all features of a position, read when ``x`` is concrete; pass ``mask`` under ``jax.jit``):
        padding is zero after every layer and ``GlobalAvgPool`` averages the valid positions."""
        where = "FiniteModel.apply"
        padded = mask is not None or masking.check_padding("x", x, where=where)
        x = _checks.as_float_array("x", x, where=where, rank=None, padding=padded)
        adjacency, _ = adjacency_pair(where, self.net, x, None, adjacency)
        rng = None if key is None else Rng(_checks.prng_key("key", key, where=where))
        if padded:
            masking.check_layers(self.net, where=where)
            if mask is None:
                x, mask = masking.split(x)
            elif tuple(mask.shape) != tuple(x.shape[:-1]):
                raise ValueError(f"{where}: mask has shape {tuple(mask.shape)}; it must be {tuple(x.shape[:-1])}, x's "
                                 "shape without its feature axis (True = padding)")
            else:
                mask = jnp.asarray(mask, dtype=bool)
                x = jnp.where(mask[..., None], jnp.zeros((), x.dtype), x)
        ctx = dataclasses.replace(self._ctx, adjacency=adjacency, rng=rng, mask=mask)
        y, _ = self.net._apply(params, x, _input_dim(x), ctx)
        if mask is None:
            return y
        return zero_padding(y, after(self.net, ctx))  # the output's padding

    def apply_taped(self, params: Any, x: jax.Array, taps=None, *, adjacency=None) -> tuple[jax.Array, Tape]:
        """``apply`` recording every weight layer's input, scales and output on a tape (internal: the
        structured empirical NTK adds ``taps`` to the outputs; use :meth:`intermediates` otherwise)."""
        tape = Tape(taps)
        ctx = dataclasses.replace(self._ctx, tape=tape, adjacency=adjacency)
        y, _ = self.net._apply(params, x, _input_dim(x), ctx)
        return y, tape

    def intermediates(self, params: Any, x, *, adjacency=None) -> Intermediates:
        """The output, every weight layer's output (and other observables) and the last hidden features
        of one forward pass (:class:`ow.Intermediates`); ``adjacency`` as for :meth:`apply`."""
        x = _checks.as_float_array("x", x, where="FiniteModel.intermediates", rank=None)
        adjacency, _ = adjacency_pair("FiniteModel.intermediates", self.net, x, None, adjacency)
        y, tape = self.apply_taped(params, x, adjacency=adjacency)
        names = tuple(name for name, _ in tape.coords)
        values = tuple(v for _, v in tape.coords)
        return Intermediates(y, names, values, flat_features(tape.inputs[-1] if tape.inputs else None))

    def roles(self, x) -> Any:
        """Pytree of :class:`ow.Role`, one per parameter tensor (shapes only; no FLOPs).

        Read off the parameter shapes at ``width`` and ``2 width`` (which axes
        grow), with the fan-in on the second-to-last axis and the fan-out on
        the last, as microsoft/mup does with base shapes.
        """
        key, spec = _shape_args(x, where="FiniteModel.roles")
        shapes = [jax.eval_shape(FiniteModel(self.net, w, self.param).init, key, spec) for w in (self.width, 2 * self.width)]
        return roles_from_shapes(*shapes)

    def lr_scales(self, x, *, optimizer: str) -> Any:
        """Pytree of per-tensor learning-rate multipliers ``(width / base_width)^-c_role`` (Python floats)."""
        return self.param.lr_scales(self.roles(x), width=self.width, optimizer=optimizer)

    def in_branches(self, x) -> Any:
        """Pytree of bools, one per parameter tensor: inside a residual branch (:func:`ow.Residual`), where
        the parametrization's depth factors apply (shapes only; no FLOPs)."""
        key, spec = _shape_args(x, where="FiniteModel.in_branches")
        ctx = dataclasses.replace(self._ctx, tag=True)
        shapes = jax.eval_shape(lambda k, u: self.net._init(k, _input_dim(u), ctx)[0], key, spec)
        return jax.tree.map(lambda a: a.dtype == BRANCH_TAG, shapes)

    def depth_scales(self, x, *, optimizer: str) -> Any:
        """Pytree of per-tensor depth learning-rate factors: ``(L / L0)^-depth_c`` inside residual branches,
        1 elsewhere; None when every factor is 1 (no depth scaling, or ``L = L0``)."""
        factor = self.param.depth_lr_scale(self.depth, optimizer=optimizer)
        if factor == 1.0:
            return None
        return jax.tree.map(lambda inside: factor if inside else 1.0, self.in_branches(x))

    def eps_scales(self, x) -> Any:
        """Pytree of per-tensor factors of Adam's epsilon (:meth:`ow.Parametrization.eps_scale`); None when
        every factor is 1 (``scale_eps=False``)."""
        if not self.param.scale_eps:
            return None
        roles, inside = self.roles(x), self.in_branches(x)
        return jax.tree.map(lambda r, b: self.param.eps_scale(r, width=self.width, depth=self.depth, in_branch=b),
                            roles, inside, is_leaf=lambda r: isinstance(r, Role))

    def structured(self) -> bool:
        """True when every parameter belongs to a ``Dense`` layer and every other layer is elementwise or a
        combinator: the structured empirical NTK (from each layer's input and back-propagated signal)
        applies."""
        return all(layer.caps.dense or layer.caps.elementwise or layer.caps.transparent for layer in self.net.walk())


def _shape_args(x, *, where: str):
    """Shapes-only stand-ins for ``init``'s key and inputs ``x`` (checked), for ``jax.eval_shape``."""
    x = _checks.as_float_array("x", x, where=where, rank=None)
    return jax.ShapeDtypeStruct((), jax.random.key(0).dtype), jax.ShapeDtypeStruct(x.shape, x.dtype)


def _input_dim(x) -> Dim:
    return Dim(x.shape[-1], False, tuple(x.shape[1:-1]))


def finite(net, *, width: int, param: Parametrization = NTP):
    """The finite network of ``net`` with hidden width ``width``.

    Args:
      net: width-free spec, or a flax model wrapped by :func:`ow.from_flax`.
      width: width ``n`` of every hidden (``out=None``) layer.
      param: the abc-parametrization (:data:`ow.SP`, :data:`ow.NTP`,
        :data:`ow.MUP`, :data:`ow.MF` or your own); :data:`ow.NTP` (default)
        is the one whose ``width -> inf`` limit the analytic kernels of
        :func:`ow.kernel` describe exactly.

    Returns:
      A frozen model with ``init(key, x)``, ``apply(params, x)``,
      ``roles(x)`` and ``lr_scales(x, optimizer=...)`` (see
      :func:`ow.scale_by_width`).

    Example::

        model = ow.finite(net, width=512)
        params = model.init(jax.random.key(0), x)
        y = model.apply(params, x)

    References:
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>
      - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks. <https://arxiv.org/abs/2011.14522>
      - Yang et al. 2022, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer. <https://arxiv.org/abs/2203.03466>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> model = ow.finite(net, width=16, param=ow.MUP)
      >>> x = np.ones((3, 2))
      >>> params = model.init(jax.random.key(0), x)
      >>> jax.tree.map(np.shape, params)
      ({'w': (2, 16)}, (), {'w': (16, 1)})
      >>> model.apply(params, x).shape
      (3, 1)
    """
    if isinstance(net, FlaxNet):
        return FlaxModel(net, width, param)
    return FiniteModel(net, width, param)
