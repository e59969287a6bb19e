"""Double descent of random-feature ridge regression vs its deterministic equivalent.

Model (Rahimi & Recht 2007; Mei & Montanari 2019): ``f(x) = sum_j a_j
relu(w_j . x / sqrt(d)) / sqrt(N)``, ``w_j ~ N(0, I_d)``, N features, the
readout ``a`` fitted by ridge regression ``min ||Phi a - y||^2 + delta ||a||^2``
on P training points. A fixed pool of M digits images is the population
(uniform measure); the P training points are drawn from it, the test MSE is
over the whole pool, averaged over draws of features and training set.

Theory (:func:`owidth.theory.eigenlearning.random_feature_risk`; Simon et al.
2023 "More is Better", Sec. 4; Bach 2023; Atanasov et al. 2024): it needs
only the eigenvalues of the limiting kernel ``K(x, x') = E_w relu(w.x/sqrt(d))
relu(w.x'/sqrt(d))`` on the pool, computed analytically as the NNGP of
``Dense -> Relu -> Dense`` by :func:`ow.kernel` (no sampled features), and the
target's coefficients. With ``n = df1(gamma) + delta / kappa`` and ``kappa =
gamma (1 - df1(gamma) / N)`` the predicted test error diverges at ``N = P`` as
``delta -> 0`` (the interpolation peak) and, at the optimal ridge, is
non-increasing in N (Simon et al. 2023, Theorem 1).

Measured: test MSE vs N / P at a tiny ridge (theory vs simulation away from
the peak, and where the simulated peak is), and at the best ridge on a grid
per N (for theory and simulation separately).
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import progress
from owidth.theory.eigenlearning import eigenlearning, pool_spectrum, random_feature_risk

__all__ = ["feature_net", "rf_test_mse", "run"]


def feature_net():
    """``Dense(w_std=1) -> Relu -> Dense(out=1, w_std=1)``: its NNGP is ``E_w relu(w.x/sqrt(d)) relu(w.x'/sqrt(d))``."""
    return ow.serial(ow.Dense(w_std=1.0), ow.Relu(), ow.Dense(out=1, w_std=1.0))


def rf_test_mse(x_pool, f_pool, idx, n_features, ridges, rng) -> np.ndarray:
    """Pool test MSE (per output) of RF ridge regression trained on ``x_pool[idx]``, for each ridge."""
    d = x_pool.shape[1]
    w = rng.standard_normal((d, n_features))
    phi = np.maximum(x_pool @ w / np.sqrt(d), 0.0) / np.sqrt(n_features)  # (M, N)
    pt = phi[idx]  # (P, N)
    if n_features >= len(idx):  # ridge regression through the P x P Gram: pred = Phi Phi_train^T U (S + r)^-1 U^T y
        s, u = np.linalg.eigh(pt @ pt.T)
        left, right = phi @ (pt.T @ u), u.T @ f_pool[idx]
    else:  # through the N x N feature covariance: pred = Phi V (S + r)^-1 V^T Phi_train^T y
        s, v = np.linalg.eigh(pt.T @ pt)
        left, right = phi @ v, v.T @ (pt.T @ f_pool[idx])
    s = np.clip(s, 0.0, None)
    out = np.empty(len(ridges))
    for i, r in enumerate(ridges):
        out[i] = np.mean((left @ (right / (s + r)[:, None]) - f_pool) ** 2)
    return out


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr
    from sklearn.datasets import load_digits

    m, p, n_seeds = (1000, 100, 24) if quick else (1797, 200, 100)
    ratios = np.array([0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0, 5.0, 10.0])
    ns = np.unique(np.round(ratios * p).astype(int))
    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.data))[:m]
    x = data.data[order] / 16.0
    x = (x - x.mean(0)).astype(np.float32)  # centred pixels
    f = np.eye(10)[data.target[order]] - 0.1

    k = np.asarray(ow.kernel(feature_net(), x, get="nngp").nngp, dtype=np.float64)
    scale = float(np.mean(np.diag(k)))
    lam, v2 = pool_spectrum(k, f)
    ridges = scale * np.logspace(-6, 1, 22)  # ridges[0]: the near-ridgeless one
    theory = np.array([[random_feature_risk(lam, v2, p, n, r).test_mse for r in ridges] for n in ns])
    theory_kernel = np.array([eigenlearning(lam, v2, p, r).test_mse for r in ridges])

    x64 = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    sim = np.zeros((len(ns), n_seeds, len(ridges)))
    bar = progress(total=len(ns), desc="double-descent")
    for i, n in enumerate(ns):
        for s in range(n_seeds):
            idx = rng.choice(m, p, replace=False)
            sim[i, s] = rf_test_mse(x64, f, idx, int(n), ridges, rng)
        bar.update()
    bar.close()

    q = ns / p
    mean, se = sim.mean(1), sim.std(1, ddof=1) / np.sqrt(n_seeds)  # (N, ridge)
    away = np.abs(q - 1) > 0.2
    rel = np.abs(theory[:, 0] - mean[:, 0]) / mean[:, 0]
    max_dev = float(rel[away].max())
    peak_ratio = float(q[np.argmax(mean[:, 0])])
    best_sim_j = mean.argmin(1)
    best_sim = mean[np.arange(len(ns)), best_sim_j]
    best_sim_se = se[np.arange(len(ns)), best_sim_j]
    best_th = theory.min(1)
    rise_sim = np.diff(best_sim)  # > 0 where the optimally-regularised simulated error grew with N
    rise_sim_z = float((rise_sim / np.hypot(best_sim_se[1:], best_sim_se[:-1])).max())
    rel_best = np.abs(best_th - best_sim) / best_sim

    ds = xr.Dataset(
        {"test_mse": (("n_features", "seed", "ridge"), sim), "theory_test_mse": (("n_features", "ridge"), theory),
         "theory_kernel_limit": (("ridge",), theory_kernel)},
        coords={"n_features": ns, "seed": np.arange(n_seeds), "ridge": ridges, "ratio": ("n_features", q)},
        attrs={"P": p, "pool_size": m, "features": "relu(w.x/sqrt(d))/sqrt(N), w ~ N(0, I)",
               "max_rel_dev_away_from_peak": max_dev, "peak_ratio": peak_ratio},
    )
    ds.to_netcdf(out / "double_descent.nc")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
    ax = axes[0]
    ax.errorbar(q, mean[:, 0], yerr=se[:, 0], fmt="o", capsize=3, label=f"simulation (mean ± SE, {n_seeds} draws)")
    qq = np.logspace(np.log10(q[0]), np.log10(q[-1]), 200)
    ax.plot(qq, [random_feature_risk(lam, v2, p, n * p, ridges[0]).test_mse for n in qq], "k--", label="deterministic-equivalent theory")
    ax.axhline(theory_kernel[0], color="gray", lw=0.8, label="N → ∞ (kernel) theory")
    ax.axvline(1.0, color="r", lw=0.6, ls=":", label="interpolation threshold N = P")
    ax.set(xscale="log", yscale="log", xlabel="features / samples  N/P", ylabel="test MSE (per output)",
           title=f"near-ridgeless (ridge {ridges[0]:.0e}): simulated peak at N/P={peak_ratio:.2f}")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)  # below: the peak fills the top
    ax = axes[1]
    ax.errorbar(q, best_sim, yerr=best_sim_se, fmt="o", capsize=3, label=f"simulation, best ridge per N ({n_seeds} draws)")
    ax.plot(q, best_th, "k--", label="theory, best ridge per N")
    ax.axhline(theory_kernel.min(), color="gray", lw=0.8, label="N → ∞ (kernel) theory, best ridge")
    ax.set(xscale="log", yscale="log", xlabel="features / samples  N/P", ylabel="test MSE (per output)",
           title="optimal ridge: more features never hurt")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    fig.suptitle(f"Random-feature ridge regression on digits, P={p} training points: test MSE vs N/P,\n"
                 "simulation vs deterministic-equivalent theory (Mei & Montanari 2019; Simon et al. 2023)", fontsize=10)
    fig.savefig(out / "double_descent.png", dpi=150)
    plt.close(fig)

    print(f"double-descent: max |theory - sim| / sim away from the peak (|N/P - 1| > 0.2) = {100 * max_dev:.1f}% "
          f"(must be < 10%); simulated peak at N/P = {peak_ratio:.2f}; at optimal ridge the largest rise with N is "
          f"{rise_sim_z:.1f} se (theory rises {max(0.0, float(np.diff(best_th).max())):.1e})")
    return {"max_relative_deviation": max_dev, "peak_ratio": peak_ratio, "ratios": q.tolist(),
            "sim_tiny_ridge": mean[:, 0].tolist(), "theory_tiny_ridge": theory[:, 0].tolist(),
            "sim_best": best_sim.tolist(), "sim_best_se": best_sim_se.tolist(), "theory_best": best_th.tolist(),
            "sim_best_max_rise_se": rise_sim_z, "theory_best_max_rise": float(np.diff(best_th).max()),
            "max_relative_deviation_best_ridge": float(rel_best.max()),
            "files": ["double_descent.nc", "double_descent.png", "summary.json"]}
