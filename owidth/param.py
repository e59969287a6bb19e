"""abc-parametrizations of finite networks (Yang & Hu 2021, Tensor Programs IV).

A weight layer of role ``r`` in a network of width ``n`` is written

    W_eff = w_std / sqrt(F_r) * (n / n0)^(-a_r) * w,     w ~ N(0, (n / n0)^(-2 b_r))

where ``F_r`` is the layer's fan-in *at the base width* ``n0`` (the data
dimension for the input layer; ``n0`` times the kernel area for hidden and
output layers, i.e. ``fan_in * n0 / n``) and ``w``
is the trained parameter. At ``n = n0`` every parametrization is the same
network; they differ in how multiplier (``a``) and initial scale (``b``) move
with width. Learning-rate exponents ``c`` (``lr * (n/n0)^(-c)``) and the
SP / muP / MF presets come with the training code (not in this release).

Roles are read off the width-free spec: a layer whose fan-in is the data
dimension and whose output is a hidden (``out=None``) layer is an *input*
layer, width -> width is *hidden*, width -> fixed ``out`` is the *output*
(readout) layer, and fixed -> fixed (a linear model) is *fixed*.

Only the NTK parametrization ships in this release; it is the one whose
infinite-width limit the analytic kernels describe:
``a = (0, 1/2, 1/2)``, ``b = (0, 0, 0)``, so ``W_eff = w_std / sqrt(fan_in) w``
with ``w ~ N(0, 1)`` at every width (Jacot et al. 2018).
"""

from __future__ import annotations

import dataclasses
import enum
import math


class Role(enum.Enum):
    """Where a weight layer sits with respect to the width."""

    INPUT = "input"
    HIDDEN = "hidden"
    OUTPUT = "output"
    FIXED = "fixed"

    @staticmethod
    def of(in_scales: bool, out_scales: bool) -> Role:
        if in_scales:
            return Role.HIDDEN if out_scales else Role.OUTPUT
        return Role.INPUT if out_scales else Role.FIXED


@dataclasses.dataclass(frozen=True)
class DenseScale:
    """Per-layer constants of a finite weight layer (pure Python floats).

    The layer computes ``x @ (w_mult * w) + b_mult * b`` with trained
    parameters initialised as ``w ~ N(0, w_init^2)``, ``b ~ N(0, b_init^2)``.
    """

    w_mult: float
    w_init: float
    b_mult: float
    b_init: float


def _check_triple(name: str, value) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)
    except TypeError as err:
        raise TypeError(f"Parametrization.{name} must be a (input, hidden, output) triple of floats, got {value!r}") from err
    if len(triple) != 3 or not all(math.isfinite(v) for v in triple):
        raise ValueError(f"Parametrization.{name} must be 3 finite floats (input, hidden, output), got {value!r}")
    return triple


@dataclasses.dataclass(frozen=True)
class Parametrization:
    """abc exponents for (input, hidden, output) layers, relative to ``base_width``.

    Args:
      name: label used in results and plots.
      a: multiplier exponents ``(a_in, a_hidden, a_out)``: multiplier ``(n/n0)^-a``.
      b: initialisation exponents: init std ``(n/n0)^-b``.
      base_width: ``n0``, the width at which all parametrizations coincide.
    """

    name: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    base_width: int = 1

    def __post_init__(self):
        object.__setattr__(self, "a", _check_triple("a", self.a))
        object.__setattr__(self, "b", _check_triple("b", self.b))
        if not isinstance(self.base_width, int) or isinstance(self.base_width, bool) or self.base_width <= 0:
            raise ValueError(f"Parametrization.base_width must be a positive int, got {self.base_width!r}")

    def dense(self, role: Role, *, fan_in: int, width: int, w_std: float, b_std: float) -> DenseScale:
        """Constants of a weight layer with this role at ``width``."""
        if role is Role.FIXED:
            return DenseScale(w_std / math.sqrt(fan_in), 1.0, b_std, 1.0)
        i = {Role.INPUT: 0, Role.HIDDEN: 1, Role.OUTPUT: 2}[role]
        ratio = width / self.base_width
        # fan-in at the base width: a width-scaling fan-in (hidden/output) is
        # (multiplicity) x width, e.g. kernel area x channels for a convolution.
        base_fan_in = fan_in if role is Role.INPUT else fan_in * self.base_width / width
        w_mult = w_std / math.sqrt(base_fan_in) * ratio ** (-self.a[i])
        return DenseScale(w_mult, ratio ** (-self.b[i]), b_std, 1.0)


NTP = Parametrization(name="ntp", a=(0.0, 0.5, 0.5), b=(0.0, 0.0, 0.0))
"""NTK parametrization: ``W = w_std / sqrt(fan_in) * w``, ``w ~ N(0, 1)``."""
