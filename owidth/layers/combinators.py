"""Combinators: serial composition, fan-out sums, residual blocks."""

from __future__ import annotations

import dataclasses

import jax

from owidth.kernels import quadrature
from owidth.layers._base import Caps, Layer, check_layers
from owidth.layers.activations import Identity

__all__ = ["Serial", "Parallel", "serial", "parallel", "Residual"]


@dataclasses.dataclass(frozen=True)
class Serial(Layer):
    """Composition ``layers[-1] ∘ ... ∘ layers[0]``; build it with :func:`serial`.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> type(net).__name__, len(net.layers)
      ('Serial', 3)
    """

    caps = Caps(transparent=True)

    layers: tuple[Layer, ...]

    def _ends_in_weights(self) -> bool:
        last = [layer for layer in self.layers if not layer._odd_linear()]
        return bool(last) and last[-1]._ends_in_weights()

    def _odd_linear(self) -> bool:
        return all(layer._odd_linear() for layer in self.layers)

    def _children(self) -> tuple:
        return self.layers

    def _kernel_extra_states(self) -> int:
        """Two nonlinearities in a row compose into one function with quadrature duals (the kink rule at
        its default size, the widest): its node grids."""
        acts = [layer.caps.nonlinear for layer in self.layers]
        return 2 * quadrature.inner_nodes(None, True) if any(a and b for a, b in zip(acts, acts[1:])) else 0

    def _kernel(self, ks):
        layers, i = self.layers, 0
        while i < len(layers):
            period, repeats = _repeats(layers, i)
            if repeats >= _SCAN_REPEATS and ks.tape is None and not ks.spatial:
                ks = _kernel_scanned(layers[i:i + period], repeats, ks)
                i += period * repeats
            else:
                ks = layers[i]._kernel(ks)
                i += 1
        return ks

    def _init(self, key, dim, ctx):
        params = []
        for layer, k in zip(self.layers, jax.random.split(key, len(self.layers))):
            p, dim = layer._init(k, dim, ctx)
            params.append(p)
        return tuple(params), dim

    def _apply(self, params, x, dim, ctx):
        for layer, p in zip(self.layers, params):
            x, dim = layer._apply(p, x, dim, ctx)
        return x, dim


@dataclasses.dataclass(frozen=True)
class Parallel(Layer):
    """Sum of branches applied to the same input (fan-out, then fan-in sum).

    When of any two branches at least one ends in a fresh zero-mean weight
    layer, the cross covariances vanish and the kernels add:
    ``nngp = sum_b nngp_b``, ``ntk = sum_b ntk_b`` (Novak et al. 2020). At most
    one branch may end otherwise (an identity, an activation); ``ow.kernel``
    refuses other sums, whose kernels need the cross terms.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.parallel(ow.Dense(), ow.Dense())
      >>> type(net).__name__, len(net.branches)
      ('Parallel', 2)
    """

    caps = Caps(transparent=True, branches=True)

    branches: tuple[Layer, ...]

    def _ends_in_weights(self) -> bool:
        return all(b._ends_in_weights() for b in self.branches)

    def _children(self) -> tuple:
        return self.branches

    def _kernel(self, ks):
        if ks.is_input and not self._has_weights():  # a sum of functions of the data itself: exact
            outs = [b._kernel(ks) for b in self.branches]
            x1 = sum(o.x1 for o in outs)
            x2 = None if ks.x2 is None else sum(o.x2 for o in outs)
            return ks.replace(x1=x1, x2=x2)
        # Kernels add only when cross terms E[a(x) b(x')] vanish, i.e. when of any two
        # branches at least one ends in a fresh zero-mean weight layer.
        free = [b for b in self.branches if not b._ends_in_weights()]
        if len(free) > 1:
            raise NotImplementedError(
                f"ow.kernel: parallel/Residual with {len(free)} branches that do not end in a weight layer "
                f"({', '.join(type(b).__name__ for b in free)}): their outputs are correlated and the kernel of "
                "the sum is not the sum of kernels. End all but one branch in a Dense layer (for Residual: end "
                "the block in a Dense)."
            )
        outs = [b._kernel(ks) for b in self.branches]
        outs = [o.materialize() for o in outs]
        fixed = {o.fixed for o in outs}
        if len(fixed) > 1:
            raise ValueError("ow.parallel: branches mix hidden (out=None) and fixed (out=k) widths; make them agree")
        shapes = {o.nngp.shape for o in outs}
        if len(shapes) > 1 or len({o.full for o in outs}) > 1:
            raise ValueError(
                f"ow.parallel: branch outputs have different spatial shapes ({sorted(o.spatial for o in outs)}); "
                "a fan-in sum needs equal shapes (use the same strides/padding in every branch)"
            )

        def total(values):
            values = [v for v in values if v is not None]
            return sum(values) if values else None

        return ks.replace(
            spatial=outs[0].spatial,
            full=outs[0].full,
            mean1=total(o.mean1 for o in outs),
            mean2=total(o.mean2 for o in outs),
            x1=None,
            x2=None,
            nngp=sum(o.nngp for o in outs),
            ntk=sum(o.ntk for o in outs) if ks.need_ntk else None,
            var1=sum(o.var1 for o in outs),
            var2=None if outs[0].var2 is None else sum(o.var2 for o in outs),
            gaussian=all(o.gaussian for o in outs),
            fixed=fixed.pop(),
            pre=None,
            act=None,
        )

    def _init(self, key, dim, ctx):
        params, dims = [], []
        for b, k in zip(self.branches, jax.random.split(key, len(self.branches))):
            p, d = b._init(k, dim, ctx)
            params.append(p)
            dims.append(d)
        if len(set(dims)) != 1:
            sizes = ", ".join(f"{d.size}{' (hidden)' if d.scales else ''}" for d in dims)
            raise ValueError(f"ow.parallel: branch output widths differ ({sizes}); a fan-in sum needs equal widths")
        return tuple(params), dims[0]

    def _apply(self, params, x, dim, ctx):
        ys = [b._apply(p, x, dim, ctx) for b, p in zip(self.branches, params)]
        return sum(y for y, _ in ys), ys[0][1]


# A block of layers repeated this many times in a row or more (e.g. ``[Dense(), Erf()] * 50``) runs its
# kernel rule in a ``lax.scan``: XLA then compiles one block, not every copy. Unrolled, compile time grew
# faster than linearly in depth although the program grew linearly (Erf on a 2-core CPU: 3.4 s at depth
# 10, 8.1 s at 20, 31 s at 40); a loop also stops XLA from fusing the layers' elementwise maps into one
# pass over the kernel, which pays for shallow nets, so short runs stay unrolled.
_SCAN_REPEATS = 8
_MAX_PERIOD = 4


def _same(a: Layer, b: Layer) -> bool:
    """``a == b`` for layers with static hyperparameters (traced ones compare as different)."""
    try:
        return bool(a == b) and hash(a) == hash(b)
    except Exception:  # noqa: BLE001 - array hyperparameters: no static equality
        return False


def _repeats(layers, i: int) -> tuple[int, int]:
    """``(period, repeats)``: the block ``layers[i:i + period]`` repeated most often in a row from ``i``
    (the longest stretch of layers; the shortest period on ties)."""
    best = (1, 1)
    for period in range(1, _MAX_PERIOD + 1):
        r = 1
        while i + (r + 1) * period <= len(layers) and all(
                _same(layers[i + k], layers[i + r * period + k]) for k in range(period)):
            r += 1
        if r > 1 and period * r > best[0] * best[1]:
            best = (period, r)
    return best


def _kernel_scanned(block, repeats: int, ks):
    """The kernel rule of ``block`` applied ``repeats`` times: twice unrolled (the state reaches the
    structure it keeps), then in a ``lax.scan`` over the rest if that structure is a fixed point."""
    def apply(s):
        for layer in block:
            s = layer._kernel(s)
        return s

    first = apply(ks)
    second = apply(first)
    if first.structure() != second.structure():  # not a steady state: stay unrolled
        for _ in range(repeats - 2):
            second = apply(second)
        return second

    def body(arrays, _):
        return apply(second.with_arrays(arrays)).arrays(), None

    arrays, _ = jax.lax.scan(body, second.arrays(), None, length=repeats - 2)
    return second.with_arrays(arrays)


def serial(*layers: Layer) -> Serial:
    """Compose layers in order: ``serial(a, b)(x) = b(a(x))``.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(w_std=2.0), ow.Relu(), ow.Dense(out=1))
      >>> float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0])   # Dense: 4 q, then relu: half of it
      2.0
    """
    return Serial(check_layers("ow.serial", layers))


def parallel(*branches: Layer) -> Parallel:
    """Apply branches to the same input and sum their outputs.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.parallel(ow.Dense(), ow.Dense()), ow.Dense(out=1))
      >>> k = ow.kernel(net, np.ones((1, 2)))
      >>> float(k.nngp[0, 0]), float(k.ntk[0, 0])    # two independent branches: q + q; NTK 2 + 2
      (2.0, 4.0)
    """
    return Parallel(check_layers("ow.parallel", branches))


def Residual(*block: Layer) -> Parallel:  # noqa: N802 - a layer constructor
    """``x + block(x)``: the identity branch plus ``serial(*block)``.

    When the block ends in a weight layer the two branches are uncorrelated
    and the kernels add (Novak et al. 2020); the identity branch may carry a
    post-activation (``Relu()`` then ``Residual(Dense(), Relu(), Dense())``).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Residual(ow.Relu(), ow.Dense()), ow.Dense(out=1))
      >>> float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0])   # q + q / 2, q = 1
      1.5
    """
    return Parallel((Identity(), serial(*block) if len(block) != 1 else check_layers("ow.Residual", block)[0]))
