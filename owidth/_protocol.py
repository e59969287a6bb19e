"""The finite-model protocol: what ``ow.finite`` returns, for spec networks and flax models alike."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol, runtime_checkable

import jax

from owidth.param import Parametrization

__all__ = ["FiniteNetwork", "Intermediates", "flat_features"]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["output", "values", "features"],
                   meta_fields=["names"])
@dataclasses.dataclass(frozen=True)
class Intermediates:
    """What one forward pass records, returned by ``model.intermediates(params, x)`` (cf. flax's ``sow``).

    Attributes:
      output: the network output, as ``model.apply(params, x)``.
      names, values: the recorded coordinates in network order: every weight layer's output
        (pre-activation; ``"dense"``, ``"conv"``, ``"embedding"``, ``"attn.o"``) and other observables
        (``"attn.q"``, ``"attn.logits"``, ...; for flax models, what the module ``sow``s as
        ``nnx.Intermediate``).
      features: the input of the last weight layer (the last hidden features; the data itself for a
        single weight layer) flattened to ``(batch, features)``; ``None`` when none was recorded.

    A pytree (``names`` static), so it passes through ``jax.jit`` and ``jax.vmap``.

    References:
      - Yang et al. 2022, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer. <https://arxiv.org/abs/2203.03466>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> x = np.ones((2, 3))
      >>> rec = model.intermediates(model.init(jax.random.key(0), x), x)
      >>> [(name, value.shape) for name, value in rec.coords]
      [('dense', (2, 8)), ('dense', (2, 1))]
    """

    output: jax.Array
    names: tuple[str, ...]
    values: tuple[jax.Array, ...]
    features: jax.Array | None

    @property
    def coords(self) -> tuple[tuple[str, jax.Array], ...]:
        """``(name, array)`` pairs in network order."""
        return tuple(zip(self.names, self.values))


@runtime_checkable
class FiniteNetwork(Protocol):
    """A finite network at ``width`` under ``param``, as returned by :func:`ow.finite`.

    Implemented by :class:`ow.FiniteModel` (width-free specs) and :class:`ow.FlaxModel` (flax NNX
    modules); measures, training and experiments use only these methods.

    References:
      - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks. <https://arxiv.org/abs/2011.14522>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> isinstance(model, ow.FiniteNetwork), model.width
      (True, 8)
    """

    width: int
    param: Parametrization

    def init(self, key: jax.Array, x) -> Any:
        """Random parameters (a pytree) for inputs shaped like ``x``."""

    def apply(self, params: Any, x) -> jax.Array:
        """The network output."""

    def intermediates(self, params: Any, x) -> Intermediates:
        """The output and the recorded coordinates and features of one forward pass."""

    def roles(self, x) -> Any:
        """Pytree of :class:`ow.Role`, one per parameter tensor."""

    def lr_scales(self, x, *, optimizer: str) -> Any:
        """Pytree of per-tensor learning-rate multipliers."""


def flat_features(h) -> jax.Array | None:
    """``h`` as ``(batch, features)`` (``None`` stays ``None``)."""
    return None if h is None else h.reshape(h.shape[0], -1)
