"""Training objectives shared by ``ow.train`` and ``ow.coord_check``: the losses and their target checks (internal).

``mse``: ``1/(2N) sum_i ||f_i - y_i||^2`` with real targets ``(N, k)``;
``xent``: softmax cross-entropy ``mean_i (logsumexp f_i - f_{i, y_i})`` with integer
labels ``(N,)`` (or ``(N, length)`` for sequence outputs ``(N, length, k)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks

__all__ = ["LOSSES", "loss_fn", "targets"]

LOSSES = ("mse", "xent")


def loss_fn(kind: str, f, y):
    """The loss ``kind`` (``"mse"`` or ``"xent"``) of outputs ``f`` against targets ``y`` (checked by :func:`targets`).

    Examples:
      >>> import jax.numpy as jnp
      >>> from owidth._objective import loss_fn
      >>> f = jnp.array([[1.0, 0.0], [0.0, 0.0]])
      >>> round(float(loss_fn("mse", f, jnp.zeros((2, 2)))), 4)   # (1 + 0) / (2 * 2)
      0.25
      >>> round(float(loss_fn("xent", f, jnp.array([0, 1]))), 4)  # (log(e + 1) - 1 + log 2) / 2
      0.5032
    """
    if kind == "mse":
        return 0.5 * jnp.mean(jnp.sum((f - y) ** 2, axis=-1))
    logz = jax.nn.logsumexp(f, axis=-1)  # labels (N,) or (N, length) for sequence outputs
    return jnp.mean(logz - jnp.take_along_axis(f, y[..., None], axis=-1)[..., 0])


def targets(name: str, y, n: int, loss: str, *, where: str) -> jax.Array:
    """``y`` checked against ``n`` inputs and ``loss``: integer labels for xent, ``(n, k)`` floats for mse."""
    y = np.asarray(y)
    if y.shape[:1] != (n,):
        raise ValueError(f"{where}: {name} has {y.shape[0] if y.ndim else 'no'} rows but the inputs have {n}")
    if loss == "xent":
        if y.ndim not in (1, 2) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{where}: loss='xent' needs integer class labels of shape ({n},) (or ({n}, length) for "
                             f"sequence outputs), got {y.dtype} {y.shape}")
        return jnp.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"{where}: loss='mse' needs targets of shape ({n},) or ({n}, k), got {y.shape}")
    return _checks.as_float_array(name, y, where=where)
