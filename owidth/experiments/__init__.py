"""Named, reproducible experiments: ``owidth run NAME`` or :func:`run` from Python.

Every experiment is a function ``fn(*, out: Path, quick: bool, seed: int) ->
dict`` registered under a name. It writes its data (netCDF and a JSON
summary) and a PNG figure into ``out`` and returns the summary, which holds
the agreement figure it checks. The registry below is a constant table filled
at import time; nothing in it changes at run time.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
from typing import Callable

from owidth import _checks


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A registered experiment: ``module:function`` is imported only when run."""

    name: str
    description: str
    target: str  # "owidth.experiments.module:function"

    def load(self) -> Callable[..., dict]:
        module, fn = self.target.split(":")
        return getattr(importlib.import_module(module), fn)


_EXPERIMENTS = (
    Experiment(
        "ntk-convergence",
        "Empirical NTK of random finite ReLU MLPs -> analytic NTK; relative error ~ width^-1/2 (Jacot et al. 2018).",
        "owidth.experiments.ntk_convergence:run",
    ),
    Experiment(
        "wide-vs-kernel",
        "GD-trained NTP ensembles vs the infinite-width kernel prediction: distance ~ width^-1/2, "
        "ensemble variance vs predicted covariance (Lee et al. 2019).",
        "owidth.experiments.wide_vs_kernel:run",
    ),
    Experiment(
        "coord-check",
        "Activation coordinate sizes after 3 Adam steps vs width: flat under muP, growing under SP "
        "(Yang et al. 2022, Tensor Programs V).",
        "owidth.experiments.coord_check:run",
    ),
    Experiment(
        "mutransfer",
        "Test loss vs Adam learning rate for MLPs of width 64..2048 on digits: the best learning rate "
        "stays put under muP and drifts under SP (Yang et al. 2022).",
        "owidth.experiments.mutransfer:run",
    ),
    Experiment(
        "mutransfer-transformer",
        "Train loss vs Adam learning rate for a 1-block transformer on an order-2 Markov chain at widths 64..512: "
        "the best learning rate stays put under muP (1/d attention) and drifts under SP (Yang et al. 2022).",
        "owidth.experiments.mutransfer_transformer:run",
    ),
    Experiment(
        "depth-coord-check",
        "Residual-MLP coordinate sizes after 3 Adam steps vs depth 4..64: flat under depth-muP and CompleteP, "
        "growing under muP (Yang et al. 2023, Tensor Programs VI; Dey et al. 2025).",
        "owidth.experiments.depth_coord_check:run",
    ),
    Experiment(
        "depth-transfer",
        "Residual MLPs of depth 4..64 on digits, train loss vs Adam learning rate: the best learning rate stays put "
        "under depth-muP and CompleteP and falls with depth under muP (Yang et al. 2023; Dey et al. 2025).",
        "owidth.experiments.depth_transfer:run",
    ),
    Experiment(
        "lottery-ticket",
        "Iterative magnitude pruning with rewinding vs reinitialised, random, SNIP, GraSP and SynFlow masks on digits, "
        "density 100% .. 1%, NTP and muP: the rewound ticket keeps the dense accuracy (Frankle & Carbin 2019).",
        "owidth.experiments.lottery_ticket:run",
    ),
    Experiment(
        "eps-transfer",
        "Adam's epsilon vs width under muP: a fixed epsilon dominates the 1/n gradients of wide nets (the failure "
        "threshold falls like 1/n); scaled like the gradients it transfers (Everett et al. 2024).",
        "owidth.experiments.eps_transfer:run",
    ),
    Experiment(
        "catapult",
        "Wide NTP ReLU nets, full-batch GD at lr = c 2/lambda0: lazy for c < 1 (NTK fixed), catapult for 1 < c < ~2 "
        "(loss spike, then convergence with top NTK eigenvalue below 2/lr), divergent beyond (Lewkowycz et al. 2020).",
        "owidth.experiments.catapult:run",
    ),
    Experiment(
        "edge-of-stability",
        "Full-batch GD on tanh MLPs under SP, NTP and muP: the sharpness rises to 2/lr and hovers there, each lr at "
        "its own 2/lr, while the loss keeps falling (Cohen et al. 2021).",
        "owidth.experiments.edge_of_stability:run",
    ),
    Experiment(
        "finite-width",
        "ReLU MLPs of 1..4 hidden layers at widths 16..256: Monte Carlo output covariance and connected four-point "
        "function vs infinite width and vs the 1/n corrections (Roberts, Yaida & Hanin 2022).",
        "owidth.experiments.finite_width:run",
    ),
    Experiment(
        "grokking",
        "Modular addition with a 2-layer MLP and weight decay at several output scales alpha: the step at which "
        "test accuracy passes 90% grows as training gets lazier (Kumar et al. 2023; Power et al. 2022).",
        "owidth.experiments.grokking:run",
    ),
    Experiment(
        "hessian-spectrum",
        "Hessian spectra of trained ReLU MLPs on 2, 5 and 10 digit classes by Lanczos and SLQ: a bulk near 0 plus C - 1 "
        "outliers for cross-entropy and C for MSE, at every width (Sagun et al. 2017; Papyan 2019).",
        "owidth.experiments.hessian_spectrum:run",
    ),
    Experiment(
        "lazy-rich",
        "Width x alpha phase diagram of NTK movement under NTP and muP: the kernel freezes like 1/alpha and "
        "with width under NTP, stays O(1) under muP (Chizat et al. 2019; Yang & Hu 2021).",
        "owidth.experiments.lazy_rich:run",
    ),
    Experiment(
        "woodworth",
        "Diagonal linear nets trained from scale alpha vs argmin Q_alpha; l1 (rich) to l2 (kernel) interpolator "
        "and test error vs alpha (Woodworth et al. 2020).",
        "owidth.experiments.woodworth:run",
    ),
    Experiment(
        "learning-curves",
        "NTK ridge regression test MSE vs training-set size P on digits and the sphere vs eigenlearning theory "
        "from the kernel's eigenspectrum (Bordelon et al. 2020; Simon et al. 2021).",
        "owidth.experiments.learning_curves:run",
    ),
    Experiment(
        "double-descent",
        "Random-feature ridge regression test error vs N/P: interpolation peak at N = P, monotone at optimal "
        "ridge, vs the deterministic-equivalent theory (Mei & Montanari 2019; Simon et al. 2023).",
        "owidth.experiments.double_descent:run",
    ),
    Experiment(
        "gradient-coherence",
        "Gradient confusion and coherence of ReLU MLPs at init vs width and depth, real vs random digit labels, "
        "vs their infinite-width NTK values (Sankararaman et al. 2020; Chatterjee 2020).",
        "owidth.experiments.gradient_coherence:run",
    ),
    Experiment(
        "dmft",
        "Infinite-width feature learning: the self-consistent DMFT (exact for deep linear nets, Monte Carlo for tanh) "
        "vs muP networks of width 128..4096 at richness gamma0 in {0, 0.5, 1, 2} (Bordelon & Pehlevan 2022).",
        "owidth.experiments.dmft:run",
    ),
)
REGISTRY: dict[str, Experiment] = {e.name: e for e in _EXPERIMENTS}


def names() -> list[str]:
    """Names of the registered experiments.

    Examples:
      >>> import owidth as ow
      >>> "ntk-convergence" in ow.experiments.names()
      True
    """
    return sorted(REGISTRY)


def run(name: str, *, out: str | pathlib.Path | None = None, quick: bool = False, seed: int = 0) -> dict:
    """Run experiment ``name``; writes data + figure to ``out`` (default ``owidth-out/NAME``).

    Args:
      name: one of :func:`names`.
      out: output folder (created if needed).
      quick: a smaller configuration that finishes in under a minute on 2 CPU cores.
      seed: base random seed (data and networks).

    Returns:
      The experiment's summary (also written as ``summary.json``).

    References:
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>
      - Yang et al. 2022, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer. <https://arxiv.org/abs/2203.03466>
      - Bordelon & Pehlevan 2022, Self-Consistent Dynamical Field Theory of Kernel Evolution in Wide Neural Networks. <https://arxiv.org/abs/2205.09653>
      - Woodworth et al. 2020, Kernel and Rich Regimes in Overparametrized Models. <https://arxiv.org/abs/2002.09277>

    Examples:
      >>> import owidth as ow
      >>> ow.experiments.REGISTRY["ntk-convergence"].description
      'Empirical NTK of random finite ReLU MLPs -> analytic NTK; ...'
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(names())}")
    seed = _checks.nonneg_int("seed", seed, where=f"owidth run {name}")
    out = pathlib.Path(out) if out is not None else pathlib.Path("owidth-out") / name
    out.mkdir(parents=True, exist_ok=True)
    summary = REGISTRY[name].load()(out=out, quick=quick, seed=seed)
    summary = {"experiment": name, "quick": quick, "seed": seed, **summary}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


__all__ = ["Experiment", "REGISTRY", "names", "run"]
