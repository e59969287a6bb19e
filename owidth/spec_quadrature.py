"""Activations without a closed-form dual kernel: any elementwise function by quadrature."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from owidth.kernels import quadrature
from owidth.spec import Activation

__all__ = ["ActivationFn", "Composed", "Tanh", "Sigmoid", "Silu", "Swish", "Softplus"]

_DEFAULT_NODES = 48


def _check_nodes(cls: str, nodes) -> int:
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 2 <= nodes <= 256:
        raise ValueError(f"{cls}(nodes={nodes!r}) must be an int in [2, 256] (Gauss-Hermite nodes per axis)")
    return nodes


class _Quadrature(Activation):
    """Dual kernels of ``self.fn`` by 2-D Gauss-Hermite quadrature (see :mod:`owidth.kernels.quadrature`)."""

    nodes: int

    def dual(self, q1, q2, c, *, need_dot):
        return quadrature.dual(self.fn, q1, q2, c, nodes=self.nodes, need_dot=need_dot)

    def dual_diag(self, q, *, need_dot):
        return quadrature.dual_diag(self.fn, q, nodes=self.nodes, need_dot=need_dot)


@dataclasses.dataclass(frozen=True)
class ActivationFn(_Quadrature):
    """Any elementwise ``fn`` (jax-traceable, differentiable for the NTK).

    ``ow.ActivationFn(jnp.tanh)``; NNGP and NTK maps by Gauss-Hermite
    quadrature with ``nodes`` points per axis (default 48); the derivative
    for the NTK comes from ``jax.jvp`` of ``fn``. Pass the same function
    object to reuse compilations (functions compare by identity).
    """

    function: Callable[[jax.Array], jax.Array]
    nodes: int = _DEFAULT_NODES

    def __post_init__(self):
        if not callable(self.function):
            raise TypeError(f"ActivationFn(function=...) must be callable, got {self.function!r}")
        _check_nodes("ActivationFn", self.nodes)

    def fn(self, x):
        return self.function(x)


@dataclasses.dataclass(frozen=True)
class Composed(_Quadrature):
    """``second(first(x))``: consecutive nonlinearities as one elementwise function.

    Built by the kernel rules when an activation follows another; its dual
    kernels come from quadrature. Compositions with a kinked activation
    (relu family) are refused: the NTK map then has a jump, and quadrature
    converges like K^-1/2 (measured for relu then tanh: 0.123, 0.134, 0.141,
    0.146 at K = 24, 48, 96, 192).
    """

    first: Activation
    second: Activation
    nodes: int = _DEFAULT_NODES

    def fn(self, x):
        return self.second.fn(self.first.fn(x))


def _named(name: str, doc: str, f):
    def fn(self, x):
        return f(x)

    def post_init(self):
        _check_nodes(name, self.nodes)

    cls = dataclasses.make_dataclass(
        name, [("nodes", int, dataclasses.field(default=_DEFAULT_NODES))], bases=(_Quadrature,), frozen=True,
        namespace={"fn": fn, "__post_init__": post_init, "__doc__": doc, "__module__": __name__},
    )
    return cls


Tanh = _named("Tanh", "``tanh(x)``; dual kernels by Gauss-Hermite quadrature (``nodes`` per axis).", jnp.tanh)
Sigmoid = _named("Sigmoid", "``1 / (1 + exp(-x))``; dual kernels by quadrature.", jax.nn.sigmoid)
Silu = _named("Silu", "``x sigmoid(x)`` (SiLU / swish); dual kernels by quadrature.", jax.nn.silu)
Swish = Silu
Softplus = _named("Softplus", "``log(1 + exp(x))``; dual kernels by quadrature.", jax.nn.softplus)
