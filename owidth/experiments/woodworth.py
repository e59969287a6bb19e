"""Kernel and rich regimes of the diagonal linear network (Woodworth et al. 2020).

Sparse planted regression with fewer samples than features (n < d): Gaussian
``X`` (n, d), a k-sparse ``beta*`` and noiseless ``y = X beta*``. For each
initial scale alpha, the two-layer diagonal network ``beta = u*u - v*v`` is
trained by full-batch GD from ``u0 = v0 = alpha`` (small steps, long training:
:func:`owidth.theory.train_diagonal_network`) and compared with the theory of
Theorem 1, the interpolator minimising

    Q_alpha(beta) = alpha^2 sum_i q(beta_i / alpha^2),  q(z) = 2 - sqrt(4 + z^2) + z asinh(z / 2).

Recorded against alpha: the relative distance of the trained network to the
Q_alpha minimiser (the checked agreement figure), the relative distances of
both to the minimum-l1 (basis pursuit) and minimum-l2 (pseudo-inverse)
interpolators, and the population excess risk ``||beta - beta*||^2`` (for
isotropic Gaussian inputs ``E[(x^T beta - x^T beta*)^2] = ||beta - beta*||^2``).
Small alpha (rich regime) recovers the sparse ``beta*`` like the l1 solution;
large alpha (kernel regime) gives the l2 interpolator.
"""

from __future__ import annotations

import pathlib

import numpy as np

from owidth.experiments._common import progress

__all__ = ["planted_problem", "run"]


def planted_problem(n: int, d: int, k: int, seed: int):
    """Gaussian X (n, d), a k-sparse beta* with N(0, 1) nonzeros, y = X beta* (float64)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    beta_star = np.zeros(d)
    beta_star[rng.choice(d, k, replace=False)] = rng.standard_normal(k)
    return X, X @ beta_star, beta_star


def _rel(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b)


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    from owidth import theory

    n, d, k = 40, 100, 5
    alphas = np.logspace(-3, 2, 11 if quick else 16)
    alphas_theory = np.logspace(-3, 2, 26 if quick else 61)
    lr, steps = (0.1, 100_000) if quick else (0.05, 300_000)
    X, y, beta_star = planted_problem(n, d, k, seed)

    bar = progress(total=len(alphas_theory) + 1, desc="woodworth")
    beta_l1 = theory.min_l1_solution(X, y)
    beta_l2 = theory.min_l2_solution(X, y)
    beta_theory = np.zeros((len(alphas_theory), d))
    for i, a in enumerate(alphas_theory):
        beta_theory[i] = theory.woodworth_solution(X, y, a)
        bar.update()
    beta_q = np.stack([theory.woodworth_solution(X, y, a) for a in alphas])
    beta_net, loss = theory.train_diagonal_network(X, y, alphas, lr=lr, steps=steps)
    beta_net, loss = np.asarray(beta_net, np.float64), np.asarray(loss, np.float64)
    bar.update()
    bar.close()

    rel_net_theory = _rel(beta_net, beta_q)
    ds = xr.Dataset(
        {
            "beta_net": (("alpha", "feature"), beta_net),
            "beta_q": (("alpha", "feature"), beta_q),
            "train_loss": ("alpha", loss),
            "rel_net_vs_theory": ("alpha", rel_net_theory),
            "rel_net_to_l1": ("alpha", _rel(beta_net, beta_l1)),
            "rel_net_to_l2": ("alpha", _rel(beta_net, beta_l2)),
            "test_error_net": ("alpha", np.sum((beta_net - beta_star) ** 2, -1)),
            "beta_theory": (("alpha_theory", "feature"), beta_theory),
            "rel_theory_to_l1": ("alpha_theory", _rel(beta_theory, beta_l1)),
            "rel_theory_to_l2": ("alpha_theory", _rel(beta_theory, beta_l2)),
            "test_error_theory": ("alpha_theory", np.sum((beta_theory - beta_star) ** 2, -1)),
            "beta_l1": ("feature", beta_l1),
            "beta_l2": ("feature", beta_l2),
            "beta_star": ("feature", beta_star),
            "X": (("sample", "feature"), X),
            "y": ("sample", y),
        },
        coords={"alpha": alphas, "alpha_theory": alphas_theory},
        attrs={
            "description": __doc__.strip().splitlines()[0],
            "reference": "Woodworth et al. 2020, Kernel and rich regimes in overparametrized models, Theorem 1",
            "model": "beta = u*u - v*v, u0 = v0 = alpha, L = ||X beta - y||^2 / (2n), full-batch GD",
            "lr": lr,
            "steps": steps,
            "step_size": "lr / (lambda_max(X^T X / n) * (2 alpha^2 + 1))",
            "n": n, "d": d, "k": k,
            "max_rel_net_vs_theory": float(rel_net_theory.max()),
            "train_dtype": _train_dtype(),
        },
    )
    ds.to_netcdf(out / "woodworth.nc")

    err_l1 = float(np.sum((beta_l1 - beta_star) ** 2))
    err_l2 = float(np.sum((beta_l2 - beta_star) ** 2))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    ax = axes[0]
    ax.plot(alphas_theory, ds.rel_theory_to_l1, "-", color="C0", label=r"theory $\beta_\alpha$ vs $\ell_1$ interpolator")
    ax.plot(alphas_theory, ds.rel_theory_to_l2, "-", color="C1", label=r"theory $\beta_\alpha$ vs $\ell_2$ interpolator")
    ax.plot(alphas, ds.rel_net_to_l1, "o", color="C0", label=r"trained net vs $\ell_1$")
    ax.plot(alphas, ds.rel_net_to_l2, "s", color="C1", label=r"trained net vs $\ell_2$")
    ax.set_yscale("log")
    ax.set_ylabel(r"relative distance $\|\beta - \beta_{ref}\| / \|\beta_{ref}\|$")
    ax.set_title(r"$\ell_1$ (rich) to $\ell_2$ (kernel) as $\alpha$ grows")
    ax = axes[1]
    ax.plot(alphas_theory, ds.test_error_theory, "-", color="C2", label=r"theory $\arg\min Q_\alpha$")
    ax.plot(alphas, ds.test_error_net, "o", color="C2", label="trained net")
    floor = 0.1 * float(min(ds.test_error_theory.min(), ds.test_error_net.min()))
    if err_l1 > floor:
        ax.axhline(err_l1, ls=":", color="C0", label=rf"$\ell_1$ interpolator ({err_l1:.2g})")
    else:  # exact recovery: off the log axis
        ax.plot([], [], " ", label=rf"$\ell_1$ interpolator: {err_l1:.1g} (exact recovery)")
    ax.axhline(err_l2, ls="--", color="C1", label=rf"$\ell_2$ interpolator ({err_l2:.3g})")
    ax.set_yscale("log")
    ax.set_ylabel(r"population error $\|\beta - \beta^*\|^2$")
    ax.set_title("population error: sparse recovery at small $\\alpha$")
    ax = axes[2]
    ax.plot(alphas, rel_net_theory, "o-", color="C3", label=r"trained net vs $\arg\min Q_\alpha$")
    ax.axhline(0.02, ls="--", color="gray", label="2% bound")
    ax.set_yscale("log")
    ax.set_ylabel(r"relative distance $\|\beta_{net} - \beta_\alpha\| / \|\beta_\alpha\|$")
    ax.set_title(f"trained net vs Theorem 1\n(GD, {ds.attrs['train_dtype']}, lr={lr}, {steps} steps)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel(r"initial scale $\alpha$ ($u_0 = v_0 = \alpha$)")
        ax.legend(fontsize=7)
    fig.suptitle(rf"Diagonal linear nets $\beta = u^2 - v^2$ on sparse planted regression (n={n}, d={d}, k={k}): "
                 r"trained from scale $\alpha$ (markers) vs $\arg\min Q_\alpha$ (lines; Woodworth et al. 2020)",
                 fontsize=11)
    fig.savefig(out / "woodworth.png", dpi=150)
    plt.close(fig)

    max_rel = float(rel_net_theory.max())
    print(f"woodworth: trained diagonal nets vs argmin Q_alpha: max relative distance {max_rel:.2e} over "
          f"{len(alphas)} alphas in [{alphas[0]:g}, {alphas[-1]:g}]; to l1 at alpha={alphas[0]:g}: "
          f"{float(ds.rel_net_to_l1[0]):.2e}, to l2 at alpha={alphas[-1]:g}: {float(ds.rel_net_to_l2[-1]):.2e}")
    return {
        "max_rel_net_vs_theory": max_rel,
        "agrees_within_2pct": bool(max_rel < 0.02),
        "alphas": alphas.tolist(),
        "rel_net_vs_theory": rel_net_theory.tolist(),
        "rel_net_to_l1": ds.rel_net_to_l1.values.tolist(),
        "rel_net_to_l2": ds.rel_net_to_l2.values.tolist(),
        "test_error_net": ds.test_error_net.values.tolist(),
        "test_error_l1": err_l1,
        "test_error_l2": err_l2,
        "train_loss": loss.tolist(),
        "files": ["woodworth.nc", "woodworth.png", "summary.json"],
    }


def _train_dtype() -> str:
    import jax.numpy as jnp

    return str(jnp.asarray(0.0).dtype)
