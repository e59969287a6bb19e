"""Coordinate check (Yang et al. 2022, Tensor Programs V, Sec. D.1): SP vs muP.

A 2-hidden-layer ReLU MLP on scikit-learn digits takes 3 Adam steps (lr 0.01)
at widths 64..2048. For every weight layer the mean |coordinate| of its
output (``size``) and of its change since initialisation (``delta``) is
recorded at steps 0..3. Theory (Tensor Programs IV/V): under muP (zero
readout initialisation, as TP V recommends) every curve is flat in width
(log-log slope 0); under standard practice with one learning rate the
hidden-to-hidden and readout updates grow like n.

SP's readout overshoots: at width 2048 its first Adam step moves it by 5x
what it moves at width 64 (update-size slope +1.2), and Adam's normalised
steps then pull it back (slope +0.64 at step 2, +0.14 at step 3 in the full
run), so a single step's slope understates the instability; the check is
that the slope exceeds 0.3 at some step.

The figure (:func:`figure`, laid out as Tensor Programs V's Fig. 5) plots
the same quantity, the update size ``delta``, for both parametrizations on
one shared log-log axis. Why ``delta`` and not the size: the *size* of SP's
output is not monotone in the update size. Its first steps pull the O(1)
random initial output towards the mostly-zero one-hot targets, faster at
larger width, so |f| first shrinks with width and only later overshoots
(measured at lr 0.003: size slope -0.32 at step 1, while the update size
grows). The update size is what Tensor Programs IV's exponents describe.
muP's sizes are checked flat as well (``mup_flat``) but not plotted.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import digits

__all__ = ["figure", "run", "LR", "LAYERS", "ROWS"]

LR = 0.01


LAYERS = ("input layer", "hidden layer", "readout")
ROWS = (("sp", "SP"), ("mup", "muP"))


def figure(ds):
    """The coordinate-check figure of a ``coord_check`` Dataset (Yang et al. 2022, TP V Fig. 5 layout).

    One panel per (parametrization, layer), rows SP then muP: the seed-mean coordinate change
    ``mean |h_t - h_0|`` against width for steps t = 1..3, the *same* quantity in every panel, on one
    shared log-log axis, so that muP's flat lines and SP's growing ones read at a glance. Exact zeros
    (muP with a zero readout moves only the readout at step 1) are left off the log axis.
    """
    import matplotlib.pyplot as plt

    widths = [int(w) for w in ds.width.values]
    steps = [int(t) for t in ds.step.values if t > 0]
    colors = {t: plt.cm.viridis((t - 1) / max(1, len(steps) - 1) * 0.9) for t in steps}
    fig, axes = plt.subplots(len(ROWS), len(LAYERS), figsize=(12, 6.5), sharex=True, sharey=True,
                             constrained_layout=True, squeeze=False)
    for row, (p, name) in enumerate(ROWS):
        value = ds["delta"].sel(param=p).mean("seed")
        for layer, ax in enumerate(axes[row]):
            for t in steps:
                v = value.sel(step=t).isel(layer=layer).values
                ax.plot(widths, np.where(v > 0, v, np.nan), "o-", color=colors[t], label=f"step {t}")
            slopes = ds["slope_delta"].sel(param=p).isel(layer=layer).sel(step=steps).values
            ax.set_title(f"{name}: {LAYERS[layer]}\nslope vs width, steps {','.join(map(str, steps))}: "
                         + " ".join("--" if np.isnan(s) else f"{round(s, 2) + 0.0:+.2f}" for s in slopes), fontsize=9)
            ax.grid(True, which="major", alpha=0.3)
            if row == len(ROWS) - 1:
                ax.set_xlabel("width n")
            if layer == 0:
                ax.set_ylabel(f"{name}: mean $|h_t - h_0|$ (per coordinate)")
    ax = axes[0, 0]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    v = ds["delta"].mean("seed").values
    v = v[v > 0]
    ax.set_ylim(10.0 ** np.floor(np.log10(v.min())), 10.0 ** np.ceil(np.log10(v.max())))  # whole decades
    ax.yaxis.set_minor_formatter(plt.NullFormatter())
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="after t\nAdam steps")
    fig.suptitle(f"Coordinate check, Adam lr={ds.attrs['lr']:g}: change of each layer's output coordinates vs width "
                 "- flat under muP, growing under SP (Yang et al. 2022, Fig. 5)\n"
                 "muP starts from a zero readout, so its step 1 moves only the readout "
                 "(the other layers' change is 0, off the log axis: slope --)", fontsize=10)
    return fig


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    x, y, _, _ = digits(seed)
    x, y = x[:64], np.eye(10)[y[:64]]
    net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=10))
    widths = [64, 128, 256, 512] if quick else [64, 128, 256, 512, 1024, 2048]
    results = {}
    for p in (ow.SP, dataclasses.replace(ow.MUP, zero_readout=True)):
        results[p.name] = ow.coord_check(net, (x, y), widths=widths, param=p.with_base_width(64), lr=LR,
                                         optimizer="adam", steps=3, seeds=16)
    ds = xr.concat([results["sp"], results["mup"]], dim="param").assign_coords(param=["sp", "mup"])
    ds.attrs = {"lr": LR, "optimizer": "adam", "base_width": 64, "mup_zero_readout": 1,
                "data": "sklearn digits, 64 points, one-hot MSE"}
    ds.to_netcdf(out / "coord_check.nc")

    fig = figure(ds)
    fig.savefig(out / "coord_check.png", dpi=150)
    plt.close(fig)

    def step3(p, var):
        return [float(v) for v in ds[f"slope_{var}"].sel(param=p, step=3).values]

    slopes = {"mup_size": step3("mup", "size"), "mup_delta": step3("mup", "delta"), "sp_size": step3("sp", "size"),
              "sp_delta": step3("sp", "delta")}
    flat = bool(np.all(np.abs(ds.slope_size.sel(param="mup").isel(step=slice(1, None)).values) < 0.1))
    sp_readout = [float(v) for v in ds.slope_delta.sel(param="sp").isel(step=slice(1, None), layer=-1).values]
    grows = max(sp_readout) > 0.3
    print(f"coord-check: step-3 log-log slopes vs width (input, hidden, readout): muP sizes "
          f"{np.round(slopes['mup_size'], 3)}, SP update sizes {np.round(slopes['sp_delta'], 3)}; SP readout update "
          f"slope at steps 1..3 {np.round(sp_readout, 3)}; muP flat within 0.1 at every step: {flat}; "
          f"SP readout blows up (slope > 0.3 at some step): {grows}")
    return {"widths": widths, "step3_slopes": slopes, "sp_readout_update_slopes": sp_readout, "mup_flat": flat,
            "sp_readout_update_grows": bool(grows), "files": ["coord_check.nc", "coord_check.png", "summary.json"]}
