"""Trained wide networks vs their infinite-width kernel prediction (Lee et al. 2019).

Ensembles of finite ReLU MLPs in the NTK parametrisation are trained by
full-batch gradient descent on the MSE, seeds vmapped in one compiled program
per width. Theory: an infinitely wide network evolves as its linearisation
with the analytic NTK, so from its own initial outputs f0 it follows

    f_t(x*) = f0(x*) - Theta(x*, X) Theta^-1 (I - (I - lr Theta / n)^t) (f0(X) - Y)

and over random initialisations the outputs are Gaussian with the mean and
covariance of :func:`ow.predict.gradient_descent`. Measured: the distance of
each trained network to that prediction (paired by f0, so the O(1) spread of
f0 over seeds cancels; it should fall like width^-1/2), the ensemble variance
vs the predicted covariance, and train/test loss curves.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import owidth as ow
from owidth.experiments._common import fit_loglog, progress
from owidth.experiments.ntk_convergence import architecture, sphere_data

__all__ = ["make_data", "train_ensemble", "run"]


def make_data(seed: int, n_train: int = 16, n_test: int = 8, d: int = 8):
    x = sphere_data(n_train + n_test, d, seed)
    u = np.random.default_rng(seed + 1).standard_normal(d)
    y = np.sin(x @ u / np.linalg.norm(u))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def train_ensemble(net, width, x, y, xt, *, lr, steps, seeds, key):
    """GD on 1/(2n) sum (f - y)^2 for len(seeds) networks at once; returns f_train (S, T+1, n), f_test (S, T+1, m)."""
    model = ow.finite(net, width=width)
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.asarray(seeds))

    def one(k):
        p0 = model.init(k, x)

        def loss(p):
            f = model.apply(p, x)[:, 0]
            return 0.5 * jnp.mean((f - y) ** 2), f

        def step(p, _):
            (_, f_tr), g = jax.value_and_grad(loss, has_aux=True)(p)  # one forward pass records and differentiates
            out = (f_tr, model.apply(p, xt)[:, 0])
            return jax.tree.map(lambda a, d: a - lr * d, p, g), out

        p_final, (ftr, fte) = jax.lax.scan(step, p0, None, length=steps)
        ftr = jnp.concatenate([ftr, model.apply(p_final, x)[None, :, 0]])
        fte = jnp.concatenate([fte, model.apply(p_final, xt)[None, :, 0]])
        return ftr, fte

    return jax.jit(jax.vmap(one))(keys)


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    widths = [64, 128, 256, 512] if quick else [64, 128, 256, 512, 1024, 2048, 4096]
    n_seeds, steps = (8, 60) if quick else (16, 100)
    net = architecture()
    x, y, xt, yt = make_data(seed)
    k, kxt, ktt = ow.kernel(net, x), ow.kernel(net, xt, x), ow.kernel(net, xt)
    lam_max = float(np.linalg.eigvalsh(np.asarray(k.ntk)).max())
    lr = 0.5 * len(x) / lam_max  # top mode contracts by 1/2 per step; stable for every width here
    times = np.arange(steps + 1)
    theory = ow.predict.gradient_descent(k, kxt, y, lr=lr, steps=times, k_test_test=ktt)

    f_train = np.zeros((len(widths), n_seeds, steps + 1, len(x)))
    f_test = np.zeros((len(widths), n_seeds, steps + 1, len(xt)))
    bar = progress(total=len(widths), desc="wide-vs-kernel")
    for i, w in enumerate(widths):
        a, b = train_ensemble(net, w, x, y, xt, lr=lr, steps=steps, seeds=list(range(n_seeds)),
                              key=jax.random.fold_in(jax.random.key(seed), w))
        f_train[i], f_test[i] = np.asarray(a), np.asarray(b)
        bar.update()
    bar.close()

    # paired prediction: the infinite-width trajectory from each network's own f0
    th, thxt = np.asarray(k.ntk), np.asarray(kxt.ntk)
    paired = np.zeros_like(f_test)
    for i in range(len(widths)):
        for s in range(n_seeds):
            pred = ow.predict.gradient_descent(th, thxt, y, lr=lr, steps=[steps], f0_train=f_train[i, s, 0],
                                               f0_test=f_test[i, s, 0])
            paired[i, s, -1] = np.asarray(pred.mean_test[0])
    scale = np.sqrt(np.mean(yt**2))  # distances relative to the RMS test target
    dist = np.sqrt(np.mean((f_test[:, :, -1] - paired[:, :, -1]) ** 2, axis=-1)) / scale  # (width, seed)
    fit = fit_loglog(np.array(widths), dist, seed=seed)
    ens_mean_dist = np.sqrt(np.mean((f_test[:, :, -1].mean(1) - np.asarray(theory.mean_test[-1])) ** 2, -1)) / scale

    var_emp = f_test[-1, :, -1].var(0, ddof=1)
    var_th = np.diag(np.asarray(theory.cov_test[-1]))
    var_ratio = float(var_emp.mean() / var_th.mean())
    var_ratio_se = float(np.sqrt(2.0 / (n_seeds - 1) / len(xt)))  # chi-square, test points pooled

    loss_tr = 0.5 * np.mean((f_train - y) ** 2, -1).mean(1)  # (width, step)
    loss_te = 0.5 * np.mean((f_test - yt) ** 2, -1).mean(1)
    mtr, mte = np.asarray(theory.mean_train), np.asarray(theory.mean_test)
    ctr, cte = np.asarray(theory.cov_train), np.asarray(theory.cov_test)
    theory_loss_tr = 0.5 * (np.mean((mtr - y) ** 2, -1) + np.trace(ctr, axis1=1, axis2=2) / len(x))
    theory_loss_te = 0.5 * (np.mean((mte - yt) ** 2, -1) + np.trace(cte, axis1=1, axis2=2) / len(xt))

    ds = xr.Dataset(
        {
            "f_train": (("width", "seed", "step", "train"), f_train),
            "f_test": (("width", "seed", "step", "test"), f_test),
            "paired_prediction_test": (("width", "seed", "test"), paired[:, :, -1]),
            "distance": (("width", "seed"), dist),
            "ensemble_mean_distance": (("width",), ens_mean_dist),
            "theory_mean_test": (("step", "test"), mte),
            "theory_cov_test": (("step", "test", "test2"), cte),
            "theory_loss_train": (("step",), theory_loss_tr),
            "theory_loss_test": (("step",), theory_loss_te),
            "x_train": (("train", "feature"), x),
            "y_train": (("train",), y),
            "x_test": (("test", "feature"), xt),
            "y_test": (("test",), yt),
        },
        coords={"width": widths, "seed": list(range(n_seeds)), "step": times},
        attrs={"lr": lr, "slope": fit["slope"], "slope_se": fit["slope_se"], "variance_ratio": var_ratio,
               "variance_ratio_se": var_ratio_se, "architecture": repr(net), "parametrization": "ntp"},
    )
    ds.to_netcdf(out / "wide_vs_kernel.nc")

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    ax = axes[0]
    j = 0
    for i, w in enumerate(widths):
        if i in (0, len(widths) // 2, len(widths) - 1):
            ax.plot(times, f_test[i, 0, :, j], color=plt.cm.viridis(i / len(widths)), label=f"width {w}, seed 0")
    m, sd = mte[:, j], np.sqrt(np.maximum(cte[:, j, j], 0))
    ax.plot(times, m, "k--", label="theory mean ± sd")
    ax.fill_between(times, m - sd, m + sd, color="gray", alpha=0.25)
    ax.axhline(yt[j], color="r", lw=0.8, label="target")
    ax.set(xlabel="GD step", ylabel=f"network output f(x_test[{j}])",
           title="one test output: trained nets vs kernel theory")
    ax.legend(fontsize=7)
    ax = axes[1]
    for i, w in enumerate(widths):
        c = plt.cm.viridis(i / len(widths))
        ax.plot(times[1:], loss_tr[i, 1:], color=c, lw=1, label=f"train, width {w}" if i in (0, len(widths) - 1) else None)
        ax.plot(times[1:], loss_te[i, 1:], color=c, lw=1, ls=":")
    ax.plot(times[1:], theory_loss_tr[1:], "k--", label="theory (train)")
    ax.plot(times[1:], theory_loss_te[1:], "k-.", label="theory (test)")
    ax.set(xscale="log", yscale="log", xlabel="GD step", ylabel="ensemble-mean MSE / 2", title="loss curves (dotted: test)")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.errorbar(widths, dist.mean(1), yerr=dist.std(1, ddof=1) / np.sqrt(n_seeds), fmt="o", capsize=3,
                label="trained net vs kernel prediction (paired by f0)")
    ws = np.array([widths[0], widths[-1]], float)
    ax.plot(ws, np.exp(fit["intercept"]) * ws ** fit["slope"], "-", label=f"fit slope {fit['slope']:.2f} ± {fit['slope_se']:.2f}")
    ax.plot(ws, dist.mean(1)[0] * (ws / ws[0]) ** -0.5, "--", color="gray", label="theory: width$^{-1/2}$")
    ax.plot(widths, ens_mean_dist, "s", mfc="none", label=f"ensemble mean vs theory mean ({n_seeds} seeds)")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel="RMS distance / RMS target (test, final step)",
           title="distance to infinite-width prediction")
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(v) for v in widths])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.legend(fontsize=7)
    fig.suptitle(f"GD-trained NTP ensembles (3-layer ReLU MLP, {n_seeds} seeds per width) vs the infinite-width "
                 "NTK prediction (Lee et al. 2019)")
    fig.savefig(out / "wide_vs_kernel.png", dpi=150)
    plt.close(fig)

    print(f"wide-vs-kernel: distance to the kernel prediction ~ width^{fit['slope']:.3f} ± {fit['slope_se']:.3f} "
          f"(theory -0.5); ensemble variance / predicted variance at width {widths[-1]} = {var_ratio:.2f} "
          f"± {var_ratio_se:.2f} (theory 1)")
    return {"slope": fit["slope"], "slope_se": fit["slope_se"], "variance_ratio": var_ratio,
            "variance_ratio_se": var_ratio_se, "lr": lr, "widths": widths, "distance": dist.mean(1).tolist(),
            "files": ["wide_vs_kernel.nc", "wide_vs_kernel.png", "summary.json"]}
