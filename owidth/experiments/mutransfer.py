"""muTransfer (Yang et al. 2022, Tensor Programs V): the best learning rate across widths.

2-hidden-layer ReLU MLPs on scikit-learn digits (1400 train / 397 test) are
trained with minibatch Adam on the cross-entropy at widths 64..2048, over a
grid of learning rates a factor 2 apart and several seeds, all seeds x
learning rates of one width in one vmapped program. Theory: under muP the
training dynamics have a width -> inf limit with feature learning, so the
loss-vs-learning-rate curve converges and its minimiser stays put; under SP
with one learning rate the largest stable learning rate falls like 1/n and
the minimiser drifts to smaller values as the network widens. The best
learning rate is read off the final training loss (as Yang et al. tune);
the test-loss optimum is reported as well.
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import digits, transfers

__all__ = ["best_lr_index", "run", "summarize", "BASE"]

BASE = 64


def best_lr_index(loss: np.ndarray) -> np.ndarray:
    """Index of the smallest seed-mean final loss per width; loss is (width, seed, lr), NaN = diverged."""
    mean = np.where(np.isnan(loss), np.inf, loss).mean(axis=1)
    return np.argmin(mean, axis=1)


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import xarray as xr

    x, y, xt, yt = digits(seed)
    net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=10))
    if quick:
        widths, lrs, seeds, steps = [64, 128, 512], 2.0 ** np.arange(-11, 0), 2, 150
    else:
        widths, lrs, seeds, steps = [64, 128, 256, 512, 1024, 2048], 2.0 ** np.arange(-12, 0), 2, 200
    runs = []
    for p in (ow.SP, ow.MUP):
        ds = ow.train(net, (x, y), test=(xt, yt), widths=widths, lr=lrs, steps=steps, seeds=seeds,
                      param=p.with_base_width(BASE), optimizer="adam", loss="xent", batch_size=128,
                      record_every=steps // 10)
        runs.append(ds.expand_dims(param=[p.name]))
    ds = xr.concat(runs, dim="param", combine_attrs="drop_conflicts")
    ds.attrs.update({"base_width": BASE, "data": "sklearn digits", "seed": seed})
    ds.to_netcdf(out / "mutransfer.nc")

    return summarize(ds, out)


def summarize(ds, out: pathlib.Path) -> dict:
    """Best learning rates, figure and summary from a mutransfer Dataset (also for re-plotting a saved run).

    The best learning rate per width is the one with the lowest seed-mean final *training* loss,
    the objective being optimised (Yang et al. 2022 tune on it). The test loss is reported too; its
    minimum is flat over several grid steps here, so its argmin is noisier.
    """
    import matplotlib.pyplot as plt

    widths, lrs = [int(w) for w in ds.width.values], ds.lr.values
    steps = int(ds.step.values[-1])
    summary = {"widths": widths, "lrs": [float(v) for v in lrs]}
    names = {"sp": "SP", "mup": "muP"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True, sharey="row", constrained_layout=True)
    for row, var in enumerate(("train_loss", "test_loss")):
        final = ds[var].isel(step=-1, alpha=0)
        for ax, p in zip(axes[row], ("sp", "mup")):
            loss = final.sel(param=p).values  # (width, seed, lr)
            best = best_lr_index(loss)
            shift = int(best[-1] - best[0])
            key = "" if var == "train_loss" else "test_"
            summary.setdefault(p, {}).update({f"{key}best_lr": [float(lrs[i]) for i in best],
                                              f"{key}shift_grid_steps": shift})
            for w, width in enumerate(widths):
                mean = np.nanmean(loss[w], axis=0)
                color = plt.cm.plasma(0.85 * w / max(1, len(widths) - 1))  # plasma ends in a yellow too pale on white
                ax.plot(lrs, mean, "o-", color=color, ms=3, label=f"n={width}")
                ax.plot(lrs[best[w]], mean[best[w]], "*", color=color, ms=12)
            ax.set(xscale="log", yscale="log", title=f"{names[p]}: best lr moves {shift:+d} grid steps (x2) "
                                                     f"from n={widths[0]} to n={widths[-1]}")
            ax.grid(True, which="major", alpha=0.3)
            if row == 1:
                ax.set_xlabel("Adam learning rate (base width 64)")
        axes[row, 0].set_ylabel(f"{var.replace('_', ' ')} (cross-entropy) after {steps} steps")
    axes[0, 1].plot([], [], "*", color="gray", ms=10, label="best lr (seed mean)")
    axes[0, 1].legend(fontsize=8)
    fig.suptitle("muTransfer, MLP on digits: loss vs learning rate, SP and muP on shared axes per row; the optimal "
                 "learning rate is width-stable under muP (Yang et al. 2022)", fontsize=10)
    fig.savefig(out / "mutransfer.png", dpi=150)
    plt.close(fig)
    ok = transfers(summary)
    print(f"mutransfer: best lr (final train loss) from n={widths[0]} to n={widths[-1]} moves "
          f"{summary['mup']['shift_grid_steps']:+d} grid steps under muP and {summary['sp']['shift_grid_steps']:+d} "
          f"under SP (grid factor 2; by test loss {summary['mup']['test_shift_grid_steps']:+d} and "
          f"{summary['sp']['test_shift_grid_steps']:+d}); muP within one step and SP beyond: {ok}")
    summary.update({"transfer_ok": ok, "files": ["mutransfer.nc", "mutransfer.png", "summary.json"]})
    return summary
