"""Grokking as the transition from lazy to rich training (Kumar et al. 2023; Power et al. 2022).

Modular addition ``(a + b) mod p`` (``p = 23``, half of the ``p^2`` pairs for
training, inputs the concatenated one-hot codes) is learnt by a 2-layer MLP
with quadratic activation (width 256, muP at its own base width) trained
full-batch with AdamW (lr 0.01, decoupled weight decay 1.0) on the MSE to
one-hot targets, at several output scales ``alpha``: the trained model is
``alpha (f(w) - f(w0))`` and updates are scaled by ``1/alpha`` (``ow.train``'s
richness), so larger ``alpha`` is lazier training. Kumar et al. (2023) argue
that grokking is the delay between a fast kernel-regime fit of the training
set and the slow emergence of generalising features; the lazier the start,
the longer the delay. Measured per seed: the first recorded step at which
train accuracy passes 90% (fit) and at which test accuracy does (grok).
With this strong weight decay the network eventually decays back to zero
(both accuracies fall to chance after the peak, sooner for small alpha,
whose decay per step ``lr wd / alpha`` is larger); the grok step is the
first passage, before that collapse.
"""

from __future__ import annotations

import pathlib

import numpy as np

import owidth as ow
from owidth.experiments.sequences import modular_addition

__all__ = ["configs", "first_passing", "run", "summarize"]

P, WIDTH, LR, WD, FRACTION, THRESHOLD = 23, 256, 0.01, 1.0, 0.5, 0.9


def _square(z):
    return z * z


def configs(quick: bool) -> dict:
    if quick:
        return {"alphas": [0.35, 0.5, 0.7, 1.0], "steps": 2000, "seeds": 3, "record_every": 20}
    return {"alphas": [0.35, 0.5, 0.7, 1.0, 1.4, 2.0], "steps": 12000, "seeds": 4, "record_every": 40}


def _accuracy(x, labels):
    """Metric: accuracy of argmax(f(w) - f(w0)) (the sign-preserving alpha scale does not change it)."""
    import jax.numpy as jnp

    labels = jnp.asarray(labels)

    def fn(snap):
        f = snap.apply(snap.params, x) - snap.apply(snap.params0, x)
        return jnp.mean(jnp.argmax(f, axis=-1) == labels)

    return fn


def first_passing(acc: np.ndarray, steps: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """First step with ``acc >= threshold`` along the last axis; NaN where it never happens."""
    hit = acc >= threshold
    return np.where(hit.any(axis=-1), steps[np.argmax(hit, axis=-1)], np.nan)


def run(*, out: pathlib.Path, quick: bool, seed: int) -> dict:
    cfg = configs(quick)
    x, y, xt, yt = modular_addition(P, train_fraction=FRACTION, seed=seed)
    onehot = np.eye(P)
    net = ow.serial(ow.Dense(w_std=1.0), ow.ActivationFn(_square), ow.Dense(out=P))
    ds = ow.train(net, (x, onehot[y]), test=(xt, onehot[yt]), widths=WIDTH, lr=LR, steps=cfg["steps"],
                  param=ow.MUP.with_base_width(WIDTH), optimizer="adamw", weight_decay=WD, seeds=cfg["seeds"],
                  alpha=cfg["alphas"], loss="mse", record_every=cfg["record_every"],
                  metrics={"train_acc": _accuracy(x, y), "test_acc": _accuracy(xt, yt)})
    ds = ds.isel(width=0, lr=0)
    ds.attrs.update({"p": P, "train_fraction": FRACTION, "lr": LR, "activation": "square", "threshold": THRESHOLD,
                     "seed": seed})
    ds.to_netcdf(out / "grokking.nc")
    return summarize(ds, out)


def summarize(ds, out: pathlib.Path) -> dict:
    """Fit and grok steps per alpha (mean, std over seeds), figure and summary (also for a saved run)."""
    import matplotlib.pyplot as plt

    steps, alphas = ds.step.values, [float(a) for a in ds.alpha.values]
    fit = first_passing(ds.train_acc.values, steps)  # (seed, alpha)
    grok = first_passing(ds.test_acc.values, steps)
    total = int(steps[-1])

    def stats(v):
        return {"mean": [float(np.nanmean(c)) if np.isfinite(c).any() else None for c in v.T],
                "std": [float(np.nanstd(c)) if np.isfinite(c).any() else None for c in v.T],
                "reached": [int(np.isfinite(c).sum()) for c in v.T]}

    summary = {"alphas": alphas, "steps": total, "seeds": int(ds.sizes["seed"]), "fit_step": stats(fit),
               "grok_step": stats(grok), "delay": stats(grok - fit),
               "grok_step_per_seed": [[None if not np.isfinite(v) else float(v) for v in row] for row in grok.T]}
    # a seed that never passes 90% counts as later than any step (censored): the seed mean is then inf, and two
    # censored neighbours count as ordered
    mean_grok = np.array([np.mean(np.where(np.isfinite(c), c, np.inf)) for c in grok.T])
    summary["grok_increases_with_alpha"] = bool(all(b > a or (a == b == np.inf)
                                                    for a, b in zip(mean_grok[:-1], mean_grok[1:])))

    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    later = steps > 0  # log step axis: the first record after step 0 onwards (symlog drew straight lines to it)
    for i, a in enumerate(alphas):
        color = plt.cm.viridis(0.9 * i / max(1, len(alphas) - 1))  # viridis ends in a yellow too pale on white
        axes[0].plot(steps[later], ds.train_acc.isel(alpha=i).mean("seed")[later], "--", color=color, lw=1)
        axes[0].plot(steps[later], ds.test_acc.isel(alpha=i).mean("seed")[later], "-", color=color,
                     label=rf"$\alpha$={a:g}")
    axes[0].axhline(THRESHOLD, color="gray", ls=":", lw=1)
    handles, _ = axes[0].get_legend_handles_labels()
    handles += [Line2D([], [], color="gray", ls="-", label="test"), Line2D([], [], color="gray", ls="--", label="train"),
                Line2D([], [], color="gray", ls=":", lw=1, label=f"{THRESHOLD:.0%} threshold")]
    axes[0].legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=4)  # off the data
    axes[0].set(xscale="log", xlabel="step", ylabel="accuracy (seed mean)",
                title=f"modular addition mod {ds.attrs['p']}, 2-layer MLP, AdamW + weight decay")
    for name, marker in (("fit_step", "s"), ("grok_step", "o")):
        m, s = summary[name]["mean"], summary[name]["std"]
        ok = [i for i, v in enumerate(m) if v is not None]
        axes[1].errorbar([alphas[i] for i in ok], [m[i] for i in ok], yerr=[s[i] for i in ok], marker=marker,
                         capsize=3, label=f"train acc ≥ {THRESHOLD:.0%} (fit)" if name == "fit_step"
                         else f"test acc ≥ {THRESHOLD:.0%} (grokking)")
    axes[1].set(xscale="log", yscale="log", xlabel=r"output scale $\alpha$ (larger = lazier)",
                ylabel="first step past the threshold (mean ± std over seeds)",
                title="generalisation is delayed more the lazier the training")
    axes[1].set_xticks(alphas, [f"{a:g}" for a in alphas])
    axes[1].xaxis.set_minor_locator(plt.NullLocator())
    axes[1].legend(fontsize=8)
    fig.savefig(out / "grokking.png", dpi=150)
    plt.close(fig)
    seeds = int(ds.sizes["seed"])
    fmt = ", ".join(f"alpha={a:g}: {('never' if m is None else f'{m:.0f} ± {s:.0f}')} ({r}/{seeds} seeds)"
                    for a, m, s, r in zip(alphas, summary["grok_step"]["mean"], summary["grok_step"]["std"],
                                          summary["grok_step"]["reached"]))
    print(f"grokking: step at which test accuracy passes 90% (mean ± std over the seeds that reach it within "
          f"{total} steps): {fmt}; "
          f"increases with alpha: {summary['grok_increases_with_alpha']}")
    summary["files"] = ["grokking.nc", "grokking.png", "summary.json"]
    return summary
