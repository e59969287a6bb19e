"""Sparse networks: pruning scores, masks, lottery tickets and the kernels of randomly pruned networks.

A *mask* is a pytree like the parameters with boolean leaves (True = keep); ``ow.train(..., masks=m)``
trains the masked network, keeping pruned weights exactly zero. The functions here make masks:

========================  ============================================================  ==========
score                     ``s_q`` (weights with the largest scores are kept)             needs
========================  ============================================================  ==========
:func:`magnitude`         ``|theta_q|``                                                   params
:func:`random`            uniform (a random subset of each tensor)                        a key
:func:`snip`              ``|theta_q dL/dtheta_q|`` (Lee et al. 2019)                     a batch
:func:`grasp`             ``theta_q (H g)_q``, ``g = dL/dtheta`` (Wang et al. 2020)       a batch
:func:`synflow`           ``theta_q dR/dtheta_q``, ``R = 1^T f(|theta|, 1)``, iterated    nothing
                          (Tanaka et al. 2020)
:func:`imp`               iterative magnitude pruning of trained weights, rewinding the   training
                          survivors to step k (Frankle & Carbin 2019; Frankle et al. 2020)
========================  ============================================================  ==========

Only *prunable* tensors are scored: weights with at least two axes (``Dense`` and ``Conv`` kernels,
embeddings, attention projections); biases and normalisation scales are always kept
(:func:`prunable`). ``density`` is the fraction of the prunable weights kept, in (0, 1]; ``scope``
``"global"`` ranks all prunable weights together, ``"layer"`` keeps that fraction of every tensor.
Masks keep exactly ``round(density * count)`` weights (at least one), ties broken by position.

SynFlow's conservation law (Tanaka et al. 2020, Theorem 1): for a network that is positively
homogeneous of degree one in each layer's weights (``Dense``/``Conv`` without biases, ReLU or linear
activations), ``R(theta) = 1^T f(|theta|, 1)`` satisfies Euler's identity in every layer ``l``,
``sum_{q in l} theta_q dR/dtheta_q = R``: every layer's synaptic saliencies sum to the same ``R``.
A single-shot score that is conserved this way must remove large layers' weights at a higher rate
(their scores are smaller on average), which is why pruning iteratively (re-scoring the masked
network ``iterations`` times on the exponential schedule ``density^(k/iterations)``) is needed to
avoid *layer collapse*, the pruning of a whole layer, which disconnects the output (``R = 0``).

Kernels of randomly pruned networks (:func:`sparse_kernel`). Keep each weight of a ``Dense`` or
``Conv`` layer independently with probability ``p`` (independent of the weights). A pre-activation
``h_i = (w_std / sqrt(n)) sum_j m_ij W_ij x_j`` is a sum of ``~p n`` terms: as ``n -> inf`` it is
Gaussian with covariance ``p w_std^2 <x, x'> / n``, and the weight gradients' contribution to the NTK
``(w_std^2 / n) sum_ij m_ij x_j x'_j delta_i delta'_i`` has the same factor ``p``. So under NTP the
NNGP and NTK of the masked network are those of the dense one with ``w_std^2 -> p w_std^2`` in every
pruned layer. With the fan-in rescaling, the multiplier ``(p n)^-1/2`` of a network whose fan-in is
``p n`` (:func:`masked_apply` with ``rescale=True``: survivors multiplied by ``p^-1/2``), the factor
cancels and the kernels are exactly the dense network's. Both hold whatever the mask's correlations
across layers, as long as it is drawn independently of the weights.

References:
  - Frankle & Carbin 2019, The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks.
    <https://arxiv.org/abs/1803.03635>
  - Frankle, Dziugaite, Roy & Carbin 2020, Linear Mode Connectivity and the Lottery Ticket Hypothesis
    (rewinding to step k). <https://arxiv.org/abs/1912.05671>
  - Lee, Ajanthan & Torr 2019, SNIP: Single-shot Network Pruning based on Connection Sensitivity.
    <https://arxiv.org/abs/1810.02340>
  - Wang, Zhang & Grosse 2020, Picking Winning Tickets Before Training by Preserving Gradient Flow
    (GraSP). <https://arxiv.org/abs/2002.07376>
  - Tanaka, Kunin, Yamins & Ganguli 2020, Pruning neural networks without any data by iteratively
    conserving synaptic flow (SynFlow). <https://arxiv.org/abs/2006.05467>
  - Malach, Yehudai, Shalev-Shwartz & Shamir 2020, Proving the Lottery Ticket Hypothesis: Pruning is
    All You Need. <https://arxiv.org/abs/2002.00585>
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks, _train

__all__ = ["ImpResult", "apply", "density", "grasp", "imp", "magnitude", "masked_apply", "masks_from_scores",
           "prunable", "random", "snip", "sparse_kernel", "synflow", "synflow_scores"]

_SCOPES = ("global", "layer")


# --------------------------------------------------------------------------- #
# Masks
# --------------------------------------------------------------------------- #
def prunable(params) -> Any:
    """Pytree of bools like ``params``: True for the tensors pruning scores (at least two axes: the
    weights of ``Dense``, ``Conv``, embeddings, attention), False for biases, scales and scalars.

    Examples:
      >>> import jax, numpy as np
      >>> import owidth as ow
      >>> model = ow.finite(ow.serial(ow.Dense(b_std=0.1), ow.Relu(), ow.Dense(out=1)), width=4)
      >>> ow.prune.prunable(model.init(jax.random.key(0), np.ones((1, 3))))
      ({'b': False, 'w': True}, (), {'w': True})
    """
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def apply(params, masks) -> Any:
    """``params`` with the masked entries (``masks`` False) set to exactly zero (as ``ow.train(masks=)`` does
    after every step)."""
    return _train.mask_params(params, masks)


def density(masks, params=None) -> float:
    """The fraction of prunable weights that ``masks`` keeps (of all mask entries when ``params`` is
    None, else of the tensors :func:`prunable` selects in ``params``).

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> ow.prune.density({"w": np.array([[True, False], [False, False]]), "b": np.ones(2, bool)},
      ...                  {"w": np.zeros((2, 2)), "b": np.zeros(2)})
      0.25
    """
    leaves = jax.tree.leaves(masks)
    use = [True] * len(leaves) if params is None else jax.tree.leaves(prunable(params))
    kept = sum(int(np.sum(np.asarray(m))) for m, u in zip(leaves, use) if u)
    total = sum(int(np.size(m)) for m, u in zip(leaves, use) if u)
    return kept / total if total else 1.0


def _density(value, *, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: density must be a number in (0, 1], got {value!r}")
    value = float(value)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"{where}: density={value!r} must lie in (0, 1] (the fraction of prunable weights kept)")
    return value


def _scope(scope, *, where: str) -> str:
    if scope not in _SCOPES:
        raise ValueError(f"{where}: scope={scope!r}; use 'global' (rank all prunable weights together) or 'layer' "
                         "(keep the fraction in every tensor)")
    return scope


def _keep_count(density, size: int):
    """``round(density * size)`` clipped to [1, size] (``density`` may be traced)."""
    return jnp.clip(jnp.round(density * size), 1, size).astype(jnp.int32)


def _top(flat: jax.Array, k) -> jax.Array:
    """Boolean mask of the ``k`` largest entries of the 1-D ``flat`` (ties: the later position wins; ``k``
    may be traced)."""
    order = jnp.argsort(flat, stable=True)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return ranks >= flat.size - k


def _check_finite(scores, *, where: str) -> None:
    leaves = [s for s in jax.tree.leaves(scores) if not isinstance(s, jax.core.Tracer)]
    for s in leaves:
        if not bool(jnp.all(jnp.isfinite(s) | (s == -jnp.inf))):
            raise ValueError(f"{where}: the pruning scores contain NaN or +inf (a non-finite loss or overflowing "
                             "network at these parameters); check the data and the parameters, or use float64")


def masks_from_scores(scores, density: float, *, scope: str = "global", params=None, where: str = "ow.prune") -> Any:
    """Masks keeping the highest ``scores`` (a pytree like the parameters) at ``density``.

    Args:
      scores: pytree of arrays like the parameters; ``-inf`` marks entries that must not be kept.
      density: fraction of the prunable weights kept, in (0, 1].
      scope: ``"global"`` (one ranking of all prunable weights) or ``"layer"`` (per tensor).
      params: the parameters (to select the prunable tensors); default: ``scores`` themselves.

    Returns:
      Boolean masks like ``scores``: non-prunable tensors all True. Traceable (``jax.vmap`` over an
      ensemble's scores works).

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> s = {"w": np.array([[3.0, 1.0], [0.5, 2.0]]), "b": np.array([9.0, 9.0])}
      >>> m = ow.prune.masks_from_scores(s, 0.5)
      >>> m["w"].tolist(), m["b"].tolist()
      ([[True, False], [False, True]], [True, True])
    """
    density = _density(density, where=where)
    scope = _scope(scope, where=where)
    _check_finite(scores, where=where)
    use = jax.tree.leaves(prunable(scores if params is None else params))
    if len(use) != len(jax.tree.leaves(scores)):
        raise ValueError(f"{where}: the scores' structure differs from the parameters'")
    if not any(use):
        raise ValueError(f"{where}: no prunable tensor (weights with at least two axes) in the parameters")
    return _select(scores, use, density, scope)


def _select(scores, use, density, scope: str):
    """:func:`masks_from_scores` after its checks (``density`` may be traced)."""
    leaves, tree = jax.tree.flatten(scores)
    out = [jnp.ones(jnp.shape(s), bool) for s in leaves]
    idx = [i for i, u in enumerate(use) if u]
    if scope == "layer":
        for i in idx:
            flat = jnp.ravel(leaves[i])
            out[i] = _top(flat, _keep_count(density, flat.size)).reshape(jnp.shape(leaves[i]))
    else:
        flat = jnp.concatenate([jnp.ravel(leaves[i]).astype(jnp.result_type(*[leaves[j] for j in idx]))
                                for i in idx])
        keep = _top(flat, _keep_count(density, flat.size))
        start = 0
        for i in idx:
            size = int(np.prod(jnp.shape(leaves[i])))
            out[i] = keep[start:start + size].reshape(jnp.shape(leaves[i]))
            start += size
    return jax.tree.unflatten(tree, out)


def magnitude(params, density: float, *, scope: str = "global", masks=None) -> Any:
    """Magnitude pruning: keep the largest ``|theta|`` (among the survivors of ``masks``, if given).

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> ow.prune.magnitude({"w": np.array([[0.1, -3.0], [2.0, 0.2]])}, 0.5)["w"].tolist()
      [[False, True], [True, False]]
    """
    return masks_from_scores(_restrict(jax.tree.map(jnp.abs, params), masks), density, scope=scope, params=params,
                             where="ow.prune.magnitude")


def random(key, params, density: float, *, scope: str = "layer", keep_input: bool = False) -> Any:
    """Random pruning: keep a uniformly random ``density`` of every tensor (``scope="layer"``, default)
    or of all prunable weights together (``"global"``); ``keep_input=True`` keeps the first prunable
    tensor (in the parameters' flattening order: the input layer of an ``ow.serial`` network) dense, as
    :func:`sparse_kernel` assumes."""
    where = "ow.prune.random"
    key = _checks.prng_key("key", key, where=where)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, max(1, len(leaves)))
    scores = jax.tree.unflatten(tree, [jax.random.uniform(k, jnp.shape(p)) for k, p in zip(keys, leaves)])
    masks = masks_from_scores(scores, density, scope=scope, params=params, where=where)
    if keep_input:
        flat, tree = jax.tree.flatten(masks)
        first = next(i for i, p in enumerate(jax.tree.leaves(params)) if jnp.ndim(p) >= 2)
        flat[first] = jnp.ones(flat[first].shape, bool)
        masks = jax.tree.unflatten(tree, flat)
    return masks


def _restrict(scores, masks):
    """Scores of masked-out entries set to ``-inf`` (they are never kept again)."""
    if masks is None:
        return scores
    return jax.tree.map(lambda s, m: jnp.where(m, s, -jnp.inf), scores, masks)


# --------------------------------------------------------------------------- #
# Data-dependent scores at initialisation
# --------------------------------------------------------------------------- #
def _objective(apply_fn, data, loss: str, where: str):
    from owidth._objective import LOSSES, loss_fn, targets

    if not callable(apply_fn):
        raise TypeError(f"{where}: apply_fn must be a callable (params, x) -> outputs, e.g. model.apply")
    if loss not in LOSSES:
        raise ValueError(f"{where}: loss={loss!r}; use 'mse' or 'xent'")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{where}: data must be a pair (x, y)")
    x = _checks.as_float_array("x", data[0], where=where, rank=None)
    y = targets("y", data[1], x.shape[0], loss, where=where)
    return lambda p: loss_fn(loss, apply_fn(p, x), y)


def snip(apply_fn: Callable, params, data, density: float, *, loss: str = "mse", scope: str = "global") -> Any:
    """SNIP (Lee et al. 2019): keep the largest connection sensitivities ``|theta_q dL/dtheta_q|`` of the
    loss on the batch ``data = (x, y)`` at ``params`` (the initialisation)."""
    where = "ow.prune.snip"
    objective = _objective(apply_fn, data, loss, where)
    grads = jax.grad(objective)(params)
    scores = jax.tree.map(lambda p, g: jnp.abs(p * g), params, grads)
    return masks_from_scores(scores, density, scope=scope, params=params, where=where)


def grasp(apply_fn: Callable, params, data, density: float, *, loss: str = "mse", scope: str = "global",
          temperature: float | None = None) -> Any:
    """GraSP (Wang et al. 2020): keep the weights whose removal most reduces the gradient norm's growth.

    Removing ``theta_q`` changes ``g^T g`` by ``~ -2 theta_q (H g)_q`` (first order, ``g = dL/dtheta``,
    ``H`` the Hessian on ``data``); GraSP removes the weights with the largest ``-theta_q (H g)_q`` (the
    reference implementation's ``S(-theta)``), i.e. keeps the largest ``theta_q (H g)_q``, which is the
    score used here. ``H g`` is one forward-over-reverse Hessian-vector product. The loss is taken of
    the outputs divided by ``temperature`` (default: 200 for ``"xent"``, as the reference
    implementation does, and 1 for ``"mse"``)."""
    where = "ow.prune.grasp"
    if temperature is None:
        temperature = 200.0 if loss == "xent" else 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{where}: temperature={temperature!r} must be a positive number")
    objective = _objective(lambda p, u: apply_fn(p, u) / temperature, data, loss, where)
    g = jax.lax.stop_gradient(jax.grad(objective)(params))
    hg = jax.jvp(jax.grad(objective), (params,), (g,))[1]
    scores = jax.tree.map(lambda p, h: p * h, params, hg)
    return masks_from_scores(scores, density, scope=scope, params=params, where=where)


# --------------------------------------------------------------------------- #
# SynFlow (data-free, iterative)
# --------------------------------------------------------------------------- #
def synflow_scores(apply_fn: Callable, params, x, *, masks=None) -> Any:
    """Synaptic saliencies ``S_q = theta_q dR/dtheta_q`` with ``R = 1^T f(|theta|, 1)``: the network's
    output summed at the all-ones input shaped like one row of ``x``, every parameter replaced by its
    absolute value (masked entries by zero). For ReLU/linear networks without biases, every layer's
    scores sum to ``R`` (the conservation law; module docstring). Compute in float64 for deep nets:
    ``R`` is a product over layers."""
    where = "ow.prune.synflow_scores"
    x = _checks.as_float_array("x", x, where=where, rank=None)
    ones = jnp.ones((1,) + x.shape[1:], x.dtype)
    signs = jax.tree.map(jnp.abs, params if masks is None else apply(params, masks))

    def flow(p):
        return jnp.sum(apply_fn(p, ones))

    grads = jax.grad(flow)(signs)
    return jax.tree.map(lambda p, g: p * g, signs, grads)


def synflow(apply_fn: Callable, params, x, density: float, *, iterations: int = 100, scope: str = "global") -> Any:
    """SynFlow (Tanaka et al. 2020): ``iterations`` rounds of scoring the masked network with
    :func:`synflow_scores` and keeping the top ``density^(k / iterations)`` (k = 1..iterations) of the
    prunable weights (masked ones are never restored). Data-free: ``x`` only gives the input shape.

    Examples:
      >>> import jax, numpy as np
      >>> import owidth as ow
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=16)
      >>> x = np.ones((1, 4))
      >>> m = ow.prune.synflow(model.apply, model.init(jax.random.key(0), x), x, 0.1, iterations=10)
      >>> round(ow.prune.density(m), 3)
      0.1
    """
    where = "ow.prune.synflow"
    density = _density(density, where=where)
    iterations = _checks.positive_int("iterations", iterations, where=where)
    scope = _scope(scope, where=where)
    x = _checks.as_float_array("x", x, where=where, rank=None)
    use = jax.tree.leaves(prunable(params))
    if not any(use):
        raise ValueError(f"{where}: no prunable tensor (weights with at least two axes) in the parameters")
    masks = _synflow_loop(apply_fn, tuple(use), scope, iterations, params, x, density)
    _check_finite(synflow_scores(apply_fn, params, x, masks=masks), where=where)
    return masks


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _synflow_loop(apply_fn, use, scope, iterations, params, x, density):
    def body(k, masks):
        scores = _restrict(synflow_scores(apply_fn, params, x, masks=masks), masks)
        return _select(scores, use, density ** (k / iterations), scope)

    ones = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
    return jax.lax.fori_loop(1, iterations + 1, body, ones)


# --------------------------------------------------------------------------- #
# Masked networks and their kernels
# --------------------------------------------------------------------------- #
def masked_apply(apply_fn: Callable, masks, *, rescale: bool = False) -> Callable:
    """``apply(params, x)`` of the masked network: ``apply_fn(m * params * s, x)``, ``s = 1`` or, with
    ``rescale=True``, ``s = p_t^-1/2`` for each prunable tensor of density ``p_t`` (the fan-in
    rescaling: under NTP the multiplier of a layer whose fan-in is ``p n``). Its empirical NTK
    (:func:`ow.empirical_ntk`) counts the surviving weights only, as training the masked network does;
    :func:`sparse_kernel` is its infinite-width limit for random masks.
    """
    if not callable(apply_fn):
        raise TypeError("ow.prune.masked_apply: apply_fn must be a callable (params, x) -> outputs")
    def scale(m):
        if not rescale or jnp.ndim(m) < 2:
            return 1.0
        return jax.lax.rsqrt(jnp.maximum(jnp.mean(jnp.asarray(m, jnp.result_type(float))), 1e-30))

    def fn(params, x):
        return apply_fn(_train.mask_params(jax.tree.map(lambda p, m: p * scale(m), params, masks), masks), x)

    return fn


def _thin(net, p: float, seen: bool = False):
    """``net`` with the weight variance of every ``Dense``/``Conv`` layer that reads the width multiplied by
    ``p`` (not of the first weight layers, which read the input); returns ``(net, seen)``, ``seen`` True
    once a weight layer lies on every path through ``net``."""
    from owidth.layers._base import Layer
    from owidth.layers.combinators import Repeat, Serial
    from owidth.layers.conv import Conv
    from owidth.layers.dense import Dense

    where = "ow.prune.sparse_kernel"
    if isinstance(net, (Dense, Conv)):
        return (dataclasses.replace(net, w_std=net.w_std * math.sqrt(p)) if seen else net), True
    if net.caps.weights:
        raise NotImplementedError(f"{where}: the kernel of a pruned {type(net).__name__} layer is not implemented "
                                  "(only Dense and Conv weights); give density=1 or drop the layer")
    if isinstance(net, Serial):
        layers = []
        for layer in net.layers:
            layer, seen = _thin(layer, p, seen)
            layers.append(layer)
        return dataclasses.replace(net, layers=tuple(layers)), seen
    if isinstance(net, Repeat) and not seen and net._has_weights():
        raise NotImplementedError(f"{where}: ow.repeat of a block holding the input layer (its copies read the "
                                  "input once and the width after): write the first block out")
    changes, after = {}, []
    for f in dataclasses.fields(net):  # branches: each starts from the same input
        v = getattr(net, f.name)
        if isinstance(v, Layer):
            changes[f.name], s = _thin(v, p, seen)
            after.append(s)
        elif isinstance(v, tuple) and v and all(isinstance(u, Layer) for u in v):
            pairs = [_thin(u, p, seen) for u in v]
            changes[f.name] = tuple(u for u, _ in pairs)
            after.extend(s for _, s in pairs)
    return (dataclasses.replace(net, **changes) if changes else net), (all(after) if after else seen)


def sparse_kernel(net, x1, x2=None, *, density: float, rescale: bool = False, **kernel_options):
    """The infinite-width NNGP/NTK of ``net`` (NTP) with every weight of the ``Dense``/``Conv`` layers that
    read the width kept independently with probability ``density`` (random pruning; module docstring):
    :func:`ow.kernel` of the network with ``w_std^2 -> density w_std^2`` in those layers, or of ``net``
    itself with ``rescale=True`` (the fan-in rescaled network of :func:`masked_apply`). ``kernel_options``
    go to :func:`ow.kernel` (``get``, ``batch_size``, ...; not ``param``: the statement is NTP's).

    The first weight layer stays dense (:func:`random` with ``keep_input=True`` draws such masks): its
    fan-in is the input dimension ``d``, which does not grow, so a neuron's mask row does not average
    out. Each neuron then sees its own covariance ``sum_j m_ij x_j x'_j / d`` and the next layer's
    kernel is a mixture over mask patterns, not a rescaled dense kernel (measured: 10-17% off the
    rescaled formula in the NTK's off-diagonal entries for d = 5, p = 0.3).

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> x = np.array([[1.0, 0.0], [0.6, 0.8]])
      >>> sparse = ow.prune.sparse_kernel(net, x, density=0.25, get="nngp").nngp
      >>> dense = ow.kernel(net, x, get="nngp").nngp
      >>> float(sparse[0, 1] / dense[0, 1])   # the readout (fan-in n) pruned: a factor p; the input layer is dense
      0.25
    """
    from owidth._kernel import kernel

    where = "ow.prune.sparse_kernel"
    p = _density(density, where=where)
    if "param" in kernel_options:
        raise ValueError(f"{where}: the pruned network's kernel is derived under NTP (ow.kernel's default); do not "
                         "pass param")
    return kernel(net if rescale else _thin(net, p)[0], x1, x2, **kernel_options)


# --------------------------------------------------------------------------- #
# Iterative magnitude pruning with rewinding
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class ImpResult:
    """What :func:`imp` returns.

    Attributes:
      results: ``xarray.Dataset`` of every round's training (``ow.train``'s variables with a leading
        ``round`` dim; coordinate ``density``, the fraction of prunable weights trained in that round).
      masks: the masks of every round (leaves with leading ``(round, seed, lr, alpha|gamma0)`` axes).
      rewind: the parameters rewound to (step ``rewind_step`` of the dense run), leading ``(seed, lr,
        alpha|gamma0)`` axes; start a ticket's training from ``rewind`` with ``masks`` of a round.
    """

    results: Any
    masks: Any
    rewind: Any


def imp(net, data, *, width: int, density: float, rounds: int, steps: int, lr, rewind_step: int = 0,
        scope: str = "global", **train_options) -> ImpResult:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    Round 0 trains the dense network for ``steps`` steps; after round ``r`` the prunable weights with the
    smallest final magnitudes are removed so that ``density^((r+1)/rounds)`` of them are left, the
    survivors are reset to their values at step ``rewind_step`` of the dense run (0: the
    initialisation), and round ``r+1`` trains that masked network for ``steps - rewind_step`` steps;
    ``rounds`` prunings reach ``density``. Every member of the ``ow.train`` grid (seeds x lrs x
    alpha/gamma0) is pruned on its own weights.

    Args:
      net, data: as for :func:`ow.train`. width: one width.
      density: final fraction of the prunable weights kept, in (0, 1]. rounds: pruning rounds (>= 1).
      steps: training steps per round (counted from the start of the dense run). lr: as for ow.train.
      rewind_step: the step rewound to, in [0, steps). The dense run to it records nothing
        (``record_every``, ``metrics`` and ``record_outputs`` apply to the rounds).
      scope: ``"global"`` or ``"layer"`` magnitude ranking.
      train_options: other :func:`ow.train` keywords (``param``, ``optimizer``, ``seeds``, ``loss``,
        ``test``, ...). Runs are uncentred (``center=False``: a centred run would subtract the output at
        the rewind point, a different function); schedules restart at the rewind point.

    Returns:
      :class:`ImpResult`.
    """
    import xarray as xr

    where = "ow.prune.imp"
    train = _train.train
    width = _checks.positive_int("width", width, where=where)
    density = _density(density, where=where)
    rounds = _checks.positive_int("rounds", rounds, where=where)
    steps = _checks.positive_int("steps", steps, where=where)
    if isinstance(rewind_step, bool) or not isinstance(rewind_step, (int, np.integer)) or not (
            0 <= rewind_step < steps):
        raise ValueError(f"{where}: rewind_step={rewind_step!r} must be an int in [0, steps={steps})")
    scope = _scope(scope, where=where)
    for bad in ("widths", "masks", "init_params", "return_params", "center"):
        if bad in train_options:
            raise ValueError(f"{where}: {bad}= is set by imp (one width, uncentred, its own masks and rewinding)")
    kw = dict(widths=width, lr=lr, center=False, **train_options)
    x = _checks.as_float_array("x_train", data[0], where=where, rank=None) if isinstance(data, (tuple, list)) else None
    if x is None:
        raise TypeError(f"{where}: data must be a pair (x_train, y_train)")
    if rewind_step > 0:
        dense = {k: v for k, v in kw.items() if k not in ("record_every", "metrics", "record_outputs")}
        _, params = train(net, data, steps=rewind_step, return_params=True, **dense)
        rewind = params[width]
    else:
        rewind = _initial(net, data, kw)
    lead = jax.tree.leaves(rewind)[0].shape[:3]

    def per_member(fn, *trees):
        flat = [jax.tree.map(lambda a: a.reshape((-1,) + a.shape[3:]), t) for t in trees]
        out = jax.vmap(fn)(*flat)
        return jax.tree.map(lambda a: a.reshape(lead + a.shape[1:]), out)

    masks = jax.tree.map(lambda a: jnp.ones(a.shape, bool), rewind)
    results, all_masks, dens = [], [], []
    for r in range(rounds + 1):
        ds, final = train(net, data, steps=steps - rewind_step, init_params=rewind, masks=masks,
                          return_params=True, **kw)
        results.append(ds)
        all_masks.append(masks)
        dens.append(density ** (r / rounds))
        if r < rounds:
            target = density ** ((r + 1) / rounds)
            masks = per_member(lambda p, m: magnitude(p, target, scope=scope, masks=m), final[width], masks)
    out = xr.concat(results, dim="round", combine_attrs="override")
    out = out.assign_coords(round=np.arange(rounds + 1), density=("round", np.asarray(dens)))
    out.attrs.update(rewind_step=rewind_step, prune_scope=scope, prune_rounds=rounds)
    stacked = jax.tree.map(lambda *ms: jnp.stack(ms), *all_masks)
    return ImpResult(results=out, masks=stacked, rewind=rewind)


def _initial(net, data, kw) -> Any:
    """The initial parameters ``ow.train`` draws for every member (leading (seed, lr, alpha|gamma0) axes)."""
    p = _train.plan(net, data, steps=1, **kw)
    model = p.model(p.widths[0])
    grid = np.meshgrid(*(np.arange(n) for n in p.shape), indexing="ij")
    seeds = jnp.asarray(p.seeds[grid[0].ravel()])
    params = jax.vmap(lambda s: model.init(_train.member_keys(jax.random.key(s))[0], p.x))(seeds)
    return jax.tree.map(lambda a: a.reshape(p.shape + a.shape[1:]), params)
