"""Gradient confusion and coherence of ReLU MLPs at initialisation vs width and depth.

Per-example gradients ``g_i = grad_theta l(f(x_i), y_i)`` of the softmax
cross-entropy on 10-class digits, for ReLU MLPs in the NTK parametrisation
(:func:`ow.finite`) at initialisation, with the output centred at
initialisation (``f = f_theta - f_theta0``, so the logits start at 0, the
predicted distribution is uniform and the residual is ``r_i = 1/C - e_{y_i}``;
the gradients are those of ``f_theta``). Measured over a batch of m examples:

- gradient confusion (Sankararaman et al. 2020, Def. 2.1, here on normalised
  gradients): ``eta = max_{i != j} -cos(g_i, g_j)``, the most negative pairwise
  cosine, and the mean pairwise cosine;
- coherence (Chatterjee 2020): ``alpha = ||mean_i g_i||^2 / mean_i ||g_i||^2``,
  between 1/m (orthogonal gradients) and 1 (identical ones).

Theory (infinite width, computed from the analytic NTK Theta of :func:`ow.kernel`,
not from the sampled networks): ``<grad f_c(x_i), grad f_c'(x_j)> -> delta_cc'
Theta_ij`` (Jacot et al. 2018), hence

    <g_i, g_j> -> Theta_ij r_i . r_j = Theta_ij (delta_{y_i y_j} - 1/C),
    cos(g_i, g_j) -> Theta_ij (delta_{y_i y_j} - 1/C) / ((1 - 1/C) sqrt(Theta_ii Theta_jj)).

At finite width the cosines fluctuate around these values by O(width^-1/2),
so the most negative one over many pairs lies below its limit and the
confusion falls with width towards the limit (Sankararaman et al. 2020: wider
networks are less confused, deeper ones more). Real labels pair similar inputs
(large Theta_ij) with the same class, so they are more coherent than random
labels (Chatterjee 2020).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import owidth as ow
from owidth.experiments._common import digits, progress

__all__ = ["architecture", "stats", "theory_gram", "figure", "run"]


def architecture(depth: int, out: int = 10):
    """``depth`` hidden ReLU layers (He init, small bias), linear readout with ``out`` outputs."""
    layers = []
    for _ in range(depth):
        layers += [ow.Dense(w_std=2**0.5, b_std=0.1**0.5), ow.Relu()]
    return ow.serial(*layers, ow.Dense(out=out, w_std=1.0, b_std=0.0))


def _gram_fn(model):
    """jit'd ``(params, x, onehot) -> (m, m)`` Gram matrix of per-example cross-entropy gradients at init."""

    def loss(p, xi, yi, f0i):
        logits = model.apply(p, xi[None])[0] - f0i  # centred output: zero at initialisation
        return -jnp.sum(yi * jax.nn.log_softmax(logits))

    def gram(p, x, y):
        f0 = jax.lax.stop_gradient(model.apply(p, x))
        g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0))(p, x, y, f0)
        flat = [leaf.reshape(x.shape[0], -1) for leaf in jax.tree.leaves(g)]
        return sum(a @ a.T for a in flat)

    return jax.jit(gram)


def stats(gram: np.ndarray) -> dict:
    """Confusion (most negative off-diagonal cosine, sign flipped), mean cosine and coherence of a Gram matrix."""
    n = np.sqrt(np.diag(gram))
    cos = gram / np.outer(n, n)
    off = cos[~np.eye(len(cos), dtype=bool)]
    return {"confusion": float(-off.min()), "mean_cos": float(off.mean()),
            "coherence": float(gram.sum() / len(gram) / np.trace(gram))}


def theory_gram(theta: np.ndarray, labels: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Infinite-width Gram ``Theta_ij (delta_{y_i y_j} - 1/C)`` of per-example gradients (module docstring)."""
    return theta * ((labels[:, None] == labels[None, :]) - 1.0 / n_classes)


def figure(ds):
    """Confusion and coherence vs width from a saved run: one colour per depth, solid = real and dotted = random
    labels, the infinite-width values as horizontal lines of the same colour and style, one legend below."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    widths, depths = [int(w) for w in ds.width.values], [int(d) for d in ds.depth.values]
    n_seeds = ds.sizes["seed"]
    styles = {"real": ("-", "o"), "random": (":", "s")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    for ax, k, ylabel, title in (
            (axes[0], "confusion", r"gradient confusion  $\max_{i \neq j} -\cos(g_i, g_j)$",
             "confusion falls with width, towards its limit"),
            (axes[1], "coherence", r"coherence  $\|\mathrm{E}\,g\|^2 / \mathrm{E}\|g\|^2$",
             "coherence, real vs random labels")):
        for di, depth in enumerate(depths):
            for ln, (ls, mk) in styles.items():
                v = ds[k].sel(labels=ln, depth=depth)
                ax.errorbar(widths, v.mean("seed"), yerr=v.std("seed", ddof=1) / np.sqrt(n_seeds), fmt=mk, ls=ls,
                            color=f"C{di}", capsize=3, ms=4)
                ax.axhline(float(ds[f"theory_{k}"].sel(labels=ln, depth=depth)), color=f"C{di}", ls=ls, lw=1.2,
                           alpha=0.6)
        ax.set(xlabel="width n", ylabel=ylabel, title=title)
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        if k == "confusion":
            ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=f"C{di}", lw=2, label=f"depth {d}") for di, d in enumerate(depths)]
    handles += [Line2D([], [], color="gray", ls=ls, marker=mk, label=f"{ln} labels (mean ± SE, {n_seeds} seeds)")
                for ln, (ls, mk) in styles.items()]
    handles += [Line2D([], [], color="gray", lw=1.2, alpha=0.6, label="horizontal lines: infinite-width NTK theory")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"Per-example gradients of ReLU MLPs at init (NTP, batch of {ds.attrs['batch']} digits) vs width "
                 "(Sankararaman et al. 2020; Chatterjee 2020)", fontsize=11)
    return fig


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    import matplotlib.pyplot as plt
    import xarray as xr

    widths = [32, 64, 128, 256, 512] if quick else [32, 64, 128, 256, 512, 1024]
    depths = [1, 3] if quick else [1, 2, 4, 6]
    n_seeds, m = (4, 32) if quick else (8, 64)
    x_tr, y_tr, _, _ = digits(seed)
    x, labels = x_tr[:m], y_tr[:m]
    rand = np.random.default_rng(seed + 1).integers(0, 10, m)
    label_sets = {"real": labels, "random": rand}
    metrics = ["confusion", "mean_cos", "coherence"]

    sim = np.zeros((len(metrics), 2, len(depths), len(widths), n_seeds))
    th = np.zeros((len(metrics), 2, len(depths)))
    bar = progress(total=len(depths) * len(widths), desc="gradient-coherence")
    for di, depth in enumerate(depths):
        theta = np.asarray(ow.kernel(architecture(depth, out=1), x, get="ntk").ntk, dtype=np.float64)
        for li, lab in enumerate(label_sets.values()):
            s = stats(theory_gram(theta, lab))
            th[:, li, di] = [s[k] for k in metrics]
        for wi, w in enumerate(widths):
            model = ow.finite(architecture(depth), width=w)
            gram = _gram_fn(model)
            for s_ in range(n_seeds):
                p = model.init(jax.random.fold_in(jax.random.key(seed), 10_000 * depth + 1_000_003 * w + s_), x)
                for li, lab in enumerate(label_sets.values()):
                    g = np.asarray(gram(p, jnp.asarray(x), jnp.asarray(np.eye(10, dtype=x.dtype)[lab])), dtype=np.float64)
                    st = stats(g)
                    sim[:, li, di, wi, s_] = [st[k] for k in metrics]
            bar.update()
    bar.close()

    mean, se = sim.mean(-1), sim.std(-1, ddof=1) / np.sqrt(n_seeds)
    c = metrics.index("confusion")
    conf_drop = mean[c, 0, :, 0] - mean[c, 0, :, -1]  # (depth,) narrowest minus widest, real labels
    conf_drop_se = np.hypot(se[c, 0, :, 0], se[c, 0, :, -1])
    a = metrics.index("coherence")
    coh_gap = mean[a, 0] - mean[a, 1]  # real minus random, (depth, width)
    coh_gap_se = np.hypot(se[a, 0], se[a, 1])
    coh_dev = float((np.abs(mean[a, :, :, -1] - th[a]) / th[a]).max())  # widest nets vs infinite width

    ds = xr.Dataset(
        {k: (("labels", "depth", "width", "seed"), sim[i]) for i, k in enumerate(metrics)}
        | {f"theory_{k}": (("labels", "depth"), th[i]) for i, k in enumerate(metrics)},
        coords={"labels": list(label_sets), "depth": depths, "width": widths, "seed": np.arange(n_seeds)},
        attrs={"batch": m, "loss": "softmax cross-entropy, output centred at init", "parametrization": "ntp"},
    )
    ds.to_netcdf(out / "gradient_coherence.nc")

    fig = figure(ds)
    fig.savefig(out / "gradient_coherence.png", dpi=150)
    plt.close(fig)

    trend = "; ".join(f"depth {d}: {mean[c, 0, di, 0]:.3f} ± {se[c, 0, di, 0]:.3f} (width {widths[0]}) -> "
                      f"{mean[c, 0, di, -1]:.3f} ± {se[c, 0, di, -1]:.3f} (width {widths[-1]}), theory "
                      f"{th[c, 0, di]:.3f}" for di, d in enumerate(depths))
    print(f"gradient-coherence: confusion (real labels) {trend}; coherence real - random at width {widths[-1]}: "
          + ", ".join(f"{coh_gap[di, -1]:.4f} ± {coh_gap_se[di, -1]:.4f}" for di in range(len(depths)))
          + f"; widest-net coherence vs infinite-width theory: max deviation {100 * coh_dev:.1f}%")
    return {"widths": widths, "depths": depths, "metrics": metrics,
            "mean": mean.tolist(), "se": se.tolist(), "theory": th.tolist(),
            "confusion_drop": conf_drop.tolist(), "confusion_drop_se": conf_drop_se.tolist(),
            "coherence_gap": coh_gap.tolist(), "coherence_gap_se": coh_gap_se.tolist(),
            "coherence_relative_deviation_widest": coh_dev,
            "confusion_excess_widest": (mean[c, :, :, -1] - th[c]).tolist(),
            "files": ["gradient_coherence.nc", "gradient_coherence.png", "summary.json"]}
