"""Infinite-width feature learning: the self-consistent DMFT of Bordelon & Pehlevan (2022).

``ow.dmft(net, x, y, gamma0=, lr=, steps=)`` gives the ``width -> inf`` limit of what

    ow.train(net, (x, y), widths=n, lr=lr, steps=steps, param=ow.MUP (or ow.MF), optimizer="sgd",
             gamma0=gamma0, center=True)

trains: full-batch gradient descent, in discrete time, on ``L = 1/(2P) sum_mu (F_mu - y_mu)^2``
with ``F = (f - f_0) / gamma0`` and learning rate ``lr gamma0^2`` times the muP per-layer
multipliers. Bordelon & Pehlevan (NeurIPS 2022, "Self-consistent dynamical field theory of
kernel evolution in wide neural networks", eqs. 9-12) write the same limit in continuous time.

Constants (derived in the mean-field form, which equals ``MUP`` by the abc symmetry): for
``net = serial(Dense(w_std=s_1), act, ..., Dense(w_std=s_L), act, Dense(out=1, w_std=s_{L+1}))``
at base width ``n0`` the network is ``h^1 = s_1 W^0 x / sqrt(D)``, ``h^{l+1} = s_{l+1} W^l phi(h^l)
/ sqrt(n)``, ``f = s_{L+1} sqrt(n0) / n  w . phi(h^L)`` with ``N(0, 1)`` weights and every weight
trained with learning rate ``lr gamma0^2 n / n0``. Then, with ``c = gamma0 lr s_{L+1} / sqrt(n0)``
and ``c_out = s_{L+1} sqrt(n0)`` (B&P's convention is ``n0 = 1``, ``s = 1``, where ``c = gamma0 lr``):

* preactivations ``h^l_mu(t)``, backward fields ``z^l`` (``g^l = phi'(h^l) z^l``, ``z^L = w`` the
  readout weight), kernels ``Phi^l(t, s) = <phi(h^l(t)) phi(h^l(s))^T>``, ``G^l = <g^l g^l^T>``;
* the single-site equations of :mod:`owidth.meanfield.nonlinear` (function space) and
  :mod:`owidth.meanfield.linear` (weight space, exact for ``phi(h) = h``), with the response
  functions ``A^l = <d phi^l / d r^l>``, ``B^l = <d g^{l+1} / d u^{l+1}>`` of the hidden-to-hidden
  weights (B&P eq. 12, in discrete time);
* the output ``F_mu(t) = (c_out / gamma0) <z^L(t) phi(h^L_mu(t)) - z^L(0) phi(h^L_mu(0))>`` and the
  NTK ``K(t) = s_{L+1}^2 [Phi^L + sum_{l<L} s_{l+1}^2 G^{l+1} Phi^l + s_1^2 G^1 K^x](t, t)``,
  ``K^x = x x'^T / D``, which at ``t = 0`` is ``ow.kernel(net, x).ntk``.

As ``gamma0 -> 0`` the fields stop moving (corrections ``O(gamma0^2)``) and
``F(t + 1) = F(t) + lr / P K(0) (y - F(t))``: ``ow.predict.gradient_descent(K(0), ..., lr=lr)``.

Deep linear networks: the two-time equations are solved exactly (no sampling) in one causal
sweep forward in time (:func:`owidth.meanfield.linear.sweep`): every field is linear in the
Gaussian sources, so it is carried as coefficients over them, each kernel entry ``(t, s)`` is a
quadratic form of coefficient rows at times ``<= t``, and the response functions are the
coefficients themselves. ``method="picard"`` keeps the earlier solver as an independent
cross-check: Picard iteration on the whole trajectory with a learning horizon that grows by one
step per iteration, so at least ``steps`` iterations (they agree to the iteration's tolerance:
2e-12 on outputs at P = T = 100).

Nonlinear networks, two Monte Carlo solvers; independent replicas give the error bars:

* ``"monte-carlo"`` (:mod:`owidth.meanfield.nonlinear`): one causal sweep forward in time over
  sampled neurons with independent (population) Gaussian sources and exact pathwise response
  functions. The responses cost ``O(S_r (T Q)^2)`` memory and ``O(S_r (T Q)^3)`` time, which
  bounds it to ``T Q`` of about two thousand on a CPU.
* ``"population"`` (:mod:`owidth.meanfield.population`): pairs of interacting populations of
  ``n`` and ``n/2`` neurons (width-n muP networks in weight space, whose weights carry the
  responses implicitly), Richardson-extrapolated in ``1/n``: error ``O(n^-2)`` plus the
  replicas' standard error, cost ``O(L n^2 T Q)``, no ``(T Q)^2`` arrays. P = T = 100 (tanh, 2
  hidden layers) takes 13.6 s on 2 CPU cores, and muP networks of widths 512..4096 approach it
  (RMS distance ~ width^-0.43, ``benchmarks/dmft_width.py``). Biases, C outputs, cross-entropy and residual
  blocks (with a depth parametrization's branch multiplier) come for free: the populations are
  networks.

There is no exact method for nonlinear networks at that scale on a CPU: the exact-response
sweep's measured time grows like ``T^2.0-2.3`` and ``P^1.3-1.9`` (2 hidden layers, 1000 samples,
64 response samples; P = 20, T = 100: 47 s and a 9.0 GiB peak; ``benchmarks/dmft.py``), and
its ``S_r (T Q)^3`` operation count is ``6.6e13`` at P = T = 100. Deep linear networks with
biases and C outputs (mse or cross-entropy) are solved exactly by the sweep.

References:
  - Bordelon & Pehlevan 2022, Self-Consistent Dynamical Field Theory of Kernel Evolution in Wide
    Neural Networks (eqs. 9-12). <https://arxiv.org/abs/2205.09653>
  - Yang & Hu 2021, Tensor Programs IV (muP and the abc symmetry). <https://arxiv.org/abs/2011.14522>
  - Mei, Montanari & Nguyen 2018, A Mean Field View of the Landscape of Two-Layer Neural Networks.
    <https://arxiv.org/abs/1804.06561>
  - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel (the ``gamma0 -> 0`` limit).
    <https://arxiv.org/abs/1806.07572>
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks
from owidth._progress import progress
from owidth.meanfield import _spec, linear, nonlinear, population
from owidth.param import MUP, Parametrization

__all__ = ["DMFTConvergenceError", "DMFTResult", "dmft"]


class DMFTConvergenceError(RuntimeError):
    """The self-consistent iteration did not reach ``tol`` within ``max_iter`` iterations.

    Also raised when the infinite-width dynamics produce non-finite values (too large a learning rate).
    The Picard deep-linear solver (``method="picard"``) needs at least ``steps`` iterations (one
    step of the trajectory per iteration), so a smaller ``max_iter`` cannot converge.

    References:
      - Bordelon & Pehlevan 2022, Self-Consistent Dynamical Field Theory of Kernel Evolution in
        Wide Neural Networks. <https://arxiv.org/abs/2205.09653>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
      >>> y = np.array([1.0, -1.0, 0.0, 1.0])
      >>> net = ow.serial(ow.Dense(), ow.Identity(), ow.Dense(out=1))
      >>> ow.dmft(net, x, y, gamma0=0.5, lr=0.5, steps=2, method="picard", max_iter=1)
      Traceback (most recent call last):
      ...
      owidth.meanfield.DMFTConvergenceError: ow.dmft: no convergence after max_iter=1 iterations (last residual ...
      >>> issubclass(ow.DMFTConvergenceError, RuntimeError)
      True
    """


class _Diverged(DMFTConvergenceError):
    """Non-finite values during the iteration (retried with more damping when damping is automatic)."""


@dataclasses.dataclass(frozen=True)
class DMFTResult:
    """Infinite-width training dynamics (numpy arrays; ``tau = steps + 1`` times ``0..steps``).

    Attributes:
      f_train, f_test: (tau, P) and (tau, M) network outputs ``F`` (``f_test`` None without test
        points); with C > 1 outputs (tau, P, C) and (tau, M, C).
      train_loss, test_loss: (tau,) ``1/(2P) sum ||F - y||^2`` or the mean softmax cross-entropy
        (test: with ``y_test``, else None).
      phi, g: (L, tau, P, P) equal-time feature kernels ``Phi^l(t, t)`` and gradient kernels
        ``G^l(t, t)`` on the training points, ``l = 1..L``; with C > 1 outputs ``g`` is
        (L, tau, P, P, C, C), ``G^l_kk'``: the backward fields of outputs ``k`` and ``k'``.
      ntk: (tau, P, P) the NTK ``K(t)`` on the training points; (tau, P, P, C, C) with C > 1.
      phi_two_time, g_two_time: (L, tau, P, tau, P) two-time kernels (``g_two_time`` with trailing
        (C, C) for C > 1), or None when ``tau P > two_time_limit`` or the solver does not keep them
        (population).
      f_train_se, f_test_se, train_loss_se, phi_se: Monte Carlo standard errors (spread of
        independent replicas / sqrt(replicas)); zeros for the exact linear solver.
      method: ``"exact-linear"`` (one sweep), ``"picard-linear"``, ``"monte-carlo"`` or ``"population"``. iterations,
        residual, converged: the Picard iteration's (the sweeps: 1, 0.0, True).
      gamma0, lr, steps, samples, replicas, damping: the settings (damping: the one that converged;
        0 for the Monte Carlo sweep).
      batches: (steps, B) the minibatch schedule, or None for full-batch gradient descent.

    References:
      - Bordelon & Pehlevan 2022, Self-Consistent Dynamical Field Theory of Kernel Evolution in
        Wide Neural Networks. <https://arxiv.org/abs/2205.09653>

    Examples:
      A deep linear network, 4 points, 2 steps (solved exactly). At ``t = 0`` the centred output is 0,
      so the loss is ``sum y^2 / (2P) = 3/8``:

      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
      >>> y = np.array([1.0, -1.0, 0.0, 1.0])
      >>> net = ow.serial(ow.Dense(), ow.Identity(), ow.Dense(out=1))
      >>> r = ow.dmft(net, x, y, gamma0=0.5, lr=0.5, steps=2, progress_bar=False)
      >>> r.method, r.converged, r.times
      ('exact-linear', True, array([0, 1, 2]))
      >>> r.f_train.shape, r.phi.shape, r.g.shape, r.ntk.shape, r.phi_two_time.shape
      ((3, 4), (1, 3, 4, 4), (1, 3, 4, 4), (3, 4, 4), (1, 3, 4, 3, 4))
      >>> round(float(r.train_loss[0]), 4)
      0.375
    """

    f_train: np.ndarray
    f_test: np.ndarray | None
    train_loss: np.ndarray
    test_loss: np.ndarray | None
    phi: np.ndarray
    g: np.ndarray
    ntk: np.ndarray
    phi_two_time: np.ndarray | None
    g_two_time: np.ndarray | None
    f_train_se: np.ndarray
    f_test_se: np.ndarray | None
    train_loss_se: np.ndarray
    phi_se: np.ndarray
    method: str
    iterations: int
    residual: float
    converged: bool
    gamma0: float
    lr: float
    steps: int
    samples: int
    replicas: int
    damping: float
    batches: np.ndarray | None = None

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.steps + 1)

    def to_xarray(self):
        """``xarray.Dataset`` over ``(step, layer, train, train2, test)`` and, with C > 1 outputs, ``(out, out2)``."""
        import xarray as xr

        L = self.phi.shape[0]
        o = ("out",) if self.f_train.ndim == 3 else ()
        oo = ("out", "out2") if o else ()
        v = {
            "f_train": (("step", "train") + o, self.f_train),
            "f_train_se": (("step", "train") + o, self.f_train_se),
            "train_loss": (("step",), self.train_loss),
            "train_loss_se": (("step",), self.train_loss_se),
            "phi": (("layer", "step", "train", "train2"), self.phi),
            "phi_se": (("layer", "step", "train", "train2"), self.phi_se),
            "g": (("layer", "step", "train", "train2") + oo, self.g),
            "ntk": (("step", "train", "train2") + oo, self.ntk),
        }
        if self.f_test is not None:
            v["f_test"] = (("step", "test") + o, self.f_test)
            v["f_test_se"] = (("step", "test") + o, self.f_test_se)
        if self.test_loss is not None:
            v["test_loss"] = (("step",), self.test_loss)
        attrs = {k: getattr(self, k) for k in ("method", "iterations", "residual", "gamma0", "lr", "steps",
                                                   "samples", "replicas", "damping")}
        attrs["converged"] = int(self.converged)
        return xr.Dataset(v, coords={"step": self.times, "layer": np.arange(1, L + 1)}, attrs=attrs)


def _loss(f, y, loss):
    """``1/(2P) sum ||F - y||^2`` (mse) or ``mean_mu (logsumexp F_mu - F_mu . y_mu)`` (xent, one-hot y), over the
    last two axes ``(P, C)``."""
    if loss == "mse":
        return 0.5 * np.mean(np.sum((f - y) ** 2, axis=-1), axis=-1)
    m = f.max(-1, keepdims=True)
    logz = m[..., 0] + np.log(np.exp(f - m).sum(-1))
    return np.mean(logz - np.sum(f * y, axis=-1), axis=-1)


def _schedule(batch_size, batches, p, steps, seed, dtype, *, where):
    """The minibatch schedule ``(steps, B)`` (or None) and the weights ``wt`` (steps + 1, P) of each point in each
    step's gradient: ``1/P`` full batch, else the point's count in the step's batch over ``B``."""
    if batch_size is not None and batches is not None:
        raise ValueError(f"{where}: give batch_size (a schedule drawn from seed) or batches (your schedule), not both")
    if batch_size is not None:
        batch_size = _checks.positive_int("batch_size", batch_size, where=where)
        if batch_size > p:
            raise ValueError(f"{where}: batch_size={batch_size} exceeds the {p} training points")
        if batch_size < p:
            rng = np.random.default_rng([seed, 0xBA7C4])
            batches = np.stack([rng.choice(p, batch_size, replace=False) for _ in range(steps)])
    wt = np.full((steps + 1, p), 1.0 / p, dtype)
    if batches is None:
        return None, wt
    b = np.asarray(batches)
    if b.ndim != 2 or b.shape[0] != steps or not np.issubdtype(b.dtype, np.integer) or b.min() < 0 or b.max() >= p:
        raise ValueError(f"{where}: batches must be integer training indices in [0, {p}) of shape (steps={steps}, B), "
                         f"one minibatch per step; got {b.dtype} {b.shape}")
    for t, idx in enumerate(b):
        wt[t] = np.bincount(idx, minlength=p) / b.shape[1]
    return b, wt


def _targets(name, y, n, out, loss, dtype, *, where):
    """Targets as (n, C) floats: mse targets (``(n,)`` allowed for one output) or one-hot xent labels."""
    if loss == "xent":
        lab = np.asarray(y)
        if out < 2:
            raise ValueError(f"{where}: loss='xent' needs a readout with 2 or more outputs (ow.Dense(out=C)), "
                             f"got out={out}")
        if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0 or lab.max() >= out:
            raise ValueError(f"{where}: loss='xent' needs integer class labels in [0, {out}) of shape ({n},) for "
                             f"{name}, got {lab.dtype} {lab.shape}")
        return np.eye(out, dtype=dtype)[lab]
    y = np.asarray(_checks.finite_values(name, y, where=where), dtype=dtype)
    if y.ndim == 1 and out == 1:
        y = y[:, None]
    if y.shape != (n, out):
        raise ValueError(f"{where}: {name} must have shape ({n}, {out})" + (f" or ({n},)" if out == 1 else "")
                         + f" for a readout with {out} output(s), got {y.shape}")
    return y


def dmft(net, x_train, y_train, *, gamma0: float, lr: float, steps: int, param: Parametrization = MUP,
         x_test=None, y_test=None, method: str = "auto", samples: int | None = None, response_samples: int = 256,
         replicas: int | None = None, damping: float | None = None, tol: float | None = None, max_iter: int | None = None,
         seed: int = 0, two_time_limit: int = 2000, loss: str = "mse", batch_size: int | None = None, batches=None,
         progress_bar: bool = True) -> DMFTResult:
    """Solve the infinite-width (DMFT) training dynamics of an MLP under muP / mean-field scaling.

    Args:
      net: ``ow.serial(ow.Dense(w_std=., b_std=.), act, ..., ow.Dense(out=C, w_std=., b_std=.))``;
        ``act`` an elementwise activation (``ow.Identity()`` for a deep linear network); a hidden
        step ``act, ow.Dense()`` may be a residual block ``ow.Residual(act, ow.Dense(), scale=)``
        (its branch multiplied by ``param.depth_multiplier(L)``, its tensors' learning rate by
        ``param.depth_lr_scale(L)``). With two or more hidden layers the monte-carlo solver needs
        smooth activations (not the Relu family: its pathwise response functions would miss the
        delta function in ``phi''``). Biases, C > 1 outputs, ``loss="xent"`` and residual blocks:
        the exact sweep and the population solver.
      x_train: (P, D) inputs; y_train: mse targets (P,) or (P, C), or (``loss="xent"``) integer
        class labels (P,) in ``[0, C)`` (NaN or Inf in either raises ``ValueError``).
      gamma0: richness (> 0; ``gamma0 -> 0`` is the NTK limit). lr: the base learning rate ``eta0``.
      steps: number of gradient-descent steps T.
      param: ``ow.MUP`` or ``ow.MF`` at any base width (the limit depends on the base width
        through ``c`` and ``c_out``, see the module docstring), or one with their width exponents
        and a depth exponent (``ow.DEPTH_MUP``, ``ow.COMPLETEP``) for residual blocks.
      x_test, y_test: optional test points (outputs, and the test loss when ``y_test`` is given).
      method: ``"exact"`` (deep linear networks only: deterministic, no sampling, one causal
        sweep), ``"picard"`` (the same equations by Picard iteration, the cross-check),
        ``"monte-carlo"`` (exact pathwise responses), ``"population"`` (extrapolated finite
        populations; any activation, kinked ones included) or ``"auto"``: exact when every
        activation is ``Identity``, else monte-carlo, or population when
        monte-carlo would not fit in memory or cannot solve the net (2+ hidden layers of a kinked
        activation, biases, C > 1 outputs, xent, residual blocks); ``result.method`` says which ran.
      samples: Monte Carlo neurons per replica, default 2000 (population: the larger width ``n``,
        default 256; the smaller is ``n // 2``). response_samples: how many of them carry the
        pathwise response Jacobians (monte-carlo only). replicas: independent replicas, default 4
        (population: pairs, default 64); the result is their mean and the ``*_se`` fields their
        spread / sqrt(replicas). That is the
        statistical error. The monte-carlo sweep also has a bias of order ``1 / samples``
        (measured on a small linear net: about 1e-3 on outputs of order 0.5 at 1000 samples,
        1e-4 at 8000), which replicas do not reveal: raise ``samples`` for it. The population
        estimate's bias is ``O(1 / samples^2)``; its standard error falls like
        ``(samples * replicas)^-1/2`` at a cost ``~ samples^2 replicas``, so small populations and
        many replicas buy accuracy cheapest (tanh, P = T = 100, RMS standard error of the outputs
        and time: samples 1024 x 16 replicas 0.0045 in 33 s, 256 x 256 0.0022 in 65 s, 128 x
        1024 0.0016 in 146 s; their outputs agree within these errors).
      damping, tol, max_iter: the fixed-point iteration of ``method="picard"`` (the sweeps have
        no iteration and refuse them).
        damping: ``state <- damping state + (1 - damping) map(state)``; default 0, retried with
        0.5 and 0.8 when the iteration produces non-finite values. tol: default 1e-10 (float64)
        or 1e-5 (float32; float64, ``jax_enable_x64``, is recommended: near ``gamma0 = 0`` the
        output is ``O(gamma0)`` field changes divided by ``gamma0``), the largest change of
        outputs (relative to ``max |y|``) and kernels (relative to their largest entry) in one
        iteration. max_iter: default ``(3 steps + 100) / (1 - damping)``; exceeding it raises
        :class:`DMFTConvergenceError` with the last residual.
      seed: random seed of the Monte Carlo sources.
      two_time_limit: store two-time kernels when ``(steps + 1) P`` is at most this.
      batch_size, batches: minibatch SGD along one fixed schedule, the DMFT of that schedule:
        ``batch_size`` draws it from ``seed`` (each step ``batch_size`` distinct points),
        ``batches`` gives it, ``(steps, B)`` integer indices of the training points (repeats
        count twice). Step t's gradient is the mean over its batch. ``ow.train(batch_size=)``
        draws a different schedule per seed, so its ensemble mean averages over schedules too.
        Not with ``method="picard"``. The result keeps the schedule (``batches``).
      loss: ``"mse"`` (``1/(2P) sum ||F - y||^2``) or ``"xent"`` (softmax cross-entropy, C >= 2; the
        exact sweep and the population solver), as ``ow.train(loss=...)``: the DMFT's error signal
        is ``Delta = -P dLoss/dF``, ``y - F`` or ``onehot(y) - softmax(F)``.
      progress_bar: a tqdm bar over the Monte Carlo replicas (also silenced by OWIDTH_NO_PROGRESS=1).

    Returns:
      :class:`DMFTResult`.

    Cost (``benchmarks/dmft.py``, 2 CPU cores, float64, 2 hidden layers, solve after compilation):

    * deep linear (the sweep): ``O(L^2 T^3 D^3)``, independent of P; P = T = 100, D = 8 in 0.75 s
      (Picard: 104 iterations, 22 s); memory ``O(L^2 T^2 D^2)``, plus ``O(L T P^2)`` for the
      returned equal-time kernels (P = 1000: 33 s and an 11 GiB peak, nearly all of it those).
    * monte-carlo (one replica, Q = train + test points): ``O(S (T Q)^2 + S^2 T Q)`` for the fields
      and kernels and ``O(S_r (T Q)^3)`` for the response Jacobians, memory ``O(S T Q + S^2 + S_r
      (T Q)^2)``. With 1000 samples and 64 response samples: P = 10, T = 100 in 12.3 s (2.7 GiB
      peak); P = 20, T = 100 in 47 s (9.0 GiB); P = 40, T = 50 in 31 s (9.3 GiB); measured time
      ``~ T^2.0-2.3`` and ``~ P^1.3-1.9``. P = T = 100 would need ``6.6e13`` operations and 102 GiB
      of Jacobians: the solver refuses, before compiling, problems whose estimated peak exceeds
      80% of the machine's memory, naming the largest that fit.
    * population: ``O(L samples^2 T Q)`` per replica pair, memory ``O(L samples^2 + L T P^2)`` per
      replica in flight; P = T = 100 with samples 1024 and 8 replicas in 13.6 s (1.9 GiB peak,
      output standard errors up to 0.014), P = 200, T = 100 in 32 s (5.9 GiB).

    References:
      - Bordelon & Pehlevan 2022, Self-Consistent Dynamical Field Theory of Kernel Evolution in
        Wide Neural Networks (eqs. 9-12, here in discrete time). <https://arxiv.org/abs/2205.09653>
      - Yang & Hu 2021, Tensor Programs IV (the muP limit). <https://arxiv.org/abs/2011.14522>
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel (``K(0)`` and the ``gamma0 -> 0`` limit).
        <https://arxiv.org/abs/1806.07572>

    Examples:
      A deep linear network ``f = w . W x / sqrt(D)`` on 4 points: its NTK at ``t = 0`` is
      ``ow.kernel(net, x).ntk = 2 x x^T / D = x x^T``:

      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
      >>> y = np.array([1.0, -1.0, 0.0, 1.0])
      >>> net = ow.serial(ow.Dense(), ow.Identity(), ow.Dense(out=1))
      >>> r = ow.dmft(net, x, y, gamma0=0.5, lr=0.5, steps=2, progress_bar=False)
      >>> r.f_train.shape, r.ntk.shape
      ((3, 4), (3, 4, 4))
      >>> bool(np.allclose(r.ntk[0], ow.kernel(net, x).ntk))
      True

      As ``gamma0 -> 0`` the dynamics are kernel gradient descent ``F(t + 1) = F(t) + lr/P K(0) (y - F(t))``:
      ``x^T y = (2, -2)`` gives ``F(1) = (1/4, -1/4, 0, 1/2)``, then ``F(2) = (13/32, -13/32, 0, 13/16)``:

      >>> lazy = ow.dmft(net, x, y, gamma0=1e-4, lr=0.5, steps=2, progress_bar=False)
      >>> [round(float(v), 5) for v in lazy.f_train[2]]   # 5 digits: 13/32 = 0.40625 exactly
      [0.40625, -0.40625, 0.0, 0.8125]
      >>> [round(float(v), 4) for v in lazy.train_loss]   # 3/8, 11/64, (2 (19/32)^2 + (3/16)^2) / 8
      [0.375, 0.1719, 0.0925]
    """
    plan = _plan(**locals())  # plan (checked arguments), run (the solver), assemble (the result)
    return _assemble(plan, _run(plan))


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
    """:func:`dmft`'s arguments, checked: the parsed network, the data as numpy arrays and the solver's settings."""

    mlp: Any
    x: np.ndarray
    y: np.ndarray
    xt: np.ndarray | None
    yt: np.ndarray | None
    loss: str
    batches: np.ndarray | None  # (steps, B) training indices of each step's minibatch, None for full batch
    wt: np.ndarray  # (steps + 1, P) each point's weight in step t's gradient
    gamma0: float
    lr: float
    steps: int
    solver: str  # "exact-linear", "picard-linear", "monte-carlo" or "population"
    samples: int
    response_samples: int
    replicas: int
    dampings: tuple[float, ...]
    tol: float
    max_iter: int | None
    seed: int
    two_time_limit: int
    progress_bar: bool


def _plan(net, x_train, y_train, *, gamma0, lr, steps, param, x_test, y_test, method, samples, response_samples,
          replicas, damping, tol, max_iter, seed, two_time_limit, loss, batch_size, batches, progress_bar) -> _Plan:
    """Check :func:`dmft`'s arguments before anything is compiled."""
    where = "ow.dmft"
    mlp = _spec.parse(net, param, where=where)
    gamma0 = _checks.positive_number("gamma0", gamma0, where=where)
    lr = _checks.positive_number("lr", lr, where=where)
    steps = _checks.positive_int("steps", steps, where=where)
    x = np.asarray(_checks.as_float_array("x_train", x_train, where=where, rank=2))
    if loss not in ("mse", "xent"):
        raise ValueError(f"{where}: loss={loss!r} is not known; use 'mse' or 'xent' (softmax cross-entropy)")
    y = _targets("y_train", y_train, x.shape[0], mlp.out, loss, x.dtype, where=where)
    xt = None
    if x_test is not None:
        xt = np.asarray(_checks.as_float_array("x_test", x_test, where=where, rank=2))
        _checks.same_feature_shape("x_train", x, "x_test", xt, where=where)
    yt = None
    if y_test is not None:
        if xt is None:
            raise ValueError(f"{where}: y_test needs x_test")
        yt = _targets("y_test", y_test, xt.shape[0], mlp.out, loss, x.dtype, where=where)
    if method not in ("auto", "exact", "picard", "monte-carlo", "population"):
        raise ValueError(f"{where}: method={method!r} is not known; use 'auto', 'exact', 'picard', 'monte-carlo' or "
                         "'population'")
    if method in ("exact", "picard") and not mlp.linear:
        raise ValueError(f"{where}: method={method!r} needs a deep linear network (every activation ow.Identity()); "
                         "use method='monte-carlo' for nonlinear networks")
    for name, v in (("samples", samples), ("response_samples", response_samples), ("replicas", replicas)):
        if v is not None:
            _checks.positive_int(name, v, where=where)
    mc_samples = samples or 2000
    exact = method in ("exact", "picard") or (method == "auto" and mlp.linear)
    kinked = sorted({type(a).__name__ for a in mlp.acts if not getattr(a, "_smooth", True)}) if mlp.depth >= 2 else []
    q = x.shape[0] + (0 if xt is None else xt.shape[0])
    too_big = _memory_verdict(mlp, samples=mc_samples, response_samples=min(response_samples, mc_samples),
                              tau=steps + 1, q=q, itemsize=x.dtype.itemsize, where=where)
    if mlp.residual and method in ("picard", "monte-carlo"):
        raise ValueError(f"{where}: residual blocks are solved by method='exact' (deep linear) or 'population' "
                         f"(or 'auto'), not method={method!r}")
    general = mlp.out > 1 or loss != "mse" or mlp.biases  # what only the sweep and the populations solve
    if general and method in ("picard", "monte-carlo"):
        raise ValueError(f"{where}: method={method!r} solves one output, loss='mse' and no biases; for {mlp.out} "
                         f"output(s), loss={loss!r}{' and biases' if mlp.biases else ''} use method='exact' (deep "
                         "linear) or 'population'")
    if exact:
        solver = "picard-linear" if method == "picard" else "exact-linear"
    elif method == "population" or (method == "auto" and (kinked or too_big or general or mlp.residual)):
        solver = "population"
    else:
        solver = "monte-carlo"
        if too_big:
            raise MemoryError(too_big + "; or use method='population', which needs no response Jacobians")
        if kinked:
            raise ValueError(
                f"{where}: the Monte Carlo response functions are pathwise derivatives of phi'(h) z, which miss the "
                f"delta function in phi'' of a kinked activation ({', '.join(kinked)}), so the DMFT of a network with "
                "2+ hidden layers would be biased; use a smooth activation (ow.Tanh, ow.Erf, ow.Gelu, ow.Sin, ...). "
                "One hidden layer has no response functions and accepts any activation; method='population' "
                "(a population extrapolated in its size) accepts any activation.")
    given = [k for k, v in (("damping", damping), ("tol", tol), ("max_iter", max_iter)) if v is not None]
    if given and method != "picard":
        raise ValueError(
            f"{where}: {', '.join(given)} set the Picard iteration of method='picard' (the deep-linear cross-check); "
            + ("the exact deep-linear solver is one causal sweep over time and has no iteration"
               if exact else f"the {solver} solver is one sweep over time and has no iteration (its accuracy "
               "is set by samples and replicas)"))
    if damping is None:
        dampings = (0.0, 0.5, 0.8)
    else:
        if not 0 <= damping < 1:
            raise ValueError(f"{where}: damping must lie in [0, 1), got {damping!r}")
        dampings = (float(damping),)
    if solver == "population":
        samples, replicas = samples or 256, replicas or 64
        if samples < 4:
            raise ValueError(f"{where}: method='population' needs samples >= 4 (populations of samples and "
                             f"samples // 2 neurons), got {samples}")
    else:
        samples, replicas = mc_samples, replicas or 4
    if tol is None:
        tol = 1e-10 if x.dtype == np.float64 else 1e-5
    tol = _checks.positive_number("tol", tol, where=where)
    if max_iter is not None:
        max_iter = _checks.positive_int("max_iter", max_iter, where=where)
    batches, wt = _schedule(batch_size, batches, x.shape[0], steps, seed, x.dtype, where=where)
    if batches is not None and solver == "picard-linear":
        raise ValueError(f"{where}: method='picard' trains full batch; use method='exact' for a minibatch schedule")
    return _Plan(mlp=mlp, x=x, y=y, xt=xt, yt=yt, loss=loss, batches=batches, wt=wt, gamma0=gamma0, lr=lr, steps=steps, solver=solver, samples=samples,
                 response_samples=min(response_samples, samples), replicas=replicas, dampings=dampings, tol=tol,
                 max_iter=max_iter, seed=seed, two_time_limit=two_time_limit, progress_bar=progress_bar)


def _run(p: _Plan) -> dict:
    """Solve with the plan's solver: the exact sweep, the Picard iteration (retried with more damping), the
    Monte Carlo replicas or the populations."""
    common = dict(mlp=p.mlp, x=p.x, y=p.y[:, 0], xt=p.xt, gamma0=p.gamma0, lr=p.lr, steps=p.steps,
                  two_time_limit=p.two_time_limit)  # one output, mse: the Picard and Monte Carlo solvers
    if p.solver == "exact-linear":
        try:
            out = _solve_linear(**dict(common, y=p.y), loss=p.loss, wt=p.wt)
        except _Diverged as err:
            raise DMFTConvergenceError(str(err)) from None
        out.update(damping=0.0, replicas=1, samples=0)
        return out
    if p.solver == "picard-linear":
        for k, damp in enumerate(p.dampings):
            cap = p.max_iter or int((3 * p.steps + 100) / (1 - damp))
            try:
                out = _solve_linear(**common, picard=dict(damping=damp, tol=p.tol, max_iter=cap))
                break
            except _Diverged as err:
                if k == len(p.dampings) - 1:
                    raise DMFTConvergenceError(
                        str(err) + (f" (tried damping {p.dampings})" if len(p.dampings) > 1 else ""))
        out.update(damping=damp, replicas=1, samples=0)
        return out
    where = "ow.dmft"
    if p.solver == "population":
        return _solve_population(p)
    moments, extra = _Moments(p.y, p.loss), {}
    with progress(total=p.replicas, desc=f"{where} replicas", enabled=p.progress_bar) as bar:
        for r in range(p.replicas):
            rep = _solve_mc(**common, wt=p.wt, samples=p.samples, response_samples=p.response_samples,
                            key=jax.random.fold_in(jax.random.key(p.seed), r))
            extra = {k: rep.pop(k) for k in ("iterations", "residual")}
            moments.add({k: v[None] for k, v in rep.items()})
            bar.update(1)
    out = dict(moments.finish(p.x.dtype), **extra)
    out.update(damping=0.0, replicas=p.replicas, samples=p.samples)
    return out


def _assemble(p: _Plan, out: dict) -> DMFTResult:
    """The :class:`DMFTResult` of a solve: outputs split into train and test, losses, kernels, settings."""
    n = p.x.shape[0]
    f = out["f"]  # (tau, Q, C); kernels with trailing (C, C) output axes, dropped for one output
    f_train, f_test = f[:, :n], (f[:, n:] if p.xt is not None else None)
    train_loss = _loss(f_train, p.y, p.loss)
    test_loss = None if p.yt is None else _loss(f_test, p.yt, p.loss)
    if p.mlp.out == 1:
        f, f_train, f_test = f[..., 0], f_train[..., 0], None if f_test is None else f_test[..., 0]
        out = {k: (v[..., 0, 0] if k in ("g", "ntk", "g2") else v[..., 0] if k == "f_se" else v)
               for k, v in out.items()}
    return DMFTResult(
        f_train=f_train, f_test=f_test, train_loss=train_loss,
        test_loss=test_loss, phi=out["phi"], g=out["g"],
        ntk=out["ntk"], phi_two_time=out.get("phi2"), g_two_time=out.get("g2"),
        f_train_se=out["f_se"][:, :n], f_test_se=None if p.xt is None else out["f_se"][:, n:],
        train_loss_se=out["loss_se"], phi_se=out["phi_se"], method=p.solver,
        iterations=out["iterations"], residual=out["residual"], converged=True, gamma0=p.gamma0, lr=p.lr,
        steps=p.steps, samples=out["samples"], replicas=out["replicas"], damping=out["damping"], batches=p.batches)


def _residual(new, old):
    res = 0.0
    for k in new:
        if new[k].size == 0:
            continue
        scale = max(float(jnp.max(jnp.abs(new[k]))), 1e-300)
        if k in ("beta", "f"):
            scale = 1.0
        res = max(res, float(jnp.max(jnp.abs(new[k] - old[k]))) / scale)
    return res


def _iterate(step, st, *, steps, damping, tol, max_iter, yscale):
    res = math.inf
    for it in range(max_iter):
        horizon = min(steps, it + 1)
        new, extra = step(st, horizon)
        res = _residual({k: v / (yscale if k in ("beta", "f") else 1.0) for k, v in new.items()},
                        {k: v / (yscale if k in ("beta", "f") else 1.0) for k, v in st.items()})
        if not math.isfinite(res) or not all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(new)):
            raise _Diverged(
                f"ow.dmft: non-finite values at iteration {it + 1} (horizon {horizon} steps): either the "
                "infinite-width gradient descent itself diverges (lower lr; larger gamma0 needs a smaller lr) or the "
                "iteration does (use damping, e.g. 0.5)")
        st = new if damping == 0 else jax.tree.map(lambda a, b: damping * a + (1 - damping) * b, st, new)
        if horizon == steps and res < tol:
            return st, extra, it + 1, res
    raise DMFTConvergenceError(
        f"ow.dmft: no convergence after max_iter={max_iter} iterations (last residual {res:.3g} > tol={tol:g}); "
        "raise max_iter, add damping (e.g. 0.5), or loosen tol")


def _solve_linear(*, mlp, x, y, xt, gamma0, lr, steps, two_time_limit, picard=None, loss="mse", wt=None):
    """The exact deep-linear DMFT: one causal sweep (y: (P, C)), or (``picard`` = dict(damping, tol, max_iter);
    y: (P,), one output, mse) Picard iteration."""
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    tau, d = steps + 1, x.shape[1]
    c = gamma0 * lr * mlp.w_std[-1] / math.sqrt(mlp.base_width)
    if picard is None:
        st = linear.sweep(mlp, c, gamma0, xj, yj, jnp.asarray(wt), tau=tau, loss=loss, lr=lr)
        if not all(bool(jnp.all(jnp.isfinite(v))) for v in st.values()):
            raise _Diverged("ow.dmft: non-finite values: the infinite-width gradient descent diverges; lower lr "
                            "(larger gamma0 needs a smaller lr)")
        its, res = 1, 0.0
    else:
        st = linear.initial_state(mlp, tau, d, xj.dtype)
        yscale = max(float(np.max(np.abs(y))), 1e-12)

        def step(st, horizon):
            new, _ = linear.iterate(mlp, st, c, gamma0, xj, yj, horizon)
            return new, None

        st, _, its, res = _iterate(step, st, steps=steps, yscale=yscale, **picard)
        st = dict(st, beta=st["beta"][:, None], G=st["G"][:, :, None, :, None],  # one output, no biases
                  offset=jnp.zeros((tau, 1)))
    xa = x if xt is None else np.concatenate([x, xt])
    if mlp.biases:  # affine fields: coefficients over x~ = (x, 1)
        x, xa = (np.concatenate([a, np.ones((a.shape[0], 1), a.dtype)], axis=1) for a in (x, xa))
    beta = np.asarray(st["beta"])  # (tau, C, d)
    f = np.einsum("tkd,qd->tqk", beta, xa) + np.asarray(st["offset"])[:, None, :]
    m = np.asarray(st["M"])  # (L, tau, d, tau, d)
    gk = np.asarray(st["G"])  # (L, tau, C, tau, C)
    ti = np.arange(tau)
    m_eq = m[:, ti, :, ti, :]  # (tau, L, d, d)
    m_eq = np.moveaxis(m_eq, 0, 1)
    phi = np.einsum("pd,ltde,qe->ltpq", x, m_eq, x)
    g_eq = np.moveaxis(gk[:, ti, :, ti, :], 0, 1)  # (L, tau, C, C)
    p = x.shape[0]
    g = g_eq[:, :, None, None] * np.ones((1, 1, p, p, 1, 1))  # backward fields do not depend on the input
    out = {"f": f, "phi": phi, "g": g, "ntk": _ntk(mlp, phi, g, x[:, :d]), "iterations": its, "residual": res,
           "f_se": np.zeros_like(f), "loss_se": np.zeros(tau), "phi_se": np.zeros_like(phi)}
    if tau * p <= two_time_limit:
        out["phi2"] = np.einsum("pd,ltdse,qe->ltpsq", x, m, x)
        out["g2"] = np.einsum("ltksm,pq->ltpsqkm", gk, np.ones((p, p)))
    return out


def _memory_verdict(mlp, *, samples, response_samples, tau, q, itemsize, where):
    """Why a Monte Carlo solve (exact responses) would not fit, or None: its estimated peak exceeds 80% of
    the machine's memory. The message gives the size and the largest problems that fit: the most steps at
    these points, the most points at these steps, and the largest ``P = T``."""
    def need(tau, q):  # peak RSS measured at 2.5-3x the carried arrays
        return 3 * nonlinear.memory_bytes(mlp, samples=samples, response_samples=response_samples, tau=tau, q=q,
                                          itemsize=itemsize)

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    budget = 0.8 * total
    if jax.default_backend() != "cpu" or need(tau, q) <= budget:
        return None

    def largest(fits):  # the largest k >= 0 with fits(k), fits monotone decreasing
        lo, hi = 0, 1
        while fits(hi):
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    t_max = largest(lambda t: need(t + 1, q) <= budget)
    q_max = largest(lambda n: need(tau, n) <= budget)
    square = largest(lambda n: need(n + 1, n) <= budget)
    return (
        f"{where}: the Monte Carlo DMFT with (steps + 1) * points = {tau * q}, samples={samples} and "
        f"response_samples={response_samples} needs about {need(tau, q) / 2**30:.1f} GiB (this machine has "
        f"{total / 2**30:.1f} GiB; the limit is 80%); the response Jacobians hold response_samples * "
        "((steps + 1) * points)^2 numbers per hidden-to-hidden weight and direction. What fits with these samples: "
        f"steps <= {t_max} at {q} points, or <= {q_max} points (train + test) at steps={tau - 1}, or P = T = "
        f"{square}; lower response_samples for more")


def _ntk(mlp, phi, g, x):
    """``K_{kk'}(t)`` (tau, P, P, C, C) on the training points from equal-time kernels ``phi`` (L, tau, P, P) and
    ``g`` (L, tau, P, P, C, C): ``s_{L+1}^2 [delta_kk' Phi^L + sum_l s_{l+1}^2 G^{l+1}_kk' Phi^l + s_1^2 G^1_kk' K^x]``."""
    s, b = mlp.w_std, mlp.beta
    L = mlp.depth
    kx = x @ x.T / x.shape[1]
    eye = np.eye(g.shape[-1], dtype=phi.dtype)
    k = phi[L - 1][..., None, None] * eye
    for l in range(L - 1):
        _, m, lr = mlp.branch(l + 1)  # a residual branch: multiplier^2 times its learning-rate factor
        k = k + m**2 * lr * g[l + 1] * (s[l + 1] ** 2 * phi[l] + b(l + 1) ** 2)[..., None, None]
    k = k + g[0] * (s[0] ** 2 * kx + b(0) ** 2)[None, :, :, None, None]
    return s[-1] ** 2 * k + b(L) ** 2 * eye  # hidden biases (inside), the readout bias


def _solve_mc(*, mlp, x, y, xt, gamma0, lr, steps, wt, samples, response_samples, two_time_limit, key):
    xa = x if xt is None else np.concatenate([x, xt])
    p, q, tau = x.shape[0], xa.shape[0], steps + 1
    kx = jnp.asarray(xa @ xa.T / xa.shape[1])
    c = gamma0 * lr * mlp.w_std[-1] / math.sqrt(mlp.base_width)
    eps = nonlinear.draws(key, mlp, samples, q, kx.dtype)
    st = nonlinear.solve(mlp, eps, c, gamma0, kx, jnp.asarray(y), jnp.asarray(wt), tau=tau, p=p,
                         response_samples=response_samples)
    st = {k: np.asarray(v) for k, v in st.items()}
    if not all(np.all(np.isfinite(v)) for v in st.values()):
        first = int(np.argmax(~np.all(np.isfinite(st["f"]), axis=1))) if not np.all(np.isfinite(st["f"])) else steps
        raise DMFTConvergenceError(
            f"ow.dmft: non-finite values from step {first} on: the infinite-width gradient descent diverges; "
            "lower lr (larger gamma0 needs a smaller lr)")
    L = mlp.depth
    ti = np.arange(tau)
    phi4 = st["Phi"].reshape(L, tau, q, tau, q)
    g4 = st["G"].reshape(L, tau, q, tau, q)
    phi = phi4[:, ti, :p, ti, :p].transpose(1, 0, 2, 3)
    g = g4[:, ti, :p, ti, :p].transpose(1, 0, 2, 3)[..., None, None]  # one output
    out = {"f": st["f"][..., None], "phi": phi, "g": g, "ntk": _ntk(mlp, phi, g, x), "iterations": 1,
           "residual": 0.0}
    if tau * p <= two_time_limit:
        out["phi2"] = phi4[:, :, :p, :, :p]
        out["g2"] = g4[:, :, :p, :, :p, None, None]
    return out


def _solve_population(p: _Plan) -> dict:
    """Populations of width ``n = samples`` and ``n // 2``, ``replicas`` of each, Richardson-extrapolated in 1/n.

    Replicas run vmapped in chunks of about 2^27 numbers (1 GiB in float64: weights, fields and the
    recorded kernels)."""
    xa = p.x if p.xt is None else np.concatenate([p.x, p.xt])
    xj, yj = jnp.asarray(xa), jnp.asarray(p.y)
    sizes = (p.samples // 2, p.samples)
    q, tau, L, n, C = len(xa), p.steps + 1, p.mlp.depth, p.samples, p.mlp.out
    words = 3 * L * n**2 + 4 * L * n * (p.x.shape[1] + q * C) + 3 * tau * L * p.x.shape[0] ** 2 * (1 + C * C)
    chunk = max(1, min(p.replicas, 2**27 // words))  # weights, fields and the recorded kernels of both sizes
    keys = jax.random.split(jax.random.key(p.seed), p.replicas)  # both sizes: common random numbers
    moments = _Moments(p.y, p.loss)
    with progress(total=p.replicas, desc="ow.dmft populations", enabled=p.progress_bar) as bar:
        for start in range(0, p.replicas, chunk):
            ks = keys[start:start + chunk]
            small, big = (jax.vmap(lambda k, n=n: population.simulate(
                p.mlp, k, xj, yj, jnp.asarray(p.wt), gamma0=p.gamma0, lr=p.lr, n=n, nest=sizes[1], steps=p.steps,
                p=p.x.shape[0], loss=p.loss))(ks) for n in sizes)
            est = {k: np.asarray(2 * big[k] - small[k]) for k in big}  # paired Richardson: 2 X(n) - X(n/2)
            if not np.all(np.isfinite(est["f"])):
                raise DMFTConvergenceError("ow.dmft: non-finite values in the populations: the gradient descent "
                                           "diverges; lower lr (larger gamma0 needs a smaller lr)")
            moments.add(est)
            bar.update(len(ks))
    out = moments.finish(p.x.dtype)
    out["ntk"] = _ntk(p.mlp, out["phi"], out["g"], p.x)
    out.update(iterations=1, residual=0.0, damping=0.0, replicas=p.replicas, samples=p.samples)
    return out


class _Moments:
    """Running means of independent replicas' arrays, with standard errors of outputs, ``phi`` and the train loss.

    Sums are kept in float64 (``add`` takes a dict of arrays with a leading replica axis), so memory
    does not grow with the number of replicas."""

    def __init__(self, y, loss):
        self.y, self.loss, self.r, self.sums, self.squares, self.losses = y, loss, 0, {}, {}, []

    def add(self, batch: dict) -> None:
        for k, v in batch.items():
            v = np.asarray(v, dtype=np.float64)
            self.sums[k] = self.sums.get(k, 0.0) + v.sum(0)
            if k in ("f", "phi"):
                self.squares[k] = self.squares.get(k, 0.0) + (v**2).sum(0)
        self.losses += list(_loss(np.asarray(batch["f"])[:, :, :len(self.y)], self.y, self.loss))
        self.r += len(batch["f"])

    def finish(self, dtype) -> dict:
        r = self.r
        out = {k: (v / r).astype(dtype) for k, v in self.sums.items()}

        def se(k):
            if r < 2:
                return np.full(np.shape(out[k]), np.nan, dtype)
            var = np.maximum(self.squares[k] - self.sums[k] ** 2 / r, 0.0) / (r - 1)
            return np.sqrt(var / r).astype(dtype)

        out["f_se"], out["phi_se"] = se("f"), se("phi")
        out["loss_se"] = (np.std(self.losses, axis=0, ddof=1) / math.sqrt(r) if r > 1
                          else np.full(len(self.losses[0]), np.nan)).astype(dtype)
        return out
