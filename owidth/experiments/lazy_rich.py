"""Lazy vs rich training: a width x alpha phase diagram of kernel movement (Chizat et al. 2019).

A 2-layer tanh network (one hidden layer) is trained by full-batch gradient
descent on a smooth target on the sphere, as ``alpha (f - f0)`` with updates
scaled by ``alpha^-2`` (lazy training), under NTP and muP, for a grid of widths
and output scales alpha, 4 seeds each (one compiled program per width and
parametrization). Measured: the relative movement of the empirical NTK on the
training set ``||K_T - K_0|| / ||K_0||`` and the test loss.

Theory. In the lazy limit the weights move by O(1/alpha), so the kernel moves
like ``1/alpha`` (Chizat, Oyallon & Bach 2019). Under NTP the kernel
freezes as the width grows: Jacot et al. (2018) and Lee et al. (2019) bound
its movement by ``n^-1/2``; for smooth activations the movement is in fact
``O(1/n)`` (Dyer & Gur-Ari 2019), which is what is measured here. Under muP
(alpha = 1, i.e. gamma0 = 1) features are learned at every width: the
movement stays of order one (Yang & Hu 2021). tanh is used because the laws
are clean for smooth activations; with ReLU the kink makes the NTP exponent
about -0.7 to -0.8 at these widths (measured while building this experiment).
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import fit_loglog
from owidth.experiments.ntk_convergence import sphere_data

__all__ = ["data", "figure", "run", "COLORS", "NAMES"]


def data(seed: int, n_train: int = 32, n_test: int = 128, d: int = 8):
    x = sphere_data(n_train + n_test, d, seed)
    u = np.random.default_rng(seed + 1).standard_normal(d)
    y = np.sin(1.5 * x @ u / np.linalg.norm(u))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _fits(ds) -> dict:
    """Log-log slopes of the final NTK movement: vs width at alpha = 1 (NTP, muP), vs alpha >= 1 (NTP, widest)."""
    move = ds.ntk_movement.isel(step=-1, lr=0)  # (param, width, seed, alpha)
    widths, alphas = np.array(ds.width.values, float), np.array(ds.alpha.values, float)
    a1 = int(np.argmin(np.abs(alphas - 1.0)))
    return {
        "ntp_vs_width": fit_loglog(widths, move.sel(param="ntp").isel(alpha=a1).values),
        "mup_vs_width": fit_loglog(widths, move.sel(param="mup").isel(alpha=a1).values),
        "ntp_vs_alpha": fit_loglog(alphas[a1:], move.sel(param="ntp").isel(width=-1).values.T[a1:]),
    }


COLORS = {"ntp": "C0", "mup": "C3"}


def _luminance(rgba) -> float:
    return 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]


NAMES = {"ntp": "NTP", "mup": "muP"}


def figure(ds):
    """Phase diagrams (log10 kernel movement, test loss; one colour scale per row) and the two laws, from a run."""
    import matplotlib.pyplot as plt

    move = ds.ntk_movement.isel(step=-1, lr=0)  # (param, width, seed, alpha)
    widths, alphas = [int(w) for w in ds.width.values], [float(a) for a in ds.alpha.values]
    a1 = int(np.argmin(np.abs(np.array(alphas) - 1.0)))
    fits = _fits(ds)
    steps = int(ds.step.values[-1])
    fig, grid = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    test_loss = ds.test_loss.isel(step=-1, lr=0).mean("seed")
    rows = ((np.log10(move.mean("seed")), r"$\log_{10}$ relative NTK movement $\|K_T - K_0\| / \|K_0\|$",
             dict(vmin=-4, vmax=0.5, cmap="magma")),
            (test_loss, f"test loss (MSE) after {steps} steps",
             dict(vmin=float(test_loss.min()), vmax=float(test_loss.max()), cmap="magma_r")))
    for row, (value, label, kw) in enumerate(rows):
        for col, p in enumerate(("ntp", "mup")):
            ax = grid[row, col]
            v = value.sel(param=p).transpose("alpha", "width").values
            im = ax.imshow(v, origin="lower", aspect="auto", **kw)
            for (i, j), z in np.ndenumerate(v):
                ax.text(j, i, f"{z:.2f}" if row == 0 else f"{z:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if _luminance(im.cmap(im.norm(z))) < 0.5 else "black")
            ax.set(xticks=range(len(widths)), xticklabels=widths, yticks=range(len(alphas)),
                   yticklabels=[f"{a:g}" for a in alphas], xlabel="width n", ylabel=r"output scale $\alpha$",
                   title=f"{NAMES[p]}: " + (r"$\log_{10}$ NTK movement" if row == 0 else "test loss"))
        fig.colorbar(im, ax=grid[row, :2], label=label, shrink=0.9)
    ax = grid[0, 2]
    for p in ("ntp", "mup"):
        ax.plot(widths, move.sel(param=p).isel(alpha=a1).mean("seed"), "o-", color=COLORS[p],
                label=f"{NAMES[p]} (slope {fits[p + '_vs_width']['slope']:+.2f})")
    w = np.array(widths, float)
    ax.plot(w, move.sel(param="ntp").isel(alpha=a1).mean("seed").values[0] * (w / w[0]) ** -1.0, "k--", lw=1,
            label=r"$\propto n^{-1}$ (Dyer & Gur-Ari 2019)")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel=r"relative NTK movement $\|K_T - K_0\| / \|K_0\|$",
           title=rf"movement vs width at $\alpha$ = {alphas[a1]:g}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(v) for v in widths])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax = grid[1, 2]
    for p in ("ntp", "mup"):
        ax.plot(alphas, move.sel(param=p).isel(width=-1).mean("seed"), "o-", color=COLORS[p],
                label=NAMES[p] + (rf" (slope {fits['ntp_vs_alpha']['slope']:+.2f} for $\alpha \geq 1$)"
                                  if p == "ntp" else ""))
    a = np.array(alphas)
    ax.plot(a, move.sel(param="ntp").isel(width=-1).mean("seed").values[a1] * (a / alphas[a1]) ** -1.0, "k--",
            lw=1, label=r"$\propto 1/\alpha$ (Chizat et al. 2019)")
    ax.set(xscale="log", yscale="log", xlabel=r"output scale $\alpha$",
           ylabel=r"relative NTK movement $\|K_T - K_0\| / \|K_0\|$",
           title=rf"movement vs $\alpha$ at width {widths[-1]}")
    ax.set_xticks(alphas, [f"{v:g}" for v in alphas])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    for ax in grid[:, 2]:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Lazy vs rich, 2-layer tanh net, {steps} GD steps: under NTP the NTK freezes as width or alpha "
                 "grows, under muP it moves at every width (Chizat et al. 2019; Yang & Hu 2021)")
    return fig


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    x, y, xt, yt = data(seed)
    net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=1))
    widths = [64, 256, 1024] if quick else [64, 128, 256, 512, 1024, 2048, 4096]
    alphas = [0.3, 1.0, 3.0, 10.0] if quick else [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
    runs = []
    for p in (ow.NTP, ow.MUP.with_base_width(64)):
        ds = ow.train(net, (x, y), test=(xt, yt), widths=widths, lr=1.0, alpha=alphas, steps=200, seeds=4, param=p,
                      record_every=50, metrics={"ntk_movement": ow.measure.ntk_movement(x)})
        runs.append(ds.expand_dims(param=[p.name]))
    ds = xr.concat(runs, dim="param", combine_attrs="drop_conflicts")
    ds.attrs.update({"activation": "tanh", "seed": seed, "data": "sin target on the sphere, d=8, 32 train points"})
    ds.to_netcdf(out / "lazy_rich.nc")

    fits = _fits(ds)
    fig = figure(ds)
    fig.savefig(out / "lazy_rich.png", dpi=150)
    plt.close(fig)
    print(f"lazy-rich: NTK movement ~ width^{fits['ntp_vs_width']['slope']:.2f}±{fits['ntp_vs_width']['slope_se']:.2f} "
          f"(NTP), width^{fits['mup_vs_width']['slope']:.2f}±{fits['mup_vs_width']['slope_se']:.2f} (muP), "
          f"alpha^{fits['ntp_vs_alpha']['slope']:.2f}±{fits['ntp_vs_alpha']['slope_se']:.2f} (NTP, width {widths[-1]})")
    return {"widths": widths, "alphas": alphas, "fits": fits, "files": ["lazy_rich.nc", "lazy_rich.png", "summary.json"]}
