"""Activations without a closed-form dual kernel: any elementwise function by quadrature."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from owidth.kernels import quadrature
from owidth.spec import Activation

__all__ = ["ActivationFn", "Composed", "Tanh", "Sigmoid", "Silu", "Swish", "Softplus"]

_DEFAULT_NODES = None  # the rule's default: 64 (smooth), 128 (kink at 0)


def _check_nodes(cls: str, nodes):
    if nodes is None:
        return nodes
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 2 <= nodes <= 512:
        raise ValueError(
            f"{cls}(nodes={nodes!r}) must be None (the default: 64, or 128 with a kink at 0, accurate to "
            "~1e-11 for variances 1e-4 to 1e3) or an int in [2, 512] (see owidth.kernels.quadrature)"
        )
    return nodes


class _Quadrature(Activation):
    """Dual kernels of ``self.fn`` by quadrature (see :mod:`owidth.kernels.quadrature`): a graded
    trapezoid rule accurate uniformly in the variance, split at 0 when ``kink_at_zero``."""

    nodes: int | None
    kink_at_zero = False

    def dual(self, q1, q2, c, *, need_dot):
        return quadrature.dual(self.fn, q1, q2, c, nodes=self.nodes, need_dot=need_dot, kink=self.kink_at_zero)

    def dual_diag(self, q, *, need_dot):
        return quadrature.dual_diag(self.fn, q, nodes=self.nodes, need_dot=need_dot, kink=self.kink_at_zero)

    def mean(self, q):
        return quadrature.mean(self.fn, q, nodes=self.nodes, kink=self.kink_at_zero)


@dataclasses.dataclass(frozen=True)
class ActivationFn(_Quadrature):
    """Any elementwise ``fn`` (jax-traceable, differentiable for the NTK).

    ``ow.ActivationFn(jnp.tanh)``, ``ow.ActivationFn(jax.nn.relu)``; the
    derivative for the NTK comes from ``jax.jvp`` of ``fn``. Pass the same
    function object to reuse compilations (functions compare by identity).

    With ``kink_at_zero=True`` (default) the NNGP/NTK maps use the split rule
    of :func:`owidth.kernels.quadrature.dual` (``kink=True``), which splits
    each integral where u = 0 or v = 0: for functions smooth except at 0
    (relu, leaky relu, abs and their smooth compositions) and for smooth
    ones, measured <= 2e-11 relative (float64) for variances 1e-4 to 1e3 at
    the default ``nodes`` (128 x 192 per entry). ``kink_at_zero=False``: the
    unsplit rule (96 x 104 nodes per entry, about 0.4x the cost), as accurate
    for smooth functions, but across a kink its error decays only
    algebraically. Both assume the function's structure lies at ``|x| ~ 1``
    or wider (a bend, or poles at distance >= ~1 from the real axis): for
    ``tanh(10 x)`` pass ``nodes`` larger, or rescale the preceding layer. A
    kink elsewhere than at 0 (e.g. ``relu(x - 1)``) is handled by neither.
    """

    function: Callable[[jax.Array], jax.Array]
    nodes: int | None = _DEFAULT_NODES
    kink_at_zero: bool = True

    def __post_init__(self):
        if not callable(self.function):
            raise TypeError(f"ActivationFn(function=...) must be callable, got {self.function!r}")
        _check_nodes("ActivationFn", self.nodes)
        if not isinstance(self.kink_at_zero, bool):
            raise TypeError(f"ActivationFn(kink_at_zero=...) must be a bool, got {self.kink_at_zero!r}")

    def fn(self, x):
        return self.function(x)


@dataclasses.dataclass(frozen=True)
class Composed(_Quadrature):
    """``second(first(x))``: consecutive nonlinearities as one elementwise function.

    Built by the kernel rules when an activation follows another; its dual
    kernels come from quadrature. When ``first`` is of the relu family
    (kinks only at 0) the composition is smooth except at 0 and the
    kink-aware split rule applies (``kink_at_zero=True``). Other
    compositions with a kinked activation (e.g. tanh then relu) are refused:
    the NTK map then has a jump where Gauss-Hermite converges like K^-1/2
    (measured for relu then tanh: 0.123, 0.134, 0.141, 0.146 at K = 24, 48,
    96, 192).
    """

    first: Activation
    second: Activation
    nodes: int | None = _DEFAULT_NODES
    kink_at_zero: bool = False

    @property
    def _smooth(self) -> bool:  # a composition with a kink at 0 composes further only by the polar rule
        return not self.kink_at_zero

    @property
    def _kink_at_zero_only(self) -> bool:
        return self.kink_at_zero

    def fn(self, x):
        return self.second.fn(self.first.fn(x))


def _named(name: str, doc: str, f):
    def fn(self, x):
        return f(x)

    def post_init(self):
        _check_nodes(name, self.nodes)

    cls = dataclasses.make_dataclass(
        name, [("nodes", "int | None", dataclasses.field(default=_DEFAULT_NODES))], bases=(_Quadrature,), frozen=True,
        namespace={"fn": fn, "__post_init__": post_init, "__doc__": doc, "__module__": __name__},
    )
    return cls


_RULE = ("; dual kernels by the graded trapezoid rule of :mod:`owidth.kernels.quadrature` (``nodes``: None for "
         "64, i.e. 96 x 104 nodes per kernel entry, relative error <= 1e-11 in float64 for pre-activation "
         "variances 1e-4 to 1e3).")
Tanh = _named("Tanh", "``tanh(x)``" + _RULE, jnp.tanh)
Sigmoid = _named("Sigmoid", "``1 / (1 + exp(-x))``" + _RULE, jax.nn.sigmoid)
Silu = _named("Silu", "``x sigmoid(x)`` (SiLU / swish)" + _RULE, jax.nn.silu)
Swish = Silu
Softplus = _named("Softplus", "``log(1 + exp(x))``" + _RULE, jax.nn.softplus)
