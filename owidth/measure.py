"""Observables of finite networks: coordinate checks (and, later, kernel/feature movement).

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

from owidth import _checks
from owidth.param import Parametrization, optimizer_family


def _layer_sizes(model, params, x, params0):
    """Mean |h| and mean |h - h0| of every weight layer's output (pre-activation)."""
    _, tape = model._apply_taped(params, x)
    _, tape0 = model._apply_taped(params0, x)
    size = jnp.stack([jnp.mean(jnp.abs(h)) for h in tape.outputs])
    delta = jnp.stack([jnp.mean(jnp.abs(h - h0)) for h, h0 in zip(tape.outputs, tape0.outputs)])
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
      ``|h_t - h_0|``) over ``(width, seed, step, layer)``, and ``slope_size``
      / ``slope_delta`` over ``(step, layer)``: the least-squares log-log
      slope of the seed-averaged value against width (0 means width-stable;
      NaN where a value is exactly 0, e.g. ``delta`` at step 0).
    """
    import optax
    import xarray as xr

    from owidth.finite import finite
    from owidth.param import scale_by_width
    from owidth.train import _loss, _targets

    where = "ow.coord_check"
    optimizer_family(optimizer, where=where)
    widths = [_checks.positive_int("widths", w, where=where) for w in widths]
    steps = _checks.positive_int("steps", steps, where=where)
    seeds = _checks.positive_int("seeds", seeds, where=where)
    x = _checks.as_float_array("x", data[0], where=where, rank=None)
    y = _targets("y", data[1], x.shape[0], loss, where=where)
    base = {"sgd": optax.sgd, "momentum": lambda lr: optax.sgd(lr, momentum=0.9), "adam": optax.adam,
            "adamw": optax.adamw}[optimizer]

    sizes, deltas = [], []
    for width in widths:
        model = finite(net, width=width, param=param)
        tx = optax.chain(base(1.0), scale_by_width(model, x, optimizer=optimizer), optax.scale(lr))

        def run(key, model=model, tx=tx):
            params0 = model.init(key, x)

            def step(carry, _):
                params, opt = carry
                out = _layer_sizes(model, params, x, params0)
                grads = jax.grad(lambda p: _loss(loss, model.apply(p, x), y))(params)
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

    dims = ("width", "seed", "step", "layer")
    coords = {"width": widths, "seed": np.arange(seeds), "step": np.arange(steps + 1), "layer": np.arange(size.shape[-1])}
    slope_delta = slope(delta)
    return xr.Dataset(
        {"size": (dims, size), "delta": (dims, delta), "slope_size": (("step", "layer"), slope(size)),
         "slope_delta": (("step", "layer"), slope_delta)},
        coords=coords, attrs={"param": param.name, "optimizer": optimizer, "lr": float(lr), "loss": loss},
    )
