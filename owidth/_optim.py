"""The one optimizer factory: (optimizer name, learning rate, decay, momentum, per-tensor width scales) -> optax.

``ow.train``, ``ow.coord_check`` and ``ow.scale_by_width`` all build their
optimizers here, so the same name means the same update everywhere. Every
piece is an optax transformation; nothing optax already has is rewritten.

The update of a tensor ``w`` with width multiplier ``s_w = (n / n0)^-c_role``
(:meth:`ow.Parametrization.lr_scale`) is

    sgd       -lr s_w (g + (wd / s_w) w) = -lr (s_w g + wd w)
    momentum  -lr s_w trace_beta(g + (wd / s_w) w)
    adam      -lr s_w adam(g)
    adamw     -lr (s_w adam(g) + wd w)     (decoupled decay, not width-scaled, as microsoft/mup's MuAdamW)

so the decay per step, ``lr wd w``, is the same at every width, as in microsoft/mup's MuSGD (which
multiplies a tensor's learning rate by ``s_w`` and divides its weight decay by it) and MuAdamW.

``lr`` may be a traced scalar (one compile for every learning rate).

References:
  - Yang et al. 2022, Tensor Programs V (MuSGD, MuAdam, MuAdamW). <https://arxiv.org/abs/2203.03466>
  - Kingma & Ba 2014, Adam: A Method for Stochastic Optimization. <https://arxiv.org/abs/1412.6980>
  - Loshchilov & Hutter 2017, Decoupled Weight Decay Regularization (AdamW). <https://arxiv.org/abs/1711.05101>
"""

from __future__ import annotations

from typing import Any

__all__ = ["OPTIMIZERS", "check", "decay_by", "family", "make", "scale_by"]

OPTIMIZERS = {"sgd": "sgd", "momentum": "sgd", "adam": "adam", "adamw": "adam"}
"""Optimizer names and the learning-rate rule they follow: gradient-proportional
updates ("sgd") or entrywise-normalised updates ("adam")."""


def family(optimizer: str, *, where: str) -> str:
    """``"sgd"`` or ``"adam"``: which learning-rate exponents apply to ``optimizer``."""
    if not isinstance(optimizer, str):
        raise TypeError(f"{where}: optimizer must be a string, one of {sorted(OPTIMIZERS)}, got "
                        f"{type(optimizer).__name__} {optimizer!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"{where}: optimizer={optimizer!r} is not known; use one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[optimizer]


def check(optimizer: str, *, weight_decay: float = 0.0, momentum: float = 0.9, eps: float = 1e-8,
          b1: float = 0.9, b2: float = 0.999, clip=None, schedule=None, where: str, eps_name: str = "eps",
          prefix: str = "") -> str:
    """Validate a configuration before anything is traced; returns the family.

    ``weight_decay`` must be finite and >= 0, ``momentum`` in [0, 1) (a decay of 1 or more never forgets a
    gradient), Adam's ``eps`` finite and >= 0 (``eps_name``: its name in the caller's signature). A NaN
    would otherwise surface as a "diverged" run after compiling, a negative ``eps`` as a silently wrong
    update."""
    from owidth import _checks

    fam = family(optimizer, where=where)
    _checks.nonneg_number("weight_decay", weight_decay, where=where)
    _checks.nonneg_number("momentum", momentum, where=where, below=1.0)
    _checks.nonneg_number(eps_name, eps, where=where, what=" (Adam's epsilon)")
    if weight_decay and optimizer == "adam":
        raise ValueError(f"{where}: weight_decay with optimizer='adam' is ambiguous; use optimizer='adamw' (decoupled)")
    _checks.nonneg_number(f"{prefix}b1", b1, where=where, below=1.0, what=" (Adam's first-moment decay)")
    _checks.nonneg_number(f"{prefix}b2", b2, where=where, below=1.0, what=" (Adam's second-moment decay)")
    if clip is not None:
        _checks.positive_number("clip_norm", clip, where=where, what=" (the largest global gradient norm)")
    if schedule is not None and not callable(schedule):
        raise TypeError(f"{where}: schedule must be a callable step -> multiplier of the learning rate (an optax "
                        f"schedule, e.g. optax.cosine_decay_schedule(1.0, steps)), got {schedule!r}")
    return fam


def scale_by(scales: Any):
    """optax transformation multiplying each update leaf by the matching Python float in ``scales``."""
    import jax
    import optax

    return optax.stateless(lambda updates, params: jax.tree.map(lambda u, c: u * c, updates, scales))


def decay_by(weight_decay: float, scales: Any):
    """optax transformation adding ``(weight_decay / s) w`` to each update leaf, ``s`` the matching float of
    ``scales``: an L2 penalty whose step ``lr s (wd / s) w`` does not depend on the tensor's scale ``s``."""
    import jax
    import optax

    return optax.stateless(lambda updates, params: jax.tree.map(
        lambda u, w, c: u + (weight_decay / c) * w, updates, params, scales))


def make(optimizer: str, *, lr, scales: Any, weight_decay: float = 0.0, momentum: float = 0.9, eps: float = 1e-8,
         b1: float = 0.9, b2: float = 0.999, clip=None, schedule=None, where: str = "owidth", depth_scales: Any = None,
         eps_scales: Any = None):
    """The optax transformation of ``optimizer`` with per-tensor multipliers ``scales`` and step ``lr``.

    Args:
      optimizer: ``"sgd"``, ``"momentum"``, ``"adam"`` or ``"adamw"``.
      lr: the (effective) base learning rate, a float or traced scalar.
      scales: pytree of Python floats like the parameters (``model.lr_scales(x, optimizer=...)``).
      weight_decay: L2 penalty added to the gradient (sgd, momentum) or decoupled decay (adamw).
      momentum: decay of the ``"momentum"`` trace. eps, b1, b2: Adam's epsilon and moment decays.
      clip: clip the gradient to this global norm first (``optax.clip_by_global_norm``), or None.
      schedule: a multiplier of ``lr`` per step (an optax schedule ``step -> float``), or None; it
        scales the decoupled decay of ``"adamw"`` too, as ``optax.adamw(learning_rate=schedule)``.
      depth_scales: pytree of per-tensor depth factors of the learning rate (``model.depth_scales``), or
        None. They multiply the whole step, weight decay included: the decay per step is
        ``lr wd d_w`` (independent of the width factor ``s_w``, proportional to the depth factor
        ``d_w``, as in the CompleteP reference implementation).
      eps_scales: pytree of per-tensor factors ``e_w`` of Adam's epsilon (``model.eps_scales``), or None.
        Implemented exactly by Adam's scale invariance: ``adam(g / e_w, eps) = adam(g, eps e_w)``.

    Examples:
      SGD with L2 decay: ``-lr (s_w g + wd w) = -0.1 * (4 * 1 + 0.5 * 2) = -0.5``:

      >>> import jax.numpy as jnp
      >>> from owidth import _optim
      >>> params = {"w": jnp.full((2,), 2.0)}
      >>> tx = _optim.make("sgd", lr=0.1, scales={"w": 4.0}, weight_decay=0.5)
      >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]
      [-0.5, -0.5]
    """
    import jax
    import optax

    fam = check(optimizer, weight_decay=weight_decay, momentum=momentum, eps=eps, b1=b1, b2=b2, clip=clip,
                schedule=schedule, where=where)
    parts = [] if clip is None else [optax.clip_by_global_norm(clip)]
    if weight_decay and fam == "sgd":  # L2 penalty on the gradient, wd / s_w as MuSGD: lr wd fixed across widths
        parts.append(decay_by(weight_decay, scales))
    if optimizer == "momentum":
        parts.append(optax.trace(decay=momentum))
    if fam == "adam":
        if eps_scales is not None:  # m / (sqrt(v) + eps e) of the raw gradient = adam of g / e with eps
            parts.append(scale_by(jax.tree.map(lambda e: 1.0 / e, eps_scales)))
        parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    parts.append(scale_by(scales))
    if weight_decay and optimizer == "adamw":  # decoupled: lr * wd fixed across widths, as MuAdamW
        parts.append(optax.add_decayed_weights(weight_decay))
    if depth_scales is not None:
        parts.append(scale_by(depth_scales))
    if schedule is not None:
        parts.append(optax.scale_by_schedule(schedule))
    parts.append(optax.scale(-lr))
    return optax.chain(*parts)
