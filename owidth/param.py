"""abc-parametrizations of finite networks (Yang & Hu 2021, Tensor Programs IV).

Convention
----------
A weight tensor of role ``r`` in a network of width ``n`` is used as

    W_eff = w_std / sqrt(F) * (n / n0)^(-a_r) * w,      w_init ~ N(0, (n / n0)^(-2 b_r)),

and trained with learning rate ``lr * (n / n0)^(-c_r)``. ``w`` is the trained
parameter, ``n0`` the ``base_width`` at which every parametrization is the
same network, and ``F`` the layer's fan-in *at the base width* (the data
dimension for an input layer; ``n0`` times the filter area for a layer whose
fan-in is the width). The constant ``w_std / sqrt(F)`` does not depend on
``n``, so the exponents are exactly those of Tensor Programs IV, where hidden
layers have fan-in ``n``.

Roles are read off the width-free spec (or, for flax modules, off parameter
shapes at two widths, as microsoft/mup does with base shapes):

======== ========================= ===================================
role     tensor                    examples
======== ========================= ===================================
input    fan-in fixed, out = width  first-layer weights; biases of hidden units
hidden   fan-in and out = width     hidden-to-hidden weights
output   fan-in = width, out fixed  readout weights
fixed    nothing scales             readout bias, linear models
======== ========================= ===================================

Biases of width-sized layers are input-role tensors (a weight from the constant
input 1, as in Tensor Programs IV); the readout bias never scales.

The presets (``a``, ``b``; ``c`` for SGD and for Adam), for (input, hidden, output):

====== ============== ================ ================ =============== ====== =========================
preset a              b                c (SGD)          c (Adam)        attn   regime (TP IV, Thm 3.3)
====== ============== ================ ================ =============== ====== =========================
SP     (0, 0, 0)      (0, 1/2, 1/2)    (0, 0, 0)        (0, 0, 0)       1/2    unstable (SGD stable at c=1)
NTP    (0, 1/2, 1/2)  (0, 0, 0)        (0, 0, 0)        (1/2, 1, 1/2)   1/2    stable, kernel (r = 1/2)
MUP    (0, 0, 1)      (0, 1/2, 0)      (-1, 0, -1)      (0, 1, 0)       1      stable, feature learning
MF     (0, 1/2, 1)    (0, 0, 0)        (-1, -1, -1)     (0, 1/2, 0)     1      = MUP (same network, see below)
UMUP   (0, 1/2, 1)    (0, 0, 0)        (-1, -1, -1)     (1/2, 1/2, 0)   1      stable, feature learning
====== ============== ================ ================ =============== ====== =========================

``UMUP`` is unit-scaled muP's abc form (Blake et al. 2024): unit initialisation, the scale in the
forward pass, and its embedding learning rate ``~ n^-1/2`` (muP's is constant); it is ``MF`` under SGD.

Depth. :func:`ow.Residual` branches are multiplied by ``(L / L0)^-alpha``, ``L`` the number of residual
blocks of the network (``ow.repeat`` copies counted; a transformer block has two) and ``L0`` the
``base_depth``; the learning rates of the tensors inside the branches get ``(L / L0)^-depth_c``:

=========== ===== ============== =============== ================ =================================
preset      alpha branch         lr (SGD)        lr (Adam)        Adam epsilon
=========== ===== ============== =============== ================ =================================
all above   0     1              1               1                ``eps``
DEPTH_MUP   1/2   (L/L0)^-1/2    1               (L/L0)^-1/2      ``eps``
COMPLETEP   1     (L/L0)^-1      L/L0            1                ``eps (n/n0)^-e (L/L0)^-1``
=========== ===== ============== =============== ================ =================================

(width exponents as ``MUP``). These are the rules that keep each block's contribution to one step
``O(1/L)`` (:meth:`Parametrization.regime` checks them): a branch multiplier ``L^-alpha`` makes its
gradients ``~ L^-alpha``, so the per-block update is ``L^-alpha lr`` under Adam and ``L^-2alpha lr``
under SGD. Under ``scale_eps`` (set in ``COMPLETEP``; ``dataclasses.replace(p, scale_eps=True)`` for any
preset) Adam's epsilon follows each tensor's gradient size, ``(n/n0)^-e_role`` with ``e`` from
:meth:`Parametrization.eps_exponents` (muP: 1 for every role), times ``(L/L0)^-alpha`` inside the branches.
Weight decay: ``lr wd`` per step at every width (as microsoft/mup), times the depth learning-rate factor
inside the branches (as CompleteP's reference implementation).

``attn`` is the exponent of the attention-logit scale ``d_head^-attn`` (relative
to the base width, see :meth:`Parametrization.attn_scale`): ``1/sqrt(d)`` in
standard practice, ``1/d`` under muP (Yang et al. 2022, Tensor Programs V).
Query, key, value and output projections of ``Attention`` are hidden tensors,
``Embedding`` tables input tensors.

``SP`` is standard practice (PyTorch/flax initialisation, one learning rate
at every width). ``MUP`` is the form of the microsoft/mup package (readout
multiplier ``1/n`` with constant initialisation; ``MuSGD`` multiplies the
learning rate of input weights, hidden biases and readout weights by ``n/n0``;
``MuAdam`` divides that of hidden weights by ``n/n0``). ``MF`` is the
mean-field form of Mei-Montanari and Bordelon-Pehlevan (all weights ``N(0, 1)``,
hidden multiplier ``n^-1/2``, readout ``n^-1``, one SGD learning rate ``~ n``).

Symmetry: for any ``t``, ``(a, b, c) -> (a + t, b - t, c - 2t)`` (SGD) or
``c - t`` (Adam, with ``eps = 0``) leaves the trained function unchanged
(TP IV, Sec. 3), so ``MF`` and ``MUP`` train identically. :meth:`Parametrization.regime`
evaluates the stability and feature-learning conditions.

References:
  - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks
    (abc-parametrizations, Def. 3.2, Thm 3.3). <https://arxiv.org/abs/2011.14522>
  - Yang et al. 2022, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
    Hyperparameter Transfer (muP for Adam and attention, microsoft/mup). <https://arxiv.org/abs/2203.03466>
  - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel (the NTK parametrization). <https://arxiv.org/abs/1806.07572>
  - Mei, Montanari & Nguyen 2018, A Mean Field View of the Landscape of Two-Layer Neural
    Networks (the mean-field scaling). <https://arxiv.org/abs/1804.06561>
  - Bordelon & Pehlevan 2022, Self-Consistent Dynamical Field Theory of Kernel Evolution in
    Wide Neural Networks (mean-field form, richness ``gamma0``). <https://arxiv.org/abs/2205.09653>
  - Everett et al. 2024, Scaling Exponents Across Parameterizations and Optimizers (the
    per-optimizer learning-rate exponents, Adam's epsilon). <https://arxiv.org/abs/2407.05872>
  - Yang et al. 2023, Tensor Programs VI: Feature Learning in Infinite-Depth Neural Networks
    (depth-muP). <https://arxiv.org/abs/2310.02244>
  - Bordelon et al. 2023, Depthwise Hyperparameter Transfer in Residual Networks.
    <https://arxiv.org/abs/2309.16620>
  - Dey et al. 2025, Don't be lazy: CompleteP enables compute-efficient deep transformers.
    <https://arxiv.org/abs/2505.01618>
  - Blake et al. 2024, u-muP: The Unit-Scaled Maximal Update Parametrization.
    <https://arxiv.org/abs/2407.17465>

Examples:
  The four presets are values; their regimes follow from the exponents (see the table):

  >>> import owidth as ow
  >>> [(p.name, p.regime().stable, p.regime().feature_learning) for p in (ow.SP, ow.NTP, ow.MUP, ow.MF)]
  [('sp', False, False), ('ntp', True, False), ('mup', True, True), ('mf', True, True)]
  >>> ow.SP.regime().r, ow.NTP.regime().r   # SP: r = min(1/2, 0) + 0 - 1 + min(1, 0) = -1
  (-1.0, 0.5)

  ``MF`` is ``MUP`` shifted by ``t = 1/2`` on the hidden weights (the abc symmetry):

  >>> m = ow.MUP.shifted(ow.Role.HIDDEN, 0.5)
  >>> (m.a, m.b, m.c_sgd, m.c_adam) == (ow.MF.a, ow.MF.b, ow.MF.c_sgd, ow.MF.c_adam)
  True
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import jax

from owidth import _optim
from owidth._optim import OPTIMIZERS
from owidth._optim import family as optimizer_family

__all__ = ["COMPLETEP", "DEPTH_MUP", "MF", "MUP", "NTP", "UMUP", "OPTIMIZERS", "PRESETS", "SP", "DenseScale", "Parametrization", "Regime", "Role",
           "mu_optimizer", "optimizer_family", "scale_by_width", "roles_from_shapes"]


class Role(enum.Enum):
    """Where a weight tensor sits with respect to the width (the rows of the module's role table).

    ``Role.of(in_scales, out_scales)`` names the role of a tensor from whether its fan-in and its
    fan-out grow with the width.

    References:
      - Yang & Hu 2021, Tensor Programs IV (input, hidden and output weights). <https://arxiv.org/abs/2011.14522>
      - Yang et al. 2022, Tensor Programs V (biases as input weights; roles from base shapes,
        as in microsoft/mup). <https://arxiv.org/abs/2203.03466>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> ow.Role.of(True, True), ow.Role.of(False, True), ow.Role.of(True, False), ow.Role.of(False, False)
      (<Role.HIDDEN: 'hidden'>, <Role.INPUT: 'input'>, <Role.OUTPUT: 'output'>, <Role.FIXED: 'fixed'>)
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> model.roles(np.ones((3, 2)))   # first weights feed the width, the readout reads it
      ({'w': <Role.INPUT: 'input'>}, (), {'w': <Role.OUTPUT: 'output'>})
    """

    INPUT = "input"
    HIDDEN = "hidden"
    OUTPUT = "output"
    FIXED = "fixed"

    @staticmethod
    def of(in_scales: bool, out_scales: bool) -> Role:
        if in_scales:
            return Role.HIDDEN if out_scales else Role.OUTPUT
        return Role.INPUT if out_scales else Role.FIXED


_INDEX = {Role.INPUT: 0, Role.HIDDEN: 1, Role.OUTPUT: 2}

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
class Regime:
    """What Tensor Programs IV (Yang & Hu 2021, Thm 3.3 and Def. 3.2) says of a parametrization.

    Attributes:
      stable: pre-activations and output stay O(1) at init and after training.
      nontrivial: the output moves by Theta(1) during training.
      feature_learning: the last hidden features move by Theta(1) (``r = 0``).
      kernel: stable, nontrivial and no feature learning (``r > 0``).
      r: the exponent of the feature update, ``Delta h^L ~ n^-r``.
      reasons: the conditions that failed, in words.
      depth_update: for a parametrization that scales depth (``alpha`` or a depth learning-rate
        exponent set), the exponent ``u`` of the residual stream's one-step update summed over the
        ``L`` blocks, ``~ L^u``: 0 is depth-wise feature learning (Tensor Programs VI, CompleteP),
        ``u > 0`` blows up with depth (unstable), ``u < 0`` leaves the blocks lazy as ``L -> inf``.
        None when depth is not scaled (every block trained as in a shallow net).

    References:
      - Yang & Hu 2021, Tensor Programs IV, Def. 3.2 and Thm 3.3. <https://arxiv.org/abs/2011.14522>
      - Yang et al. 2022, Tensor Programs V, Table 3 (Adam). <https://arxiv.org/abs/2203.03466>

    Examples:
      >>> import owidth as ow
      >>> reg = ow.NTP.regime(depth=2)   # r = min(1/2, 1) + 0 - 1 + min(1, 1) = 1/2
      >>> reg.stable, reg.nontrivial, reg.feature_learning, reg.kernel, reg.r
      (True, True, False, True, 0.5)
      >>> ow.SP.regime().reasons[0]
      'r = -1 < 0 (features blow up after one step)'
    """

    stable: bool
    nontrivial: bool
    feature_learning: bool
    kernel: bool
    r: float
    reasons: tuple[str, ...]
    depth_update: float | None = None


@dataclasses.dataclass(frozen=True)
class Parametrization:
    """abc exponents for (input, hidden, output) tensors, relative to ``base_width``.

    A frozen value with no arrays: it survives ``jit``, ``vmap``, sharding and
    checkpoints because no scaling metadata is ever attached to parameters.

    Args:
      name: label used in results and plots.
      a: multiplier exponents ``(a_in, a_hidden, a_out)``: multiplier ``(n/n0)^-a``.
      b: initialisation exponents: init std ``(n/n0)^-b``.
      c_sgd: learning-rate exponents under SGD-like optimizers: ``lr (n/n0)^-c``.
      c_adam: learning-rate exponents under Adam-like optimizers.
      base_width: ``n0``, the width at which all parametrizations coincide.
      zero_readout: initialise output-role weights and the readout bias at 0 (as
        microsoft/mup's ``readout_zero_init``). Yang et al. (2022,
        Tensor Programs V, Sec. D.2) recommend it for muP: it removes the
        random ``O(n^-1/2)`` output at initialisation (and with it the
        ``f0`` part of coordinate checks) without changing the limit.
      attn: exponent ``e`` of the attention-logit scale: an ``Attention``
        layer with head dimension ``d`` (``d / d0 = n / n0``) computes
        ``q . k * d^-1/2 * (n / n0)^-(e - 1/2)``, i.e. ``1/sqrt(d)`` for
        ``e = 1/2`` (SP, NTP: Vaswani et al. 2017) and ``~ 1/d`` for ``e = 1``
        (MUP, MF: Yang et al. 2022, Tensor Programs V, Sec. 4 / Appendix J),
        all equal to ``1/sqrt(d0)`` at the base width.
      zero_query: initialise the query projections of ``Attention`` layers at
        0 (Tensor Programs V, Sec. D.2, recommends it with muP: attention is
        then exactly uniform at initialisation at every width).
      alpha: depth exponent of the residual branches: each :func:`ow.Residual` branch is multiplied
        by ``(L / L0)^-alpha`` on top of its ``scale``, with ``L`` the number of residual blocks of
        the network and ``L0`` the ``base_depth``. In ``[0, 1]``: 0 (no depth scaling), 1/2
        (depth-muP), 1 (CompleteP).
      base_depth: ``L0``, the number of residual blocks at which every depth factor is 1.
      depth_c_sgd, depth_c_adam: depth learning-rate exponents: tensors inside residual branches
        train with ``lr (n / n0)^-c_role (L / L0)^-depth_c``. Stable depth-wise feature learning
        needs ``depth_c_sgd = 1 - 2 alpha``, ``depth_c_adam = 1 - alpha`` (:meth:`regime`).
      scale_eps: scale Adam's epsilon like each tensor's gradient:
        ``eps (n / n0)^-e_role (L / L0)^-alpha`` (the last factor inside residual branches), with
        ``e = (a_in + a_out + b_out, a_hidden + a_out + b_out, a_out)`` (:meth:`eps_exponents`).
        Otherwise one ``eps`` for every tensor, as microsoft/mup does.

    See the module docstring for the conventions and the preset table.

    References:
      - Yang & Hu 2021, Tensor Programs IV (abc-parametrizations, their symmetry and regimes).
        <https://arxiv.org/abs/2011.14522>
      - Yang et al. 2022, Tensor Programs V (Adam exponents, ``zero_readout``, ``zero_query``,
        ``1/d`` attention). <https://arxiv.org/abs/2203.03466>
      - Everett et al. 2024, Scaling Exponents Across Parameterizations and Optimizers (Adam's
        epsilon per tensor). <https://arxiv.org/abs/2407.05872>
      - Yang et al. 2023, Tensor Programs VI: Feature Learning in Infinite-Depth Neural Networks
        (depth-muP). <https://arxiv.org/abs/2310.02244>
      - Dey et al. 2025, Don't be lazy: CompleteP enables compute-efficient deep transformers.
        <https://arxiv.org/abs/2505.01618>

    Examples:
      A custom parametrization: SP with an SGD learning rate ``~ 1/n`` on every tensor is stable
      and in the kernel regime (Tensor Programs IV, Sec. 3):

      >>> import owidth as ow
      >>> sp_c1 = ow.Parametrization(name="sp-c1", a=(0, 0, 0), b=(0, 0.5, 0.5), c_sgd=(1, 1, 1))
      >>> sp_c1.c_sgd, sp_c1.base_width
      ((1.0, 1.0, 1.0), 1)
      >>> reg = sp_c1.regime()
      >>> reg.stable, reg.kernel, reg.r
      (True, True, 0.5)
    """

    name: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    c_sgd: tuple[float, float, float] = (0.0, 0.0, 0.0)
    c_adam: tuple[float, float, float] = (0.0, 0.0, 0.0)
    base_width: int = 1
    zero_readout: bool = False
    attn: float = 0.5
    zero_query: bool = False
    alpha: float = 0.0
    base_depth: int = 1
    depth_c_sgd: float = 0.0
    depth_c_adam: float = 0.0
    scale_eps: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Parametrization.name must be a non-empty string, got {self.name!r}")
        for field in ("a", "b", "c_sgd", "c_adam"):
            object.__setattr__(self, field, _check_triple(field, getattr(self, field)))
        if not isinstance(self.base_width, int) or isinstance(self.base_width, bool) or self.base_width <= 0:
            raise ValueError(f"Parametrization.base_width must be a positive int, got {self.base_width!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ValueError(f"Parametrization.alpha must be a number in [0, 1] (the residual branches' depth "
                             f"exponent: 0 none, 1/2 depth-muP, 1 CompleteP), got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if not isinstance(self.base_depth, int) or isinstance(self.base_depth, bool) or self.base_depth <= 0:
            raise ValueError(f"Parametrization.base_depth must be a positive int (residual blocks), got {self.base_depth!r}")
        for field in ("depth_c_sgd", "depth_c_adam"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Parametrization.{field} must be a finite float, got {value!r}")
            object.__setattr__(self, field, float(value))
        for flag in ("zero_readout", "zero_query", "scale_eps"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"Parametrization.{flag} must be a bool, got {getattr(self, flag)!r}")
        if isinstance(self.attn, bool) or not isinstance(self.attn, (int, float)) or not math.isfinite(self.attn):
            raise ValueError(f"Parametrization.attn must be a finite float (1/2: 1/sqrt(d) logits, 1: 1/d), "
                             f"got {self.attn!r}")
        object.__setattr__(self, "attn", float(self.attn))

    def with_base_width(self, base_width: int) -> Parametrization:
        """The same exponents relative to another base width (where it equals every other preset).

        Examples:
          At the base width every preset gives the same layer constants:

          >>> import owidth as ow
          >>> mup, ntp = ow.MUP.with_base_width(64), ow.NTP.with_base_width(64)
          >>> mup.base_width
          64
          >>> kw = dict(fan_in=64, width=64, w_std=1.0, b_std=0.0)
          >>> mup.dense(ow.Role.HIDDEN, **kw) == ntp.dense(ow.Role.HIDDEN, **kw)
          True
        """
        return dataclasses.replace(self, base_width=base_width)

    def with_base_depth(self, base_depth: int) -> Parametrization:
        """The same exponents relative to another base depth ``L0`` (residual blocks).

        Examples:
          >>> import owidth as ow
          >>> ow.COMPLETEP.with_base_depth(4).depth_multiplier(16)   # (16 / 4)^-1
          0.25
        """
        return dataclasses.replace(self, base_depth=base_depth)

    def depth_multiplier(self, depth: int) -> float:
        """The residual branches' multiplier ``(L / L0)^-alpha`` in a network of ``depth`` residual blocks.

        References:
          - Yang et al. 2023, Tensor Programs VI (``1/sqrt(L)``). <https://arxiv.org/abs/2310.02244>
          - Bordelon et al. 2023, Depthwise Hyperparameter Transfer in Residual Networks.
            <https://arxiv.org/abs/2309.16620>
          - Dey et al. 2025, CompleteP (``1/L``). <https://arxiv.org/abs/2505.01618>

        Examples:
          >>> import owidth as ow
          >>> ow.DEPTH_MUP.depth_multiplier(16), ow.MUP.depth_multiplier(16)
          (0.25, 1.0)
        """
        return self._depth_ratio(depth, "depth_multiplier") ** (-self.alpha)

    def depth_lr_scale(self, depth: int, *, optimizer: str) -> float:
        """Learning-rate factor ``(L / L0)^-depth_c`` of the tensors inside residual branches.

        Examples:
          >>> import owidth as ow
          >>> ow.DEPTH_MUP.depth_lr_scale(16, optimizer="adam"), ow.DEPTH_MUP.depth_lr_scale(16, optimizer="sgd")
          (0.25, 1.0)
          >>> ow.COMPLETEP.depth_lr_scale(16, optimizer="adam"), ow.COMPLETEP.depth_lr_scale(16, optimizer="sgd")
          (1.0, 16.0)
        """
        c = self.depth_c_sgd if optimizer_family(optimizer, where="Parametrization.depth_lr_scale") == "sgd" \
            else self.depth_c_adam
        return self._depth_ratio(depth, "depth_lr_scale") ** (-c)

    def _depth_ratio(self, depth, where: str) -> float:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"Parametrization.{where}: depth must be a non-negative int (the network's residual "
                             f"blocks), got {depth!r}")
        return max(depth, 1) / self.base_depth

    def eps_exponents(self) -> tuple[float, float, float]:
        """Width exponents ``e`` of each role's gradient entries, ``g ~ (n / n0)^-e``: the scale of Adam's
        epsilon under ``scale_eps`` (an epsilon of fixed size would dominate gradients that shrink with the
        width, and turn Adam into SGD there).

        A weight of role ``r`` with multiplier ``n^-a_r`` has gradient ``n^-a_r x delta``: ``x`` is O(1)
        (data, or stable features), and the back-propagated ``delta`` is O(1) at the output and
        ``n^-(a_out + b_out)`` at every hidden layer (each hidden layer multiplies it by
        ``n^-(a + b) sqrt(n) = 1``). Hence ``e = (a_in + a_out + b_out, a_hidden + a_out + b_out, a_out)``.

        References:
          - Yang et al. 2022, Tensor Programs V, Sec. B (epsilon must scale like the gradient).
            <https://arxiv.org/abs/2203.03466>
          - Everett et al. 2024, Scaling Exponents Across Parameterizations and Optimizers, Sec. 4.
            <https://arxiv.org/abs/2407.05872>

        Examples:
          >>> import owidth as ow
          >>> ow.MUP.eps_exponents(), ow.NTP.eps_exponents(), ow.SP.eps_exponents()
          ((1.0, 1.0, 1.0), (0.5, 1.0, 0.5), (0.5, 0.5, 0.0))
        """
        back = self.a[2] + self.b[2]
        return (self.a[0] + back, self.a[1] + back, self.a[2])

    def eps_scale(self, role: Role, *, width: int, depth: int = 0, in_branch: bool = False) -> float:
        """Adam's epsilon factor of a tensor: ``(n / n0)^-e_role`` times ``(L / L0)^-alpha`` inside a residual
        branch, when ``scale_eps``; 1 otherwise.

        Examples:
          >>> import owidth as ow
          >>> ow.COMPLETEP.with_base_width(64).eps_scale(ow.Role.HIDDEN, width=256, depth=8, in_branch=True)
          0.03125
          >>> ow.MUP.eps_scale(ow.Role.HIDDEN, width=256)   # scale_eps=False: one epsilon
          1.0
        """
        if not self.scale_eps:
            return 1.0
        w = 1.0 if role is Role.FIXED else (width / self.base_width) ** (-self.eps_exponents()[_INDEX[role]])
        return w * (self.depth_multiplier(depth) if in_branch else 1.0)

    def shifted(self, role: Role, t: float) -> Parametrization:
        """The symmetry of TP IV: ``(a, b, c_sgd, c_adam) -> (a + t, b - t, c_sgd - 2t, c_adam - t)`` for one role.

        The trained function is unchanged (exactly for SGD; for Adam when its
        ``eps`` is 0), so this is a check of any implementation.

        References:
          - Yang & Hu 2021, Tensor Programs IV, Sec. 3 (the abc symmetry). <https://arxiv.org/abs/2011.14522>

        Examples:
          >>> import owidth as ow
          >>> s = ow.MUP.shifted(ow.Role.OUTPUT, -0.5)
          >>> s.name, s.a, s.b, s.c_sgd, s.c_adam
          ('mup+shift', (0.0, 0.0, 0.5), (0.0, 0.5, 0.5), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.5))
          >>> s.regime().feature_learning   # the same regime as MUP
          True
        """
        i = _INDEX[role]

        def add(triple, dt):
            return tuple(v + dt if j == i else v for j, v in enumerate(triple))

        return dataclasses.replace(self, name=f"{self.name}+shift", a=add(self.a, t), b=add(self.b, -t),
                                   c_sgd=add(self.c_sgd, -2 * t), c_adam=add(self.c_adam, -t))

    def c(self, optimizer: str) -> tuple[float, float, float]:
        """Learning-rate exponents for an optimizer name (``"sgd"``, ``"momentum"``, ``"adam"``, ``"adamw"``).

        Examples:
          >>> import owidth as ow
          >>> ow.MUP.c("momentum"), ow.MUP.c("adamw")
          ((-1.0, 0.0, -1.0), (0.0, 1.0, 0.0))
        """
        return self.c_sgd if optimizer_family(optimizer, where="Parametrization.c") == "sgd" else self.c_adam

    def dense(self, role: Role, *, fan_in: int, width: int, w_std: float, b_std: float) -> DenseScale:
        """Constants of a weight layer with this role at ``width``.

        ``w_mult = w_std / sqrt(F) (n / n0)^-a``, ``w_init = (n / n0)^-b`` with ``F`` the fan-in at the
        base width (see the module docstring); biases of width-sized layers scale as input tensors.

        References:
          - Yang & Hu 2021, Tensor Programs IV (abc-parametrizations). <https://arxiv.org/abs/2011.14522>

        Examples:
          The readout of MUP at 4 times its base width: multiplier ``1/sqrt(64) * 4^-1``, unit init:

          >>> import owidth as ow
          >>> ow.MUP.with_base_width(64).dense(ow.Role.OUTPUT, fan_in=256, width=256, w_std=1.0, b_std=0.0)
          DenseScale(w_mult=0.03125, w_init=1.0, b_mult=0.0, b_init=1.0)
        """
        if role is Role.FIXED:
            return DenseScale(w_std / math.sqrt(fan_in), 1.0, b_std, 1.0)
        i = _INDEX[role]
        ratio = width / self.base_width
        # fan-in at the base width: a width-scaling fan-in (hidden/output) is
        # (multiplicity) x width, e.g. kernel area x channels for a convolution.
        base_fan_in = fan_in if role is Role.INPUT else fan_in * self.base_width / width
        w_mult = w_std / math.sqrt(base_fan_in) * ratio ** (-self.a[i])
        if role is Role.OUTPUT:  # the readout bias is a fixed-size tensor: it never scales
            return DenseScale(w_mult, 0.0 if self.zero_readout else ratio ** (-self.b[i]), b_std,
                              0.0 if self.zero_readout else 1.0)
        # biases of width-sized layers are input-role tensors (weights from the constant input 1)
        return DenseScale(w_mult, ratio ** (-self.b[i]), b_std * ratio ** (-self.a[0]), ratio ** (-self.b[0]))

    def attn_scale(self, *, d_head: int, width: int) -> float:
        """Attention-logit multiplier ``d^-1/2 (n / n0)^-(attn - 1/2)`` for head dimension ``d`` at ``width`` ``n``.

        With heads fixed, ``d`` grows like ``n``; at the base width every
        parametrization uses ``1/sqrt(d0)``. ``attn = 1`` is Tensor Programs V's
        ``1/d`` rule (the logits ``q . k`` of correlated ``q``, ``k`` grow like
        ``d`` after training), ``attn = 1/2`` the usual ``1/sqrt(d)``.

        References:
          - Yang et al. 2022, Tensor Programs V, Sec. 4 (``1/d`` attention). <https://arxiv.org/abs/2203.03466>
          - Vaswani et al. 2017, Attention Is All You Need (``1/sqrt(d)``). <https://arxiv.org/abs/1706.03762>

        Examples:
          >>> import owidth as ow
          >>> ow.NTP.with_base_width(64).attn_scale(d_head=64, width=256)   # 1/sqrt(64)
          0.125
          >>> ow.MUP.with_base_width(64).attn_scale(d_head=64, width=256)   # 1/sqrt(64) * 4^-1/2
          0.0625
        """
        return d_head ** -0.5 * (width / self.base_width) ** (-(self.attn - 0.5))

    def lr_scale(self, role: Role, *, width: int, optimizer: str) -> float:
        """Learning-rate multiplier ``(n / n0)^-c_role`` of a tensor with this role.

        References:
          - Yang et al. 2022, Tensor Programs V, Table 3 (muP learning rates for SGD and Adam).
            <https://arxiv.org/abs/2203.03466>

        Examples:
          >>> import owidth as ow
          >>> mup = ow.MUP.with_base_width(64)
          >>> mup.lr_scale(ow.Role.INPUT, width=256, optimizer="sgd")    # c = -1: 4^1
          4.0
          >>> mup.lr_scale(ow.Role.HIDDEN, width=256, optimizer="adam")  # c = 1: 4^-1
          0.25
        """
        if role is Role.FIXED:
            return 1.0
        return (width / self.base_width) ** (-self.c(optimizer)[_INDEX[role]])

    def lr_scales(self, roles, *, width: int, optimizer: str):
        """:meth:`lr_scale` of every :class:`Role` in the pytree ``roles`` (same structure, Python floats).

        Examples:
          >>> import owidth as ow
          >>> roles = {"in": ow.Role.INPUT, "mid": ow.Role.HIDDEN, "out": ow.Role.OUTPUT, "bias": ow.Role.FIXED}
          >>> ow.MUP.with_base_width(64).lr_scales(roles, width=256, optimizer="adam")
          {'bias': 1.0, 'in': 1.0, 'mid': 0.25, 'out': 1.0}
        """
        import jax

        return jax.tree.map(lambda r: self.lr_scale(r, width=width, optimizer=optimizer), roles)

    def regime(self, *, depth: int = 2, optimizer: str = "sgd") -> Regime:
        """Stability, triviality and feature learning of an MLP with ``depth`` hidden layers.

        For SGD (Yang & Hu 2021, Def. 3.2 and Thm 3.3), with one learning-rate
        exponent ``c``, ``L = depth`` and layers ``1..L+1``:

            r = min(a_{L+1} + b_{L+1}, 2 a_{L+1} + c) + c - 1 + min_{l<=L} (2 a_l + [l = 1])

        stable iff  (i) ``a_1 + b_1 = 0``, ``a_l + b_l = 1/2`` (hidden), ``a_{L+1} + b_{L+1} >= 1/2``;
        (ii) ``r >= 0``; (iii) ``a_{L+1} + b_{L+1} + r >= 1`` and ``2 a_{L+1} + c >= 1``.
        Nontrivial iff ``a_{L+1} + b_{L+1} + r = 1`` or ``2 a_{L+1} + c = 1``; feature
        learning iff ``r = 0``. Per-role ``c`` are first made equal by the symmetry
        ``(a, b, c) -> (a + t, b - t, c - 2t)``.

        For Adam (entrywise-normalised updates, ``Delta w = Theta(lr n^-c)``) the
        same bookkeeping gives ``r = min_l (a_l + c_l - [l > 1])`` and the output
        conditions ``a_{L+1} + b_{L+1} + r >= 1``, ``a_{L+1} + c_{L+1} >= 1``
        (nontrivial when either holds with equality); the initialisation
        conditions (i) are the same. This is the derivation behind the Adam
        column of Tensor Programs V's Table 3.

        References:
          - Yang & Hu 2021, Tensor Programs IV, Def. 3.2 and Thm 3.3. <https://arxiv.org/abs/2011.14522>
          - Yang et al. 2022, Tensor Programs V, Table 3. <https://arxiv.org/abs/2203.03466>

        Examples:
          For MUP under SGD the shift to a common ``c = 0`` gives ``a = (-1/2, 0, 1/2)``,
          ``b = (1/2, 1/2, 1/2)``, so ``r = min(1, 1) + 0 - 1 + min(0, 0) = 0``: feature learning.
          Under Adam ``r = min(a_1 + c_1, a_2 + c_2 - 1) = 0`` too:

          >>> import owidth as ow
          >>> reg = ow.MUP.regime(depth=3)
          >>> reg.stable, reg.feature_learning, reg.kernel, reg.r
          (True, True, False, 0.0)
          >>> ow.MUP.regime(optimizer="adam").feature_learning
          True
          >>> ow.NTP.regime(optimizer="adam").kernel   # NTP's Adam exponents keep it lazy
          True
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"Parametrization.regime: depth must be a positive int (hidden layers), got {depth!r}")
        family = optimizer_family(optimizer, where="Parametrization.regime")
        tol = 1e-12
        if family == "sgd":
            c0 = self.c_sgd[1]
            t = [(ci - c0) / 2 for ci in self.c_sgd]  # shift every role to the hidden layers' c
            a = [ai + ti for ai, ti in zip(self.a, t)]
            b = [bi - ti for bi, ti in zip(self.b, t)]
            c = c0
            hidden = [2 * a[0] + 1] + [2 * a[1]] * (depth - 1)
            r = min(a[2] + b[2], 2 * a[2] + c) + c - 1 + min(hidden)
            out_update = 2 * a[2] + c  # exponent of the readout's own update to f, minus 1
        else:
            a, b, c = list(self.a), list(self.b), list(self.c_adam)
            r = min([a[0] + c[0]] + [a[1] + c[1] - 1] * (depth - 1))
            out_update = a[2] + c[2]
        reasons = []
        if abs(a[0] + b[0]) > tol:
            reasons.append(f"input layer: a + b = {a[0] + b[0]:g} != 0 (pre-activations not Theta(1) at init)")
        if depth > 1 and abs(a[1] + b[1] - 0.5) > tol:
            reasons.append(f"hidden layers: a + b = {a[1] + b[1]:g} != 1/2 (pre-activations not Theta(1) at init)")
        if a[2] + b[2] < 0.5 - tol:
            reasons.append(f"output layer: a + b = {a[2] + b[2]:g} < 1/2 (output blows up at init)")
        if r < -tol:
            reasons.append(f"r = {r:g} < 0 (features blow up after one step)")
        if a[2] + b[2] + r < 1 - tol:
            reasons.append(f"a_out + b_out + r = {a[2] + b[2] + r:g} < 1 (output blows up through the features)")
        if out_update < 1 - tol:
            reasons.append(f"readout update exponent {out_update:g} < 1 (output blows up through the readout)")
        depth_update = self._depth_regime(family, reasons)
        stable = not reasons
        nontrivial = abs(a[2] + b[2] + r - 1) <= tol or abs(out_update - 1) <= tol
        feature = stable and abs(r) <= tol
        return Regime(stable=stable, nontrivial=stable and nontrivial, feature_learning=feature,
                      kernel=stable and nontrivial and r > tol, r=r, reasons=tuple(reasons), depth_update=depth_update)

    def _depth_regime(self, family: str, reasons: list) -> float | None:
        """The depth conditions (Tensor Programs VI; Bordelon et al. 2023; Dey et al. 2025), appended to
        ``reasons``; returns the exponent of the summed residual update (None: depth not scaled).

        A branch with multiplier ``L^-alpha`` gets gradients ``~ L^-alpha``, so one step moves its output
        by ``L^-alpha * lr`` (Adam: normalised update) or ``L^-2alpha * lr`` (SGD): summed over ``L``
        blocks, ``L^(1 - alpha - depth_c_adam)`` or ``L^(1 - 2 alpha - depth_c_sgd)``. At initialisation
        the ``L`` independent branches add variance ``L^(1 - 2 alpha)``: bounded iff ``alpha >= 1/2``."""
        depth_c = self.depth_c_sgd if family == "sgd" else self.depth_c_adam
        if self.alpha == 0 and depth_c == 0:
            return None
        tol = 1e-12
        if self.alpha < 0.5 - tol:
            reasons.append(f"alpha = {self.alpha:g} < 1/2: the residual stream's variance grows like "
                           f"L^{1 - 2 * self.alpha:g} at initialisation")
        u = 1 - (2 if family == "sgd" else 1) * self.alpha - depth_c
        if u > tol:
            opt = "sgd" if family == "sgd" else "adam"
            right = 1 - (2 if family == "sgd" else 1) * self.alpha
            reasons.append(f"depth_c_{opt} = {depth_c:g}: one step moves the residual stream by L^{u:g} (grows with "
                           f"depth); use depth_c_{opt} = {right:g}")
        return u


SP = Parametrization(name="sp", a=(0.0, 0.0, 0.0), b=(0.0, 0.5, 0.5))
"""Standard practice: init std ``~ 1/sqrt(fan_in)``, multiplier 1, one learning rate for all widths."""

NTP = Parametrization(name="ntp", a=(0.0, 0.5, 0.5), b=(0.0, 0.0, 0.0), c_adam=(0.5, 1.0, 0.5))
"""NTK parametrization: ``W = w_std / sqrt(fan_in) * w``, ``w ~ N(0, 1)`` (Jacot et al. 2018).

Its ``width -> inf`` limit under SGD is the kernel regime described by
:func:`ow.kernel`; the Adam exponents keep Adam in the same regime."""

MUP = Parametrization(name="mup", a=(0.0, 0.0, 1.0), b=(0.0, 0.5, 0.0), c_sgd=(-1.0, 0.0, -1.0),
                      c_adam=(0.0, 1.0, 0.0), attn=1.0)
"""Maximal-update parametrization (Yang & Hu 2021; Yang et al. 2022), microsoft/mup form."""

MF = Parametrization(name="mf", a=(0.0, 0.5, 1.0), b=(0.0, 0.0, 0.0), c_sgd=(-1.0, -1.0, -1.0),
                     c_adam=(0.0, 0.5, 0.0), attn=1.0)
"""Mean-field form of muP (Mei et al. 2018; Bordelon & Pehlevan 2022): ``N(0, 1)`` weights."""

DEPTH_MUP = dataclasses.replace(MUP, name="depth-mup", alpha=0.5, depth_c_sgd=0.0, depth_c_adam=0.5)
"""Depth-muP (Yang et al. 2023, Tensor Programs VI; Bordelon et al. 2023): muP in width, residual branches
multiplied by ``(L / L0)^-1/2``, Adam learning rate of the branches' tensors ``(L / L0)^-1/2`` (SGD: constant).
Equal to :data:`MUP` at ``L = L0``."""

COMPLETEP = dataclasses.replace(MUP, name="completep", alpha=1.0, depth_c_sgd=-1.0, depth_c_adam=0.0, scale_eps=True)
"""CompleteP (Dey et al. 2025): muP in width, residual branches multiplied by ``(L / L0)^-1``, Adam learning
rate of the branches' tensors constant in depth (SGD: ``~ L / L0``), Adam epsilon scaled like each tensor's
gradient, ``eps (n / n0)^-1 (L / L0)^-1`` inside the branches. Equal to :data:`MUP` at ``L = L0`` and
``n = n0``."""

UMUP = Parametrization(name="umup", a=(0.0, 0.5, 1.0), b=(0.0, 0.0, 0.0), c_sgd=(-1.0, -1.0, -1.0),
                       c_adam=(0.5, 0.5, 0.0), attn=1.0)
"""Unit-scaled muP's abc exponents (Blake et al. 2024): every weight initialised ``N(0, 1)``, the scale in the
forward pass (hidden multiplier ``~ n^-1/2``, readout ``~ n^-1``), Adam learning rates ``~ n^-1/2`` for
input (embedding) and hidden tensors and constant for the readout. The unit-scaled operations of the
paper (scaled residual sums, unit-scaled nonlinearities) are not part of it."""

PRESETS = {p.name: p for p in (SP, NTP, MUP, MF, DEPTH_MUP, COMPLETEP, UMUP)}


def scale_by_width(model, x, *, optimizer: str):
    """optax transformation: multiply each tensor's update by ``(n / n0)^-c_role`` (and, inside residual
    branches, by the depth factor ``(L / L0)^-depth_c``). Adam's epsilon factors (``scale_eps``) act inside
    Adam: use :func:`mu_optimizer` for them.

    Chain it after the base optimizer (and before weight decay, if the decay
    should not scale with width, as in microsoft/mup's ``MuAdamW``)::

        tx = optax.chain(optax.adam(1e-3), ow.scale_by_width(model, x, optimizer="adam"))

    ``optimizer`` must name the family of the optimizer it is chained after (nothing can check it);
    :func:`mu_optimizer` builds the whole chain from one name instead.

    Args:
      model: a finite model (``ow.finite(...)``, including flax bridges).
      x: example inputs (only their shapes are used).
      optimizer: ``"sgd"``, ``"momentum"``, ``"adam"`` or ``"adamw"``: selects ``c_sgd`` or ``c_adam``.

    The multipliers are Python floats computed once from the model's roles
    (``model.lr_scales``); nothing is stored on the parameters.

    References:
      - Yang et al. 2022, Tensor Programs V (MuSGD, MuAdam: per-tensor learning rates).
        <https://arxiv.org/abs/2203.03466>

    Examples:
      Under MUP (base width 1) with SGD, input and readout weights at width 8 get ``8^1`` times
      the update:

      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.ones((3, 2))
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8, param=ow.MUP)
      >>> tx = ow.scale_by_width(model, x, optimizer="sgd")
      >>> params = model.init(jax.random.key(0), x)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> [float(u.max()) for u in jax.tree.leaves(updates)]
      [8.0, 8.0]
    """
    scales, depth = model.lr_scales(x, optimizer=optimizer), model.depth_scales(x, optimizer=optimizer)
    return _optim.scale_by(scales if depth is None else jax.tree.map(lambda s, d: s * d, scales, depth))


def mu_optimizer(model, x, optimizer: str = "adam", *, lr, weight_decay: float = 0.0, momentum: float = 0.9,
                 eps: float = 1e-8, b1: float = 0.9, b2: float = 0.999, clip_norm: float | None = None,
                 schedule=None):
    """The whole optax optimizer of ``model`` under its parametrization: ``optimizer`` with each tensor's
    learning rate ``lr (n / n0)^-c_role`` of that optimizer's family, so the pairing cannot go wrong.

    :func:`scale_by_width` is the scaling piece alone, to chain after a base optimizer of your own;
    it must be told which family that optimizer is (``c_sgd`` or ``c_adam``), and a mismatch picks
    the wrong exponents silently. This builds both from one name, exactly as ``ow.train`` and
    ``ow.coord_check`` do:

        sgd       -lr (s_w g + wd w)                 (MuSGD)
        momentum  -lr s_w trace_beta(g + (wd / s_w) w)
        adam      -lr s_w adam(g)                    (MuAdam)
        adamw     -lr (s_w adam(g) + wd w)           (MuAdamW: decay not width-scaled)

    with ``s_w = (n / n0)^-c_role`` (``model.lr_scales``); the weight decay per step ``lr wd w`` is the
    same at every width, as in microsoft/mup.

    Args:
      model: a finite model (``ow.finite(...)``, including flax bridges). x: example inputs (shapes only).
      optimizer: ``"sgd"``, ``"momentum"``, ``"adam"`` or ``"adamw"``.
      lr: the base learning rate ``eta`` (a float or a traced scalar).
      weight_decay, momentum, eps, b1, b2: as in optax (``weight_decay`` an L2 penalty for sgd/momentum,
        decoupled for adamw; refused for plain adam).
      clip_norm: clip the gradient to this global norm first, or None.
      schedule: an optax schedule ``step -> multiplier`` of ``lr``, or None.

    References:
      - Yang et al. 2022, Tensor Programs V (MuSGD, MuAdam, MuAdamW). <https://arxiv.org/abs/2203.03466>

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.ones((3, 2))
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8,
      ...                   param=ow.MUP.with_base_width(2))
      >>> tx = ow.mu_optimizer(model, x, "adam", lr=0.1)
      >>> params = model.init(jax.random.key(0), x)
      >>> updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
      >>> [round(float(jnp.abs(u).max()), 4) for u in jax.tree.leaves(updates)]   # hidden: lr / (8 / 2)
      [0.1, 0.025, 0.1]
    """
    return _optim.make(optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, eps=eps, b1=b1, b2=b2,
                       clip=clip_norm, schedule=schedule, where="ow.mu_optimizer", **model_scales(model, x, optimizer))


def model_scales(model, x, optimizer: str) -> dict:
    """The per-tensor factors of ``model``'s optimizer (``_optim.make``'s keyword arguments): the width
    learning-rate multipliers, the depth factors of residual branches and Adam's epsilon factors."""
    return {"scales": model.lr_scales(x, optimizer=optimizer), "depth_scales": model.depth_scales(x, optimizer=optimizer),
            "eps_scales": model.eps_scales(x)}


def roles_from_shapes(small: Any, large: Any) -> Any:
    """Roles of parameter tensors from their shapes at two widths (as microsoft/mup does with base shapes).

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
