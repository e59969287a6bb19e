"""Observables of finite networks: kernel and feature movement, alignment, coordinate checks.

The observables are factories returning ``fn(snapshot) -> scalar`` for
:func:`ow.train`'s ``metrics`` (evaluated at every record, inside the
compiled program, per ensemble member)::

    ds = ow.train(net, (x, y), ..., metrics={"ntk_move": ow.measure.ntk_movement(x[:32])})

``coord_check`` follows Yang et al. (2022, Tensor Programs V, Sec. D.1): train
a network for a few steps at several widths and watch the typical size of
each layer's pre-activation coordinates. Under a stable parametrization with
feature learning (muP) every curve is flat in width; under standard practice
with one learning rate the later layers grow with width.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks, _optim
from owidth._objective import loss_fn, targets
from owidth.param import Parametrization, model_scales

__all__ = ["ntk_movement", "param_movement", "feature_movement", "kernel_alignment", "effective_rank", "sharpness",
           "ntk_top", "coord_check"]


def _rel(a, b):
    return jnp.linalg.norm(a - b) / jnp.linalg.norm(b)


def _ntk(snap, params, x):
    from owidth.empirical import empirical_ntk

    return empirical_ntk(snap.apply, params, x)


def ntk_movement(x):
    """Relative change of the empirical NTK on ``x``: ``||K_t - K_0||_F / ||K_0||_F``.

    Of order ``width^-1/2`` under NTP (Jacot et al. 2018; Lee et al. 2019)
    and ``1/alpha`` in the lazy limit (Chizat et al. 2019); ``Theta(1)`` under
    muP (Yang & Hu 2021). The kernel is that of the unscaled network ``f``;
    ``alpha`` multiplies it by ``alpha^2`` at every time and cancels.

    References:
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>
      - Chizat, Oyallon & Bach 2019, On Lazy Training in Differentiable Programming. <https://arxiv.org/abs/1812.07956>
      - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks. <https://arxiv.org/abs/2011.14522>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); y = np.array([[1.0], [-1.0], [0.5]])
      >>> p0 = model.init(jax.random.key(0), x)
      >>> snap = ow.Snapshot(apply=model.apply, params=p0, params0=p0, x_train=x, y_train=y,
      ...                    x_test=None, y_test=None, alpha=1.0, model=model)   # at initialisation
      >>> float(ow.measure.ntk_movement(x)(snap))
      0.0
    """
    x = _checks.as_float_array("x", x, where="ow.measure.ntk_movement", rank=None)

    def fn(snap):
        return _rel(_ntk(snap, snap.params, x), _ntk(snap, snap.params0, x))

    return fn


def param_movement():
    """Relative parameter change ``||theta_t - theta_0|| / ||theta_0||`` (all tensors together).

    References:
      - Chizat, Oyallon & Bach 2019, On Lazy Training in Differentiable Programming. <https://arxiv.org/abs/1812.07956>
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); y = np.array([[1.0], [-1.0], [0.5]])
      >>> p0 = model.init(jax.random.key(0), x)
      >>> snap = ow.Snapshot(apply=model.apply, params=p0, params0=p0, x_train=x, y_train=y,
      ...                    x_test=None, y_test=None, alpha=1.0, model=model)   # at initialisation
      >>> float(ow.measure.param_movement()(snap))
      0.0
    """

    def fn(snap):
        num = sum(jnp.sum((p - p0) ** 2) for p, p0 in zip(jax.tree.leaves(snap.params), jax.tree.leaves(snap.params0)))
        den = sum(jnp.sum(p0**2) for p0 in jax.tree.leaves(snap.params0))
        return jnp.sqrt(num / den)

    return fn


def _features(snap, params, x):
    """Input of the last weight layer (the last hidden features), flattened to (batch, features)."""
    h = snap.model.intermediates(params, x).features
    if h is None:
        raise ValueError("ow.measure: feature observables need a network with a weight layer (ow.finite of a spec "
                         "or of ow.from_flax)")
    return h


def _feature_kernel(snap, params, x):
    h = _features(snap, params, x)
    return h @ h.T / h.shape[1]


def feature_movement(x):
    """Relative change of the last hidden layer's feature kernel ``Phi = h h^T / n`` on ``x``.

    Zero at infinite width in the kernel regime; ``Theta(1)`` with feature learning
    (Bordelon & Pehlevan 2022's ``Phi^L``). Needs an ``ow.finite`` spec network.

    References:
      - Bordelon & Pehlevan 2022, Self-Consistent Dynamical Field Theory of Kernel Evolution in Wide Neural Networks. <https://arxiv.org/abs/2205.09653>
      - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks. <https://arxiv.org/abs/2011.14522>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); y = np.array([[1.0], [-1.0], [0.5]])
      >>> p0 = model.init(jax.random.key(0), x)
      >>> snap = ow.Snapshot(apply=model.apply, params=p0, params0=p0, x_train=x, y_train=y,
      ...                    x_test=None, y_test=None, alpha=1.0, model=model)   # at initialisation
      >>> float(ow.measure.feature_movement(x)(snap))
      0.0
    """
    x = _checks.as_float_array("x", x, where="ow.measure.feature_movement", rank=None)

    def fn(snap):
        return _rel(_feature_kernel(snap, snap.params, x), _feature_kernel(snap, snap.params0, x))

    return fn


def kernel_alignment(x, y, *, kernel: str = "ntk"):
    """Kernel-target alignment ``<K, y y^T>_F / (||K||_F ||y y^T||_F)`` (Cristianini et al. 2002).

    ``kernel="ntk"`` uses the empirical NTK, ``"features"`` the last feature kernel.
    ``y``: (N,) or (N, k) targets (one-hot for classes); the target kernel is ``y y^T``.

    References:
      - Cristianini, Shawe-Taylor, Elisseeff & Kandola 2002, On Kernel-Target Alignment (NeurIPS 2001).

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); y = np.array([[1.0], [-1.0], [0.5]])
      >>> p0 = model.init(jax.random.key(0), x)
      >>> snap = ow.Snapshot(apply=model.apply, params=p0, params0=p0, x_train=x, y_train=y,
      ...                    x_test=None, y_test=None, alpha=1.0, model=model)   # at initialisation
      >>> a = float(ow.measure.kernel_alignment(x, y)(snap))
      >>> 0.0 <= a <= 1.0
      True
    """
    where = "ow.measure.kernel_alignment"
    x = _checks.as_float_array("x", x, where=where, rank=None)
    y = jnp.asarray(y, dtype=x.dtype)
    y = y[:, None] if y.ndim == 1 else y
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: y has {y.shape[0]} rows, x has {x.shape[0]}")
    if kernel not in ("ntk", "features"):
        raise ValueError(f"{where}: kernel={kernel!r}; use 'ntk' or 'features'")
    target = y @ y.T

    def fn(snap):
        k = _ntk(snap, snap.params, x) if kernel == "ntk" else _feature_kernel(snap, snap.params, x)
        return jnp.sum(k * target) / (jnp.linalg.norm(k) * jnp.linalg.norm(target))

    return fn


def effective_rank(x):
    """Effective rank ``exp(H(p))`` of the last features on ``x``, ``p`` the normalised eigenvalues of
    their kernel (Roy & Vetterli 2007): how many directions the features use.

    References:
      - Roy & Vetterli 2007, The effective rank: a measure of effective dimensionality (EUSIPCO 2007).

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); y = np.array([[1.0], [-1.0], [0.5]])
      >>> p0 = model.init(jax.random.key(0), x)
      >>> snap = ow.Snapshot(apply=model.apply, params=p0, params0=p0, x_train=x, y_train=y,
      ...                    x_test=None, y_test=None, alpha=1.0, model=model)   # at initialisation
      >>> r = float(ow.measure.effective_rank(x)(snap))   # of 3 feature vectors
      >>> 1.0 <= r <= 3.0
      True
    """
    x = _checks.as_float_array("x", x, where="ow.measure.effective_rank", rank=None)

    def fn(snap):
        ev = jnp.clip(jnp.linalg.eigvalsh(_feature_kernel(snap, snap.params, x)), 0.0, None)
        p = ev / jnp.sum(ev)
        return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))

    return fn


def sharpness(*, iters: int = 20, seed: int = 0, preconditioned: bool = False):
    """Sharpness: the top eigenvalue of the Hessian of the full-batch training loss
    (:meth:`ow.Snapshot.objective`: the loss, centring and ``alpha`` of the ``ow.train`` call), by
    ``iters`` Lanczos steps (:func:`ow.curvature.lanczos`) from a start vector drawn from ``seed``.

    Under full-batch gradient descent at learning rate ``eta`` it rises to ``2 / eta`` and hovers there,
    the edge of stability (Cohen et al. 2021). Costs ``iters`` Hessian-vector products per record
    and member.

    ``preconditioned=True``: the top eigenvalue of ``D^1/2 H D^1/2`` instead, ``D`` the diagonal of the
    per-tensor SGD learning-rate multipliers of the snapshot's model (``model.lr_scales`` times
    ``model.depth_scales``, e.g. ``(n / n0)^-c`` under muP). ``ow.train``'s SGD step is
    ``-eta D grad``, gradient descent with step ``eta`` on ``u = D^-1/2 w``, whose Hessian that is: the
    quantity the bound ``2 / eta`` applies to (Cohen et al. 2022's preconditioned sharpness). Equal to the
    plain sharpness where every multiplier is 1 (SP, NTP, muP at its base width).

    References:
      - Cohen et al. 2021, Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability.
        <https://arxiv.org/abs/2103.00065>
      - Ghorbani, Krishnan & Xiao 2019, An Investigation into Neural Net Optimization via Hessian
        Eigenvalue Density. <https://arxiv.org/abs/1901.10159>
      - Cohen et al. 2022, Adaptive Gradient Methods at the Edge of Stability (preconditioned sharpness).
        <https://arxiv.org/abs/2207.14484>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); y = np.array([[1.0], [-1.0], [0.5]])
      >>> p0 = model.init(jax.random.key(0), x)
      >>> snap = ow.Snapshot(apply=model.apply, params=p0, params0=p0, x_train=x, y_train=y,
      ...                    x_test=None, y_test=None, alpha=1.0, model=model)
      >>> float(ow.measure.sharpness()(snap)) > 0
      True
    """
    from owidth.curvature import lanczos

    iters = _checks.positive_int("iters", iters, where="ow.measure.sharpness")

    def fn(snap):
        dim = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(snap.params))
        if not preconditioned:
            return lanczos(snap.objective, snap.params, k=1, iters=min(iters, dim), key=jax.random.key(seed)).values[0]
        if snap.model is None:
            raise ValueError("ow.measure.sharpness(preconditioned=True) needs the snapshot's model (its "
                             "learning-rate multipliers); pass model= to ow.Snapshot")
        root = jax.tree.map(lambda d: d ** 0.5, _sgd_multipliers(snap.model, snap.x_train))

        def scaled(u):  # the objective of u = D^-1/2 w
            return snap.objective(jax.tree.map(lambda a, r: a * r, u, root))

        at = jax.tree.map(lambda p, r: p / r, snap.params, root)
        return lanczos(scaled, at, k=1, iters=min(iters, dim), key=jax.random.key(seed)).values[0]

    return fn


def _sgd_multipliers(model, x):
    """Per-tensor factors of ``ow.train``'s SGD step: width multipliers times depth factors (Python floats)."""
    scales = model.lr_scales(x, optimizer="sgd")
    depth = model.depth_scales(x, optimizer="sgd")
    return scales if depth is None else jax.tree.map(lambda a, b: a * b, scales, depth)


def ntk_top(x=None):
    """Top eigenvalue of the NTK of the trained output ``F = alpha (f - f0)`` over the MSE's ``N``:
    ``lambda = alpha^2 lambda_max(Theta) / N`` with ``Theta`` the empirical NTK of ``f`` on ``x`` over all
    ``N k`` outputs (``x``: the training inputs when None).

    It is the top eigenvalue of the Gauss-Newton matrix ``alpha^2 J^T J / N`` of the full-batch MSE
    ``(1/2N) sum_n ||F(x_n) - y_n||^2`` (:func:`ow.curvature.gauss_newton_top` times ``alpha^2``), so it
    equals :func:`sharpness` wherever the residuals vanish. Linearised around the current parameters, a
    gradient step of size ``eta`` on that loss multiplies the residual along the top eigenvector by
    ``1 - eta lambda``: gradient descent is stable iff ``eta < 2 / lambda`` (Lewkowycz et al. 2020). With
    ``ow.train``'s SGD the step on the objective is ``lr / alpha^2``, so the bound reads
    ``lr < 2 alpha^2 / lambda``; at the default ``alpha = 1``, ``lr < 2 / lambda``. In the catapult phase
    ``2 / lambda_0 < eta < c / lambda_0`` the loss first grows, the kernel's top eigenvalue falls until
    ``eta < 2 / lambda``, and training converges in a flatter region (Lewkowycz et al. 2020). The centring
    offset ``f0`` is constant and does not enter. Costs one empirical NTK (``N k x N k``) and its
    ``eigvalsh`` per record and member.

    References:
      - Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020, The large learning rate phase of deep
        learning: the catapult mechanism. <https://arxiv.org/abs/2003.02218>
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural
        Networks. <https://arxiv.org/abs/1806.07572>

    Examples:
      A linear model ``f = x w``: the NTK is ``x x^T``, with eigenvalues 4 and 1 here, over ``N = 2``:

      >>> import jax.numpy as jnp
      >>> import owidth as ow
      >>> x = jnp.array([[2.0, 0.0], [0.0, 1.0]])
      >>> snap = ow.Snapshot(apply=lambda p, u: u @ p, params=jnp.zeros(2), params0=jnp.zeros(2), x_train=x,
      ...                    y_train=jnp.zeros((2, 1)), x_test=None, y_test=None, alpha=1.0, model=None)
      >>> float(ow.measure.ntk_top()(snap))
      2.0
    """
    from owidth.curvature import gauss_newton_top

    if x is not None:
        x = _checks.as_float_array("x", x, where="ow.measure.ntk_top", rank=None)

    def fn(snap):
        return snap.alpha ** 2 * gauss_newton_top(snap.apply, snap.params, snap.x_train if x is None else x)

    return fn


def _layer_sizes(model, params, x, params0):
    """Mean |h| and mean |h - h0| of every weight layer's output (pre-activation) and every other recorded
    observable (embeddings; attention projections, logits and outputs), in network order."""
    now, then = model.intermediates(params, x).values, model.intermediates(params0, x).values
    size = jnp.stack([jnp.mean(jnp.abs(h)) for h in now])
    delta = jnp.stack([jnp.mean(jnp.abs(h - h0)) for h, h0 in zip(now, then)])
    # two traces of the same parameters may round differently (fusion): a layer that has not
    # moved has delta ~ 1e-16 |h|, which is no update at all
    eps = 100 * jnp.finfo(size.dtype).eps
    return size, jnp.where(delta <= eps * size, 0.0, delta)


def coord_check(
    net,
    data: tuple,
    *,
    widths: Sequence[int],
    param: Parametrization,
    lr: float,
    optimizer: str = "adam",
    steps: int = 3,
    seeds: int = 4,
    loss: str = "mse",
):
    """Coordinate sizes of every weight layer's output after 0..``steps`` optimizer steps.

    Args:
      net: width-free spec (its Dense layers are measured).
      data: ``(x, y)``, one full batch; ``y`` as for :func:`ow.train`.
      widths: widths to compare (log-spaced, e.g. 64..2048).
      param: parametrization; learning rates per tensor follow it.
      lr: base learning rate. optimizer: as for :func:`ow.train`.
      steps: optimizer steps. seeds: independent networks per width.
      loss: ``"mse"`` or ``"xent"``.

    Returns:
      ``xarray.Dataset`` with ``size`` (mean ``|h|``) and ``delta`` (mean
      ``|h_t - h_0|``) over ``(width, seed, step, layer)`` (``layer_name``
      says what each is: ``"dense"`` outputs, ``"embedding"``, and for
      ``Attention`` ``"attn.q"``, ``"attn.k"``, ``"attn.v"``, ``"attn.logits"``
      (the causal part), ``"attn.o"``), and ``slope_size``
      / ``slope_delta`` over ``(step, layer)``: the least-squares log-log
      slope of the seed-averaged value against width (0 means width-stable;
      NaN where a value is exactly 0, e.g. ``delta`` at step 0).

    References:
      - Yang et al. 2022, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer. <https://arxiv.org/abs/2203.03466>
      - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks. <https://arxiv.org/abs/2011.14522>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> x = np.linspace(-1, 1, 8).reshape(4, 2); y = x[:, :1]
      >>> ds = ow.coord_check(net, (x, y), widths=(64, 256), param=ow.MUP, lr=0.1)  # doctest: +SKIP
      >>> ds.sizes["width"]  # doctest: +SKIP
      2
    """
    import optax
    import xarray as xr

    from owidth._finite import finite
    from owidth.layers.sequence import check_tokens

    where = "ow.coord_check"
    _optim.check(optimizer, where=where)
    widths = list(_checks.positive_ints("widths", widths, where=where))
    steps = _checks.positive_int("steps", steps, where=where)
    seeds = _checks.positive_int("seeds", seeds, where=where)
    x = _checks.as_float_array("x", data[0], where=where, rank=None)
    check_tokens(net, x, name="x", where=where)
    y = targets("y", data[1], x.shape[0], loss, where=where)

    sizes, deltas = [], []
    for width in widths:
        model = finite(net, width=width, param=param)
        tx = _optim.make(optimizer, lr=lr, where=where, **model_scales(model, x, optimizer))

        def run(key, model=model, tx=tx):
            params0 = model.init(key, x)

            def step(carry, _):
                params, opt = carry
                out = _layer_sizes(model, params, x, params0)
                grads = jax.grad(lambda p: loss_fn(loss, model.apply(p, x), y))(params)
                updates, opt = tx.update(grads, opt, params)
                return (optax.apply_updates(params, updates), opt), out

            (params, _), (size, delta) = jax.lax.scan(step, (params0, tx.init(params0)), None, length=steps)
            last = _layer_sizes(model, params, x, params0)
            return jnp.concatenate([size, last[0][None]]), jnp.concatenate([delta, last[1][None]])

        keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
        size, delta = jax.jit(jax.vmap(run))(keys)
        sizes.append(np.asarray(size))
        deltas.append(np.asarray(delta))
    size, delta = np.stack(sizes), np.stack(deltas)  # (W, S, T+1, L)
    lw = np.log(np.asarray(widths, dtype=float))

    def slope(v):
        m = v.mean(axis=1)  # (W, T+1, L)
        out = np.full(m.shape[1:], np.nan)
        for idx in np.ndindex(*m.shape[1:]):
            col = m[(slice(None),) + idx]
            if np.all(col > 0) and np.all(np.isfinite(col)):  # a zero (e.g. a zero-initialised readout) has no slope
                out[idx] = np.polyfit(lw, np.log(col), 1)[0]
        return out

    names = []

    def trace_names(key, model=finite(net, width=widths[0], param=param)):
        names.extend(model.intermediates(model.init(key, x), x).names)
        return 0.0

    jax.eval_shape(trace_names, jax.random.key(0))  # layer names only: no FLOPs
    dims = ("width", "seed", "step", "layer")
    coords = {"width": widths, "seed": np.arange(seeds), "step": np.arange(steps + 1),
              "layer": np.arange(size.shape[-1]), "layer_name": ("layer", names)}
    slope_delta = slope(delta)
    return xr.Dataset(
        {"size": (dims, size), "delta": (dims, delta), "slope_size": (("step", "layer"), slope(size)),
         "slope_delta": (("step", "layer"), slope_delta)},
        coords=coords, attrs={"param": param.name, "optimizer": optimizer, "lr": float(lr), "loss": loss},
    )
