"""Synthetic sequence tasks that ship with the library (no download): Markov chains and modular arithmetic."""

from __future__ import annotations

import numpy as np

__all__ = ["markov_chain", "modular_addition"]


def markov_chain(seed: int, *, vocab: int = 16, length: int = 8, n: int = 512, order: int = 2,
                 concentration: float = 0.3):
    """Sequences of a random order-``order`` Markov chain, for next-token prediction.

    The transition law ``p(x_t | x_{t-order}, ..., x_{t-1})`` is drawn once from
    ``Dirichlet(concentration)`` per context (seeded), so predicting well needs
    the previous ``order`` tokens: with ``order = 2`` a model must attend to
    the token before the current one. Contexts are drawn uniformly.

    Returns:
      ``(x, y, entropy)``: ``x`` (n, length) input tokens, ``y`` (n, length)
      next tokens (``y[:, t] = x[:, t + 1]`` shifted), and the chain's
      conditional entropy in nats (the best achievable loss after the first
      ``order`` positions).
    """
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(vocab, concentration), size=(vocab,) * order)
    seq = np.empty((n, length + 1), np.int64)
    seq[:, :order] = rng.integers(0, vocab, (n, order))
    for t in range(order, length + 1):
        p = probs[tuple(seq[:, t - order + i] for i in range(order))]  # (n, vocab)
        u = rng.random((n, 1))
        seq[:, t] = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), vocab - 1)
    entropy = float(-np.mean(np.sum(probs * np.log(np.where(probs > 0, probs, 1.0)), axis=-1)))
    return seq[:, :-1], seq[:, 1:], entropy


def modular_addition(p: int, *, train_fraction: float, seed: int):
    """All pairs ``(a, b)`` of ``Z_p`` with label ``(a + b) mod p``, split at random (seeded).

    Returns ``x_train, y_train, x_test, y_test``: inputs are the concatenated
    one-hot codes of ``a`` and ``b`` (``2p`` features), labels integers.
    """
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    eye = np.eye(p, dtype=np.float32)
    x = np.concatenate([eye[a], eye[b]], axis=1)
    y = (a + b) % p
    order = np.random.default_rng(seed).permutation(p * p)
    n = int(round(train_fraction * p * p))
    return x[order[:n]], y[order[:n]], x[order[n:]], y[order[n:]]
