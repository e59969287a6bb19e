"""Adam's epsilon across widths (Everett et al. 2024; Yang et al. 2022, Tensor Programs V, Sec. B).

A 2-hidden-layer ReLU MLP under muP (base width 64, zero readout initialisation) is trained with
full-batch Adam (lr 2^-6, 30 steps, one-hot MSE on 128 scikit-learn digits) at widths 64..2048 over a grid of epsilons a factor 4 apart,
with one epsilon for every tensor (as microsoft/mup and optax do) and with ``scale_eps`` (each tensor's
epsilon ``eps (n / n0)^-e_role``, ``e = 1`` for every role under muP: the gradients' own scaling).

Theory: Adam divides each gradient entry by ``sqrt(v) + eps``. Under muP every gradient entry shrinks
like ``1/n`` (:meth:`ow.Parametrization.eps_exponents`), so a fixed epsilon that is negligible at the
base width dominates at large width, where Adam turns into SGD with learning rate ``lr / eps`` and
training stalls. The epsilon at which training starts to fail, ``eps*`` (where the seed-mean final
loss crosses the geometric mean of its best value and the initial loss), then falls like ``1/n``:
log-log slope -1 against width. With the scaled epsilon the curves of all widths coincide: slope 0.

Measured (quick run, widths 64, 256, 1024, 2 seeds): ``eps*`` = 6.3e-4, 1.7e-4, 4.5e-5 with one epsilon
(slope -0.95) and 6.3e-4, 6.8e-4, 7.0e-4 scaled (slope +0.05). The zero readout matters: with muP's
random readout the initial output ``~ n^-1/2`` makes the narrow networks' losses differ from the wide
ones' (0.50 vs 0.18 after 10 steps), the threshold then tracks the loss level, and the same
measurement gave slopes -2.1 (one epsilon) and -1.1 (scaled).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import digits, loglog_slope

__all__ = ["run", "threshold", "BASE", "EPS0", "LR", "MODES"]

BASE = 64
LR = 2.0 ** -6
EPS0 = 1e-8  # the optimizer's own epsilon; the grid's values enter through Adam's scale invariance
MODES = (("fixed", "one epsilon for every tensor"), ("scaled", "epsilon scaled like the gradients (scale_eps)"))


def threshold(eps: np.ndarray, loss: np.ndarray, initial: float) -> float:
    """``eps*``: where ``log loss`` first rises through ``(log min + log initial) / 2`` going up the grid,
    interpolated linearly in ``log eps``; NaN if it never does."""
    log_loss, level = np.log(loss), 0.5 * (np.log(np.nanmin(loss)) + np.log(initial))
    start = int(np.nanargmin(loss))
    for i in range(start, len(eps) - 1):
        if log_loss[i] < level <= log_loss[i + 1]:
            t = (level - log_loss[i]) / (log_loss[i + 1] - log_loss[i])
            return float(np.exp(np.log(eps[i]) + t * (np.log(eps[i + 1]) - np.log(eps[i]))))
    return float("nan")


def _losses(param, width: int, x, y, eps_grid, seeds: int, steps: int) -> np.ndarray:
    """Final and initial full-batch MSE, (eps, seed, 2), for Adam(lr=LR) with each epsilon of the grid.

    ``adam(g / e, eps0) = adam(g, eps0 e)`` exactly (Adam is invariant to a gradient scale but for its
    epsilon), so one optimizer with epsilon EPS0 runs every grid value ``eps = EPS0 e`` as a vmapped
    member that divides its gradients by ``e``."""
    import jax
    import jax.numpy as jnp
    import optax

    net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=10))
    model = ow.finite(net, width=width, param=param)
    tx = ow.mu_optimizer(model, x, "adam", lr=LR, eps=EPS0)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((model.apply(p, x) - y) ** 2, -1))

    def one(key, e):
        params = model.init(key, x)

        def step(carry, _):
            params, opt = carry
            grads = jax.tree.map(lambda g: g / e, jax.grad(loss)(params))
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), opt), None

        (final, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return jnp.stack([loss(final), loss(params)])

    keys = jax.random.split(jax.random.key(0), seeds)
    factors = jnp.asarray(np.asarray(eps_grid) / EPS0, dtype=x.dtype)
    grid = jax.vmap(lambda e: jax.vmap(lambda k: one(k, e))(keys))
    return np.asarray(jax.jit(grid)(factors))


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    x, labels, _, _ = digits(seed)
    x, y = x[:128], np.eye(10)[labels[:128]]
    widths = [64, 256, 1024] if quick else [64, 128, 256, 512, 1024, 2048]
    eps_grid = 4.0 ** np.arange(-14, 0)  # 3.7e-9 .. 0.25
    seeds, steps = 2, 30
    base = dataclasses.replace(ow.MUP.with_base_width(BASE), zero_readout=True)
    params = {"fixed": base, "scaled": dataclasses.replace(base, scale_eps=True)}
    values = np.stack([[_losses(params[m], w, x, y, eps_grid, seeds, steps) for w in widths] for m, _ in MODES])
    ds = xr.Dataset({"final_loss": (("mode", "width", "eps", "seed"), values[..., 0]),
                     "initial_loss": (("mode", "width", "eps", "seed"), values[..., 1])},
                    coords={"mode": [m for m, _ in MODES], "width": widths, "eps": eps_grid, "seed": np.arange(seeds)},
                    attrs={"lr": LR, "steps": steps, "base_width": BASE, "param": "mup", "optimizer": "adam",
                           "data": "sklearn digits, 128 points, one-hot MSE, full batch"})
    final = ds.final_loss.mean("seed")
    initial = ds.initial_loss.mean(("seed", "eps"))
    star = np.array([[threshold(eps_grid, final.sel(mode=m, width=w).values, float(initial.sel(mode=m, width=w)))
                      for w in widths] for m, _ in MODES])
    ds["eps_star"] = (("mode", "width"), star)
    ds.to_netcdf(out / "eps_transfer.nc")

    slopes = {m: loglog_slope(widths, star[i]) for i, (m, _) in enumerate(MODES)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    for ax, (i, (m, label)) in zip(axes, enumerate(MODES)):
        for j, w in enumerate(widths):
            color = plt.cm.plasma(0.85 * j / max(1, len(widths) - 1))
            ax.plot(eps_grid, final.sel(mode=m, width=w), "o-", ms=3, color=color, label=f"n={w}")
            ax.axvline(star[i, j], color=color, lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="Adam epsilon (at the base width 64)",
               title=f"{label}\neps* vs width: slope {slopes[m]:+.2f}")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(f"train loss after {steps} Adam steps, seed mean")
    axes[1].legend(fontsize=8)
    ax = axes[2]
    for i, (m, label) in enumerate(MODES):
        ax.plot(widths, star[i], "o-", label=f"{m}: slope {slopes[m]:+.2f}")
    ax.plot(widths, star[0, 0] * (np.asarray(widths) / widths[0]) ** -1.0, "k--", lw=0.8, label="1/n")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel="eps* (training fails above)",
           title="where epsilon starts to dominate")
    ax.set_xscale("log", base=2)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"Adam's epsilon vs width, muP MLP on digits (lr {LR:g}): a fixed epsilon dominates the 1/n gradients "
                 "of wide networks; scaled like them it transfers (Everett et al. 2024)", fontsize=10)
    fig.savefig(out / "eps_transfer.png", dpi=150)
    plt.close(fig)
    ok = abs(slopes["fixed"] + 1) <= 0.2 and abs(slopes["scaled"]) <= 0.1
    print(f"eps-transfer: eps* (training fails above) vs width {widths}: fixed {np.array2string(star[0], precision=3)} "
          f"(slope {slopes['fixed']:+.3f}), scaled {np.array2string(star[1], precision=3)} "
          f"(slope {slopes['scaled']:+.3f}); "
          f"fixed ~ 1/n and scaled flat: {ok}")
    return {"widths": widths, "eps_grid": [float(e) for e in eps_grid], "eps_star": {m: [float(v) for v in star[i]]
            for i, (m, _) in enumerate(MODES)}, "slopes": slopes, "transfer_ok": bool(ok),
            "files": ["eps_transfer.nc", "eps_transfer.png", "summary.json"]}
