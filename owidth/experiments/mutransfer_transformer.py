"""muTransfer for transformers (Yang et al. 2022, Tensor Programs V): the best Adam learning rate across widths.

A pre-LayerNorm decoder-only transformer (``ow.transformer``: one block of
causal self-attention and an MLP, 2 heads) learns next-token prediction on
sequences of a random order-2 Markov chain (16 tokens, length 8; predicting
well needs attention to the previous token). Every width's seeds x learning
rates are one vmapped ``ow.train`` program (minibatch Adam, cross-entropy
over all positions). Under muP (``attn = 1``: ``1/d`` attention logits,
zero-initialised query and readout, base width = the smallest width) the
loss-vs-learning-rate curve converges with width and its minimiser stays
put; under SP (``1/sqrt(d)`` logits, one learning rate) the largest stable
learning rate falls with width and the minimiser drifts. The best learning
rate is read off the seed-mean final training loss, as in ``mutransfer``.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import transfers
from owidth.experiments.mutransfer import best_lr_index
from owidth.experiments.sequences import markov_chain

__all__ = ["configs", "run", "summarize"]


def configs(quick: bool) -> dict:
    if quick:
        return {"widths": [32, 64, 128], "lrs": 2.0 ** np.arange(-11, -2), "seeds": 2, "steps": 100}
    return {"widths": [64, 128, 256, 512], "lrs": 2.0 ** np.arange(-10, -2), "seeds": 2, "steps": 100}


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import xarray as xr

    cfg = configs(quick)
    x, y, entropy = markov_chain(seed, vocab=16, length=8, n=512)
    net = ow.transformer(depth=1, heads=2, vocab=16, last_only=False)
    base = cfg["widths"][0]
    params = (ow.SP, dataclasses.replace(ow.MUP, zero_readout=True, zero_query=True))
    runs = []
    for p in params:
        ds = ow.train(net, (x, y), widths=cfg["widths"], lr=cfg["lrs"], steps=cfg["steps"], seeds=cfg["seeds"],
                      param=p.with_base_width(base), optimizer="adam", loss="xent", batch_size=32,
                      record_every=cfg["steps"] // 10)
        runs.append(ds.expand_dims(param=[p.name]))
    ds = xr.concat(runs, dim="param", combine_attrs="drop_conflicts")
    ds.attrs.update({"base_width": base, "data": "order-2 Markov chain, 16 tokens, length 8, 512 sequences",
                     "entropy_rate": entropy, "seed": seed, "depth": 1, "heads": 2})
    ds.to_netcdf(out / "mutransfer_transformer.nc")
    return summarize(ds, out)


def summarize(ds, out: pathlib.Path) -> dict:
    """Best learning rate per width and parametrization, figure and summary (also for a saved run)."""
    import matplotlib.pyplot as plt

    widths, lrs = [int(w) for w in ds.width.values], ds.lr.values
    steps = int(ds.step.values[-1])
    summary = {"widths": widths, "lrs": [float(v) for v in lrs], "entropy_rate": float(ds.attrs["entropy_rate"])}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, constrained_layout=True)
    for ax, p in zip(axes, ("sp", "mup")):
        loss = ds.train_loss.isel(step=-1, alpha=0).sel(param=p).values  # (width, seed, lr)
        best = best_lr_index(loss)
        shift = int(best[-1] - best[0])
        summary[p] = {"best_lr": [float(lrs[i]) for i in best], "shift_grid_steps": shift,
                      "best_loss": [float(np.nanmean(loss[w, :, i])) for w, i in enumerate(best)]}
        for w, width in enumerate(widths):
            mean = np.nanmean(np.where(np.isnan(loss[w]), np.nan, loss[w]), axis=0)
            color = plt.cm.plasma(0.85 * w / max(1, len(widths) - 1))  # plasma ends in a yellow too pale on white
            ax.plot(lrs, mean, "o-", color=color, ms=3, label=f"n={width}")
            ax.plot(lrs[best[w]], mean[best[w]], "*", color=color, ms=12)
        ax.axhline(summary["entropy_rate"], color="gray", ls=":", lw=1, label="entropy rate")
        ax.set(xscale="log", yscale="log", xlabel=f"Adam learning rate (base width {widths[0]})",
               title=f"{'muP' if p == 'mup' else 'SP'}: best lr moves {shift:+d} grid steps (x2) "
                     f"from n={widths[0]} to n={widths[-1]}")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(f"train loss (cross-entropy) after {steps} steps")
    axes[1].legend(fontsize=8)
    fig.suptitle("muTransfer, 1-block transformer on an order-2 Markov chain: the optimal learning rate is "
                 "width-stable under muP (Yang et al. 2022)", fontsize=10)
    fig.savefig(out / "mutransfer_transformer.png", dpi=150)
    plt.close(fig)
    ok = transfers(summary)
    print(f"mutransfer-transformer: best lr from n={widths[0]} to n={widths[-1]}: muP {summary['mup']['best_lr']} "
          f"({summary['mup']['shift_grid_steps']:+d} grid steps), SP {summary['sp']['best_lr']} "
          f"({summary['sp']['shift_grid_steps']:+d}); muP within one step and SP beyond: {ok}")
    summary.update({"transfer_ok": ok, "files": ["mutransfer_transformer.nc", "mutransfer_transformer.png",
                                                 "summary.json"]})
    return summary
