"""Finite-width corrections of ReLU MLPs at initialisation: Monte Carlo vs infinite width vs order 1/n.

For ReLU MLPs with 1..6 hidden layers (``w_std`` 1.3, ``b_std`` 0.3, 3 inputs from a fixed Gaussian
draw) at widths 16..1024, ``SAMPLES`` random networks each give the last layer's conditional covariance
``G = b^2 + w^2 h h^T / n`` (``h``: the last hidden features). Given ``h`` the outputs are exactly
Gaussian with covariance ``G``, so the output two-point function is ``E G`` and the connected
four-point function of two different outputs is ``Cov(G_ab, G_cd)`` (Rao-Blackwellised Monte Carlo:
no output sampling noise). The layers are drawn from their exact conditional Gaussian law
(:func:`ow.finite_width.last_layer_covariances` with ``sampler="gaussian"``: ``O(L n N^2)`` per network instead
of the weights' ``O(L n^2)``; ``tests/test_finite_width.py`` checks it against ``ow.finite`` networks). The
infinite-width theory predicts ``E G = K`` and no connected four-point function;
:func:`ow.finite_width.expansion` adds ``K1 / n`` and ``V / n``.

Theory (Roberts, Yaida & Hanin 2022): the uncorrected errors fall like ``1/n``, the corrected ones like
``1/n^2``, until they reach the Monte Carlo noise; the output's excess kurtosis grows with the depth
at fixed width, ``~ (L - 1) / n`` for ReLU: the depth-to-width ratio is the expansion parameter.

Three more panels. The NTK's relative variance at ``x_0``, ``n Var(Theta) / H^2`` from ``NTK_SAMPLES`` empirical NTKs
of ``ow.finite`` networks per point (widths up to ``NTK_MAX_WIDTH``; :func:`ow.finite_width.empirical_ntks`) against
:func:`ow.finite_width.ntk_variance` (exact at any width with one hidden layer). The NTK's mean, ``n (E Theta - H)``
at ``(x_0, x_1)`` from the same networks (4x as many at width 16, 2x at 32) against
:func:`ow.finite_width.ntk_correction`. Gradient descent: the mean test output of 20000 ``ow.train`` networks per
width (tanh, one hidden layer, NTP, centred, 6 points, lr 0.5, 10 steps) against the infinite-width prediction and
the 1/n-corrected one of :func:`ow.finite_width.predict_correction`.

Measured (full run, 100000 networks per point, 14.8 min on 2 shared cores; stop 38):

- Connected four-point function, error / ``|V|``: without the vertex 6.3% (1 hidden) .. 9.9% (6 hidden) at width 16,
  0.097-0.098% at 1024 (slope -1.09 for 6 hidden layers); with it 0.04% .. 3.8% at width 16, 2e-5..9e-5 at 256 and
  1.5e-6..5.6e-6 at 1024, at the Monte Carlo noise (SE 5e-6..6e-6); slope -2.19 for 6 hidden layers.
- Output covariance: without ``K1/n`` 2.8% (6 hidden) at width 16 to 0.06% at 1024 (slope -0.98); with it 0.26% ..
  0.84% at width 16 (2..6 hidden) and 0.02-0.13% from width 32 on, against Monte Carlo SE norms of 0.02-0.22%
  (at width 512 the corrected errors are 1.7-2.9x the SE at depths 2-6: the depths share their random numbers,
  so one fluctuation shows at every depth).
- Excess kurtosis of ``f(x_0)`` at width 1024 within 2 SE of ``3 V / (n K^2)`` at every depth (z = -1.1, 0.1, 0.7,
  0.8, 2.0, 0.0); at width 16 the 6-hidden-layer net's kurtosis is 2.32 against the first-order 1.53: at
  ``L / n = 0.375`` the next order shows.
- NTK ``n Var / H^2`` at width 256: 2.09, 4.03, 6.11, 7.65, 9.34, 10.31 (Monte Carlo, 1..6 hidden) against
  2.12, 4.15, 5.95, 7.54, 8.96, 10.23 (|z| <= 1.6).
- NTK mean at width 16: ``n (E Theta_01 - H_01)`` = 0.00, 0.13, 0.35, 1.10, 1.32, 1.71 (SE 0.04..0.28) against
  ``H1`` = 0, 0.19, 0.55, 1.02, 1.57, 2.16 (|z| <= 1.6; below it for deep nets: the next order, as for the
  kurtosis); at larger widths the same within error bars that grow like ``sqrt(n)``.
- Gradient descent: distance of the ensemble's mean test outputs from the infinite-width prediction 0.0078,
  0.0044, 0.0023, 0.0013, 0.00074 at widths 64..1024, from the 1/n-corrected one 0.0024, 0.00062, 0.00047,
  0.00027, 0.00043 (ensemble SE 0.0012, 0.00085, 0.0006, 0.00043, 0.0003).
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import loglog_slope, progress

__all__ = ["run", "NTK_SAMPLES", "PAIRS", "SAMPLES"]

SAMPLES = 100000  # networks per point, drawn layer by layer from the exact conditional Gaussian law
NTK_SAMPLES = 4000  # empirical NTKs (a Jacobian each of an ow.finite network) per point
NTK_MAX_WIDTH = 256  # the NTK panel's widest networks (a Jacobian of a width-1024, 6-hidden-layer net is 0.27 s)
PAIRS = ((0, 0), (0, 1), (1, 2), (2, 2), (0, 2))


def _net(hidden: int):
    layers = [ow.Dense(w_std=1.3, b_std=0.3)]
    for i in range(hidden):
        layers += [ow.Relu(), ow.Dense(w_std=1.3, b_std=0.3, out=1 if i == hidden - 1 else None)]
    return ow.serial(*layers)


def _gradient_descent(widths, seeds: int, seed: int) -> dict:
    """Mean test outputs of ``ow.train`` ensembles (tanh, one hidden layer, NTP, centred, 6 points, lr 0.5, 10
    steps) against ``predict_correction``'s infinite-width and corrected predictions."""
    rng = np.random.default_rng(seed)
    x, x_test = rng.standard_normal((6, 3)), rng.standard_normal((3, 3))
    y = 2 * np.sin(x @ np.array([1.0, -0.5, 0.3]))
    net = ow.serial(ow.Dense(w_std=1.5, b_std=0.2), ow.Tanh(), ow.Dense(out=1, w_std=1.5, b_std=0.2))
    c = ow.finite_width.predict_correction(net, x, y, x_test, lr=0.5, steps=[5, 10], neurons=2 ** 16, seed=seed)
    out = {k: np.zeros(len(widths)) for k in ("uncorrected", "corrected", "noise")}
    for j, n in enumerate(widths):
        ds = ow.train(net, (x, y), widths=n, lr=0.5, steps=10, seeds=list(range(n * 10**6, n * 10**6 + seeds)),
                      test=(x_test, np.zeros(3)), record_outputs=True, record_every=5, progress_bar=False)
        f = ds.test_output.squeeze().sel(step=[5, 10]).transpose("seed", "step", "point").values
        mean = f.mean(0)
        out["uncorrected"][j] = np.linalg.norm(mean - c.infinite[..., 0])
        out["corrected"][j] = np.linalg.norm(mean - c.mean(n)[..., 0])
        out["noise"][j] = np.linalg.norm(f.std(0, ddof=1) / np.sqrt(len(f)))
    return out


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    x = np.random.default_rng(seed).standard_normal((3, 4))
    depths = [1, 3] if quick else [1, 2, 3, 4, 5, 6]
    widths = [16, 32, 64] if quick else [16, 32, 64, 128, 256, 512, 1024]
    ntk_widths = [n for n in widths if n <= NTK_MAX_WIDTH]
    samples = 10000 if quick else SAMPLES
    shape = (len(depths), len(widths))
    err2 = {k: np.zeros(shape) for k in ("uncorrected", "corrected", "noise")}
    err4 = {k: np.zeros(shape) for k in ("uncorrected", "corrected", "noise")}
    kurt = {k: np.zeros(shape) for k in ("monte_carlo", "theory", "se")}
    ntkv = {k: np.zeros((len(depths), len(ntk_widths))) for k in ("monte_carlo", "theory", "se")}
    ntkm = {k: np.zeros((len(depths), len(ntk_widths))) for k in ("monte_carlo", "theory", "se")}
    ntk_pair = (0, 1)  # the NTK mean panel's entry
    ntk_samples = 1000 if quick else NTK_SAMPLES
    bar = progress(total=len(depths) * len(widths), desc="finite-width")
    try:
        for i, hidden in enumerate(depths):
            net = _net(hidden)
            e = ow.finite_width.expansion(net, x)
            k = np.array([float(e.nngp[a, b]) for a, b in PAIRS])
            k1 = np.array([float(e.nngp_correction[a, b]) for a, b in PAIRS])
            v = np.array([[float(e.vertex[a, b, c, d]) for c, d in PAIRS] for a, b in PAIRS])
            for j, n in enumerate(widths):
                g = ow.finite_width.last_layer_covariances(net, x, width=n, samples=samples, seed=seed,
                                                           sampler="gaussian")
                p = np.stack([g[:, a, b] for a, b in PAIRS], 1)
                mean, cov = p.mean(0), np.cov(p.T)
                parts = np.split(p, 20)
                se_mean = np.stack([q.mean(0) for q in parts]).std(0, ddof=1) / np.sqrt(20)
                se_cov = np.stack([np.cov(q.T) for q in parts]).std(0, ddof=1) / np.sqrt(20)
                scale2, scale4 = np.linalg.norm(k), np.linalg.norm(v)
                err2["uncorrected"][i, j] = np.linalg.norm(mean - k) / scale2
                err2["corrected"][i, j] = np.linalg.norm(mean - k - k1 / n) / scale2
                err2["noise"][i, j] = np.linalg.norm(se_mean) / scale2
                err4["uncorrected"][i, j] = np.linalg.norm(cov) / scale4  # relative to |V|
                err4["corrected"][i, j] = np.linalg.norm(cov - v / n) / scale4
                err4["noise"][i, j] = np.linalg.norm(se_cov) / scale4
                g00 = g[:, 0, 0]  # kurtosis of f(x_0): E f^4 = 3 E G^2, excess 3 Var G / (E G)^2
                kurt["monte_carlo"][i, j] = 3 * g00.var() / g00.mean() ** 2
                kurt["se"][i, j] = np.std([3 * q.var() / q.mean() ** 2 for q in np.split(g00, 20)], ddof=1) / np.sqrt(20)
                kurt["theory"][i, j] = float(e.kurtosis(n)[0])
                bar.update(1)
                if n > NTK_MAX_WIDTH:
                    continue
                # the NTK's relative variance at x_0: n Var(Theta_00) / H_00^2 against ntk_variance
                # more networks where they are cheap: the NTK mean's n (E Theta - H) has SE ~ sqrt(n / samples)
                ths = ow.finite_width.empirical_ntks(net, x, width=n, samples=ntk_samples * max(1, 64 // n),
                                                     seed=seed)[:, 0, 0]
                th = ths[:, 0, 0]
                h00 = float(e.ntk[0, 0])
                # the NTK's mean: n (E Theta - H) -> H1 (ntk_correction)
                t01 = ths[:, ntk_pair[0], ntk_pair[1]]
                ntkm["monte_carlo"][i, j] = n * (t01.mean() - float(e.ntk[ntk_pair]))
                ntkm["se"][i, j] = n * t01.std(ddof=1) / np.sqrt(len(t01))
                ntkm["theory"][i, j] = float(e.ntk_correction[ntk_pair])
                ntkv["monte_carlo"][i, j] = n * th.var() / h00 ** 2
                ntkv["se"][i, j] = n * np.std([q.var() for q in np.split(th, 20)], ddof=1) / np.sqrt(20) / h00 ** 2
                ntkv["theory"][i, j] = float(e.ntk_covariance(1)[0, 0, 0, 0]) / h00 ** 2
    finally:
        bar.close()
    gd_widths = [64, 256] if quick else [64, 128, 256, 512, 1024]
    gd = _gradient_descent(gd_widths, 20000, seed)
    dims = ("hidden_layers", "width")
    ds = xr.Dataset({**{f"nngp_error_{k}": (dims, a) for k, a in err2.items()},
                     **{f"four_point_error_{k}": (dims, a) for k, a in err4.items()},
                     **{f"kurtosis_{k}": (dims, a) for k, a in kurt.items()},
                     **{f"ntk_relative_variance_{k}": (("hidden_layers", "ntk_width"), a) for k, a in ntkv.items()},
                     **{f"ntk_mean_correction_{k}": (("hidden_layers", "ntk_width"), a) for k, a in ntkm.items()},
                     **{f"gd_error_{k}": ("gd_width", a) for k, a in gd.items()}},
                    coords={"hidden_layers": depths, "width": widths, "ntk_width": ntk_widths, "gd_width": gd_widths},
                    attrs={"samples": samples, "w_std": 1.3, "b_std": 0.3, "activation": "relu", "inputs": 3,
                           "pairs": str(PAIRS), "estimator": "Rao-Blackwellised: last-layer conditional covariance; layers drawn "
                                        "from their conditional Gaussian law (sampler='gaussian')",
                           "ntk_samples": ntk_samples})
    ds.to_netcdf(out / "finite_width.nc")
    deep = len(depths) - 1
    slopes = {"nngp_uncorrected": loglog_slope(widths, err2["uncorrected"][deep]),
              "four_point_uncorrected": loglog_slope(widths, err4["uncorrected"][deep]),
              "four_point_corrected": loglog_slope(widths, err4["corrected"][deep])}

    fig, axes = plt.subplots(2, 3, figsize=(16, 9.2), constrained_layout=True)
    axes = axes.ravel()
    colors = [plt.cm.viridis(0.85 * i / max(1, len(depths) - 1)) for i in range(len(depths))]
    for ax, err, title, unit in ((axes[0], err2, "output covariance E f f'", "relative error"),
                                 (axes[1], err4, "connected four-point function", "error / |V|")):
        for i, hidden in enumerate(depths):
            ax.plot(widths, err["uncorrected"][i], "o--", color=colors[i], ms=3, label=f"{hidden} hidden: infinite width")
            ax.plot(widths, err["corrected"][i], "s-", color=colors[i], ms=3, label=f"{hidden} hidden: + 1/n")
            ax.fill_between(widths, 0, 2 * err["noise"][i], color=colors[i], alpha=0.08)
        ax.set(xscale="log", yscale="log", xlabel="width n", ylabel=unit, title=f"{title} (band: 2 SE of Monte Carlo)")
        ax.set_xscale("log", base=2)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    ax = axes[2]
    for i, hidden in enumerate(depths):
        ratio = hidden / np.asarray(widths)
        ax.errorbar(ratio, kurt["monte_carlo"][i], yerr=2 * kurt["se"][i], fmt="o", color=colors[i], ms=3,
                    label=f"{hidden} hidden (Monte Carlo)")
        ax.plot(ratio, kurt["theory"][i], "-", color=colors[i], lw=1)
    ax.set(xscale="log", yscale="log", xlabel="hidden layers / width", ylabel="excess kurtosis of f(x_0)",
           title="kurtosis vs depth-to-width ratio (lines: 3 V / (n K^2))")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[3]
    for i, hidden in enumerate(depths):
        ax.errorbar(ntk_widths, ntkv["monte_carlo"][i], yerr=2 * ntkv["se"][i], fmt="o", color=colors[i], ms=3,
                    label=f"{hidden} hidden (Monte Carlo)")
        ax.axhline(ntkv["theory"][i, 0], color=colors[i], lw=1)
    ax.set(xlabel="width n", ylabel="n Var(Theta(x_0, x_0)) / H^2",
           title=f"NTK fluctuations (lines: ntk_variance; {ntk_samples} networks)")
    ax.set_xscale("log", base=2)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[4]
    ax.plot(gd_widths, gd["uncorrected"], "o--", ms=4, label="infinite width")
    ax.plot(gd_widths, gd["corrected"], "s-", ms=4, label="infinite width + c / n")
    ax.fill_between(gd_widths, 0, 2 * gd["noise"], color="0.5", alpha=0.15, label="2 SE of the ensemble mean")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel="|ensemble mean - prediction|",
           title="gradient descent: mean test output (tanh, 1 hidden, 10 steps)")
    ax.set_xscale("log", base=2)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[5]
    for i, hidden in enumerate(depths):
        ax.errorbar(np.asarray(ntk_widths) * (1 + 0.03 * i), ntkm["monte_carlo"][i], yerr=2 * ntkm["se"][i], fmt="o",
                    color=colors[i], ms=3, label=f"{hidden} hidden (Monte Carlo)")
        ax.axhline(ntkm["theory"][i, 0], color=colors[i], lw=1)
    ax.set(xlabel="width n", ylabel=f"n (E Theta - H) at x_{ntk_pair[0]}, x_{ntk_pair[1]}",
           title="NTK mean correction (lines: ntk_correction H1; 2 SE)")
    ax.set_xscale("log", base=2)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"Finite-width corrections of ReLU MLPs at initialisation, {samples} networks per point "
                 "(Roberts, Yaida & Hanin 2022)", fontsize=10)
    fig.savefig(out / "finite_width.png", dpi=150)
    plt.close(fig)
    kz = (kurt["monte_carlo"] - kurt["theory"]) / kurt["se"]
    nz = (ntkv["monte_carlo"] - ntkv["theory"]) / ntkv["se"]
    print(f"finite-width: deepest ({depths[deep]} hidden) error slopes vs width: covariance uncorrected "
          f"{slopes['nngp_uncorrected']:+.2f}; four-point uncorrected {slopes['four_point_uncorrected']:+.2f}, "
          f"corrected {slopes['four_point_corrected']:+.2f}; kurtosis (MC - theory) / SE at the widest "
          f"{np.array2string(kz[:, -1], precision=1)}; NTK n Var / H^2 at the widest: Monte Carlo "
          f"{np.array2string(ntkv['monte_carlo'][:, -1], precision=3)}, theory "
          f"{np.array2string(ntkv['theory'][:, -1], precision=3)}")
    return {"depths": depths, "widths": widths, "samples": samples, "slopes": slopes,
            "kurtosis_z_widest": [float(z) for z in kz[:, -1]],
            "gradient_descent": {"widths": gd_widths, **{k: [float(v) for v in a] for k, a in gd.items()}},
            "ntk_mean_correction_smallest_width": {"monte_carlo": [float(v) for v in ntkm["monte_carlo"][:, 0]],
                                                   "theory": [float(v) for v in ntkm["theory"][:, 0]],
                                                   "se": [float(v) for v in ntkm["se"][:, 0]]},
            "ntk_relative_variance_widest": {"monte_carlo": [float(v) for v in ntkv["monte_carlo"][:, -1]],
                                             "theory": [float(v) for v in ntkv["theory"][:, 0]],
                                             "z": [float(z) for z in nz[:, -1]]},
            "four_point_corrected_over_uncorrected_widest": [float(a) for a in
                                                            err4["corrected"][:, -1] / err4["uncorrected"][:, -1]],
            "files": ["finite_width.nc", "finite_width.png", "summary.json"]}
