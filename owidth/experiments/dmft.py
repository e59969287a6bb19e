"""Infinite-width feature learning: DMFT vs muP networks of growing width (Bordelon & Pehlevan 2022).

Deep linear networks (2 hidden layers, exact deterministic DMFT) are trained by full-batch
gradient descent at richness gamma0 in {0 (lazy), 0.5, 1, 2}; muP networks of widths
128..4096 (ensembles of seeds) trained the same way (``ow.train(..., param=ow.MUP,
gamma0=...)``) approach the DMFT: the RMS distance of their outputs over the whole
trajectory falls like ``width^-1/2``, and their final feature kernels approach the DMFT's.
``gamma0 = 0`` is run at ``gamma0 = 1e-4`` and compared with the NTK gradient-descent
prediction of :func:`ow.predict.gradient_descent`. A 2-hidden-layer tanh network repeats the
width comparison against the Monte Carlo DMFT, whose error bars come from independent replicas.

Theory: Bordelon & Pehlevan (NeurIPS 2022), the self-consistent equations for the kernels
``Phi^l(t, s)``, ``G^l(t, s)``; larger gamma0 learns features faster: the loss falls faster
and the NTK aligns more with the target (their Figs. 2-3).
"""

from __future__ import annotations

import pathlib
import time

import numpy as np

import owidth as ow
from owidth.experiments._common import fit_loglog

__all__ = ["data", "alignment", "run", "GAMMAS", "LAZY"]

GAMMAS = (0.0, 0.5, 1.0, 2.0)
LAZY = 1e-4  # gamma0 used for the "0" (lazy) column


def data(seed: int, p: int, d: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, d))
    x = x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(d)
    u = rng.standard_normal(d)
    y = np.sin(x @ u / np.linalg.norm(u) + 0.3)
    return x, y


def alignment(k, y):
    """Kernel-target alignment ``y^T K y / (||K||_F ||y||^2)`` over a leading time axis."""
    return np.einsum("i,tij,j->t", y, k, y) / (np.linalg.norm(k, axis=(1, 2)) * (y @ y))


def _finite(net, x, y, *, widths, seeds, gamma0, lr, steps):
    """Outputs (width, seed, step, point) and final last-layer feature kernels (width, seed, P, P)."""
    import jax

    outs, kernels = [], []
    for w in widths:
        ds, params = ow.train(net, (x, y), test=(x, y), widths=w, lr=lr, steps=steps, param=ow.MUP, gamma0=gamma0,
                              seeds=seeds, record_every=1, record_outputs=True, return_params=True,
                              progress_bar=False)
        outs.append(ds.test_output.values[0, :, 0, 0, :, :, 0])
        model = ow.finite(net, width=w, param=ow.MUP)
        ks = []
        for s in range(seeds):
            p_s = jax.tree.map(lambda a, s=s: a[s, 0, 0], params[w])
            feats = np.asarray(model.intermediates(p_s, x).features)  # phi(h^L), the readout's input
            ks.append(feats @ feats.T / w)
        kernels.append(ks)
    return np.array(outs), np.array(kernels)


def _distance(f_net, f_dmft):
    """RMS distance over (step, point) per (width, seed)."""
    return np.sqrt(((f_net - f_dmft[None, None]) ** 2).mean((-2, -1)))


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import jax

    with jax.enable_x64(True):  # the lazy-limit check is at 1e-6 relative; outputs are O(gamma0) / gamma0
        return _run(out=out, quick=quick, seed=seed)


def _run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    lin = ow.serial(ow.Dense(), ow.Identity(), ow.Dense(), ow.Identity(), ow.Dense(out=1))
    tanh = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(), ow.Tanh(), ow.Dense(out=1))
    widths = [128, 512, 2048] if quick else [128, 256, 512, 1024, 2048, 4096]
    seeds = 4 if quick else 6
    p, d, steps, lr = (8, 4, 12, 0.3) if quick else (12, 6, 30, 0.3)
    x, y = data(seed, p, d)
    t0 = time.perf_counter()

    # ---- deep linear: exact DMFT for every gamma0, finite muP ensembles -------------------------
    f_dmft, loss_dmft, phi_dmft, ntk_dmft, f_net, phi_net = [], [], [], [], [], []
    solve_s = []
    for g in GAMMAS:
        t1 = time.perf_counter()
        r = ow.dmft(lin, x, y, gamma0=g or LAZY, lr=lr, steps=steps)
        solve_s.append(time.perf_counter() - t1)
        f_dmft.append(r.f_train)
        loss_dmft.append(r.train_loss)
        phi_dmft.append(r.phi[-1, -1])
        ntk_dmft.append(r.ntk)
        fo, ko = _finite(lin, x, y, widths=widths, seeds=seeds, gamma0=g or LAZY, lr=lr, steps=steps)
        f_net.append(fo)
        phi_net.append(ko)
    f_dmft, loss_dmft, phi_dmft, ntk_dmft = map(np.array, (f_dmft, loss_dmft, phi_dmft, ntk_dmft))
    f_net, phi_net = np.array(f_net), np.array(phi_net)  # (G, W, S, step, P), (G, W, S, P, P)
    k = ow.kernel(lin, x)
    lazy = np.asarray(ow.predict.gradient_descent(k.ntk, None, y, lr=lr, steps=np.arange(steps + 1)).mean_train)
    lazy_err = float(np.max(np.abs(f_dmft[0] - lazy)) / np.max(np.abs(lazy)))
    dist = np.array([_distance(f_net[i], f_dmft[i]) for i in range(len(GAMMAS))])  # (G, W, S)
    kdist = np.linalg.norm(phi_net - phi_dmft[:, None, None], axis=(-2, -1)) / np.linalg.norm(
        phi_dmft, axis=(-2, -1))[:, None, None]
    fits = {f"linear_gamma0_{g}": fit_loglog(np.array(widths, float), dist[i], seed=seed) for i, g in enumerate(GAMMAS)}
    kfits = {f"linear_gamma0_{g}": fit_loglog(np.array(widths, float), kdist[i], seed=seed)
             for i, g in enumerate(GAMMAS) if g > 0}
    align = np.array([alignment(ntk_dmft[i], y) for i in range(len(GAMMAS))])  # (G, step)

    # ---- tanh: Monte Carlo DMFT at gamma0 = 1 ----------------------------------------------------
    gt = 1.0
    pt, tt = (6, 8) if quick else (p, steps)  # full run: the deep-linear problem itself
    xt_, yt_ = x[:pt], y[:pt]
    mc = dict(samples=500, response_samples=64, replicas=4) if quick else dict(samples=4000, response_samples=128,
                                                                               replicas=16)
    t1 = time.perf_counter()
    rt = ow.dmft(tanh, xt_, yt_, gamma0=gt, lr=0.5, steps=tt, seed=seed, **mc)
    tanh_solve_s = time.perf_counter() - t1
    ft_net, _ = _finite(tanh, xt_, yt_, widths=widths, seeds=seeds, gamma0=gt, lr=0.5, steps=tt)
    tdist = _distance(ft_net, rt.f_train)
    fits["tanh_gamma0_1.0"] = fit_loglog(np.array(widths, float), tdist, seed=seed)
    # the per-seed spread alone (no DMFT in it): finite-width fluctuations ~ width^-1/2
    tfluct = np.sqrt(ft_net.var(1, ddof=1).mean((-2, -1)))  # (W,)
    tfluct_slope = float(np.polyfit(np.log(widths), np.log(tfluct), 1)[0])
    mean_net = ft_net[-1].mean(0)
    z = (mean_net - rt.f_train) / np.sqrt(rt.f_train_se**2 + ft_net[-1].var(0, ddof=1) / seeds)
    tanh_z = float(np.max(np.abs(z[1:])))  # step 0 is exactly 0 on both sides (centred outputs)

    ds = xr.Dataset(
        {
            "f_dmft": (("gamma0", "step", "train"), f_dmft),
            "loss_dmft": (("gamma0", "step"), loss_dmft),
            "f_net": (("gamma0", "width", "seed", "step", "train"), f_net),
            "distance": (("gamma0", "width", "seed"), dist),
            "phi_final_dmft": (("gamma0", "train", "train2"), phi_dmft),
            "phi_final_net": (("gamma0", "width", "seed", "train", "train2"), phi_net),
            "kernel_distance": (("gamma0", "width", "seed"), kdist),
            "ntk_alignment": (("gamma0", "step"), align),
            "f_ntk_prediction": (("step", "train"), lazy),
            "y_train": (("train",), y),
            "tanh_f_dmft": (("tanh_step", "tanh_train"), rt.f_train),
            "tanh_f_dmft_se": (("tanh_step", "tanh_train"), rt.f_train_se),
            "tanh_f_net": (("width", "seed", "tanh_step", "tanh_train"), ft_net),
            "tanh_distance": (("width", "seed"), tdist),
        },
        coords={"gamma0": list(GAMMAS), "width": widths, "seed": np.arange(seeds), "step": np.arange(steps + 1),
                "tanh_step": np.arange(tt + 1)},
        attrs={"lr": lr, "lazy_gamma0": LAZY, "seed": seed, "depth": 2, "tanh_lr": 0.5,
               "tanh_samples": mc["samples"], "tanh_replicas": mc["replicas"]},
    )
    ds.to_netcdf(out / "dmft.nc")

    fig, ax = plt.subplots(2, 3, figsize=(16, 9), constrained_layout=True)
    colors = ["k", "C0", "C1", "C3"]
    for i, g in enumerate(GAMMAS):
        ax[0, 0].semilogy(loss_dmft[i], "-", color=colors[i], label=f"DMFT gamma0={g:g}")
        net_loss = 0.5 * ((f_net[i, -1] - y) ** 2).mean(-1)
        ax[0, 0].semilogy(net_loss.mean(0), "o", ms=3, color=colors[i], alpha=0.6)
    ax[0, 0].semilogy(0.5 * ((lazy - y) ** 2).mean(-1), "k:", label="NTK gradient descent")
    ax[0, 0].set(xlabel="step", ylabel="train loss", title=f"deep linear: DMFT (lines) vs width {widths[-1]} (dots)")
    ax[0, 0].legend(fontsize=7)
    w = np.array(widths, float)
    for i, g in enumerate(GAMMAS):
        key = f"linear_gamma0_{g}"
        ax[0, 1].loglog(w, dist[i].mean(1), "o-", color=colors[i],
                        label=f"linear gamma0={g:g} ({fits[key]['slope']:+.2f})")
    ax[0, 1].loglog(w, tdist.mean(1), "s--", color="C2",
                    label=f"tanh gamma0=1 ({fits['tanh_gamma0_1.0']['slope']:+.2f})")
    ax[0, 1].loglog(w, tfluct, "^:", color="C2", alpha=0.7, label=f"tanh per-seed spread ({tfluct_slope:+.2f})")
    ax[0, 1].loglog(w, dist[2].mean(1)[0] * (w / w[0]) ** -0.5, "k:", lw=1, label="width^-1/2")
    ax[0, 1].set(xlabel="width", ylabel="RMS |f_net - f_DMFT| over the trajectory", title="distance to the DMFT")
    ax[0, 1].set_xticks(widths, [str(v) for v in widths], minor=False)
    ax[0, 1].set_xticks([], minor=True)
    ax[0, 1].legend(fontsize=7)
    for i, g in enumerate(GAMMAS):
        ax[0, 2].plot(align[i], color=colors[i], label=f"gamma0={g:g}")
    ax[0, 2].set(xlabel="step", ylabel="NTK-target alignment", title="richer training aligns the kernel with y")
    ax[0, 2].legend(fontsize=7)
    gi = GAMMAS.index(2.0)
    vmax = np.abs(phi_dmft[gi]).max()
    ax[1, 0].imshow(phi_dmft[gi], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax[1, 0].set(title="DMFT final feature kernel Phi^2(T, T), gamma0=2", xlabel="train point", ylabel="train point")
    im = ax[1, 1].imshow(phi_net[gi, -1].mean(0), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax[1, 1].set(title=f"same, width {widths[-1]} muP nets (mean over {seeds} seeds)", xlabel="train point")
    fig.colorbar(im, ax=ax[1, :2], shrink=0.8, label="Phi^2(T, T) (one colour scale for both)")
    band = 2 * rt.f_train_se
    for j in range(min(3, pt)):
        c = f"C{4 + j}"  # not C0-C3, which are the gamma0 colours of the other panels
        ax[1, 2].plot(rt.f_train[:, j], color=c, label=f"DMFT point {j}")
        ax[1, 2].fill_between(np.arange(tt + 1), rt.f_train[:, j] - band[:, j], rt.f_train[:, j] + band[:, j],
                              color=c, alpha=0.3)
        ax[1, 2].plot(ft_net[-1, :, :, j].mean(0), "o", ms=3, color=c)
    ax[1, 2].set(xlabel="step", ylabel="output", title=f"tanh: MC DMFT (+-2 SE) vs width {widths[-1]} (dots)")
    ax[1, 2].legend(fontsize=7)
    fig.suptitle("Infinite-width feature learning (Bordelon & Pehlevan 2022): muP networks approach the DMFT")
    fig.savefig(out / "dmft.png", dpi=130)
    plt.close(fig)

    loss_at = {f"{g:g}": float(loss_dmft[i, steps // 2]) for i, g in enumerate(GAMMAS)}
    gain = {f"{g:g}": float(align[i, -1] - align[i, 0]) for i, g in enumerate(GAMMAS)}
    print(f"dmft: lazy DMFT vs NTK gradient descent: {lazy_err:.2e} relative; distance slopes "
          + ", ".join(f"{k} {v['slope']:+.2f}±{v['slope_se']:.2f}" for k, v in fits.items())
          + f"; tanh per-seed fluctuation slope {tfluct_slope:+.2f}; tanh mean-output |z| max {tanh_z:.2f}")
    return {
        "widths": widths, "gammas": list(GAMMAS), "lazy_relative_error": lazy_err, "fits": fits,
        "kernel_fits": kfits, "loss_at_half": loss_at, "alignment_gain": gain, "tanh_max_abs_z": tanh_z,
        "tanh_f_se_max": float(rt.f_train_se.max()), "tanh_fluctuation_slope": tfluct_slope,
        "tanh_problem": {"P": pt, "T": tt, **mc}, "solve_seconds_linear": solve_s,
        "solve_seconds_tanh": tanh_solve_s, "total_seconds": time.perf_counter() - t0,
        "files": ["dmft.nc", "dmft.png", "summary.json"],
    }
