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


def data(seed: int, n_train: int = 32, n_test: int = 128, d: int = 8):
    x = sphere_data(n_train + n_test, d, seed)
    u = np.random.default_rng(seed + 1).standard_normal(d)
    y = np.sin(1.5 * x @ u / np.linalg.norm(u))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


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

    move = ds.ntk_movement.isel(step=-1, lr=0)  # (param, width, seed, alpha)
    a1 = alphas.index(1.0)
    fits = {
        "ntp_vs_width": fit_loglog(np.array(widths, float), move.sel(param="ntp").isel(alpha=a1).values),
        "mup_vs_width": fit_loglog(np.array(widths, float), move.sel(param="mup").isel(alpha=a1).values),
        "ntp_vs_alpha": fit_loglog(np.array(alphas[a1:]), move.sel(param="ntp", width=widths[-1]).values.T[a1:]),
    }
    fig, grid_axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    axes = [grid_axes[0, 0], grid_axes[0, 1], grid_axes[0, 2], grid_axes[1, 2]]
    test_loss = ds.test_loss.isel(step=-1, lr=0).mean("seed")
    for col, p in enumerate(("ntp", "mup")):
        for row, (value, title, kw) in enumerate((
                (np.log10(move.sel(param=p).mean("seed").values), "log10 NTK movement", dict(vmin=-4, vmax=0.5)),
                (test_loss.sel(param=p).values, "test loss after 200 steps", {}))):
            ax = grid_axes[row, col]
            im = ax.imshow(value.T, origin="lower", aspect="auto", cmap="magma", **kw)
            ax.set(xticks=range(len(widths)), xticklabels=widths, yticks=range(len(alphas)), yticklabels=alphas,
                   xlabel="width n", ylabel="output scale alpha", title=f"{p.upper()}: {title}")
            fig.colorbar(im, ax=ax)
    for p, color in (("ntp", "C0"), ("mup", "C3")):
        axes[2].loglog(widths, move.sel(param=p).isel(alpha=a1).mean("seed"), "o-", color=color,
                       label=f"{p.upper()} (slope {fits[p + '_vs_width']['slope']:+.2f})")
    w = np.array(widths, float)
    axes[2].loglog(w, move.sel(param="ntp").isel(alpha=a1).mean("seed").values[0] * (w / w[0]) ** -1.0, "k--",
                   lw=1, label="n^-1 (Dyer & Gur-Ari)")
    axes[2].set(xlabel="width n", ylabel="relative NTK movement", title="alpha = 1")
    axes[2].legend(fontsize=8)
    for p, color in (("ntp", "C0"), ("mup", "C3")):
        axes[3].loglog(alphas, move.sel(param=p, width=widths[-1]).mean("seed"), "o-", color=color, label=p.upper())
    a = np.array(alphas)
    axes[3].loglog(a, move.sel(param="ntp", width=widths[-1]).mean("seed").values[a1] * (a / 1.0) ** -1.0, "k--",
                   lw=1, label="1/alpha (Chizat et al.)")
    axes[3].set(xlabel="output scale alpha", ylabel="relative NTK movement", title=f"width {widths[-1]}")
    axes[3].legend(fontsize=8)
    fig.suptitle("Lazy vs rich: the kernel freezes with width under NTP and with alpha; muP keeps learning features")
    fig.savefig(out / "lazy_rich.png", dpi=150)
    plt.close(fig)
    print(f"lazy-rich: NTK movement ~ width^{fits['ntp_vs_width']['slope']:.2f}±{fits['ntp_vs_width']['slope_se']:.2f} "
          f"(NTP), width^{fits['mup_vs_width']['slope']:.2f}±{fits['mup_vs_width']['slope_se']:.2f} (muP), "
          f"alpha^{fits['ntp_vs_alpha']['slope']:.2f}±{fits['ntp_vs_alpha']['slope_se']:.2f} (NTP, width {widths[-1]})")
    return {"widths": widths, "alphas": alphas, "fits": fits, "files": ["lazy_rich.nc", "lazy_rich.png", "summary.json"]}
