"""``ow.finite``: the same width-free spec as a finite network of width n."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from owidth import _checks
from owidth.param import NTP, Parametrization, Role
from owidth.spec import Dim, FiniteCtx, Layer, Tape


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
    def _ctx(self) -> FiniteCtx:
        return FiniteCtx(self.width, self.param)

    def init(self, key: jax.Array, x) -> Any:
        """Random parameters for inputs shaped like ``x``: (batch, features), or
        (batch, *spatial, channels) for convolutional networks."""
        x = _checks.as_float_array("x", x, where="FiniteModel.init", rank=None)
        params, _ = self.net._init(key, _input_dim(x), self._ctx)
        return params

    def apply(self, params: Any, x) -> jax.Array:
        """Network output for inputs ``x`` shaped as for :meth:`init`."""
        x = _checks.as_float_array("x", x, where="FiniteModel.apply", rank=None)
        y, _ = self.net._apply(params, x, _input_dim(x), self._ctx)
        return y

    def _apply_taped(self, params: Any, x: jax.Array, taps=None) -> tuple[jax.Array, Tape]:
        """``apply`` recording every weight layer's input and scales on a :class:`Tape`."""
        tape = Tape(taps)
        ctx = FiniteCtx(self.width, self.param, tape)
        y, _ = self.net._apply(params, x, _input_dim(x), ctx)
        return y, tape

    def roles(self, x) -> Any:
        """Pytree of :class:`ow.Role`, one per parameter tensor (shapes only; no FLOPs).

        Read off the parameter shapes at ``width`` and ``2 width`` (which axes
        grow), with the fan-in on the second-to-last axis and the fan-out on
        the last, as microsoft/mup does with base shapes.
        """
        x = _checks.as_float_array("x", x, where="FiniteModel.roles", rank=None)
        spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
        shapes = [jax.eval_shape(FiniteModel(self.net, w, self.param).init, key, spec) for w in (self.width, 2 * self.width)]
        return roles_from_shapes(*shapes)

    def lr_scales(self, x, *, optimizer: str) -> Any:
        """Pytree of per-tensor learning-rate multipliers ``(width / base_width)^-c_role`` (Python floats)."""
        return self.param.lr_scales(self.roles(x), width=self.width, optimizer=optimizer)

    def _only_dense_params(self) -> bool:
        """True when every parameter belongs to a Dense layer (the structured NTK applies)."""
        return _only_dense(self.net)


def roles_from_shapes(small: Any, large: Any) -> Any:
    """Roles of parameter tensors from their shapes at two widths (internal).

    A tensor whose last axis grows is fed by the width (fan-out); one whose
    second-to-last axis grows reads the width (fan-in); others must not grow.
    """

    def role(a, b):
        if len(a.shape) != len(b.shape):
            raise ValueError(f"a parameter changes rank with width ({a.shape} -> {b.shape}); roles cannot be inferred")
        grown = {i for i, (p, q) in enumerate(zip(a.shape, b.shape)) if p != q}
        nd = len(a.shape)
        out_scales = nd >= 1 and nd - 1 in grown
        in_scales = nd >= 2 and nd - 2 in grown
        if grown - {nd - 1, nd - 2}:
            raise ValueError(
                f"a parameter of shape {a.shape} grows with width on axes {sorted(grown)}; only the last (fan-out) "
                "and second-to-last (fan-in) axes may, as in (..., fan_in, fan_out) kernels"
            )
        return Role.of(in_scales, out_scales)

    return jax.tree.map(role, small, large)


def _input_dim(x) -> Dim:
    return Dim(x.shape[-1], False, tuple(x.shape[1:-1]))


def _only_dense(layer) -> bool:
    from owidth.spec import Activation, Dense, Parallel, Serial

    if isinstance(layer, (Dense, Activation)):
        return True
    if isinstance(layer, Serial):
        return all(_only_dense(child) for child in layer.layers)
    if isinstance(layer, Parallel):
        return all(_only_dense(child) for child in layer.branches)
    return False


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
    """
    from owidth.flax_bridge import FlaxModel, FlaxNet

    if isinstance(net, FlaxNet):
        return FlaxModel(net, width, param)
    return FiniteModel(net, width, param)
