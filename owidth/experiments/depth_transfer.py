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

Measured (quick run: width 32, depths 4, 16, 64, learning rates 2^-10..2^0, 100 steps, 2 seeds): the
best learning rate moves -4 grid steps under muP (0.125 -> 0.0078, as ``1/L`` predicts), 0 under
depth-muP (0.125 at every depth) and 0 under CompleteP (0.125, 0.25, 0.125); at width 64 the same
grid gave -5, +1 and +1.
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import digits
from owidth.experiments.mutransfer import best_lr_index

__all__ = ["run", "summarize", "BASE_DEPTH", "BRANCH", "PRESETS"]

BASE_DEPTH = 4
BRANCH = 0.5  # the branch multiplier at the base depth (1 / sqrt(L0))
PRESETS = (("mup", "muP"), ("depth-mup", "depth-muP"), ("completep", "CompleteP"))


def resnet(depth: int):
    block = ow.Residual(ow.Relu(), ow.Dense(), scale=BRANCH)
    return ow.serial(ow.Dense(), ow.repeat(block, depth), ow.Relu(), ow.Dense(out=10))


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import xarray as xr

    x, y, xt, yt = digits(seed)
    if quick:
        width, depths, lrs, seeds, steps = 32, [4, 16, 64], 2.0 ** np.arange(-10, 1), 2, 100
    else:
        width, depths, lrs, seeds, steps = 128, [4, 8, 16, 32, 64], 2.0 ** np.arange(-12, 1), 2, 200
    presets = {"mup": ow.MUP, "depth-mup": ow.DEPTH_MUP, "completep": ow.COMPLETEP}
    runs = []
    for p, _ in PRESETS:
        param = presets[p].with_base_width(width).with_base_depth(BASE_DEPTH)
        per_depth = []
        for depth in depths:
            ds = ow.train(resnet(depth), (x, y), test=(xt, yt), widths=width, lr=lrs, steps=steps, seeds=seeds,
                          param=param, optimizer="adam", loss="xent", batch_size=128, record_every=steps // 5)
            per_depth.append(ds.squeeze("width", drop=True).expand_dims(depth=[depth]))
        runs.append(xr.concat(per_depth, dim="depth", combine_attrs="drop_conflicts").expand_dims(param=[p]))
    ds = xr.concat(runs, dim="param", combine_attrs="drop_conflicts")
    ds.attrs.update({"width": width, "base_width": width, "base_depth": BASE_DEPTH, "branch_at_base_depth": BRANCH,
                     "data": "sklearn digits", "seed": seed})
    ds.to_netcdf(out / "depth_transfer.nc")
    return summarize(ds, out)


def summarize(ds, out: pathlib.Path) -> dict:
    """Best learning rates per depth, the figure and the summary from a depth-transfer Dataset."""
    import matplotlib.pyplot as plt

    depths, lrs = [int(d) for d in ds.depth.values], ds.lr.values
    steps = int(ds.step.values[-1])
    summary = {"depths": depths, "lrs": [float(v) for v in lrs], "width": int(ds.attrs["width"]),
               "best_lr_shift_grid_steps": {}}
    fig, axes = plt.subplots(1, len(PRESETS), figsize=(14, 4.6), sharex=True, sharey=True, constrained_layout=True)
    for ax, (p, name) in zip(axes, PRESETS):
        loss = ds["train_loss"].isel(step=-1, alpha=0).sel(param=p).transpose("depth", "seed", "lr").values
        best = best_lr_index(loss)
        shift = int(best[-1] - best[0])
        summary["best_lr_shift_grid_steps"][p] = shift
        summary[p] = {"best_lr": [float(lrs[i]) for i in best],
                      "diverged": [int(np.isnan(loss[d]).any(axis=0).sum()) for d in range(len(depths))]}
        for d, depth in enumerate(depths):
            mean = np.nanmean(np.where(np.isfinite(loss[d]), loss[d], np.nan), axis=0)
            color = plt.cm.plasma(0.85 * d / max(1, len(depths) - 1))
            ax.plot(lrs, mean, "o-", color=color, ms=3, label=f"L={depth}")
            ax.plot(lrs[best[d]], mean[best[d]], "*", color=color, ms=12)
        ax.set(xscale="log", yscale="log", xlabel=f"Adam learning rate (base depth {ds.attrs['base_depth']})",
               title=f"{name}: best lr moves {shift:+d} grid steps (x2)\nfrom L={depths[0]} to L={depths[-1]}")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(f"train loss (cross-entropy) after {steps} steps, seed mean")
    axes[-1].legend(fontsize=8, title="residual blocks")
    fig.suptitle(f"Depth transfer, residual MLP of width {summary['width']} on digits: the optimal learning rate is "
                 "depth-stable under depth-muP and CompleteP and falls with depth under muP "
                 "(Yang et al. 2023; Dey et al. 2025)", fontsize=10)
    fig.savefig(out / "depth_transfer.png", dpi=150)
    plt.close(fig)
    shifts = summary["best_lr_shift_grid_steps"]
    ok = abs(shifts["depth-mup"]) <= 1 and abs(shifts["completep"]) <= 1 and abs(shifts["mup"]) >= 2
    print(f"depth-transfer: best lr (final train loss) from L={depths[0]} to L={depths[-1]} moves "
          + ", ".join(f"{p} {shifts[p]:+d}" for p, _ in PRESETS)
          + f" grid steps (x2); depth presets within one step and muP at least two: {ok}")
    summary.update({"transfer_ok": bool(ok), "files": ["depth_transfer.nc", "depth_transfer.png", "summary.json"]})
    return summary
