"""Sequence layers: token embeddings, causal multi-head self-attention, position selection.

Sequences flow as ``(batch, length, features)``, the same channels-last
layout as 1-D spatial inputs (:mod:`owidth.layers.conv`): a ``Dense``,
``LayerNorm`` or activation acts on every position, and kernels carry
position-by-position covariances ``nngp[i, j, s, t]`` (all pairs, because
attention mixes positions). Token inputs are ``(batch, length)`` integers
(they may arrive as floats holding integers, as :func:`ow.train` passes them).

The attention-logit scale belongs to the parametrization
(:attr:`ow.Parametrization.attn`): ``1/sqrt(d)`` under SP and NTP, ``1/d``
under muP and MF (Yang et al. 2022, Tensor Programs V), all equal at the base
width. Query, key, value and output projections are hidden tensors; the
embedding table (and the learned positional embedding) input tensors.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks
from owidth.kernels.state import KState, self_var
from owidth.layers._base import Caps, Dim, Layer, WeightLayer, has_bias, init_weights
from owidth.layers.activations import Relu
from owidth.layers.attention import Attention, causal_mean  # noqa: F401 (re-exported: the sequence layers)
from owidth.layers.combinators import Residual, serial
from owidth.layers.dense import Dense
from owidth.layers.norm import LayerNorm
from owidth.param import Role

__all__ = ["Embedding", "Attention", "TakePosition", "check_tokens", "transformer"]


# --------------------------------------------------------------------------- #
# Embedding
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class Embedding(WeightLayer):
    """Token embedding (input layer): ``h[s] = w_std E[tok_s] + pos_std P[s]``.

    ``E`` (``vocab x width``) and ``P`` (``length x width``, the learned
    positional embedding; absent when ``pos_std = 0``) are input-role tensors
    with ``N(0, 1)`` entries in every preset (``a = b = 0`` for inputs), so
    coordinates are ``O(1)`` at any width. Inputs are ``(batch, length)``
    integer tokens in ``[0, vocab)``: concrete inputs holding anything else
    (``0.5``, ``-1``, ``vocab``) raise ``ValueError`` (:func:`check_tokens`);
    under a trace, where values are unknown, the kernel is NaN for them.

    Kernel rule (tokens one-hot, an input layer of fan-in 1):

        nngp(x, x')[s, t] = w_std^2 [x_s = x'_t] + pos_std^2 [s = t],      ntk = nngp

    Args:
      vocab: number of tokens.
      w_std: embedding standard deviation.
      pos_std: positional-embedding standard deviation (0: no positions).

    References:
      - Vaswani et al. 2017, Attention Is All You Need. <https://arxiv.org/abs/1706.03762>
      - Yang et al. 2022, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer. <https://arxiv.org/abs/2203.03466>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Embedding(vocab=5), ow.TakePosition(-1), ow.Dense(out=2)), width=4)
      >>> tokens = np.array([[0, 3, 1]])            # (batch, length) integer tokens
      >>> model.apply(model.init(jax.random.key(0), tokens), tokens).shape
      (1, 2)
    """

    caps = Caps(weights=True, spatial=True)
    _coord = "embedding"

    vocab: int = _checks.field(converter=_checks.positive)
    w_std: float = _checks.field(1.0, converter=_checks.std)
    pos_std: float = _checks.field(1.0, converter=_checks.std)

    def _check_tokens(self, x, *, name: str, where: str) -> None:
        """Concrete ``x`` must hold integers in ``[0, vocab)`` (a tracer passes: see :meth:`_valid`)."""
        if isinstance(x, jax.core.Tracer):
            return
        tokens = np.asarray(x)
        with np.errstate(invalid="ignore"):
            bad = ~((tokens == np.round(tokens)) & (tokens >= 0) & (tokens < self.vocab))
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            more = f" and {int(bad.sum()) - 1} more" if bad.sum() > 1 else ""
            raise ValueError(f"{where}: tokens in {name} must be integers in [0, {self.vocab}) (the vocabulary of "
                             f"Embedding(vocab={self.vocab})), got {tokens[at].item()!r} at {name}"
                             f"[{', '.join(map(str, at))}]{more}; map them to token ids, or raise vocab")

    def _valid(self, t) -> jax.Array:
        """Whether every token of (traced) ``t`` is an integer in ``[0, vocab)``."""
        return jnp.all((t == jnp.round(t)) & (t >= 0) & (t < self.vocab))

    def _kernel(self, ks: KState) -> KState:
        if not ks.is_input or ks.x1.ndim != 2:
            raise ValueError("ow.kernel: Embedding must be the first layer and get (batch, length) integer tokens")
        for name, t in (("x1", ks.x1), ("x2", ks.x2)):
            if t is not None:
                self._check_tokens(t, name=name, where="ow.kernel")
        w2, p2 = self.w_std**2, self.pos_std**2
        t1 = ks.x1
        t2 = t1 if ks.x2 is None else ks.x2
        length = t1.shape[1]
        if ks.full:
            same = (t1[:, None, :, None] == t2[None, :, None, :]).astype(t1.dtype)
            nngp = w2 * same + p2 * jnp.eye(length, dtype=t1.dtype)[None, None]
        else:
            nngp = w2 * (t1[:, None, :] == t2[None, :, :]).astype(t1.dtype) + p2
        # traced tokens cannot be checked before compiling: a kernel of non-tokens is NaN, not a silent value
        ok = self._valid(t1) & self._valid(t2)
        nngp = jnp.where(ok, nngp, jnp.nan)
        if ks.x2 is None:
            var1, var2 = self_var(nngp), None
        else:
            def var(t):
                if ks.full:
                    same = (t[:, :, None] == t[:, None, :]).astype(t.dtype)
                    return w2 * same + p2 * jnp.eye(length, dtype=t.dtype)[None]
                return jnp.full(t.shape, w2 + p2, t.dtype)

            var1, var2 = (jnp.where(ok, var(t), jnp.nan) for t in (t1, ks.x2))
        ntk = nngp if ks.need_ntk else None
        return ks.replace(x1=None, x2=None, nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=(length,),
                          gaussian=True, fixed=False, pre=None, act=None, mean1=None, mean2=None, width_mult=1)

    def _check_dim(self, dim: Dim) -> int:
        if dim.spatial:
            raise ValueError(f"Embedding: inputs must be (batch, length) tokens, got a rank-{2 + len(dim.spatial)} "
                             "array; Embedding is the first layer of a sequence network")
        return dim.size  # (batch, length): the last axis is the position

    def _init(self, key, dim, ctx):
        length = self._check_dim(dim)
        s = ctx.param.dense(Role.INPUT, fan_in=1, width=ctx.width, w_std=self.w_std, b_std=self.pos_std)
        ke, kp = jax.random.split(key)
        params = {"w": init_weights(ke, (self.vocab, ctx.width), ctx.width, s, False)["w"]}
        if has_bias(self.pos_std):
            params["pos"] = s.b_init * jax.random.normal(kp, (length, ctx.width), jnp.result_type(float))
        return params, Dim(ctx.width, True, (length,))

    def _forward(self, params, x, dim, ctx):
        length = self._check_dim(dim)
        self._check_tokens(x, name="x", where="Embedding")
        if "pos" in params and params["pos"].shape[0] != length:
            raise ValueError(f"Embedding: params were made for length {params['pos'].shape[0]}, inputs have {length}")
        s = ctx.param.dense(Role.INPUT, fan_in=1, width=ctx.width, w_std=self.w_std, b_std=self.pos_std)
        y = s.w_mult * params["w"][x.astype(jnp.int32)]
        if "pos" in params:
            y = y + s.b_mult * params["pos"][None]
        return y, Dim(ctx.width, True, (length,)), s


def check_tokens(net, x, *, name: str, where: str) -> None:
    """If ``net`` reads tokens (its input layer is an :class:`Embedding`), concrete inputs ``x`` must hold
    integers in ``[0, vocab)``: ``ValueError`` naming ``name`` and the first bad token otherwise. Other
    networks (also non-owidth ones) and traced ``x`` pass. Entry points call it before compiling
    (the layer's own rules only see traced inputs there)."""
    if not isinstance(net, Layer):
        return
    first = next((layer for layer in net.walk() if not layer.caps.transparent), None)
    if isinstance(first, Embedding):
        first._check_tokens(x, name=name, where=where)


# --------------------------------------------------------------------------- #
# Position selection
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class TakePosition(Layer):
    """``x[:, index]``: one position of a ``(batch, length, features)`` sequence (e.g. the last, to read out
    the next token after a prompt). No parameters; the kernel keeps the ``(index, index)`` covariances.

    On padded sequences (NaN positions or ``mask=``, :mod:`owidth.layers.masking`) ``index`` counts the
    valid positions only, so ``TakePosition(-1)`` reads each sequence's last valid token wherever the
    padding is: the output is that of the unpadded sequence. A sequence with fewer than ``index + 1``
    (or ``-index``) valid positions gives zero outputs (kernel entries 0).

    References:
      - Vaswani et al. 2017, Attention Is All You Need. <https://arxiv.org/abs/1706.03762>

    Examples:
      >>> import owidth as ow
      >>> net = ow.serial(ow.Embedding(vocab=3), ow.TakePosition(0), ow.Dense(out=1))
      >>> net.layers[1].index
      0
    """

    # all position pairs: with padding, inputs read different positions (the (i, j) entry is K(p_i, p_j))
    caps = Caps(spatial=True, mixes_pixels=True)

    index: int = _checks.field(-1, converter=_checks.integer)

    def _takes_padding(self) -> bool:
        return True

    def _mask_out(self, mask):
        return None

    def _positions(self, mask):
        """``(position, found)`` per input: where the ``index``-th valid position is, and whether it exists."""
        valid = ~mask
        count = jnp.sum(valid, axis=1)
        k = self.index if self.index >= 0 else count + self.index
        hit = valid & (jnp.cumsum(valid, axis=1) - 1 == jnp.reshape(k, (-1, 1)))
        return jnp.argmax(hit, axis=1), jnp.any(hit, axis=1)

    def _odd_linear(self) -> bool:
        return True

    def _check(self, length: int):
        if not -length <= self.index < length:
            raise ValueError(f"TakePosition(index={self.index}) is out of range for sequences of length {length}")

    def _kernel(self, ks: KState) -> KState:
        if ks.is_input:
            if ks.x1.ndim != 3:
                raise ValueError("ow.kernel: TakePosition needs (batch, length, features) sequences")
            self._check(ks.x1.shape[1])
            if ks.mask1 is not None:
                return ks.replace(x1=self._take_padded(ks.x1, ks.mask1), mask1=None, mask2=None,
                                  x2=None if ks.x2 is None else self._take_padded(
                                      ks.x2, ks.mask1 if ks.mask2 is None else ks.mask2))
            return ks.replace(x1=ks.x1[:, self.index], x2=None if ks.x2 is None else ks.x2[:, self.index])
        if len(ks.spatial) != 1:
            raise ValueError(f"ow.kernel: TakePosition needs a sequence, got spatial shape {ks.spatial}")
        self._check(ks.spatial[0])
        if ks.mask1 is not None:
            return self._kernel_padded(ks)
        i = self.index

        def take(c, lead):
            if c is None:
                return None
            return c[(slice(None),) * lead + ((i, i) if ks.full else (i,))]

        def take_mean(m):
            return None if m is None else m[:, i]

        var1 = take(ks.var1, 1)
        return ks.replace(nngp=take(ks.nngp, 2), ntk=take(ks.ntk, 2), var1=var1,
                          var2=take(ks.var2, 1), spatial=(), full=False, mean1=take_mean(ks.mean1),
                          mean2=take_mean(ks.mean2), pre=None, act=None)

    def _init(self, key, dim, ctx):
        if len(dim.spatial) != 1:
            raise ValueError(f"TakePosition: inputs must be (batch, length, features), got spatial shape {dim.spatial}")
        self._check(dim.spatial[0])
        return (), Dim(dim.size, dim.scales, ())

    def _kernel_padded(self, ks: KState) -> KState:
        """Per-input positions: ``K'(i, j) = K(i, p_i; j, p_j)`` (0 where an input has no such position)."""
        if not ks.full:
            raise AssertionError("owidth internal: TakePosition on padded sequences needs all position pairs")
        (p1, ok1) = self._positions(ks.mask1)
        (p2, ok2) = (p1, ok1) if ks.mask2 is None else self._positions(ks.mask2)
        n1, n2 = p1.shape[0], p2.shape[0]
        r1, r2 = jnp.arange(n1), jnp.arange(n2)

        def pair(c):
            if c is None:
                return None
            got = c[r1[:, None], r2[None, :], p1[:, None], p2[None, :]]
            return jnp.where(ok1[:, None] & ok2[None, :], got, jnp.zeros((), got.dtype))

        def own(v, p, ok):  # (n, L, L) or per-pixel (n, L)
            if v is None:
                return None
            r = jnp.arange(p.shape[0])
            got = v[r, p, p] if v.ndim == 3 else v[r, p]
            return jnp.where(ok, got, jnp.zeros((), got.dtype))

        def mean(m, p, ok):
            return None if m is None else jnp.where(ok[:, None] if m.ndim > 2 else ok,
                                                      m[jnp.arange(p.shape[0]), p], 0.0)

        return ks.replace(nngp=pair(ks.nngp), ntk=pair(ks.ntk), var1=own(ks.var1, p1, ok1),
                          var2=own(ks.var2, p2, ok2), spatial=(), full=False, mean1=mean(ks.mean1, p1, ok1),
                          mean2=mean(ks.mean2, p2, ok2), pre=None, act=None, mask1=None, mask2=None)

    def _take_padded(self, x, mask):
        pos, ok = self._positions(mask)
        got = x[jnp.arange(x.shape[0]), pos]
        return jnp.where(ok[:, None], got, jnp.zeros((), got.dtype))

    def _apply(self, params, x, dim, ctx):
        self._check(dim.spatial[0])
        if ctx.mask is not None and ctx.mask.shape == x.shape[:-1]:
            return self._take_padded(x, ctx.mask), Dim(dim.size, dim.scales, ())
        return x[:, self.index], Dim(dim.size, dim.scales, ())


# --------------------------------------------------------------------------- #
# Transformer
# --------------------------------------------------------------------------- #
def transformer(*, depth: int, heads: int, vocab: int, out: int | None = None, mlp: bool = True,
                last_only: bool = True, pos_std: float = 1.0, act: Layer | None = None):
    """A pre-LayerNorm decoder-only transformer as a width-free spec.

    ``Embedding(vocab) -> depth x [Residual(LayerNorm, Attention(heads)),
    Residual(LayerNorm, Dense, act, Dense)] -> LayerNorm -> [TakePosition(-1)]
    -> Dense(out)``. The width (model dimension, also the MLP width) is set
    by ``ow.finite(net, width=n)``; the attention-logit scale and the
    zero-query / zero-readout options by the parametrization, and under a
    depth parametrization (``ow.DEPTH_MUP``, ``ow.COMPLETEP``) the residual
    branches' multiplier ``(L / L0)^-alpha``: ``L`` counts residual branches,
    two per block with ``mlp=True``, so give ``base_depth`` in the same units.

    Args:
      depth: number of blocks. heads: attention heads per block.
      vocab: input tokens. out: output classes (default ``vocab``).
      mlp: include the MLP sub-block. act: its nonlinearity (default ``Relu()``).
      last_only: read out the last position only (outputs ``(batch, out)``),
        else every position (``(batch, length, out)``, next-token prediction).
      pos_std: positional-embedding scale (0: none; causal masking alone then
        carries order information).

    References:
      - Vaswani et al. 2017, Attention Is All You Need. <https://arxiv.org/abs/1706.03762>
      - Yang et al. 2022, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer. <https://arxiv.org/abs/2203.03466>
      - Hron et al. 2020, Infinite attention: NNGP and NTK for deep attention networks. <https://arxiv.org/abs/2006.10540>

    Examples:
      >>> import owidth as ow
      >>> net = ow.transformer(depth=2, heads=4, vocab=7)   # the width comes with ow.finite(net, width=n)
      >>> sum(isinstance(layer, ow.Attention) for layer in net.walk()), net.layers[-1].out
      (2, 7)
    """
    depth = _checks.nonneg_int("depth", depth, where="ow.transformer")
    act = Relu() if act is None else act
    layers = [Embedding(vocab, pos_std=pos_std)]
    for _ in range(depth):
        layers.append(Residual(LayerNorm(eps=1e-6), Attention(heads)))
        if mlp:
            layers.append(Residual(LayerNorm(eps=1e-6), Dense(w_std=2**0.5), act, Dense()))
    layers.append(LayerNorm(eps=1e-6))
    if last_only:
        layers.append(TakePosition(-1))
    layers.append(Dense(out=vocab if out is None else out))
    return serial(*layers)
