"""Bridge from a user's flax (NNX) model to a width-free owidth network.

``ow.from_flax(make)`` wraps a constructor ``make(width, rngs) -> nnx.Module``.
``ow.finite(bridge, width=n, param=...)`` then gives pure ``init``/``apply``
functions whose parameters follow the abc-parametrization ``param``:

* Roles are inferred by building the module abstractly (``nnx.eval_shape``,
  no FLOPs) at ``n`` and ``2n`` and seeing which axes grow: a tensor whose
  fan-in (second-to-last) and fan-out (last) axes both grow is *hidden*, one
  whose fan-out grows is *input* (first-layer kernels, biases, norm scales),
  one whose fan-in grows is *output* (readout), and the rest are *fixed* -
  the rule microsoft/mup applies to base shapes.
* The module's own initializers are taken to be the standard
  parametrization (variance ``~ 1/fan_in`` or a constant, as flax's defaults
  are). A tensor of role ``r`` is then used as ``W = (n/n0)^-a_r w`` with
  ``w_init = W_flax * (n/n0)^(b_sp - b_r)``, ``b_sp = 1/2`` for tensors whose
  fan-in is the width and 0 otherwise; at ``n = n0`` this is exactly the
  user's module. Learning-rate multipliers ``(n/n0)^-c_r`` come from
  ``model.lr_scales`` as for native specs.

Where the constant ``1/sqrt(fan_in)`` lives differs from native specs (native
``Dense`` puts it in the multiplier, flax in the initialisation), so the same
learning rate means a per-layer constant factor ``fan_in_base`` apart under
SGD; the width exponents, the outputs for corresponding parameters and the
learning-rate multipliers are the same.

Modules with non-parameter state (BatchNorm statistics, dropout RNG streams)
are refused: their pure form needs state threading that is not built yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from owidth import _checks
from owidth._caches import cached
from owidth._protocol import Intermediates, flat_features
from owidth.param import NTP, Parametrization, Role, roles_from_shapes

__all__ = ["FlaxNet", "FlaxModel", "from_flax"]


@dataclasses.dataclass(frozen=True)
class FlaxNet:
    """A width-free network given by a flax NNX constructor ``make(width, rngs)``.

    Build it with :func:`from_flax`; turn it into a finite network with
    :func:`ow.finite`.

    References:
      - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks. <https://arxiv.org/abs/2011.14522>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> from flax import nnx
      >>> net = ow.from_flax(lambda width, rngs: nnx.Linear(2, width, rngs=rngs))
      >>> type(net).__name__
      'FlaxNet'
    """

    make: Callable[..., Any]

    def __post_init__(self):
        from flax import nnx

        if isinstance(self.make, nnx.Module):
            raise TypeError("ow.from_flax: pass the constructor (a class or function (width, rngs) -> nnx.Module), "
                            "not a module instance: the bridge needs to build the model at several widths")
        if not callable(self.make):
            raise TypeError(f"ow.from_flax: make must be a callable (width, rngs) -> nnx.Module, got {self.make!r}")


def from_flax(make: Callable[..., Any]) -> FlaxNet:
    """Wrap a flax NNX model constructor as a width-free owidth network.

    Args:
      make: ``make(width, rngs) -> nnx.Module``; ``width`` is the hidden width
        and ``rngs`` an ``nnx.Rngs``. The module maps ``(batch, ...)`` inputs
        to ``(batch, k)`` outputs.

    Example::

        class MLP(nnx.Module):
            def __init__(self, width, rngs):
                self.hidden = nnx.Linear(64, width, rngs=rngs)
                self.out = nnx.Linear(width, 10, rngs=rngs)
            def __call__(self, x):
                return self.out(jax.nn.relu(self.hidden(x)))

        model = ow.finite(ow.from_flax(MLP), width=1024, param=ow.MUP.with_base_width(64))
        params = model.init(jax.random.key(0), x)
        y = model.apply(params, x)

    References:
      - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks. <https://arxiv.org/abs/2011.14522>
      - Yang et al. 2022, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer. <https://arxiv.org/abs/2203.03466>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> from flax import nnx
      >>> class MLP(nnx.Module):
      ...     def __init__(self, width, rngs):
      ...         self.hidden = nnx.Linear(3, width, rngs=rngs)
      ...         self.out = nnx.Linear(width, 1, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.out(nnx.relu(self.hidden(x)))
      >>> model = ow.finite(ow.from_flax(MLP), width=32, param=ow.MUP)
      >>> x = np.ones((4, 3))
      >>> model.apply(model.init(jax.random.key(0), x), x).shape
      (4, 1)
    """
    return FlaxNet(make)


@cached(maxsize=64)
def _abstract(make, width: int):
    """(graphdef, abstract parameter state) of ``make(width)``; refuses non-parameter state."""
    from flax import nnx

    module = nnx.eval_shape(lambda: make(width, nnx.Rngs(0)))
    if not isinstance(module, nnx.Module):
        raise TypeError(f"ow.from_flax: make(width, rngs) must return an nnx.Module, got {type(module).__name__}")
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise NotImplementedError(
            "ow.from_flax: the module has non-parameter state (e.g. BatchNorm statistics or dropout RNG "
            "streams); only modules whose state is all nnx.Param are supported so far"
        )
    return graphdef, params


def _shapes(make, width):
    from flax import nnx

    _, params = _abstract(make, width)
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(params))


@dataclasses.dataclass(frozen=True)
class FlaxModel:
    """A flax model at ``width`` under ``param``: pure ``init``/``apply`` (see :func:`from_flax`).

    References:
      - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks. <https://arxiv.org/abs/2011.14522>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> from flax import nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self, width, rngs):
      ...         self.a = nnx.Linear(2, width, rngs=rngs)
      ...         self.b = nnx.Linear(width, 1, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.b(nnx.tanh(self.a(x)))
      >>> model = ow.finite(ow.from_flax(Net), width=16)
      >>> isinstance(model, ow.FlaxModel), isinstance(model, ow.FiniteNetwork)
      (True, True)
    """

    net: FlaxNet
    width: int
    param: Parametrization = NTP

    def __post_init__(self):
        object.__setattr__(self, "width", _checks.positive_int("width", self.width, where="ow.finite"))
        if not isinstance(self.param, Parametrization):
            raise TypeError(f"ow.finite: param must be an ow.Parametrization such as ow.MUP, got {self.param!r}")

    def roles(self, x=None) -> Any:
        """Pytree of :class:`ow.Role` matching the parameters (``x`` is not needed)."""
        return roles_from_shapes(_shapes(self.net.make, self.width), _shapes(self.net.make, 2 * self.width))

    def lr_scales(self, x=None, *, optimizer: str) -> Any:
        """Per-tensor learning-rate multipliers ``(width / base_width)^-c_role``."""
        return self.param.lr_scales(self.roles(), width=self.width, optimizer=optimizer)

    def depth_scales(self, x=None, *, optimizer: str) -> None:
        """None: a flax module has no ``ow.Residual`` blocks, so no depth factors (see ``FiniteModel``)."""
        return None

    def eps_scales(self, x=None) -> Any:
        """Per-tensor factors of Adam's epsilon ``(width / base_width)^-e_role`` under ``scale_eps``, else None."""
        if not self.param.scale_eps:
            return None
        return jax.tree.map(lambda r: self.param.eps_scale(r, width=self.width), self.roles(),
                            is_leaf=lambda r: isinstance(r, Role))

    def _exponents(self):
        ratio = self.width / self.param.base_width
        index = {Role.INPUT: 0, Role.HIDDEN: 1, Role.OUTPUT: 2}

        def mult(role):
            return 1.0 if role is Role.FIXED else ratio ** (-self.param.a[index[role]])

        roles = self.roles()
        # the modules holding a readout (output-role) weight: their fixed-size tensors are the readout biases
        flat = jax.tree_util.tree_flatten_with_path(roles)[0]
        readouts = {path[:-1] for path, role in flat if role is Role.OUTPUT}

        def init(path, role):
            if role is Role.FIXED:  # mup's readout_zero_init zeroes the readout bias too
                return 0.0 if self.param.zero_readout and path[:-1] in readouts else 1.0
            if role is Role.OUTPUT and self.param.zero_readout:
                return 0.0
            b_sp = 0.5 if role in (Role.HIDDEN, Role.OUTPUT) else 0.0
            return ratio ** (b_sp - self.param.b[index[role]])

        return jax.tree.map(mult, roles), jax.tree_util.tree_map_with_path(init, roles)

    def init(self, key: jax.Array, x=None) -> Any:
        """Parameters (a nested dict of arrays) drawn by the module's initializers, rescaled to ``param``."""
        from flax import nnx

        _abstract(self.net.make, self.width)  # validates the module once
        module = self.net.make(self.width, nnx.Rngs(key))
        raw = nnx.to_pure_dict(nnx.state(module, nnx.Param))
        _, init_scale = self._exponents()
        return jax.tree.map(lambda w, s: w * s, raw, init_scale)

    def _module(self, params: Any):
        """The module with each tensor used as ``(n/n0)^-a_role * w``."""
        from flax import nnx

        graphdef, abstract = _abstract(self.net.make, self.width)
        mult, _ = self._exponents()
        state = jax.tree.map(lambda v: v, abstract)  # a fresh State to fill
        nnx.replace_by_pure_dict(state, jax.tree.map(lambda w, m: w * m, params, mult))
        return nnx.merge(graphdef, state)

    def apply(self, params: Any, x) -> jax.Array:
        """The module's output with each tensor used as ``(n/n0)^-a_role * w``."""
        return self._module(params)(x)

    def intermediates(self, params: Any, x) -> Intermediates:
        """The output, the input and output of every weight layer (a submodule with an ``nnx.Param``
        ``kernel`` or ``embedding``: ``nnx.Linear``, ``nnx.Conv``, ``nnx.Embed``, ...) and what the
        module ``sow``s as ``nnx.Intermediate``, in call order (:class:`ow.Intermediates`). The last
        weight layer's input gives ``features``."""
        from flax import nnx

        module = self._module(params)
        calls = []  # (name, input, output) of weight layers, in call order
        for _, sub in nnx.iter_modules(module):
            if any(isinstance(getattr(sub, a, None), nnx.Param) for a in ("kernel", "embedding")):
                sub.__class__ = _recording(type(sub), calls)
        y, sown = nnx.capture(module, nnx.Intermediate)(x)
        names = tuple(name for name, _, _ in calls)
        values = tuple(out for _, _, out in calls)
        for path, var in nnx.to_flat_state(sown):
            value = var.get_value() if isinstance(var, nnx.Variable) else var
            value = value if isinstance(value, tuple) else (value,)  # sow appends: a tuple of every call's value
            name = ".".join(map(str, path))
            names += tuple(name if len(value) == 1 else f"{name}.{i}" for i in range(len(value)))
            values += value
        return Intermediates(y, names, values, flat_features(calls[-1][1] if calls else None))


def _recording(cls: type, calls: list) -> type:
    """A subclass of the flax module ``cls`` whose ``__call__`` appends ``(name, input, output)`` to ``calls``
    (swapped onto the disposable module that :meth:`FlaxModel.intermediates` merges)."""

    def __call__(self, x, *args, **kwargs):  # noqa: N807
        y = cls.__call__(self, x, *args, **kwargs)
        calls.append((cls.__name__.lower(), x, y))
        return y

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
