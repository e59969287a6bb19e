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

Why ``delta`` for SP: the *size* of SP's output is not monotone in the
update size. Its first steps pull the O(1) random initial output towards the
mostly-zero one-hot targets, faster at larger width, so |f| first shrinks
with width and only later overshoots (measured at lr 0.003: size slope
-0.32 at step 1, while the update size grows). The update size is what
Tensor Programs IV's exponents describe.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import digits

LR = 0.01


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

    names = ["input layer", "hidden layer", "readout"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True, constrained_layout=True)
    rows = (("mup", "size", "mean |h_t|"), ("sp", "delta", "mean |h_t - h_0|"))
    for row, (p, var, label) in enumerate(rows):
        value = ds[var].sel(param=p).mean("seed")
        for layer, ax in enumerate(axes[row]):
            for t in range(0 if var == "size" else 1, 4):
                ax.plot(widths, value.isel(layer=layer, step=t), "o-", color=plt.cm.viridis(t / 3), label=f"step {t}")
            slope = float(ds[f"slope_{var}"].sel(param=p, step=3, layer=layer))
            ax.set(xscale="log", yscale="log", title=f"{p.upper()}: {names[layer]} (step-3 slope {slope:+.2f})")
            if row == 1:
                ax.set_xlabel("width n")
            if layer == 0:
                ax.set_ylabel(label)
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.suptitle(f"Coordinate check, Adam lr={LR}: muP activations flat in width; SP updates grow (Yang et al. 2022)")
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
