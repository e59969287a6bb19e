"""Depth coordinate check (Yang et al. 2023, Tensor Programs VI; Dey et al. 2025, CompleteP).

A residual MLP ``Dense -> L x Residual(Relu, Dense) -> Relu -> Dense(10)`` of fixed width takes 3 Adam
steps (lr 0.01) on a batch of scikit-learn digits at depths L = 4..64 residual blocks, under muP,
depth-muP and CompleteP, all three with base width = the width and base depth L0 = 1 (branch multipliers
``L^-1/2`` and ``L^-1``, as Tensor Programs VI writes them). Recorded at steps 0..3, averaged over coordinates and seeds: the size of
the residual stream at the end of the blocks, ``mean |h_L|``, its change since initialisation
``mean |h_L(t) - h_L(0)|``, and the change of the output.

Theory. Each branch is multiplied by ``(L / L0)^-alpha``. At initialisation the L independent branches
add variance ``L * L^-2alpha`` to the stream: O(1) for alpha >= 1/2, growing like ``(1 + 1/2)^L`` for
muP's unscaled ReLU branches. One Adam step moves each branch's output by ``L^-alpha lr_L`` and the
stream by ``L^(1 - alpha) lr_L``: O(1) under depth-muP (alpha = 1/2, ``lr_L ~ L^-1/2``) and CompleteP
(alpha = 1, ``lr_L`` constant), so every curve is flat in depth (log-log slope 0), while under muP both
the stream and its updates grow with depth. The check is that the slopes against depth of the stream
size and of its update at steps 1..3 lie within 0.1 of 0 under depth-muP and CompleteP.

Measured (quick run: width 128, depths 4, 16, 64, 4 seeds): slopes of the stream size and update at
steps 1..3 within 0.035 of 0 under both, 3.2..5.0 under muP. The flat curves are the limit; at finite
depth the stream converges to it like ``1/L``. With base depth 4 instead of 1 (branch multiplier 1 at
L = 4) that correction is visible over 4..64: CompleteP's stream size then has slope -0.28 (its
initial variance ``prod (1 + (4/L)^2 / 2)`` falls from 5.1 at L = 4 to 1.1 at L = 64), depth-muP's
update slope +0.17.
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import digits, loglog_slope

__all__ = ["figure", "run", "BASE_DEPTH", "LR", "PRESETS", "QUANTITIES"]

LR = 0.01
BASE_DEPTH = 1
PRESETS = (("mup", "muP"), ("depth-mup", "depth-muP"), ("completep", "CompleteP"))
QUANTITIES = (("size", "stream size mean $|h_L|$"), ("delta", "stream update mean $|h_L(t) - h_L(0)|$"),
              ("out_delta", "output update mean $|f(t) - f(0)|$"))


def resnet(depth: int):
    """The experiment's residual MLP: its body (to the end of the residual blocks) and the whole net."""
    body = ow.serial(ow.Dense(), ow.repeat(ow.Residual(ow.Relu(), ow.Dense()), depth))
    return body, ow.serial(body, ow.Relu(), ow.Dense(out=10))


def _measure(param, depth: int, width: int, x, y, seeds: int, steps: int) -> dict:
    """Seed-stacked coordinate sizes at steps 0..steps of Adam (lr LR) on the MSE, via ow.mu_optimizer."""
    import jax
    import jax.numpy as jnp
    import optax

    body, net = resnet(depth)
    model, stream = ow.finite(net, width=width, param=param), ow.finite(body, width=width, param=param)
    tx = ow.mu_optimizer(model, x, "adam", lr=LR)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def one(key):
        params0 = model.init(key, x)
        h0, f0 = stream.apply(params0[0], x), model.apply(params0, x)

        def record(params):
            h, f = stream.apply(params[0], x), model.apply(params, x)
            return jnp.stack([jnp.abs(h).mean(), jnp.abs(h - h0).mean(), jnp.abs(f - f0).mean()])

        def step(carry, _):
            params, opt = carry
            grads = jax.grad(lambda p: 0.5 * jnp.mean(jnp.sum((model.apply(p, x) - y) ** 2, -1)))(params)
            updates, opt = tx.update(grads, opt, params)
            params = optax.apply_updates(params, updates)
            return (params, opt), record(params)

        _, rec = jax.lax.scan(step, (params0, tx.init(params0)), None, length=steps)
        return jnp.concatenate([record(params0)[None], rec])  # (steps + 1, 3)

    out = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), seeds)))
    return {name: out[..., i] for i, (name, _) in enumerate(QUANTITIES)}  # each (seed, step)


def figure(ds):
    """One panel per (quantity, parametrization): the seed-mean value against depth, one line per step, on
    shared log-log axes per quantity; the titles give the slopes against depth at steps 1..3."""
    import matplotlib.pyplot as plt

    depths = [int(d) for d in ds.depth.values]
    steps = [int(t) for t in ds.step.values]
    colors = {t: plt.cm.viridis(t / max(1, len(steps) - 1) * 0.9) for t in steps}
    fig, axes = plt.subplots(len(QUANTITIES), len(PRESETS), figsize=(13, 10), sharex=True, sharey="row",
                             constrained_layout=True, squeeze=False)
    for row, (q, label) in enumerate(QUANTITIES):
        for col, (p, name) in enumerate(PRESETS):
            ax = axes[row, col]
            value = ds[q].sel(param=p).mean("seed")
            for t in steps:
                v = value.sel(step=t).values
                if t == 0 and q != "size":
                    continue  # a change is 0 at step 0
                ax.plot(depths, np.where(v > 0, v, np.nan), "o-", color=colors[t], label=f"step {t}")
            slopes = ds[f"slope_{q}"].sel(param=p).sel(step=[t for t in steps if t > 0]).values
            ax.set_title(f"{name}: slope vs depth " + " ".join(f"{s:+.2f}" for s in slopes), fontsize=9)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            if col == 0:
                ax.set_ylabel(label)
            if row == len(QUANTITIES) - 1:
                ax.set_xlabel("residual blocks L")
                ax.set_xticks(depths, [str(d) for d in depths])
                ax.xaxis.set_minor_locator(plt.NullLocator())
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="Adam steps")
    fig.suptitle(f"Depth coordinate check: residual MLP of width {ds.attrs['width']}, Adam lr={ds.attrs['lr']:g}, "
                 f"base depth {ds.attrs['base_depth']}: flat in depth under depth-muP (branches L^-1/2) and "
                 "CompleteP (L^-1),\ngrowing under muP (Yang et al. 2023; Dey et al. 2025)", fontsize=10)
    return fig


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    x, labels, _, _ = digits(seed)
    x, y = x[:64], np.eye(10)[labels[:64]]
    width = 128 if quick else 256
    depths = [4, 16, 64] if quick else [4, 8, 16, 32, 64]
    seeds, steps = (4, 3) if quick else (8, 3)
    presets = {"mup": ow.MUP, "depth-mup": ow.DEPTH_MUP, "completep": ow.COMPLETEP}
    data = {q: np.zeros((len(PRESETS), len(depths), seeds, steps + 1)) for q, _ in QUANTITIES}
    for i, (p, _) in enumerate(PRESETS):
        param = presets[p].with_base_width(width).with_base_depth(BASE_DEPTH)
        for j, depth in enumerate(depths):
            for q, value in _measure(param, depth, width, x, y, seeds, steps).items():
                data[q][i, j] = value
    dims = ("param", "depth", "seed", "step")
    ds = xr.Dataset({q: (dims, v) for q, v in data.items()},
                    coords={"param": [p for p, _ in PRESETS], "depth": depths, "seed": np.arange(seeds),
                            "step": np.arange(steps + 1)},
                    attrs={"width": width, "lr": LR, "optimizer": "adam", "base_depth": BASE_DEPTH, "base_width": width,
                           "data": "sklearn digits, 64 points, one-hot MSE"})
    for q, _ in QUANTITIES:
        mean = ds[q].mean("seed")
        slope = np.array([[loglog_slope(depths, mean.sel(param=p, step=t).values) for t in ds.step.values]
                          for p, _ in PRESETS])
        ds[f"slope_{q}"] = (("param", "step"), slope)
    ds.to_netcdf(out / "depth_coord_check.nc")
    fig = figure(ds)
    fig.savefig(out / "depth_coord_check.png", dpi=150)
    plt.close(fig)

    def later(p, q):  # slopes at steps 1..steps
        return [float(v) for v in ds[f"slope_{q}"].sel(param=p).isel(step=slice(1, None)).values]

    slopes = {p: {q: later(p, q) for q, _ in QUANTITIES} for p, _ in PRESETS}
    flat = {p: all(abs(s) <= 0.1 for s in slopes[p]["size"] + slopes[p]["delta"]) for p, _ in PRESETS}
    grows = min(slopes["mup"]["size"] + slopes["mup"]["delta"]) > 0.3
    print(f"depth-coord-check: slopes vs depth at steps 1..{steps} (stream size; stream update): "
          + "; ".join(f"{p} {np.round(slopes[p]['size'], 3)} {np.round(slopes[p]['delta'], 3)}" for p, _ in PRESETS)
          + f"; flat within 0.1: {flat}; muP grows (all slopes > 0.3): {grows}")
    return {"width": width, "depths": depths, "base_depth": BASE_DEPTH, "slopes": slopes, "flat": flat,
            "mup_grows": bool(grows),
            "files": ["depth_coord_check.nc", "depth_coord_check.png", "summary.json"]}
