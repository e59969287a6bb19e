"""Learning curves of NTK ridge regression vs eigenlearning theory (Bordelon et al. 2020; Simon et al. 2021).

A fixed pool of M points is the population (uniform measure). The analytic
NTK of a 3-layer ReLU MLP (:func:`owidth.experiments.ntk_convergence.architecture`)
is computed once on the pool. Theory: from the eigenvalues ``lambda_i`` of
``K_pool / M`` and the target's coefficients ``v_i`` alone,
:func:`owidth.theory.eigenlearning.eigenlearning` predicts the population test
MSE at each training-set size P:

    sum_i lambda_i / (lambda_i + kappa) + delta / kappa = P,   L_i = lambda_i / (lambda_i + kappa),
    E0 = P / (P - sum_i L_i^2),   test MSE = E0 (sum_i (1 - L_i)^2 v_i^2 + eps^2) - eps^2.

Simulation: kernel ridge regression ``f = K(., X)(K(X, X) + delta I)^-1 y`` on
P distinct points drawn at random from the pool, labels with noise
variance eps^2, test MSE against the clean target over the whole pool,
averaged over many draws. Two datasets: scikit-learn digits (one-hot targets,
centred; MSE per output) and points uniform on the sphere in R^8 with target
``sin(x . u)`` plus label noise.

The theory assumes i.i.d. samples; drawing without replacement from a finite
pool differs from it by O(P / M) (measured: drawing with replacement, the
duplicates make digits at P = 512, M = 1797 20% worse than theory; without,
9%), so the pool is kept several times larger than the largest P.
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments._common import progress
from owidth.experiments.ntk_convergence import architecture, sphere_data
from owidth.theory.eigenlearning import eigenlearning, pool_spectrum

__all__ = ["datasets", "krr_test_mse", "run"]


def datasets(seed: int, m: int, m_sphere: int | None = None) -> dict:
    """{name: (x_pool (M, d), f_pool (M, C) clean target, label-noise variance)}."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.data))[:m]
    xd = (data.data[order] / 16.0).astype(np.float32)
    yd = np.eye(10)[data.target[order]] - 0.1
    d = 8
    xs = sphere_data(m_sphere or m, d, seed + 7).astype(np.float32)
    u = np.random.default_rng(seed + 8).standard_normal(d)
    ys = np.sin(xs @ (u / np.linalg.norm(u)))[:, None]
    return {"digits": (xd, yd, 0.0), "sphere": (xs, ys, 0.01)}


def krr_test_mse(k_pool, f_pool, noise, ps, n_draws, ridge, rng) -> np.ndarray:
    """Empirical pool test MSE (per output) of KRR for each P in ``ps`` and each draw: (len(ps), n_draws)."""
    m = len(k_pool)
    out = np.zeros((len(ps), n_draws))
    for i, p in enumerate(ps):
        for s in range(n_draws):
            idx = rng.choice(m, p, replace=False)
            y = f_pool[idx] + np.sqrt(noise) * rng.standard_normal((p, f_pool.shape[1]))
            alpha = np.linalg.solve(k_pool[np.ix_(idx, idx)] + ridge * np.eye(p), y)
            out[i, s] = np.mean((k_pool[:, idx] @ alpha - f_pool) ** 2)
    return out


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    m, n_draws = (1000, 24) if quick else (1797, 100)
    ps = [8, 16, 32, 64, 128] if quick else [8, 16, 32, 64, 128, 256, 512]
    net = architecture()
    rng = np.random.default_rng(seed)
    names, emp, theory, ridges, pools = [], [], [], [], []
    bar = progress(total=2, desc="learning-curves")
    for name, (x, f, noise) in datasets(seed, m, m if quick else 3000).items():
        k = np.asarray(ow.kernel(net, x, get="ntk").ntk, dtype=np.float64)
        k = (k + k.T) / 2
        ridge = 1e-3 * float(np.mean(np.diag(k)))
        lam, v2 = pool_spectrum(k, f)
        theory.append([eigenlearning(lam, v2, p, ridge, noise).test_mse for p in ps])
        emp.append(krr_test_mse(k, f, noise, ps, n_draws, ridge, rng))
        names.append(name)
        ridges.append(ridge)
        pools.append(len(x))
        bar.update()
    bar.close()
    emp, theory = np.array(emp), np.array(theory)  # (dataset, P, draw), (dataset, P)
    mean, se = emp.mean(-1), emp.std(-1, ddof=1) / np.sqrt(n_draws)
    rel = np.abs(theory - mean) / mean
    sel = np.array(ps) >= 32
    max_dev = {n: float(rel[i, sel].max()) for i, n in enumerate(names)}

    ds = xr.Dataset(
        {"test_mse": (("dataset", "P", "draw"), emp), "theory_test_mse": (("dataset", "P"), theory),
         "relative_deviation": (("dataset", "P"), rel), "ridge": (("dataset",), ridges),
         "pool_size": (("dataset",), pools)},
        coords={"dataset": names, "P": ps, "draw": np.arange(n_draws)},
        attrs={"kernel": "analytic NTK, " + repr(net), "sampling": "P distinct points of the pool; test on the whole pool"},
    )
    ds.to_netcdf(out / "learning_curves.nc")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, (ax, name) in enumerate(zip(axes, names)):
        ax.errorbar(ps, mean[i], yerr=se[i], fmt="o", capsize=3,
                    label=f"NTK ridge regression (mean ± SE, {n_draws} draws)")
        ax.plot(ps, theory[i], "k--", label="eigenlearning theory")
        ax.set(xscale="log", yscale="log", xlabel="training samples P", ylabel="test MSE (per output)",
               title=f"{name} (pool M={pools[i]}); max dev. P≥32: {100 * max_dev[name]:.1f}%")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ps, [str(v) for v in ps])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.legend(fontsize=8)
    fig.suptitle("Learning curves of NTK ridge regression (3-layer ReLU MLP): simulation vs eigenlearning theory\n"
                 "from the kernel's spectrum alone (Bordelon et al. 2020; Simon et al. 2021)", fontsize=10)
    fig.savefig(out / "learning_curves.png", dpi=150)
    plt.close(fig)

    print("learning-curves: max |theory - empirical| / empirical for P >= 32: "
          + ", ".join(f"{n} {100 * d:.1f}%" for n, d in max_dev.items()) + " (must be < 10%)")
    return {"max_relative_deviation": max_dev, "P": ps, "empirical": mean.tolist(), "empirical_se": se.tolist(),
            "theory": theory.tolist(), "files": ["learning_curves.nc", "learning_curves.png", "summary.json"]}
