"""Reading a width-free MLP spec for the DMFT solvers (internal)."""

from __future__ import annotations

import dataclasses
import math

import jax

from owidth.param import MF, MUP, Parametrization
from owidth.layers._base import Layer, residual_depth
from owidth.layers.activations import Activation

__all__ = ["MLP", "elementwise", "parse", "residual_weights"]


@dataclasses.dataclass(frozen=True)
class MLP:
    """``Dense, act, ..., Dense, act, Dense(out=C)``: ``w_std`` and ``b_std`` of every Dense, the activations."""

    w_std: tuple[float, ...]  # sigma_1 .. sigma_{L+1}
    acts: tuple[Activation, ...]  # L activations
    base_width: int
    zero_readout: bool
    out: int = 1  # outputs C
    b_std: tuple[float, ...] = ()  # beta_1 .. beta_{L+1} (the last: the readout bias); () for none
    skip: tuple[float | None, ...] = ()  # per hidden-to-hidden weight: None, or the residual branch multiplier m
    branch_lr: float = 1.0  # learning-rate factor of the tensors inside residual branches

    @property
    def residual(self) -> bool:
        return any(m is not None for m in self.skip)

    def branch(self, l: int) -> tuple[bool, float, float]:
        """Hidden-to-hidden weight ``l`` (1-based, ``h^{l-1} -> h^l``): (residual?, multiplier, lr factor).

        A residual step is ``h^l = h^{l-1} + m (s_l W^l phi(h^{l-1}) / sqrt(n) + beta_l b^l)``."""
        m = self.skip[l - 1] if self.skip else None
        return (False, 1.0, 1.0) if m is None else (True, m, self.branch_lr)

    @property
    def biases(self) -> bool:
        return any(b != 0 for b in self.b_std)

    def beta(self, l: int) -> float:
        """The bias std of Dense ``l`` (0-based; ``depth`` is the readout), 0 without biases."""
        return self.b_std[l] if self.b_std else 0.0

    @property
    def depth(self) -> int:
        return len(self.acts)

    @property
    def linear(self) -> bool:
        return not any(a.caps.nonlinear for a in self.acts)

    @property
    def c_out(self) -> float:
        """Readout multiplier times the width: ``f = c_out / n sum_i w_i phi_i``."""
        return self.w_std[-1] * math.sqrt(self.base_width)

    def phi(self, l: int):
        return self.acts[l].fn

    def dphi(self, l: int):
        fn = self.acts[l].fn
        return jax.vmap(jax.grad(lambda u: fn(u)))  # elementwise derivative of a 1-D array


def elementwise(fn):
    """``fn`` of a 1-D array (``MLP.phi``, ``MLP.dphi``) applied to an array of any shape."""
    return lambda a: fn(a.reshape(-1)).reshape(a.shape)


def residual_weights(loss: str, f, y):
    """``Delta = -P dLoss/dF`` of outputs ``F`` (P, C): ``y - F`` (mse, targets ``y`` (P, C)) or
    ``y - softmax(F)`` (xent, one-hot labels ``y`` (P, C))."""
    if loss == "mse":
        return y - f
    return y - jax.nn.softmax(f, axis=-1)


def _same_exponents(p: Parametrization, q: Parametrization) -> bool:
    return p.a == q.a and p.b == q.b and p.c_sgd == q.c_sgd


def _flatten(layer, where: str, expected: str) -> list:
    """The network's main path: weight and activation layers, and ``("residual", scale, [layers])`` per
    :func:`ow.Residual` (serial and ``ow.repeat`` containers opened)."""
    if getattr(layer, "residual", False):
        branch = _flatten(layer.branches[1], where, expected)
        if any(isinstance(b, tuple) for b in branch):
            raise ValueError(f"{where}: nested residual blocks are not supported; expected {expected}")
        return [("residual", 1.0 if layer.weights is None else float(layer.weights[1]), branch)]
    if layer.caps.branches:
        raise ValueError(f"{where}: the DMFT solver supports {expected}; got parallel branches "
                         f"({type(layer).__name__}) other than ow.Residual")
    if layer.caps.transparent:
        return [item for child in layer._children() for item in _flatten(child, where, expected)]
    return [layer]


def parse(net, param, *, where: str) -> MLP:
    """Validate ``net`` (an MLP of Dense + activation layers, optionally with residual blocks) and ``param``
    (MUP or MF exponents, SGD; a depth exponent scales the residual branches)."""
    if not isinstance(net, Layer):
        raise TypeError(f"{where}: net must be an owidth spec such as "
                        "ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=1)), "
                        f"got {type(net).__name__}")
    if not isinstance(param, Parametrization) or not (_same_exponents(param, MUP) or _same_exponents(param, MF)):
        raise ValueError(f"{where}: the DMFT describes the muP / mean-field limit; param must be ow.MUP or ow.MF "
                         f"(any base width; depth exponents allowed, e.g. ow.DEPTH_MUP), got {param!r}")
    expected = ("ow.serial(ow.Dense(), act, ..., ow.Dense(), act, ow.Dense(out=C)), whose hidden steps "
                "'act, ow.Dense()' may be residual blocks ow.Residual(act, ow.Dense())")
    items = _flatten(net, where, expected)
    depth = residual_depth(net)
    layers, mults = [], []  # every weight/activation layer, and its residual branch multiplier (None: none)
    for item in items:
        if isinstance(item, tuple):
            _, scale, branch = item
            if len(branch) != 2:
                raise ValueError(f"{where}: a residual block must be ow.Residual(act, ow.Dense()); got {len(branch)} "
                                 f"layers in it ({expected})")
            layers += branch
            mults += [scale * param.depth_multiplier(depth)] * 2
        else:
            layers.append(item)
            mults.append(None)
    if len(layers) < 3 or len(layers) % 2 == 0:
        raise ValueError(f"{where}: the DMFT solver supports {expected}; got {len(layers)} layers")
    if isinstance(items[-1], tuple):
        raise ValueError(f"{where}: the network must end in 'act, ow.Dense(out=C)' (the readout); {expected}")
    skip = mults[2:-1:2]  # the hidden-to-hidden Dense layers 2, 4, ..., 2L - 2
    w_std, b_std, acts = [], [], []
    for i, layer in enumerate(layers):
        if i % 2 == 0:
            if not layer.caps.dense:
                raise ValueError(f"{where}: layer {i} is {type(layer).__name__}; the DMFT solver supports only "
                                 f"{expected} (Dense layers alternating with elementwise activations)")
            last = i == len(layers) - 1
            if last and (layer.out is None or layer.out < 1):
                raise ValueError(f"{where}: the readout must be ow.Dense(out=C) with C >= 1 outputs, got out={layer.out}")
            if not last and layer.out is not None:
                raise ValueError(f"{where}: layer {i} has out={layer.out}; hidden Dense layers must leave out unset")
            w_std.append(float(layer.w_std))
            b_std.append(float(layer.b_std))
        else:
            if not layer.caps.elementwise:
                raise ValueError(f"{where}: layer {i} is {type(layer).__name__}; expected an elementwise activation "
                                 f"(ow.Identity() for a linear network) in {expected}")
            acts.append(layer)
    residual = any(m is not None for m in skip)
    return MLP(tuple(w_std), tuple(acts), param.base_width, param.zero_readout, int(layers[-1].out),
               tuple(b_std) if any(b_std) else (), tuple(skip) if residual else (),
               param.depth_lr_scale(depth, optimizer="sgd") if residual else 1.0)
