"""NTK convergence with width (Jacot, Gabriel & Hongler 2018).

At initialisation in the NTK parametrisation, the empirical NTK of a random
finite network converges to the deterministic analytic NTK; its fluctuations
are O(width^-1/2), so the relative error

    err(n) = ||Theta_emp(n) - Theta||_F / ||Theta||_F

falls with log-log slope -1/2. This experiment measures err for a 3-layer
ReLU MLP (two hidden layers) on synthetic data on the sphere, over widths and
random seeds, and fits the slope (with a bootstrap standard error over seeds).
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

import owidth as ow
from owidth.experiments._common import fit_loglog, progress

__all__ = ["architecture", "sphere_data", "measure", "run"]


def architecture():
    """The 3-layer ReLU MLP used here (He-style w_std = sqrt(2))."""
    return ow.serial(
        ow.Dense(w_std=2**0.5, b_std=0.1**0.5),
        ow.Relu(),
        ow.Dense(w_std=2**0.5, b_std=0.1**0.5),
        ow.Relu(),
        ow.Dense(out=1, w_std=1.0, b_std=0.0),
    )


def sphere_data(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` points uniform on the sphere of radius sqrt(d) in R^d."""
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(d)


def measure(net, x, widths, seeds, *, seed: int = 0):
    """Analytic NTK and empirical NTKs; returns (theta, emp[width, seed, i, j], err[width, seed])."""
    theta = np.asarray(ow.kernel(net, x, get="ntk").ntk)
    emp = np.zeros((len(widths), len(seeds), *theta.shape))
    bar = progress(total=len(widths) * len(seeds), desc="ntk-convergence")
    for i, w in enumerate(widths):
        model = ow.finite(net, width=w)
        for j, s in enumerate(seeds):
            key = jax.random.fold_in(jax.random.key(seed), 1_000_003 * w + s)
            emp[i, j] = np.asarray(ow.empirical_ntk(model.apply, model.init(key, x), x))
            bar.update()
    bar.close()
    err = np.linalg.norm(emp - theta, axis=(-2, -1)) / np.linalg.norm(theta)
    return theta, emp, err


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    widths = [64, 128, 256, 512, 1024] if quick else [64, 128, 256, 512, 1024, 2048, 4096]
    seeds = list(range(8 if quick else 32))
    n, d = 16, 8
    net = architecture()
    x = sphere_data(n, d, seed)
    theta, emp, err = measure(net, x, widths, seeds, seed=seed)
    fit = fit_loglog(np.array(widths), err, seed=seed)

    ds = xr.Dataset(
        {
            "rel_error": (("width", "seed"), err),
            "ntk_empirical": (("width", "seed", "i", "j"), emp),
            "ntk_analytic": (("i", "j"), theta),
            "x": (("i", "feature"), x),
        },
        coords={"width": widths, "seed": seeds},
        attrs={
            "description": __doc__.strip().splitlines()[0],
            "architecture": repr(net),
            "parametrization": "ntp",
            "slope": fit["slope"],
            "slope_se": fit["slope_se"],
            "theory_slope": -0.5,
            "dtype": str(theta.dtype),
        },
    )
    ds.to_netcdf(out / "ntk_convergence.nc")

    mean = err.mean(1)
    se = err.std(1, ddof=1) / np.sqrt(err.shape[1])
    fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
    ax.errorbar(widths, mean, yerr=se, fmt="o", color="C0", capsize=3, label=f"empirical NTK, {len(seeds)} seeds (mean ± SE)")
    ws = np.array([widths[0], widths[-1]], dtype=float)
    ax.plot(ws, np.exp(fit["intercept"]) * ws ** fit["slope"], "-", color="C0",
            label=f"fit: slope {fit['slope']:.3f} ± {fit['slope_se']:.3f}")
    ax.plot(ws, mean[0] * (ws / ws[0]) ** -0.5, "--", color="gray", label="theory: width$^{-1/2}$")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(widths, [str(v) for v in widths])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("width n")
    ax.set_ylabel(r"$\|\Theta_{emp} - \Theta\|_F \,/\, \|\Theta\|_F$")
    ax.set_title("Empirical vs analytic NTK at init, 3-layer ReLU MLP (NTP):\n"
                 "relative error vs width (Jacot et al. 2018)", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(out / "ntk_convergence.png", dpi=150)
    plt.close(fig)

    print(f"ntk-convergence: log-log slope of relative error vs width = {fit['slope']:.3f} "
          f"± {fit['slope_se']:.3f} (theory -0.5); error at width {widths[-1]}: {mean[-1]:.4f}")
    return {
        "slope": fit["slope"],
        "slope_se": fit["slope_se"],
        "theory_slope": -0.5,
        "widths": widths,
        "mean_rel_error": mean.tolist(),
        "files": ["ntk_convergence.nc", "ntk_convergence.png", "summary.json"],
    }
