"""Multi-head self-attention on ``(batch, length, features)`` sequences and its infinite-width kernels.

Three logit scalings (:attr:`Attention.logits`), each with its own limit:

* ``"param"`` (default): the parametrization's logit scale
  (:meth:`ow.Parametrization.attn_scale`); the kernel is the limit of
  vanishing logits (``attn > 1/2``, e.g. muP's ``1/d``): uniform attention.
* ``"tied"``: neural-tangents' ``GlobalSelfAttention(linear_scaling=True)``:
  one matrix for queries and keys, logits ``q . k / d``. The logits converge
  to ``qk_std^2`` times the input covariance, and attention stays
  non-uniform, deterministic given the input (Hron et al. 2020, Sec. 3.1).
* ``"gaussian"``: independent queries and keys, logits ``q . k / sqrt(d)``
  (NT's ``linear_scaling=False``): the logits stay ``O(1)`` Gaussian; the
  output covariance is an expectation over them, closed form for the
  identity mechanism, a Monte Carlo estimate over logit samples otherwise
  (Hron et al. 2020, Thm 3).

Kernels are on position pairs: ``nngp[i, j, s, t]`` (see
:mod:`owidth.layers.sequence`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks
from owidth.kernels.state import KState, self_var
from owidth.layers import masking
from owidth.layers._base import Caps, Dim, FiniteCtx, WeightLayer, enter_weights, has_bias, init_weights, zero_padding
from owidth.param import Role

__all__ = ["Attention", "causal_mean"]

MECHANISMS = ("softmax", "identity", "relu", "abs")
POS_EMBS = ("none", "sum", "concat")
LOGITS = ("param", "tied", "gaussian")
_CAPS = Caps(weights=True, spatial=True, mixes_pixels=True, attention=True)
_CAPS_FIXED_SCALE = dataclasses.replace(_CAPS, attention=False)  # the logit scale does not come from `attn`


def _choice(options):
    def convert(cls: str, name: str, value):
        if value not in options:
            raise ValueError(f"{cls}({name}={value!r}) must be one of {', '.join(map(repr, options))}")
        return value
    return convert


def _optional_function(cls: str, name: str, value):
    return None if value is None else _checks.function(cls, name, value)


def _p_norm(cls: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{cls}({name}={value!r}) must be a finite float > 0")
    return float(value)


def causal_mean(length: int, dtype) -> jax.Array:
    """``M[s, s'] = 1 / (s + 1)`` for ``s' <= s``, else 0: uniform causal averaging."""
    tri = jnp.tril(jnp.ones((length, length), dtype))
    return tri / jnp.sum(tri, axis=1, keepdims=True)


def _mask(length: int, causal: bool) -> np.ndarray:
    return np.tril(np.ones((length, length), bool)) if causal else np.ones((length, length), bool)


def _key_masks(causal: np.ndarray, padding):
    """Allowed (query, key) pairs ``(n, L, L)`` of each input: ``causal`` and the key not padding
    (``padding`` (n, L), True = padding); ``causal`` itself without padding."""
    return causal if padding is None else jnp.asarray(causal)[None] & ~padding[:, None, :]


def _weights(z, mask, mechanism: str):
    """Attention weights ``G = mechanism(z)`` on the last axis, zero where ``mask`` is False (a row with
    no allowed entry, a padding query's under causal masking, is all zero, with finite gradients)."""
    mask = jnp.broadcast_to(mask, z.shape)
    if mechanism == "softmax":
        return jnp.where(mask, jax.nn.softmax(jnp.where(mask, z, jnp.finfo(z.dtype).min), axis=-1), 0.0)
    f = {"identity": lambda u: u, "relu": jax.nn.relu, "abs": jnp.abs}[mechanism]
    return jnp.where(mask, f(z), 0.0)


def _jacobian(z, g, mask, mechanism: str):
    """``J[..., s, t, u] = dG[s, t] / dz[s, u]`` (each row of ``G`` depends on that row of ``z`` only)."""
    eye = jnp.broadcast_to(jnp.eye(z.shape[-1], dtype=z.dtype), z.shape + z.shape[-1:])
    if mechanism == "softmax":
        return g[..., :, None] * (eye - g[..., None, :])
    fp = {"identity": jnp.ones_like(z), "relu": (z > 0).astype(z.dtype), "abs": jnp.sign(z)}[mechanism]
    return jnp.where(jnp.broadcast_to(mask, z.shape), fp, 0.0)[..., None] * eye


def _sandwich(g1, c, g2):
    """``sum_{t, u} g1[i, s, t] c[i, j, t, u] g2[j, v, u]`` for per-input weights ``g`` (n, L, L) or one (L, L)."""
    if g1.ndim == 2:
        return jnp.einsum("st,...tu,vu->...sv", g1, c, g2)
    return jnp.einsum("ist,ijtu,jvu->ijsv", g1, c, g2)


@dataclasses.dataclass(frozen=True)
class Attention(WeightLayer):
    """Multi-head self-attention on ``(batch, length, features)`` sequences (causal by default).

    Finite network at width ``n`` (``heads`` heads of dimension ``d = n / heads``),
    per head, with ``x~ = x + P`` (``pos_emb="sum"``), ``[x, P]`` (``"concat"``) or ``x``:

        q, k = x~ W_q, x~ W_k          (W_k = W_q when logits="tied")
        v    = x~ W_v if val_pos_emb else x W_v
        A = mechanism(tau q k^T)       (masked to s' <= s when causal)
        y = concat_h(A v) W_o + b

    ``tau`` is ``param.attn_scale(d_head=d, width=n)`` (``logits="param"``:
    ``1/sqrt(d)`` under SP/NTP, ``~1/d`` under muP/MF), ``1/d``
    (``"tied"``) or ``1/sqrt(d)`` (``"gaussian"``) under every
    parametrization. ``mechanism`` is a row softmax or ``identity``/``relu``/
    ``abs`` applied entrywise (masked entries 0). ``W_q, W_k, W_v, W_o`` are
    hidden-role tensors with std ``qk_std, qk_std, w_std, w_std`` over
    ``sqrt(fan_in)`` at the base width; ``P = pos_std L xi`` is a trainable
    positional embedding of the input's width (``xi ~ N(0, 1)``,
    ``L L^T = R``, ``R = I`` or ``pos_decay(|s - t|^pos_p_norm)``); ``b`` a
    bias of std ``b_std``. ``param.zero_query`` zeroes ``W_q`` (not with
    ``"tied"``, where it is ``W_k``).

    Kernel rules (``ow.kernel``), with ``K, Theta`` the input NNGP/NTK on
    position pairs, ``V`` each input's own covariance, ``OV = w_std^4``,
    ``QK = qk_std^2``, and the positional mix (NT's interpolation)
    ``K~ = c K + c_p R`` with ``(c, c_p) = (1, pos_std^2)`` (sum) or
    ``(1/2, pos_std^2 / 2)`` (concat; ``K~ = K`` without positions),
    ``Theta~ = c Theta + c_p R``; values read ``K_v, Theta_v = K~, Theta~``
    if ``val_pos_emb`` else ``K, Theta``:

    * deterministic attention (``"param"``: ``G = M``, uniform over the
      allowed positions; ``"tied"``: ``G_x = mechanism(QK V~_x)``, masked)

          nngp' = OV G_x K_v G_x'^T + b_std^2
          ntk'  = OV G_x (Theta_v + 2 K_v) G_x'^T + b_std^2

      (Hron et al. 2020, Sec. 3.1: the query/key gradients add
      ``O(1/sqrt(n))`` and drop out).
    * Gaussian logits (``"gaussian"``): ``Z_x = tau q k^T`` tend to a
      centred Gaussian field with
      ``Cov(Z_x[s, t], Z_x'[s', t']) = QK^2 K~[s, s'] K~[t, t']`` and,
      with ``G = mechanism(Z)``, ``J[s, t, u] = dG[s, t] / dZ[s, u]``,
      ``Theta' = Theta~ + K~`` (Hron et al. 2020, Thm 3 and App. C):

          nngp' = OV E[G_x K_v G_x'^T] + b_std^2
          ntk'  = OV E[G_x (Theta_v + 2 K_v) G_x'^T] + b_std^2
                  + OV QK^2 sum E[J_x[s,t,u] J_x'[s',t',u']] K_v[t,t']
                                (Theta'[s,s'] K~[u,u'] + K~[s,s'] Theta'[u,u'])

      For ``identity`` ``E[G G']`` and ``E[J J']`` are closed form (NT's
      rule). Other mechanisms: a Monte Carlo estimate over
      ``logit_samples`` Gaussian logit fields (seed ``logit_seed``, the same
      samples for every input pair, so the estimate is deterministic and
      tiling-invariant; symmetric, positive semi-definite only up to its
      error). Its error is that of a mean of ``S = logit_samples``
      independent draws: a relative standard error ``c / sqrt(S)`` on the
      NNGP and NTK, measured (6 seeds, length 5, after Dense-Relu) at
      ``c ~ 0.2`` for softmax with ``qk_std = 1``, ``0.4`` with ``qk_std = 2``
      (sharper attention), ``1-2`` for ``relu`` (and ``identity`` sampled);
      at the default ``S = 4096``: 0.3%, 0.6%, 2-3%
      (tests/layers/test_attention.py checks the sampled identity against its
      closed form). Cost: ``O(S n1 n2 L^5)`` time, two such passes.
      At finite ``heads`` the output is a mixture of Gaussians (its
      covariance is still this kernel); it is a Gaussian process as
      ``heads -> inf`` as well, so a nonlinearity right after a few-head
      ``"gaussian"`` attention is described only in that limit.

    Like NT's, the ``"tied"`` NTK omits the positional embedding's gradient
    through the logits: negligible (``O(1/n)``) on hidden features, but
    ``O(1)`` when ``P`` is a fixed-size tensor on the network's input.

    Under ``logits="param"`` the kernel is the limit of finite networks with
    ``attn > 1/2`` (``ow.kernel(net, x, attn=0.5)`` refuses such layers);
    ``"tied"`` and ``"gaussian"`` fix their logit scale, so every
    parametrization has the same limit (the NTK is the NTK parametrization's).

    neural-tangents' ``GlobalSelfAttention(n_chan_out, n_chan_key,
    n_chan_val, n_heads, linear_scaling, W_key_std, W_value_std,
    W_query_std, W_out_std, b_std, attention_mechanism, pos_emb_type,
    pos_emb_p_norm, pos_emb_decay_fn, W_pos_emb_std, val_pos_emb)`` is
    ``Attention(heads, w_std=sqrt(W_value_std W_out_std),
    qk_std=sqrt(W_query_std W_key_std), causal=False, logits="tied" if
    linear_scaling else "gaussian", mechanism=attention_mechanism.lower(),
    pos_emb=pos_emb_type.lower(), pos_p_norm=pos_emb_p_norm,
    pos_decay=pos_emb_decay_fn, pos_std=W_pos_emb_std,
    val_pos_emb=val_pos_emb, b_std=b_std or 0)`` (NT's kernels depend on the
    products only; its ``n_chan_pos_emb`` is the input's width here).

    Padded sequences (NaN positions or ``mask=``, :mod:`owidth.layers.masking`):
    padding keys are left out of every query's attention (a softmax over the
    valid keys; ``G = 0`` on padding keys for the other mechanisms), and the
    positional embedding is zero at padding positions, so a sequence padded
    at its end has the kernel and outputs of the sequence cut to its length.
    In the kernel, ``K, K~, Theta~`` lose their padding rows and columns
    before the rules above (NT's masking, which leaves the ``1/sqrt(d)``
    identity rule's ``R`` unmasked).

    Args:
      heads: number of heads (the width must be a multiple of it).
      w_std: standard deviation of the value and output projections.
      qk_std: that of the query and key projections.
      causal: mask attention to positions ``s' <= s``.
      logits: ``"param"``, ``"tied"`` or ``"gaussian"`` (above).
      mechanism: ``"softmax"``, ``"identity"``, ``"relu"`` or ``"abs"``.
      pos_emb: ``"none"``, ``"sum"`` or ``"concat"``: a positional embedding
        added to or concatenated with the inputs of the queries and keys.
      pos_std: its standard deviation. pos_decay: ``None`` (independent
        positions, ``R = I``) or a function of the distance
        ``|s - t|^pos_p_norm`` giving ``R`` (positive definite).
      val_pos_emb: the values read the positional embedding too.
      b_std: output bias standard deviation (0: no bias).
      logit_samples, logit_seed: the Monte Carlo over logits of
        ``"gaussian"`` with a mechanism other than ``identity``.

    References:
      - Vaswani et al. 2017, Attention Is All You Need. <https://arxiv.org/abs/1706.03762>
      - Hron et al. 2020, Infinite attention: NNGP and NTK for deep attention networks. <https://arxiv.org/abs/2006.10540>
      - Yang et al. 2022, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer. <https://arxiv.org/abs/2203.03466>
      - Novak et al. 2020, Neural Tangents (``stax.GlobalSelfAttention``). <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> block = ow.Residual(ow.LayerNorm(), ow.Attention(heads=2))   # as in ow.transformer
      >>> net = ow.serial(ow.Embedding(vocab=5), block, ow.TakePosition(-1), ow.Dense(out=5))
      >>> [type(layer).__name__ for layer in net.walk()][:5]
      ['Serial', 'Embedding', 'Parallel', 'Identity', 'Serial']

      NT's linear-scaling attention: one token attends to the others by the input covariance.
      With ``QK = 0`` attention is uniform and the kernel is the mean covariance:

      >>> x = np.array([[[1.0, 0.0], [0.0, 1.0]]])          # (batch 1, length 2, features 2)
      >>> att = ow.Attention(heads=1, qk_std=0.0, causal=False, logits="tied")
      >>> k = ow.kernel(ow.serial(att, ow.Flatten(), ow.Dense(out=1)), x)
      >>> round(float(k.nngp[0, 0]), 6)       # each output position: mean of K = [[0.5, 0], [0, 0.5]] = 0.25
      0.25
    """

    _coord = "attn.o"
    _closed_form_identity = True  # tests turn it off to check the Monte Carlo over logits against it

    heads: int = _checks.field(1, converter=_checks.positive)
    w_std: float = _checks.field(1.0, converter=_checks.std)
    qk_std: float = _checks.field(1.0, converter=_checks.std)
    causal: bool = _checks.field(True, converter=_checks.boolean)
    logits: str = _checks.field("param", converter=_choice(LOGITS))
    mechanism: str = _checks.field("softmax", converter=_choice(MECHANISMS))
    pos_emb: str = _checks.field("none", converter=_choice(POS_EMBS))
    pos_std: float = _checks.field(1.0, converter=_checks.std)
    pos_decay: Callable | None = _checks.field(None, converter=_optional_function)
    pos_p_norm: float = _checks.field(2.0, converter=_p_norm)
    val_pos_emb: bool = _checks.field(False, converter=_checks.boolean)
    b_std: float = _checks.field(0.0, converter=_checks.std)
    logit_samples: int = _checks.field(4096, converter=_checks.positive)
    logit_seed: int = _checks.field(0, converter=_checks.integer)

    def __post_init__(self):
        super().__post_init__()
        if self.val_pos_emb and self.pos_emb == "none":
            raise ValueError("Attention(val_pos_emb=True) needs a positional embedding: set pos_emb='sum' or "
                             "'concat'")
        if self.logits == "param" and self.mechanism != "softmax":
            raise ValueError(f"Attention(logits='param', mechanism={self.mechanism!r}): the default logits vanish "
                             f"at infinite width (attn > 1/2), where {self.mechanism}(0) = 0 leaves no output; "
                             "use logits='tied' (1/d, tied queries and keys) or 'gaussian' (1/sqrt(d))")

    @property
    def caps(self) -> Caps:  # per instance: only logits="param" depends on `attn`
        return _CAPS if self.logits == "param" else _CAPS_FIXED_SCALE

    def _takes_padding(self) -> bool:
        return True  # padding keys are left out of the attention; the position grid is kept

    # ------------------------------------------------------------------ #
    # shared
    # ------------------------------------------------------------------ #
    def _pos_cov(self, length: int) -> np.ndarray:
        """``R[s, t]``: the positional embeddings' covariance (float64 numpy), checked positive definite."""
        if self.pos_decay is None:
            return np.eye(length)
        pos = np.arange(length, dtype=np.float64)
        dist = np.abs(pos[:, None] - pos[None, :]) ** self.pos_p_norm
        try:
            with jax.ensure_compile_time_eval():  # a jnp-based decay gives a constant, also under a trace
                r = np.asarray(self.pos_decay(dist), np.float64)
        except Exception as err:  # noqa: BLE001 (a user function: say which one failed)
            raise ValueError(f"Attention: pos_decay failed on the ({length}, {length}) distance matrix: {err}") from err
        if r.shape != (length, length) or not np.all(np.isfinite(r)):
            raise ValueError(f"Attention: pos_decay must map the ({length}, {length}) distances |s - t|^p to finite "
                             f"covariances of the same shape, got shape {r.shape}")
        if np.linalg.eigvalsh(0.5 * (r + r.T)).min() <= 0:
            raise ValueError("Attention: pos_decay(|s - t|^p) must be a positive definite covariance (e.g. "
                             "lambda d: jnp.exp(-d)); got one with a non-positive eigenvalue")
        return r

    def _mix(self) -> tuple[float, float]:
        """``(c, c_p)``: the weights of the input and positional covariances in the query/key inputs."""
        if self.pos_emb == "none":
            return 1.0, 0.0
        half = 0.5 if self.pos_emb == "concat" else 1.0
        return half, half * self.pos_std**2

    # ------------------------------------------------------------------ #
    # kernel
    # ------------------------------------------------------------------ #
    def _kernel(self, ks: KState) -> KState:
        ks, _ = enter_weights(
            ks, "ow.kernel: Attention follows a layer with a fixed out=k; leave out=None before it")
        if len(ks.spatial) != 1 or not ks.full:
            raise ValueError(f"ow.kernel: Attention needs (batch, length, features) sequences or Embedding tokens; "
                             f"its input here has spatial shape {ks.spatial}")
        length, dtype = ks.spatial[0], ks.nngp.dtype
        pad1 = ks.mask1
        pad2 = ks.mask1 if ks.mask2 is None else ks.mask2
        ks = masking.remask(ks)  # padding: no query/key/value input (a no-op without padding)
        same = ks.var2 is None
        v1 = self_var(ks.nngp) if same else ks.var1
        v2 = v1 if same else ks.var2
        c, cp = self._mix()
        r = jnp.asarray(self._pos_cov(length), dtype)

        def tilde(a):  # the query/key inputs' covariance (and the positional embedding's NTK)
            return None if a is None else a if self.pos_emb == "none" else c * a + cp * jnp.broadcast_to(r, a.shape)

        kq, tq, vq1, vq2 = tilde(ks.nngp), tilde(ks.ntk), tilde(v1), tilde(v2)
        if pad1 is not None and self.pos_emb != "none":  # the positional embedding is zero at padding
            z = masking.remask(ks.replace(nngp=kq, ntk=tq, var1=vq1, var2=vq2, mean1=None, mean2=None))
            kq, tq, vq1, vq2 = z.nngp, z.ntk, z.var1, z.var2
        kv, tv, vv1, vv2 = (kq, tq, vq1, vq2) if self.val_pos_emb else (ks.nngp, ks.ntk, v1, v2)
        ov, b2 = self.w_std**4, self.b_std**2
        causal = _mask(length, self.causal)
        m1, m2 = _key_masks(causal, pad1), _key_masks(causal, pad2)
        if self.logits == "gaussian":
            nngp, ntk, var1, var2 = self._gaussian(ks, kq, tq, vq1, vq2, kv, tv, vv1, vv2, (m1, m2), same)
        else:
            if self.logits == "param":
                g1, g2 = (jnp.asarray(m, dtype) / jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1) for m in (m1, m2))
            else:
                qk = self.qk_std**2
                g1, g2 = (_weights(qk * v, m, self.mechanism) for v, m in ((vq1, m1), (vq2, m2)))
            nngp = _sandwich(g1, kv, g2)
            ntk = None if ks.ntk is None else _sandwich(g1, tv + 2 * kv, g2)
            var1 = var2 = None
            if not same:
                var1, var2 = (jnp.einsum("ist,itu,ivu->isv", g, v, g) if g.ndim == 3 else _sandwich(g, v, g)
                              for g, v in ((g1, vv1), (g2, vv2)))
        nngp = ov * nngp + b2
        ntk = None if ntk is None else ov * ntk + b2
        if same:  # x1 against itself: exactly symmetric under (i, s) <-> (j, t)
            nngp = 0.5 * (nngp + jnp.transpose(nngp, (1, 0, 3, 2)))
            ntk = None if ntk is None else 0.5 * (ntk + jnp.transpose(ntk, (1, 0, 3, 2)))
            var1, var2 = self_var(nngp), None
        else:
            var1, var2 = ov * var1 + b2, ov * var2 + b2
        return masking.remask(ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, gaussian=True, fixed=False,
                                         pre=None, act=None, mean1=None, mean2=None, width_mult=1))

    def _gaussian(self, ks, kq, tq, vq1, vq2, kv, tv, vv1, vv2, masks, same):
        """The ``1/sqrt(d)`` limit (before the ``OV`` factor and bias): ``(nngp, ntk, var1, var2)``. ``masks``:
        the allowed (query, key) pairs of x1 and x2, ``(L, L)`` or per input ``(n, L, L)``."""
        qk2 = self.qk_std**4
        if self.mechanism == "identity" and self._closed_form_identity:  # E[Z Z'] = QK^2 K~ (x) K~, J = I (NT's rule)
            # padding keys: K~ has zero rows and columns there, so the causal mask alone is enough
            m = jnp.asarray(_mask(kq.shape[-1], self.causal), kq.dtype)

            def moment(k_q, k_v):  # E[G_x K_v G_x'^T] = QK^2 K~[s, s'] sum_{t, t'} m m K~ K_v
                return qk2 * k_q * jnp.einsum("st,...tu,vu->...sv", m, k_q * k_v, m)

            nngp = moment(kq, kv)
            ntk = None
            if ks.ntk is not None:
                tp = tq + kq
                ntk = (moment(kq, tv + 2 * kv) + qk2 * tp * jnp.einsum("st,...tu,vu->...sv", m, kq * kv, m)
                       + qk2 * kq * jnp.einsum("st,...tu,vu->...sv", m, tp * kv, m))
            var1 = var2 = None
            if not same:
                var1, var2 = moment(vq1, vv1), moment(vq2, vv2)
            return nngp, ntk, var1, var2
        b1, b2 = kq.shape[:2]
        big = lambda a, n: jnp.broadcast_to(a[:, None] if n == 1 else a[None], (b1, b2) + a.shape[1:])  # noqa: E731
        m1, m2 = (m if m.ndim == 2 else big(m, n) for m, n in zip(masks, (1, 2)))
        need = ks.ntk is not None
        p, w = self._logit_moments(big(vq1, 1), big(vq2, 2), kq, kv if need else None, masks=(m1, m2))
        if not same:  # average with the estimate of the pairs (x', x): kernel(x1, x2) is a block of kernel(x1 + x2)
            t = lambda a: jnp.swapaxes(a, 0, 1).swapaxes(-1, -2)  # noqa: E731
            tm = lambda m: m if m.ndim == 2 else jnp.swapaxes(m, 0, 1)  # noqa: E731
            pt, wt = self._logit_moments(t(big(vq2, 2)), t(big(vq1, 1)), t(kq), t(kv) if need else None,
                                         masks=(tm(m2), tm(m1)))
            p = 0.5 * (p + jnp.transpose(pt, (1, 0, 4, 5, 2, 3)))
            w = None if w is None else 0.5 * (w + jnp.transpose(wt, (1, 0, 4, 5, 2, 3)))
        nngp = jnp.einsum("ijstuv,ijtv->ijsu", p, kv)
        ntk = None
        if ks.ntk is not None:
            tp = tq + kq
            ntk = (jnp.einsum("ijstuv,ijtv->ijsu", p, tv + 2 * kv)
                   + qk2 * (tp * jnp.einsum("ijsuvx,ijux->ijsv", w, kq) + kq * jnp.einsum("ijsuvx,ijux->ijsv", w, tp)))
        var1 = var2 = None
        if not same:
            def own(v, m):
                m = m if m.ndim == 2 else m[:, None]
                return self._logit_moments(v[:, None], v[:, None], v[:, None], masks=(m, m))[0][:, 0]

            var1, var2 = (jnp.einsum("istuv,itv->isu", own(v, m), vv) for v, vv, m in ((vq1, vv1, masks[0]),
                                                                                       (vq2, vv2, masks[1])))
        return nngp, ntk, var1, var2

    def _logit_moments(self, c11, c22, c12, kv=None, *, masks):
        """Monte Carlo over the Gaussian logits of input pairs ``(x, x')`` whose query/key inputs have
        covariances ``c11`` (x), ``c22`` (x') and ``c12`` (cross), each (P1, P2, L, L). Returns
        ``E[G_x[s, t] G_x'[u, v]]`` (P1, P2, L, L, L, L) and, given the values' covariance ``kv``,
        ``E[sum_{t, t'} J_x[s, t, u] kv[t, t'] J_x'[s', t', u']]`` indexed ``[s, u, s', u']`` (else None).

        ``Z = QK A xi A^T`` with ``A A^T = [[c11, c12], [c12^T, c22]]`` (a symmetric square root, so a
        singular pair ``x = x'`` is fine) and ``xi`` a (2L, 2L) standard normal matrix has exactly
        ``Cov(Z[a, b], Z[a', b']) = QK^2 C[a, a'] C[b, b']``; its diagonal blocks are ``Z_x, Z_x'``.
        Sample ``i`` is drawn from ``fold_in(key(logit_seed), i)``: the same samples for every pair and
        every chunking, so the estimate does not depend on the batch or the tiling. ``masks``: the allowed
        (query, key) pairs of x and x', each ``(L, L)`` or ``(P1, P2, L, L)``."""
        length = c11.shape[-1]
        lead = c12.shape[:2]
        top = jnp.concatenate([c11, c12], axis=-1)
        bottom = jnp.concatenate([jnp.swapaxes(c12, -1, -2), c22], axis=-1)
        cov = jnp.concatenate([top, bottom], axis=-2)
        cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
        lam, u = jnp.linalg.eigh(cov)
        root = jnp.einsum("...ak,...k,...bk->...ab", u, jnp.sqrt(jnp.maximum(lam, 0.0)), u)
        a1, a2 = root[..., :length, :], root[..., length:, :]
        qk, dtype = self.qk_std**2, c12.dtype
        mask1, mask2 = masks
        total = self.logit_samples
        pairs = math.prod(lead)
        chunk = max(1, min(total, 2**21 // max(1, pairs * length**3)))
        n_chunks = -(-total // chunk)
        key = jax.random.key(self.logit_seed)
        need_j = kv is not None

        def step(carry, c):
            idx = c * chunk + jnp.arange(chunk)
            xi = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (2 * length,) * 2, dtype))(idx)
            weight = (idx < total).astype(dtype)
            z1 = qk * jnp.einsum("...sa,nab,...tb->n...st", a1, xi, a1)
            z2 = qk * jnp.einsum("...sa,nab,...tb->n...st", a2, xi, a2)
            g1, g2 = _weights(z1, mask1, self.mechanism), _weights(z2, mask2, self.mechanism)
            p, w = carry
            p = p + jnp.einsum("n,n...st,n...uv->...stuv", weight, g1, g2)
            if need_j:
                j1, j2 = (_jacobian(z, g, m, self.mechanism) for z, g, m in ((z1, g1, mask1), (z2, g2, mask2)))
                jk = jnp.einsum("n...stu,...tv->n...suv", j1, kv)
                w = w + jnp.einsum("n,n...suv,n...xvy->...suxy", weight, jk, j2)
            return (p, w), None

        zeros = jnp.zeros(lead + (length,) * 4, dtype)
        (p, w), _ = jax.lax.scan(step, (zeros, zeros), jnp.arange(n_chunks))
        return p / total, (w / total if need_j else None)

    # ------------------------------------------------------------------ #
    # finite network
    # ------------------------------------------------------------------ #
    def _dims(self, dim: Dim, ctx: FiniteCtx):
        if len(dim.spatial) != 1:
            raise ValueError(f"Attention: inputs must be (batch, length, features) sequences, got spatial shape "
                             f"{dim.spatial}")
        if ctx.width % self.heads:
            raise ValueError(f"Attention(heads={self.heads}): width {ctx.width} is not a multiple of the heads; "
                             "choose widths divisible by heads")
        role_in = Role.of(dim.scales, True)
        param, n = ctx.param, ctx.width
        concat = 2 if self.pos_emb == "concat" else 1
        fan_v = dim.size * (concat if self.val_pos_emb else 1)
        sq = param.dense(role_in, fan_in=dim.size * concat, width=n, w_std=self.qk_std, b_std=0.0)
        sv = param.dense(role_in, fan_in=fan_v, width=n, w_std=self.w_std, b_std=0.0)
        so = param.dense(Role.HIDDEN, fan_in=n, width=n, w_std=self.w_std, b_std=self.b_std)
        sp = param.dense(Role.of(False, dim.scales), fan_in=1, width=n, w_std=self.pos_std, b_std=0.0)
        return sq, sv, so, sp

    def _init(self, key, dim, ctx):
        sq, sv, so, sp = self._dims(dim, ctx)
        n, concat = ctx.width, 2 if self.pos_emb == "concat" else 1
        fan_q, fan_v = dim.size * concat, dim.size * (concat if self.val_pos_emb else 1)
        kq, kk, kv, ko, kp = jax.random.split(key, 5)
        params = {}
        if self.logits != "tied":
            params["q"] = init_weights(kq, (fan_q, n), n, sq, False)["w"] * (0.0 if ctx.param.zero_query else 1.0)
        params["k"] = init_weights(kk, (fan_q, n), n, sq, False)["w"]
        params["v"] = init_weights(kv, (fan_v, n), n, sv, False)["w"]
        out = init_weights(ko, (n, n), n, so, has_bias(self.b_std))
        params["o"] = out["w"]
        if "b" in out:
            params["b"] = out["b"]
        if self.pos_emb != "none":
            self._pos_cov(dim.spatial[0])  # a bad pos_decay fails here, before any forward pass
            params["pos"] = sp.w_init * jax.random.normal(kp, (dim.spatial[0], dim.size), jnp.result_type(float))
        return params, Dim(n, True, dim.spatial)

    def _forward(self, params, x, dim, ctx):
        sq, sv, so, sp = self._dims(dim, ctx)
        n, h = ctx.width, self.heads
        fan_q = dim.size * (2 if self.pos_emb == "concat" else 1)
        if params["o"].shape != (n, n) or params["k"].shape != (fan_q, n):
            raise ValueError(f"Attention: parameters have shapes {params['k'].shape}, {params['o'].shape} but the "
                             f"layer maps {fan_q} -> {n} features here; were they made by init() at this width?")
        b, length = x.shape[0], x.shape[1]
        padding = ctx.mask if ctx.mask is not None and ctx.mask.shape == x.shape[:-1] else None
        x = zero_padding(x, ctx)
        xq = xv = x
        if self.pos_emb != "none":
            if params["pos"].shape != (length, dim.size):
                raise ValueError(f"Attention: the positional embedding has shape {params['pos'].shape}, the inputs "
                                 f"(length, features) ({length}, {dim.size}); were the parameters made by init() "
                                 "for this length?")
            pos = params["pos"]
            if self.pos_decay is not None:
                chol = np.linalg.cholesky(self._pos_cov(length))
                pos = jnp.asarray(chol, pos.dtype) @ pos
            pos = jnp.broadcast_to(sp.w_mult * pos, x.shape)
            if padding is not None:  # no positional embedding at padding
                pos = jnp.where(padding[..., None], jnp.zeros((), pos.dtype), pos)
            xq = x + pos if self.pos_emb == "sum" else jnp.concatenate([x, pos], axis=-1)
            if self.val_pos_emb:
                xv = xq

        def proj(name, s, inp):
            y = inp @ (s.w_mult * params[name])
            if ctx.tape is not None:
                ctx.tape.observe(f"attn.{name}", y)
            return y.reshape(b, length, h, n // h)

        k, v = proj("k", sq, xq), proj("v", sv, xv)
        q = k if self.logits == "tied" else proj("q", sq, xq)
        d = n // h
        tau = {"param": lambda: ctx.param.attn_scale(d_head=d, width=n), "tied": lambda: 1.0 / d,
               "gaussian": lambda: d**-0.5}[self.logits]()
        logits = tau * jnp.einsum("bshd,bthd->bhst", q, k)
        mask = _key_masks(_mask(length, self.causal), padding)[:, None] if padding is not None else \
            jnp.asarray(_mask(length, self.causal))[None, None]  # (batch or 1, heads 1, query, key)
        if ctx.tape is not None:
            ctx.tape.observe("attn.logits", jnp.where(mask, logits, 0.0))
        a = _weights(logits, mask, self.mechanism)
        y = jnp.einsum("bhst,bthd->bshd", a, v).reshape(b, length, n) @ (so.w_mult * params["o"])
        if "b" in params:
            y = y + jnp.broadcast_to(so.b_mult * params["b"], y.shape)
        return y, Dim(n, True, dim.spatial), so
