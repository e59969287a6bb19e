"""The catapult mechanism: the three learning-rate phases of wide networks (Lewkowycz et al. 2020).

Theory. Full-batch gradient descent on the MSE ``(1/2N) sum_n (F(x_n) - y_n)^2`` of a wide network with
top NTK eigenvalue ``lambda`` (over ``N``: :func:`ow.measure.ntk_top`) multiplies the residual along the top
eigenvector by ``1 - eta lambda`` per step. Linearised (infinite width, NTP) training is stable iff
``eta < 2 / lambda_0``. At finite width the kernel moves, and Lewkowycz et al. (2020) found three phases in
``c = eta lambda_0 / 2``:

- lazy, ``c < 1``: the kernel stays at ``lambda_0`` (changes ``O(1/n)``) and the loss falls monotonically;
- catapult, ``1 < c < c_max``: the loss first grows exponentially (to ``O(n)``), which drives the top kernel
  eigenvalue down until ``eta < 2 / lambda``; then the loss falls and training converges in a flatter region
  with ``lambda_final < 2 / eta < lambda_0``. For their two-layer linear ``uv`` model ``c_max = 2``
  (``eta < 4 / lambda_0``); for ReLU networks they saw up to ``c ~ 6`` (``eta ~ 12 / lambda_0``);
- divergent, ``c > c_max``: the loss grows without bound.

Setup. One-hidden-layer ReLU networks under NTP (``w_std = sqrt 2``), centred (``F = f - f0``, so the loss
starts at ``sum y^2 / 2N = 0.5``), trained by full-batch GD for 200 steps on 64 scikit-learn digits (features
centred, each input rescaled to norm ``sqrt 64``) with parity targets ``+-1``. ``lambda_0`` is computed for
each (width, seed) at the very initialisation ``ow.train`` uses for that seed, and the learning rates are
``eta = 2 c / lambda_0`` for a grid of ``c``; the top NTK eigenvalue is recorded at every step. (With the raw
``[0, 1]`` digit pixels the kernel's top eigenvalue is a large constant mode, the ReLU units die beyond
``c ~ 16`` instead of diverging, and at width 2048 the lazy kernel still moves by 5-7%.)

Checks: every lazy member (``c < 1``) keeps ``lambda`` within 5% of ``lambda_0`` and its loss never rises above
the initial loss; every catapult member (``1 < c <= 1.6``) has a loss spike above the initial loss, converges
(final loss below 1% of the initial), and ends with ``lambda_final < lambda_0`` and ``lambda_final < 2 / eta``;
every member at ``c >= 2.2`` diverges.

Measured (float32, 200 steps, CPU). Full run (widths 512, 1024, 2048, 4096; seeds 0, 1, 2; 79 s): ``lambda_0``
= 0.366..0.381 across widths and seeds. Final ``lambda / lambda_0`` (seed mean) at ``c`` = 0.25..0.9: 1.0065-1.0077
(width 512), 1.0037-1.0042 (1024), 1.0025-1.0028 (2048), 1.0009-1.0011 (4096); the largest lazy change
``max_t |lambda / lambda_0 - 1|`` is 0.0099, 0.0051, 0.0039, 0.0013 (log-log slope -0.92 against width: the
``O(1/n)`` of the theory). At ``c`` = 1.1, 1.2, 1.4, 1.6 it is 0.815-0.822, 0.646-0.662, 0.374-0.398,
0.252-0.275 at every width, below ``1/c`` (= ``2 / (eta lambda_0)``): 0.909, 0.833, 0.714, 0.625. Peak losses at
``c`` = 1.1: 3.68, 7.55, 15.1, 29.6 and at ``c = 1.2``: 14.1, 28.6, 58.0, 114 (log-log slope +1.01 against
width: the ``O(n)`` of the theory), from the initial 0.5; final losses 1.2e-6..4.0e-3 of the initial. At ``c = 1.8``
some seeds converge and some diverge (all three converge at width 1024, none at 512); every member at
``c`` = 2.2 and 3 diverges. The measured ``c_max``, 1.6-1.8, sits just below the ``uv`` model's 2. Quick run
(width 1024, seeds 0 and 1; 15 s): the same phases, ``lambda_final / lambda_0`` = 1.003-1.004 (lazy), 0.8155,
0.647, 0.377, 0.241, 0.281 at ``c`` = 1.1..1.8.

References:
  - Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020, The large learning rate phase of deep learning:
    the catapult mechanism. <https://arxiv.org/abs/2003.02218>
  - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks.
    <https://arxiv.org/abs/1806.07572>
  - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent.
    <https://arxiv.org/abs/1902.06720>
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import centred_digits, loglog_slope

__all__ = ["run", "data", "lambda0", "phases", "NET", "N_TRAIN", "STEPS", "LAZY_TOL", "C_CATAPULT_MAX",
           "C_DIVERGE"]

N_TRAIN = 64
STEPS = 200
LAZY_TOL = 0.05  # the lazy kernel's top eigenvalue stays within 5% of lambda_0
C_CATAPULT_MAX = 1.6  # catapult members checked: 1 < c <= 1.6 (the boundary measured at 1.7-1.9)
C_DIVERGE = 2.2  # divergence checked from c = 2.2 (uv model: c_max = 2)
NET = ow.serial(ow.Dense(w_std=2.0 ** 0.5), ow.Relu(), ow.Dense(out=1))


def data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``N_TRAIN`` digits, features centred, each input rescaled to norm ``sqrt d``; parity targets +-1."""
    x, labels = centred_digits(seed, N_TRAIN)
    return x, np.where(labels % 2 == 0, 1.0, -1.0)[:, None].astype(np.float32)


def lambda0(width: int, seed: int, x) -> float:
    """The top NTK eigenvalue over ``N`` at the initialisation ``ow.train(..., seeds=[seed])`` starts from
    (its key ``jax.random.key(seed)`` split into the init and data keys)."""
    import jax

    model = ow.finite(NET, width=width, param=ow.NTP)
    k_init, _ = jax.random.split(jax.random.key(seed))
    return float(ow.curvature.gauss_newton_top(model.apply, model.init(k_init, x), x))


def phases(c: np.ndarray, loss: np.ndarray, lam: np.ndarray, diverged: np.ndarray) -> dict:
    """The checks of the module docstring for one (width, seed): ``loss``, ``lam`` (c, step), ``diverged`` (c,).

    Returns per-``c`` booleans ``lazy_ok``, ``catapult_ok``, ``divergent_ok`` (True where the check does not
    apply) and the observed phase of each member."""
    loss0, lam0 = loss[:, 0], lam[:, 0]
    spike = np.nanmax(loss, axis=1) > loss0 * (1 + 1e-6)
    final_loss, final_lam = loss[:, -1], lam[:, -1]
    observed = np.where(diverged, "divergent", np.where(spike, "catapult", "lazy"))
    lazy = c < 1
    lazy_ok = ~lazy | (~diverged & ~spike & (np.nanmax(np.abs(lam / lam0[:, None] - 1), axis=1) <= LAZY_TOL))
    cat = (c > 1) & (c <= C_CATAPULT_MAX)
    with np.errstate(invalid="ignore"):
        converged = ~diverged & (final_loss < 0.01 * loss0)
        catapult_ok = ~cat | (spike & converged & (final_lam < lam0) & (c * final_lam / lam0 < 1))
    divergent_ok = (c < C_DIVERGE) | diverged
    return {"observed": observed, "lazy_ok": lazy_ok, "catapult_ok": catapult_ok, "divergent_ok": divergent_ok}


def _seed_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the seed axis (0) of the finite entries; NaN where none is (diverged members)."""
    finite = np.isfinite(a)
    count = finite.sum(axis=0)
    total = np.where(finite, a, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    x, y = data(seed)
    widths = [1024] if quick else [512, 1024, 2048, 4096]
    seeds = [seed, seed + 1] if quick else [seed, seed + 1, seed + 2]
    cs = np.array([0.25, 0.5, 0.75, 0.9, 1.1, 1.2, 1.4, 1.6, 1.8, 2.2, 3.0])
    shape = (len(widths), len(seeds), len(cs))
    loss = np.full(shape + (STEPS + 1,), np.nan)
    lam = np.full_like(loss, np.nan)
    lam0s, lrs = np.zeros(shape[:2]), np.zeros(shape)
    status = np.empty(shape, dtype=object)
    for i, width in enumerate(widths):
        for j, s in enumerate(seeds):
            lam0s[i, j] = lambda0(width, s, x)
            lrs[i, j] = 2 * cs / lam0s[i, j]
            ds = ow.train(NET, (x, y), widths=width, lr=list(lrs[i, j]), steps=STEPS, record_every=1, seeds=[s],
                          param=ow.NTP, center=True, metrics={"ntk_top": ow.measure.ntk_top()}, progress_bar=False)
            one = ds.isel(width=0, seed=0, alpha=0)
            loss[i, j], lam[i, j] = one.train_loss.values, one.ntk_top.values
            status[i, j] = one.status.values
    dims = ("width", "seed", "c")
    res = xr.Dataset(
        {"train_loss": (dims + ("step",), loss), "ntk_top": (dims + ("step",), lam),
         "lambda0": (dims[:2], lam0s), "lr": (dims, lrs), "status": (dims, status.astype(str))},
        coords={"width": widths, "seed": seeds, "c": cs, "step": np.arange(STEPS + 1)},
        attrs={"param": "ntp", "optimizer": "sgd (full batch)", "loss": "mse, centred", "steps": STEPS,
               "net": "Dense(w_std=sqrt 2) - ReLU - Dense(out=1)",
               "data": f"sklearn digits, {N_TRAIN} points, centred features, inputs of norm sqrt(64), parity +-1",
               "c": "lr * lambda0 / 2; lambda0 = top NTK eigenvalue / N at initialisation (per width and seed)"})
    checks = {k: np.zeros(shape, bool) for k in ("lazy_ok", "catapult_ok", "divergent_ok")}
    observed = np.empty(shape, dtype=object)
    for i in range(len(widths)):
        for j in range(len(seeds)):
            ph = phases(cs, loss[i, j], lam[i, j], status[i, j] == "diverged")
            observed[i, j] = ph["observed"]
            for k in checks:
                checks[k][i, j] = ph[k]
    res["phase"] = (dims, observed.astype(str))
    res.to_netcdf(out / "catapult.nc")

    # the recorded step-0 eigenvalue is the one lambda0 was computed from: same seed, same initialisation
    init_match = float(np.max(np.abs(lam[..., 0] / lam0s[..., None] - 1)))
    ok = {k: bool(v.all()) for k, v in checks.items()}
    phases_ok = all(ok.values()) and init_match < 1e-4
    ratio = lam[..., -1] / lam0s[..., None]  # (W, S, c)
    peak = np.where(np.isfinite(loss), loss, -np.inf).max(axis=-1)  # up to the divergence
    diverged = status == "diverged"
    conv_c = [float(cs[~diverged[i].any(axis=0)].max()) for i in range(len(widths))]
    div_c = [float(cs[diverged[i].all(axis=0)].min()) if diverged[i].all(axis=0).any() else float("nan")
             for i in range(len(widths))]

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    iw = len(widths) - 1
    ax = axes[0]
    for k, c in enumerate(cs):
        color = plt.cm.viridis(k / (len(cs) - 1))
        ax.plot(res.step, loss[iw, 0, k], color=color, lw=1.2, label=f"c={c:g}")
    ax.set(yscale="log", xlabel="step", ylabel="train loss", ylim=(1e-7, 1e5),
           title=f"width {widths[iw]}, seed {seeds[0]}: loss (c = lr lambda0 / 2)")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    for i, w in enumerate(widths):
        color = plt.cm.plasma(0.85 * i / max(1, len(widths) - 1))
        ax.plot(cs, _seed_mean(ratio[i]), "o-", ms=4, color=color, label=f"n={w}")
    grid = np.linspace(0.9, cs.max(), 100)
    ax.plot(grid, 1 / grid, "k--", lw=0.9, label="2/lr (in units of lambda0)")
    ax.axhspan(1 - LAZY_TOL, 1 + LAZY_TOL, color="0.85", zorder=0)
    ax.set(xlabel="c = lr lambda0 / 2", ylabel="final top NTK eigenvalue / lambda0",
           title="final curvature: lazy (=1), catapult (< 2/lr), divergent (none)")
    ax.legend(fontsize=8)
    ax = axes[2]
    for i, w in enumerate(widths):
        color = plt.cm.plasma(0.85 * i / max(1, len(widths) - 1))
        ax.plot(cs, _seed_mean(np.where(diverged[i], np.nan, peak[i] / loss[i, :, :, 0])), "o-", ms=4, color=color, label=f"peak / initial, n={w}")
        ax.plot(cs, _seed_mean(loss[i, :, :, -1] / loss[i, :, :, 0]), "s:", ms=3, color=color,
                label=f"final / initial, n={w}")
    ax.set(yscale="log", xlabel="c = lr lambda0 / 2", ylabel="loss / initial loss",
           title="converged runs: peak loss grows with width (O(n))")
    ax.legend(fontsize=7)
    for ax in axes[1:]:
        ax.axvline(1.0, color="k", lw=0.7, ls=":")
        ax.axvline(2.0, color="k", lw=0.7, ls=":")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Catapult phase of wide NTP ReLU networks (full-batch GD, MSE): lazy for lr < 2/lambda0; "
                 "the loss spikes and the kernel flattens below 2/lr for 2/lambda0 < lr < ~4/lambda0; "
                 "divergent beyond (Lewkowycz et al. 2020)", fontsize=10)
    fig.savefig(out / "catapult.png", dpi=150)
    plt.close(fig)

    lazy = cs < 1
    lazy_change = [float(np.max(np.abs(lam[i][:, lazy] / lam0s[i][:, None, None] - 1))) for i in range(len(widths))]
    k12 = int(np.argmin(np.abs(cs - 1.2)))
    peak12 = [float(_seed_mean(peak[i])[k12]) for i in range(len(widths))]
    slopes = ({"lazy_change": loglog_slope(widths, lazy_change), "peak_loss_c1.2": loglog_slope(widths, peak12)}
              if len(widths) > 1 else {})
    mean_ratio = {str(w): [round(float(v), 4) for v in _seed_mean(ratio[i])] for i, w in enumerate(widths)}
    mean_peak = {str(w): [float(f"{v:.4g}") for v in _seed_mean(peak[i])] for i, w in enumerate(widths)}
    print(f"catapult: c = lr lambda0/2 {cs.tolist()}; widths {widths}; final lambda/lambda0 (seed mean) {mean_ratio}; "
          f"largest converged c {conv_c}, smallest diverged c {div_c}; lazy max |lambda/lambda0 - 1| {lazy_change}; "
          f"log-log slopes vs width {slopes}; checks {ok}; phases ok: {phases_ok}")
    return {"widths": widths, "seeds": seeds, "c": cs.tolist(), "steps": STEPS,
            "lambda0": {str(w): lam0s[i].tolist() for i, w in enumerate(widths)},
            "final_ntk_over_lambda0": mean_ratio, "peak_loss": mean_peak,
            "largest_converged_c": conv_c, "lazy_max_ntk_change": lazy_change, "width_slopes": slopes, "smallest_diverged_c": div_c,
            "observed_phase": {str(w): [list(r) for r in observed[i]] for i, w in enumerate(widths)},
            "init_lambda_match": init_match, "checks": ok, "phases_ok": bool(phases_ok),
            "files": ["catapult.nc", "catapult.png", "summary.json"]}
