"""Depth transfer (Yang et al. 2023, Tensor Programs VI; Bordelon et al. 2023; Dey et al. 2025).

Residual MLPs ``Dense -> L x Residual(Relu, Dense, scale=1/2) -> Relu -> Dense(10)`` of fixed width are
trained with minibatch Adam on the cross-entropy of scikit-learn digits (1400 training points) at depths
L = 4..64 residual blocks, over a grid of learning rates a factor 2 apart and two seeds (all seeds x
learning rates of one depth in one vmapped program), under three parametrizations that are the same
network at the base depth L0 = 4 (branch multiplier 1/2 there, muP in width):

- muP: nothing depends on depth (the branch multiplier stays 1/2);
- depth-muP: branches ``1/2 (L / 4)^-1/2``, Adam learning rate of the branch tensors ``(L / 4)^-1/2``;
- CompleteP: branches ``1/2 (L / 4)^-1``, Adam learning rates constant in depth, epsilon scaled.

Theory: one Adam step moves the residual stream by ``L^(1 - alpha) lr_L`` summed over the blocks, so
under depth-muP and CompleteP the loss-vs-learning-rate curve has a depth -> inf limit and its minimiser
stays put, while under muP the update grows like L and the best learning rate falls like ``1/L``
(4 grid steps from L = 4 to 64). The best learning rate is read off the seed-mean final training loss;
``best_lr_shift_grid_steps`` is its move from the smallest to the largest depth.

The small transformer of ``mutransfer-transformer`` (pre-LayerNorm, 2 heads, an MLP per block; an
order-2 Markov chain of 16 tokens) is swept the same way over 1..16 blocks (two residual branches
each; base depth one block, muP's zero query and readout), written to
``depth_transfer_transformer.nc`` and reported as ``summary["transformer"]``; no check is made on it.

Measured. Quick run (width 32, depths 4, 16, 64, learning rates 2^-10..2^0, 100 steps, 2 seeds): the
best learning rate moves -4 grid steps under muP (0.125 -> 0.0078, as ``1/L`` predicts), 0 under
depth-muP (0.125 at every depth) and 0 under CompleteP (0.125, 0.25, 0.125). Full run (width 64,
depths 4, 8, 16, 32, 64): -5 under muP (0.0625, 0.0625, 0.031, 0.0078, 0.0020), +1 under depth-muP
(0.0625, 0.0625, 0.25, 0.0625, 0.125) and +1 under CompleteP (0.0625, 0.125, 0.25, 0.125, 0.125): the
depth presets' minima are flat over 0.06..0.25 within the seed noise, so the argmin at intermediate
depths wanders by up to two steps while the end-to-end move stays within one.
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import digits
from owidth.experiments.mutransfer import best_lr_index

__all__ = ["run", "summarize", "sweep", "BASE_DEPTH", "BRANCH", "PRESETS"]

BASE_DEPTH = 4
BRANCH = 0.5  # the branch multiplier at the base depth (1 / sqrt(L0))
PRESETS = (("mup", "muP"), ("depth-mup", "depth-muP"), ("completep", "CompleteP"))


def resnet(depth: int):
    block = ow.Residual(ow.Relu(), ow.Dense(), scale=BRANCH)
    return ow.serial(ow.Dense(), ow.repeat(block, depth), ow.Relu(), ow.Dense(out=10))


def transformer(blocks: int):
    """The small transformer of ``mutransfer-transformer`` with ``blocks`` blocks (two residual branches each)."""
    return ow.transformer(depth=blocks, heads=2, vocab=16, last_only=False)


def sweep(make_net, depths, data, params: dict, *, width: int, lrs, seeds: int, steps: int, batch_size: int,
          test=None):
    """Final losses over (param, depth, seed, lr, alpha, step): one vmapped ``ow.train`` program per
    (parametrization, depth), the learning rates and seeds its members."""
    import xarray as xr

    runs = []
    for p, _ in PRESETS:
        per_depth = []
        for depth in depths:
            ds = ow.train(make_net(depth), data, test=test, widths=width, lr=lrs, steps=steps, seeds=seeds,
                          param=params[p], optimizer="adam", loss="xent", batch_size=batch_size,
                          record_every=steps // 5)
            per_depth.append(ds.squeeze("width", drop=True).expand_dims(depth=[depth]))
        runs.append(xr.concat(per_depth, dim="depth", combine_attrs="drop_conflicts").expand_dims(param=[p]))
    return xr.concat(runs, dim="param", combine_attrs="drop_conflicts")


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import dataclasses

    from owidth.experiments.sequences import markov_chain

    x, y, xt, yt = digits(seed)
    if quick:
        width, depths, lrs, seeds, steps = 32, [4, 16, 64], 2.0 ** np.arange(-10, 1), 2, 100
        t_width, t_blocks, t_lrs, t_steps = 16, [1, 4], 2.0 ** np.arange(-8, -1), 40
    else:
        width, depths, lrs, seeds, steps = 64, [4, 8, 16, 32, 64], 2.0 ** np.arange(-10, 1), 2, 100
        t_width, t_blocks, t_lrs, t_steps = 32, [1, 4, 16], 2.0 ** np.arange(-11, 0), 100
    presets = {"mup": ow.MUP, "depth-mup": ow.DEPTH_MUP, "completep": ow.COMPLETEP}
    params = {p: presets[p].with_base_width(width).with_base_depth(BASE_DEPTH) for p, _ in PRESETS}
    ds = sweep(resnet, depths, (x, y), params, width=width, lrs=lrs, seeds=seeds, steps=steps, batch_size=128,
               test=(xt, yt))
    ds.attrs.update({"width": width, "base_width": width, "base_depth": BASE_DEPTH, "branch_at_base_depth": BRANCH,
                     "data": "sklearn digits", "seed": seed, "depth_unit": "residual blocks"})
    ds.to_netcdf(out / "depth_transfer.nc")

    # the transformer: base depth one block (L0 = 2 residual branches), muP's zero query and readout
    tx, ty, entropy = markov_chain(seed, vocab=16, length=8, n=512)
    t_params = {p: dataclasses.replace(presets[p], zero_readout=True, zero_query=True).with_base_width(t_width)
                .with_base_depth(2) for p, _ in PRESETS}
    tds = sweep(transformer, t_blocks, (tx, ty), t_params, width=t_width, lrs=t_lrs, seeds=seeds, steps=t_steps,
                batch_size=32)
    tds.attrs.update({"width": t_width, "base_width": t_width, "base_depth": 1, "depth_unit": "transformer blocks",
                      "data": "order-2 Markov chain, 16 tokens, length 8, 512 sequences", "entropy_rate": entropy,
                      "seed": seed})
    tds.to_netcdf(out / "depth_transfer_transformer.nc")
    return summarize(ds, out, tds)


def _best(ds, p):
    """Best learning-rate index per depth (seed-mean final training loss) and the loss array (depth, seed, lr)."""
    loss = ds["train_loss"].isel(step=-1, alpha=0).sel(param=p).transpose("depth", "seed", "lr").values
    return best_lr_index(loss), loss


def summarize(ds, out: pathlib.Path, tds=None) -> dict:
    """Best learning rates per depth, the figure and the summary from a depth-transfer Dataset (and the
    transformer's, when given)."""
    import matplotlib.pyplot as plt

    rows = [("residual MLP", ds)] + ([] if tds is None else [("transformer", tds)])
    summary = {"depths": [int(d) for d in ds.depth.values], "lrs": [float(v) for v in ds.lr.values],
               "width": int(ds.attrs["width"]), "best_lr_shift_grid_steps": {}}
    fig, axes = plt.subplots(len(rows), len(PRESETS), figsize=(14, 4.6 * len(rows)), sharey="row",
                             constrained_layout=True, squeeze=False)
    for row, (what, data) in enumerate(rows):
        depths, lrs = [int(d) for d in data.depth.values], data.lr.values
        unit = data.attrs.get("depth_unit", "residual blocks")
        entry = summary if row == 0 else summary.setdefault("transformer", {
            "blocks": depths, "lrs": [float(v) for v in lrs], "width": int(data.attrs["width"]),
            "best_lr_shift_grid_steps": {}})
        for ax, (p, name) in zip(axes[row], PRESETS):
            best, loss = _best(data, p)
            shift = int(best[-1] - best[0])
            entry["best_lr_shift_grid_steps"][p] = shift
            entry[p] = {"best_lr": [float(lrs[i]) for i in best],
                        "diverged": [int(np.isnan(loss[d]).any(axis=0).sum()) for d in range(len(depths))]}
            for d, depth in enumerate(depths):
                mean = np.nanmean(np.where(np.isfinite(loss[d]), loss[d], np.nan), axis=0)
                color = plt.cm.plasma(0.85 * d / max(1, len(depths) - 1))
                ax.plot(lrs, mean, "o-", color=color, ms=3, label=f"L={depth}")
                ax.plot(lrs[best[d]], mean[best[d]], "*", color=color, ms=12)
            if "entropy_rate" in data.attrs:
                ax.axhline(float(data.attrs["entropy_rate"]), color="gray", ls=":", lw=1, label="entropy rate")
            ax.set(xscale="log", yscale="log", xlabel=f"Adam learning rate (base depth {data.attrs['base_depth']})",
                   title=f"{name}: best lr moves {shift:+d} grid steps (x2)\nfrom {depths[0]} to {depths[-1]} {unit}")
            ax.grid(True, which="major", alpha=0.3)
        steps = int(data.step.values[-1])
        axes[row, 0].set_ylabel(f"{what}: train loss (cross-entropy)\nafter {steps} steps, seed mean")
        axes[row, -1].legend(fontsize=8, title=unit)
    fig.suptitle(f"Depth transfer on digits (residual MLP, width {summary['width']})"
                 + ("" if tds is None else " and an order-2 Markov chain (transformer, bottom)")
                 + ":\nthe optimal learning rate is depth-stable under depth-muP and CompleteP and falls with depth "
                 "under muP (Yang et al. 2023; Dey et al. 2025)", fontsize=10)
    fig.savefig(out / "depth_transfer.png", dpi=150)
    plt.close(fig)
    shifts = summary["best_lr_shift_grid_steps"]
    ok = abs(shifts["depth-mup"]) <= 1 and abs(shifts["completep"]) <= 1 and abs(shifts["mup"]) >= 2
    depths = summary["depths"]
    line = (f"depth-transfer: best lr (final train loss) from L={depths[0]} to L={depths[-1]} moves "
            + ", ".join(f"{p} {shifts[p]:+d}" for p, _ in PRESETS)
            + f" grid steps (x2); depth presets within one step and muP at least two: {ok}")
    if "transformer" in summary:
        t = summary["transformer"]
        line += (f"; transformer from {t['blocks'][0]} to {t['blocks'][-1]} blocks: "
                 + ", ".join(f"{p} {t['best_lr_shift_grid_steps'][p]:+d}" for p, _ in PRESETS))
    print(line)
    files = ["depth_transfer.nc"] + ([] if tds is None else ["depth_transfer_transformer.nc"])
    summary.update({"transfer_ok": bool(ok), "files": files + ["depth_transfer.png", "summary.json"]})
    return summary
