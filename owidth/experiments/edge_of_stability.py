"""Edge of stability: full-batch GD's sharpness rises to ``2 / lr`` and hovers there (Cohen et al. 2021).

Theory. On a quadratic with top Hessian eigenvalue ``S`` (the sharpness), gradient descent at learning rate
``eta`` is stable iff ``S < 2 / eta``. Cohen et al. (2021) found that full-batch GD on neural networks first
sharpens (progressive sharpening: ``S`` grows while the loss falls) until ``S`` reaches ``2 / eta``, and then
does not diverge but operates at the edge of stability: ``S`` hovers at (or just above) ``2 / eta`` while the loss
keeps falling non-monotonically over long times. Which value ``S`` settles at is set by the learning rate, not
by the network: runs at different ``eta`` plateau at their own ``2 / eta``. A run whose ``2 / eta`` lies above
the sharpness GD reaches at small learning rates (gradient flow) never gets there and trains stably.

Setup. Two-hidden-layer tanh MLPs (``Dense - Tanh - Dense - Tanh - Dense(out=10)``), uncentred (the network as
initialised: ``ow.train(center=False)``), trained by full-batch GD on the one-hot MSE of 256 scikit-learn digits
(features centred, each input rescaled to norm ``sqrt 64``) under SP, NTP and muP (base width 64). muP gives the
input and output weights SGD learning rates ``eta (n / n0)``: its step is ``-eta D grad`` with a diagonal ``D``,
plain GD on ``u = D^-1/2 w``, so the sharpness that ``2 / eta`` bounds is that of ``D^1/2 H D^1/2``
(``ow.measure.sharpness(preconditioned=True)``; under SP, NTP and muP at its base width ``D = 1`` and it is the
Hessian's top eigenvalue). For each (parametrization, width) the sharpness at initialisation ``S_0`` is computed
at the very initialisation ``ow.train`` uses for the seed, and the learning rates are ``eta = 2 / (k S_0)``:
``2 / eta`` is ``k`` times the initial sharpness, so each run must sharpen by a factor ``k`` to reach the edge.
The sharpness (Lanczos, 20 steps) is recorded every 20 steps.

Check, per run: it reaches the edge (``S eta / 2 >= 0.95`` at some record; every ``k`` is >= 1.1, so no run
starts there) and afterwards ``|S eta / 2 - 1| <= 0.1`` at least at half of the remaining records.
``eos_ok``: every run that reaches the edge stays there in that sense, and under each parametrization at least
three learning rates pass at some width.

Measured (float32, seed 0, CPU). Full run (widths 32, 64, 128; ``k`` = 1.15, 1.25, 1.4, 2, 3; 3000 steps; 312 s on
2 shared cores): under SP three of five learning rates reach the edge at every width (first at steps 200, 300, 540
at width 32; 200, 320, 600 at 64; 300, 540, 1620 at 128) and then stay within 10% of ``2 / eta`` at 99-100% of
the later records, ending at ``S eta / 2`` = 0.977..1.010; ``k`` = 2 and 3 do not (their sharpness ends 1.3-1.8
times ``S_0``, below ``2 / eta``). NTP: 1, 3, 0 learning rates at the edge at widths 32, 64, 128; muP: 0, 3, 3. The
width-128 contrast is the lazy limit at work: under NTP the sharpness at ``k = 1.15`` ends at 0.95 of ``2 / eta``
(progressive sharpening weakens as the kernel freezes), under muP it reaches the edge at step 180 and stays.
At width 64 (muP's base width) muP and NTP are the same training and agree record for record. Every run that
reached the edge stayed there; none diverged. Quick run (width 64, ``k`` = 1.15, 1.25, 1.4, 2; 1200 steps; 33 s
in the test suite at -O0, 27 s on a quieter machine): three of four learning rates at the edge under each parametrization, reached at steps
200, 320, 600 (SP) and 220, 360, 920 (NTP = muP); ``S eta / 2`` at the end 1.024, 1.001, 0.976 (SP) and 0.998,
1.006, 0.972 (NTP); ``k = 2`` ends at 0.71 (SP) and 0.67 (NTP).

References:
  - Cohen, Kaur, Li, Kolter & Talwalkar 2021, Gradient Descent on Neural Networks Typically Occurs at the Edge
    of Stability. <https://arxiv.org/abs/2103.00065>
  - Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020, The large learning rate phase of deep learning: the
    catapult mechanism. <https://arxiv.org/abs/2003.02218>
  - Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks (muP).
    <https://arxiv.org/abs/2011.14522>
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import centred_digits

__all__ = ["run", "data", "initial_sharpness", "edge", "NET", "BASE", "REACH", "BAND", "LANCZOS_ITERS"]

BASE = 64  # muP's base width
REACH = 0.95  # a run has reached the edge once S eta / 2 >= REACH
BAND = 0.1  # ... and is at the edge while |S eta / 2 - 1| <= BAND
LANCZOS_ITERS = 20
NET = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(), ow.Tanh(), ow.Dense(out=10))


def data(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digits, features centred, each input rescaled to norm ``sqrt 64``; one-hot targets."""
    x, labels = centred_digits(seed, n)
    return x, np.eye(10, dtype=np.float32)[labels]


def _params() -> dict:
    return {"sp": ow.SP, "ntp": ow.NTP, "mup": ow.MUP.with_base_width(BASE)}


def initial_sharpness(param, width: int, seed: int, x, y) -> float:
    """The (preconditioned) sharpness that ``ow.train(..., seeds=[seed], center=False)`` records at step 0: the
    metric of :func:`run` on the same initialisation (``jax.random.key(seed)`` split into the init and data keys)."""
    import jax

    model = ow.finite(NET, width=width, param=param)
    k_init, _ = jax.random.split(jax.random.key(seed))
    params = model.init(k_init, x)
    snap = ow.Snapshot(apply=model.apply, params=params, params0=params, x_train=x, y_train=y, x_test=None,
                       y_test=None, alpha=1.0, model=model)
    return float(_metric()(snap))


def _metric():
    return ow.measure.sharpness(iters=LANCZOS_ITERS, preconditioned=True)


def edge(ratio: np.ndarray) -> tuple[int, float]:
    """For one run's ``S eta / 2`` over records: the first record at the edge (``>= REACH``; -1 if never) and
    the fraction of the records from there on within ``BAND`` of 1 (NaN if never reached)."""
    hit = np.flatnonzero(ratio >= REACH)
    if hit.size == 0:
        return -1, float("nan")
    rest = ratio[hit[0]:]
    return int(hit[0]), float(np.mean(np.abs(rest - 1) <= BAND))


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    n = 256
    x, y = data(seed, n)
    widths = [64] if quick else [32, 64, 128]
    ks = np.array([1.15, 1.25, 1.4, 2.0]) if quick else np.array([1.15, 1.25, 1.4, 2.0, 3.0])
    steps, every = (1200, 20) if quick else (3000, 20)
    params = _params()
    names = list(params)
    shape = (len(names), len(widths), len(ks))
    records = steps // every + 1
    sharp = np.full(shape + (records,), np.nan)
    loss = np.full_like(sharp, np.nan)
    s0 = np.zeros(shape[:2])
    lrs = np.zeros(shape)
    status = np.empty(shape, dtype=object)
    for a, name in enumerate(names):
        for b, width in enumerate(widths):
            s0[a, b] = initial_sharpness(params[name], width, seed, x, y)
            lrs[a, b] = 2 / (ks * s0[a, b])
            ds = ow.train(NET, (x, y), widths=width, lr=list(lrs[a, b]), steps=steps, record_every=every,
                          seeds=[seed], param=params[name], center=False, progress_bar=False,
                          metrics={"sharpness": _metric()})
            one = ds.isel(width=0, seed=0, alpha=0)
            sharp[a, b], loss[a, b] = one.sharpness.values, one.train_loss.values
            status[a, b] = one.status.values
    ratio = sharp * lrs[..., None] / 2
    reach = np.zeros(shape, int)
    frac = np.zeros(shape)
    for idx in np.ndindex(*shape):
        reach[idx], frac[idx] = edge(ratio[idx])
    passed = (reach >= 0) & (frac >= 0.5)
    dims = ("param", "width", "k")
    step = np.arange(records) * every
    res = xr.Dataset(
        {"sharpness": (dims + ("step",), sharp), "train_loss": (dims + ("step",), loss),
         "sharpness0": (dims[:2], s0), "lr": (dims, lrs), "status": (dims, status.astype(str)),
         "reach_step": (dims, np.where(reach >= 0, reach * every, -1)), "edge_fraction": (dims, frac),
         "at_edge": (dims, passed)},
        coords={"param": names, "width": widths, "k": ks, "step": step},
        attrs={"net": "Dense - Tanh - Dense - Tanh - Dense(out=10)", "optimizer": "sgd (full batch)",
               "loss": "mse, uncentred", "steps": steps, "record_every": every, "seed": seed, "base_width": BASE,
               "data": f"sklearn digits, {n} points, centred features, inputs of norm sqrt(64), one-hot",
               "k": "2 / lr in units of the initial sharpness sharpness0", "lanczos_iters": LANCZOS_ITERS,
               "reach": REACH, "band": BAND})
    res.to_netcdf(out / "edge_of_stability.nc")

    counts = passed.sum(axis=-1)  # (param, width)
    stays = bool(np.all(frac[reach >= 0] >= 0.5))  # every run that reached the edge stayed there
    per_param = {name: bool(counts[a].max() >= 3) for a, name in enumerate(names)}
    eos_ok = stays and all(per_param.values())
    # progressive sharpening at the smallest learning rate (largest k, never at the edge): max_t S(t) / S_0
    sharpening = sharp[..., -1, :].max(axis=-1) / s0  # (param, width)

    fig, axes = plt.subplots(2, len(names), figsize=(5.2 * len(names), 8.4), constrained_layout=True,
                             squeeze=False)
    iw = len(widths) - 1
    for a, name in enumerate(names):
        ax, bx = axes[0, a], axes[1, a]
        for c, k in enumerate(ks):
            color = plt.cm.viridis(c / max(1, len(ks) - 1))
            ax.plot(step, sharp[a, iw, c], color=color, lw=1.2, label=f"2/lr = {k:g} S0")
            ax.axhline(2 / lrs[a, iw, c], color=color, lw=0.8, ls="--")
            bx.plot(step, loss[a, iw, c], color=color, lw=1.0)
        ax.set(xlabel="step", ylabel="sharpness (top Hessian eigenvalue)",
               title=f"{name}, width {widths[iw]}: {counts[a, iw]} of {len(ks)} lrs at the edge")
        ax.legend(fontsize=7)
        bx.set(yscale="log", xlabel="step", ylabel="train loss")
        for ax_ in (ax, bx):
            ax_.grid(True, alpha=0.3)
    fig.suptitle("Edge of stability: full-batch GD sharpens until the sharpness reaches 2/lr (dashed) and then hovers "
                 "there, while the loss keeps falling (Cohen et al. 2021)", fontsize=10)
    fig.savefig(out / "edge_of_stability.png", dpi=150)
    plt.close(fig)
    if len(widths) > 1:  # sharpness relative to 2/lr, every width, one panel per parametrization
        fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), constrained_layout=True)
        for a, name in enumerate(names):
            ax = axes[a]
            for b, w in enumerate(widths):
                for c, k in enumerate(ks):
                    ax.plot(step, ratio[a, b, c], color=plt.cm.plasma(0.85 * b / (len(widths) - 1)), lw=0.9,
                            ls=("-", "--", ":", "-.", (0, (1, 3)))[c % 5],
                            label=f"n={w}" if c == 0 else None)
            ax.axhline(1, color="k", lw=0.8)
            ax.set(xlabel="step", ylabel="sharpness x lr / 2", title=f"{name}: every lr (line style) and width")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.savefig(out / "edge_of_stability_widths.png", dpi=130)
        plt.close(fig)

    table = {name: {str(w): {"sharpness0": float(s0[a, b]), "reach_step": [int(v) for v in res.reach_step[a, b]],
                             "edge_fraction": [None if np.isnan(v) else round(float(v), 3) for v in frac[a, b]],
                             "final_ratio": [round(float(v), 4) for v in ratio[a, b, :, -1]],
                             "at_edge": int(counts[a, b]), "sharpening_smallest_lr": round(float(sharpening[a, b]), 4),
                             "status": [str(v) for v in status[a, b]]}
                    for b, w in enumerate(widths)} for a, name in enumerate(names)}
    print(f"edge-of-stability: lrs with 2/lr = k x initial sharpness, k = {ks.tolist()}; lrs at the edge (of "
          f"{len(ks)}) per param x width {widths}: " + ", ".join(f"{nm} {counts[a].tolist()}" for a, nm in
                                                                  enumerate(names)) + f"; every run at the edge stayed: {stays}; "
          f"max S/S0 at the smallest lr: " + ", ".join(f"{nm} {np.round(sharpening[a], 3).tolist()}" for a, nm in
                                                      enumerate(names)) + f"; eos ok: {eos_ok}")
    files = ["edge_of_stability.nc", "edge_of_stability.png", "summary.json"]
    if len(widths) > 1:
        files.insert(2, "edge_of_stability_widths.png")
    return {"widths": widths, "k": ks.tolist(), "steps": steps, "record_every": every, "n_train": n,
            "runs": table, "stays_at_edge": stays, "three_lrs_at_edge": per_param, "eos_ok": eos_ok, "files": files}
