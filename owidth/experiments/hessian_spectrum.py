"""The Hessian spectrum of trained classifiers: a bulk near zero and about one outlier per class (Sagun et al. 2017;
Papyan 2019, 2020), measured by Lanczos and stochastic Lanczos quadrature (Ghorbani et al. 2019).

Two-hidden-layer ReLU MLPs (NTP, widths 32..256) are trained by full-batch gradient descent on balanced subsets
of scikit-learn's digits with ``C`` = 2, 5 and 10 classes (the digits ``0..C-1``, 240 points), once with softmax
cross-entropy and once with one-hot MSE. At the trained parameters the top 30 eigenvalues of the training loss's
Hessian come from :func:`ow.curvature.lanczos` and its whole density from
:func:`ow.curvature.spectral_density`; the outliers are the eigenvalues above the largest gap in ``log lambda``
among the top 25 (:func:`outliers`). A single-start Lanczos run holds one Krylov vector per eigenspace, so an
exactly repeated eigenvalue shows up once (further copies only through rounding); the trained networks' outliers
are distinct (e.g. MSE, C = 5, width 64, full run: 0.692, 0.633, 0.618, 0.523, 0.472, then the bulk from
0.095), so the count is not limited by it. ``tests/experiments/test_hessian_spectrum.py`` checks the mechanism
below in closed form on a linear classifier.

Theory: the Hessian of ``L = (1/N) sum_i l(f(x_i), y_i)`` splits into the Gauss-Newton part and a residual,

    H = G + R,   G = (1/N) sum_i J_i^T A_i J_i,   A_i = d^2 l / df^2,   R = (1/N) sum_i sum_c (dl/df_c) d^2 f_c / dtheta^2,

with ``J_i = df(x_i)/dtheta`` (C x D). For MSE ``A_i = I_C``; for softmax cross-entropy
``A_i = diag(p_i) - p_i p_i^T``, which annihilates the all-ones vector (adding a constant to every logit
changes nothing), so ``rank A_i <= C - 1``. The readout block shows where the outliers come from exactly: the
output is linear in the readout weights ``W`` (C x n), ``J_i = I_C (x) h_i^T`` for the last features ``h_i``, and

    H_WW = (1/N) sum_i A_i (x) h_i h_i^T        (no residual term).

ReLU features share a large mean ``h_bar`` (they are non-negative), so to leading order
``H_WW ~ A_bar (x) h_bar h_bar^T`` (``A_bar`` the mean of ``A_i``) plus a bulk from the fluctuations: ``C``
outliers for MSE (``A_bar = I_C``; the class means of the features and of the logit gradients split them,
Papyan 2019, 2020) and at most ``C - 1`` for cross-entropy (``A_bar 1 = 0``). This is a sketch, not a proof:
the hidden-layer blocks and ``R`` add to the readout block, and well-fit points (``p_i`` near one-hot, so
``A_i -> 0``) drop out of the cross-entropy sum. The prediction checked here is ``C - 1`` outliers for
cross-entropy and ``C`` for MSE, at every width; the rest of the ``D ~ 3e3..8e4`` eigenvalues form a bulk
near 0 (Sagun et al. 2017).

Measured (full run: 1000 GD steps at lr 0.5, widths 32, 64, 128, 256, i.e. D = 3.1e3..8.4e4 parameters, seed
0; 369 s and 390 s on 2 shared CPU cores, identical results): 23 of the 24 (loss, C, width) networks have
exactly the predicted count.
Cross-entropy: 1, 4, 9 outliers for C = 2, 5, 10 at all four widths, the gap ``lambda_9 / lambda_10`` at C = 10
growing with width (4.0, 4.9, 6.0, 8.0). MSE: 2, 5, 10 at widths 64..256 (C = 10 gap 4.5, 5.3, 7.4), 5 and 10
at width 32 (C = 10 gap only 1.5), and the one miss, 4 at C = 2, width 32 (top eigenvalues 0.46, 0.36, 0.13,
0.082, then 0.025: two eigenvalues between the outliers and the bulk). The SLQ density integrates to 1 within
3e-7 and its largest node equals Lanczos's top eigenvalue within 1.2e-6 (relative) for every network. Under NTP
the cross-entropy outliers shrink with width (top eigenvalue 0.45, 0.28, 0.18, 0.11 at C = 10) while the MSE
ones stay put (0.59, 0.71, 0.58, 0.51). Train accuracy 1.0 (C = 2), 0.99-1.0 (C = 5), 0.91-0.97 (C = 10).
Quick run (width 64, 300 steps, 4 SLQ probes; 34 s): 1, 4, 9 (cross-entropy) and 2, 5, 10 (MSE), gaps 3.9-7.9.

References:
  - Sagun, Evci, Guney, Dauphin & Bottou 2017, Empirical Analysis of the Hessian of Over-Parametrized Neural
    Networks. <https://arxiv.org/abs/1706.04454>
  - Papyan 2019, Measurements of Three-Level Hierarchical Structure in the Outliers in the Spectrum of Deepnet
    Hessians. <https://arxiv.org/abs/1901.08244>
  - Papyan 2020, Traces of Class/Cross-Class Structure Pervade Deep Learning Spectra.
    <https://arxiv.org/abs/2008.11865>
  - Ghorbani, Krishnan & Xiao 2019, An Investigation into Neural Net Optimization via Hessian Eigenvalue
    Density. <https://arxiv.org/abs/1901.10159>
"""

from __future__ import annotations

import pathlib
import time

import numpy as np

import owidth as ow
from owidth.experiments._common import digits

__all__ = ["run", "outliers", "expected", "balanced", "CLASSES", "LOSSES", "TOP", "SEARCH", "LR", "POINTS"]

CLASSES = (2, 5, 10)
LOSSES = ("xent", "mse")
TOP = 30  # Lanczos eigenvalues per network
SEARCH = 25  # the outlier gap is looked for among the top SEARCH eigenvalues (the last Ritz values converge last)
LR = 0.5
POINTS = 240  # training points for every C (divisible by 2, 5, 10: balanced classes)


def expected(loss: str, classes: int) -> int:
    """The predicted number of outliers: ``C - 1`` for softmax cross-entropy (``A_i 1 = 0``), ``C`` for MSE."""
    if loss not in LOSSES:
        raise ValueError(f"expected: loss must be one of {LOSSES}, got {loss!r}")
    return classes - 1 if loss == "xent" else classes


def outliers(eigs, *, search: int = SEARCH) -> tuple[int, float]:
    """The number of outliers in the descending top eigenvalues ``eigs``: those above the largest gap in
    ``log lambda`` among the first ``search`` positive ones, and that gap as a ratio ``lambda_k / lambda_k+1``.

    Examples:
      >>> from owidth.experiments.hessian_spectrum import outliers
      >>> outliers([9.0, 8.0, 7.0, 0.5, 0.4, 0.3])
      (3, 14.0)
    """
    eigs = np.asarray(eigs, dtype=float)
    pos = eigs[eigs > 0][:search]
    if pos.size < 2:
        raise ValueError(f"outliers: need at least 2 positive eigenvalues, got {pos.size}")
    if np.any(np.diff(pos) > 0):
        raise ValueError("outliers: eigs must be in descending order")
    k = int(np.argmin(np.diff(np.log(pos)))) + 1
    return k, float(pos[k - 1] / pos[k])


def balanced(x, labels, classes: int, points: int):
    """The first ``points / classes`` examples of each digit ``0..classes-1``, in their original order."""
    if points % classes:
        raise ValueError(f"balanced: points={points} must be divisible by classes={classes}")
    take = np.concatenate([np.flatnonzero(labels == c)[: points // classes] for c in range(classes)])
    if take.size != points:
        raise ValueError(f"balanced: fewer than {points // classes} examples of some digit below {classes}")
    take = np.sort(take)
    return x[take], labels[take]


def _spectra(loss: str, classes: int, widths, x, labels, *, steps: int, seed: int, iters: int, slq_iters: int,
             probes: int):
    """Train one net per width; return per width the top eigenvalues, the SLQ density, D, loss and accuracy."""
    import jax
    import jax.numpy as jnp

    net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=classes))
    y = labels if loss == "xent" else np.eye(classes)[labels]
    _, trained = ow.train(net, (x, y), widths=list(widths), lr=LR, steps=steps, param=ow.NTP, optimizer="sgd",
                          seeds=[seed], loss=loss, center=False, return_params=True, progress_bar=False)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    out = []
    for width in widths:
        params = jax.tree.map(lambda a: a[0, 0, 0], trained[width])  # (seed, lr, alpha) axes of one member
        model = ow.finite(net, width=width, param=ow.NTP)

        def objective(p, model=model):  # the training loss ow.train minimised (center=False, alpha=1)
            f = model.apply(p, xj)
            if loss == "mse":
                return 0.5 * jnp.mean(jnp.sum((f - yj) ** 2, axis=-1))
            return jnp.mean(jax.nn.logsumexp(f, axis=-1) - jnp.take_along_axis(f, yj[:, None], axis=-1)[:, 0])

        top = ow.curvature.lanczos(objective, params, k=TOP, iters=iters, key=jax.random.key(seed + 1)).values
        density = ow.curvature.spectral_density(objective, params, key=jax.random.key(seed + 2), iters=slq_iters,
                                                probes=probes)
        acc = float(jnp.mean(jnp.argmax(model.apply(params, xj), axis=-1) == jnp.asarray(labels)))
        dim = sum(int(a.size) for a in jax.tree.leaves(params))
        out.append((np.asarray(top), np.asarray(density.nodes), np.asarray(density.weights), dim,
                    float(objective(params)), acc))
    return out


def _grid(nodes: np.ndarray, sigma: float, points: int = 2000) -> np.ndarray:
    return np.linspace(nodes.min() - 8 * sigma, nodes.max() + 8 * sigma, points)


def _figure(ds, path: pathlib.Path) -> None:
    """The figure, from the saved Dataset alone: per loss and C the SLQ density (log y) of the narrowest and the
    widest net, the top Lanczos eigenvalues of every width (triangles: outliers, ticks: the rest of the top
    ``TOP``), and the outlier count against C."""
    import matplotlib.pyplot as plt

    widths = [int(w) for w in ds.width.values]
    shown = sorted({0, len(widths) - 1})
    fig, axes = plt.subplots(len(ds.loss), len(ds.classes) + 1, figsize=(18, 8), constrained_layout=True)
    for i, loss in enumerate(ds.loss.values):
        for j, c in enumerate(ds.classes.values):
            ax = axes[i, j]
            nodes, weights = ds.slq_nodes.values[i, j], ds.slq_weights.values[i, j]
            top, count = ds.top_eigenvalues.values[i, j], ds.outliers.values[i, j]
            lo, hi = min(nodes.min(), 0.0), nodes.max()
            sigma = 0.004 * (hi - lo)
            grid = np.linspace(lo - 5 * sigma, hi + 10 * sigma, 3000)
            for k, w in enumerate(widths):
                color = plt.cm.viridis(0.85 * k / max(1, len(widths) - 1))
                if k in shown:
                    density = ow.curvature.Density(nodes=nodes[k], weights=weights[k])
                    ax.plot(grid, np.maximum(density.smooth(grid, sigma), 1e-12), color=color, lw=1,
                            label=f"SLQ density, n={w} (D={int(ds.params.values[i, j, k])})")
                height = 10.0 ** (-9 + 0.7 * k)
                ax.plot(top[k, :count[k]], np.full(count[k], height), "v", color=color, ms=6,
                        label=f"n={w}: {count[k]} outliers, gap x{float(ds.gap_ratio.values[i, j, k]):.1f}")
                ax.plot(top[k, count[k]:], np.full(top.shape[-1] - count[k], height), "|", color=color, ms=6, alpha=0.6)
            rule = "C - 1" if loss == "xent" else "C"
            ax.set(yscale="log", ylim=(1e-10, None), xlabel="Hessian eigenvalue",
                   title=f"{loss}, C = {c}: predicted {rule} = {int(ds.predicted.values[i, j])} outliers")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7, loc="upper right")
        axes[i, 0].set_ylabel(f"{loss}: eigenvalue density (Gaussian smoothed)")
        ax = axes[i, -1]
        classes = np.asarray(ds.classes.values)
        for k, w in enumerate(widths):
            color = plt.cm.viridis(0.85 * k / max(1, len(widths) - 1))
            ax.plot(classes + 0.12 * (k - (len(widths) - 1) / 2), ds.outliers.values[i, :, k], "o", color=color,
                    label=f"n={w}")
        cs = np.array([1, 11])
        ax.plot(cs, cs, "k--", lw=0.8, label="C")
        ax.plot(cs, cs - 1, "k:", lw=0.8, label="C - 1")
        ax.set(xlabel="classes C", ylabel=f"outliers (largest log-gap in the top {SEARCH})", title=f"{loss}: outliers vs C",
               xticks=list(classes))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Hessian spectrum of trained ReLU MLPs on digits (NTP, full-batch GD): a bulk near 0 plus C - 1 "
                 "outliers for cross-entropy and C for MSE; triangles: Lanczos outliers, ticks: the rest of the top "
                 f"{ds.sizes['rank']}", fontsize=11)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import xarray as xr

    start = time.perf_counter()
    x_all, labels_all, _, _ = digits(seed)
    widths = [64] if quick else [32, 64, 128, 256]
    steps = 300 if quick else 1000
    iters, slq_iters, probes = 90, 80, (4 if quick else 8)
    shape = (len(LOSSES), len(CLASSES), len(widths))
    top = np.zeros(shape + (TOP,))
    nodes = np.zeros(shape + (probes, slq_iters))
    weights = np.zeros_like(nodes)
    dims, losses, accs = (np.zeros(shape, dtype=int), np.zeros(shape), np.zeros(shape))
    for i, loss in enumerate(LOSSES):
        for j, c in enumerate(CLASSES):
            x, labels = balanced(x_all, labels_all, c, POINTS)
            for k, row in enumerate(_spectra(loss, c, widths, x, labels, steps=steps, seed=seed, iters=iters,
                                             slq_iters=slq_iters, probes=probes)):
                top[i, j, k], nodes[i, j, k], weights[i, j, k], dims[i, j, k], losses[i, j, k], accs[i, j, k] = row
    counted = [[[outliers(top[i, j, k]) for k in range(len(widths))] for j in range(len(CLASSES))]
               for i in range(len(LOSSES))]
    count = np.array([[[v[0] for v in r] for r in m] for m in counted])
    gap = np.array([[[v[1] for v in r] for r in m] for m in counted])
    predicted = np.array([[expected(loss, c) for c in CLASSES] for loss in LOSSES])
    dims4 = ("loss", "classes", "width")
    ds = xr.Dataset({"top_eigenvalues": (dims4 + ("rank",), top),
                     "slq_nodes": (dims4 + ("probe", "node"), nodes), "slq_weights": (dims4 + ("probe", "node"), weights),
                     "outliers": (dims4, count), "gap_ratio": (dims4, gap), "predicted": (("loss", "classes"), predicted),
                     "params": (dims4, dims), "train_loss": (dims4, losses), "train_accuracy": (dims4, accs)},
                    coords={"loss": list(LOSSES), "classes": list(CLASSES), "width": widths, "rank": np.arange(TOP)},
                    attrs={"lr": LR, "steps": steps, "param": "ntp", "optimizer": "sgd (full batch)", "points": POINTS,
                           "lanczos_iters": iters, "slq_iters": slq_iters, "search": SEARCH,
                           "data": f"sklearn digits 0..C-1, {POINTS} points, balanced classes"})
    ds.to_netcdf(out / "hessian_spectrum.nc")

    # the density's mass and the SLQ top node vs Lanczos, per network
    integral = np.zeros(shape)
    top_node_rel = np.zeros(shape)
    for idx in np.ndindex(shape):
        density = ow.curvature.Density(nodes=nodes[idx], weights=weights[idx])
        sigma = 0.01 * (nodes[idx].max() - nodes[idx].min())
        grid = _grid(nodes[idx], sigma)
        integral[idx] = np.trapezoid(density.smooth(grid, sigma), grid)
        top_node_rel[idx] = abs(nodes[idx].max() - top[idx][0]) / top[idx][0]
    off = np.abs(count - predicted[:, :, None])
    exact = float((off == 0).mean())
    within_one = float((off <= 1).mean())
    seconds = time.perf_counter() - start

    _figure(ds, out / "hessian_spectrum.png")

    table = {loss: {str(c): {str(w): int(count[i, j, k]) for k, w in enumerate(widths)} for j, c in enumerate(CLASSES)}
             for i, loss in enumerate(LOSSES)}
    ok = within_one >= 0.75 and bool(np.all(np.abs(integral - 1) < 1e-3))
    print(f"hessian-spectrum: outliers (largest log-gap in the top {SEARCH}) per loss, C {list(CLASSES)}, "
          f"widths {widths}: {table}; predicted C-1 (xent) and C (mse): exact {exact:.2f}, within one {within_one:.2f}; "
          f"{seconds:.0f} s")
    return {"widths": widths, "classes": list(CLASSES), "losses": list(LOSSES), "counts": table,
            "predicted": {loss: [int(v) for v in predicted[i]] for i, loss in enumerate(LOSSES)},
            "gap_ratio": {loss: {str(c): [float(v) for v in gap[i, j]] for j, c in enumerate(CLASSES)}
                          for i, loss in enumerate(LOSSES)},
            "top_eigenvalue": {loss: {str(c): [float(v) for v in top[i, j, :, 0]] for j, c in enumerate(CLASSES)}
                               for i, loss in enumerate(LOSSES)},
            "train_accuracy": {loss: {str(c): [float(v) for v in accs[i, j]] for j, c in enumerate(CLASSES)}
                               for i, loss in enumerate(LOSSES)},
            "params": {loss: {str(c): [int(v) for v in dims[i, j]] for j, c in enumerate(CLASSES)}
                       for i, loss in enumerate(LOSSES)},
            "fraction_exact": exact, "fraction_within_one": within_one,
            "density_integral_max_error": float(np.abs(integral - 1).max()),
            "slq_top_node_vs_lanczos_max_rel": float(top_node_rel.max()),
            "counts_ok": bool(ok), "seconds": seconds,
            "files": ["hessian_spectrum.nc", "hessian_spectrum.png", "summary.json"]}
