"""``ow.kernel``: analytic infinite-width NNGP and NTK of a width-free spec.

The entry point: it validates the call, reads what the spec needs from the
layers' capabilities (:class:`owidth.layers.Caps`), sizes tiles and runs the
layer rules. The mathematics lives in :mod:`owidth.kernels` (which imports
no layer module) and in each layer's ``_kernel`` rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks, _precision
from owidth._caches import cached
from owidth.kernels import hyper, tiles
from owidth.kernels.state import Kernel, KState, VarTape
from owidth.layers import masking
from owidth.layers._base import KernelParam, Layer, residual_depth, walk_all, walk_any
from owidth.layers.graph import adjacency_pair
from owidth.layers.sequence import check_tokens
from owidth.param import NTP, SP, Parametrization

__all__ = ["kernel"]


def _check_structure(net, get: tuple[str, ...], same: bool, features: tuple[int, ...]) -> None:
    """Trace the layer rules on tiny abstract inputs (no FLOPs, no compilation)
    so that structural errors (wrong rank for a conv net, a VALID filter larger
    than the image) surface before anything is compiled. Memoised per
    (net template, get, same, feature shape): it runs once per architecture."""
    _check_structure_cached(hyper.split(net)[0], get, same, features)


@cached(maxsize=256)
def _check_structure_cached(template, get, same, features) -> None:
    x = jax.ShapeDtypeStruct((2, *features), jnp.result_type(float))
    graph = walk_any(template, "adjacency") and len(features) == 2  # a stand-in adjacency (2, V, V)
    adj = jax.ShapeDtypeStruct((2, features[0], features[0]), x.dtype) if graph else None
    jax.eval_shape(lambda leaves, a, b, g: _kernel_impl(hyper.merge(template, leaves), a, b, get,
                                                        adj=None if g is None else (g, None if same else g)),
                   hyper.abstract_leaves(template), x, None if same else x, adj)


def _spatial_info(net) -> tuple[bool, bool]:
    """(has spatial layers, needs all pixel-pixel covariances), from a static pass over the spec."""
    return _spatial_info_cached(hyper.split(net)[0])  # the template: hashable also with traced hyperparameters


@cached(maxsize=256)
def _spatial_info_cached(net) -> tuple[bool, bool]:
    return walk_any(net, "spatial"), walk_any(net, "mixes_pixels")


def _kernel_impl(net, x1, x2, get, *, tape: VarTape | None = None, adj=None):
    """The layer rules on one block. ``tape``: a recording :class:`VarTape` (``x2`` None) collects the
    per-pixel variances at pooling layers; a replaying one (``x2`` given) runs with per-pixel
    variances (``KState.var_pixel``) and takes them back there. ``adj``: ``(a1, a2)``, the graph
    adjacencies of ``x1`` and ``x2`` (``a2`` None without ``x2``) for ``Aggregate``, or None."""
    var_pixel = tape is not None and not tape.recording
    a1, a2 = (None, None) if adj is None else adj
    ks = KState(x1=x1, x2=x2, need_ntk="ntk" in get, full=_spatial_info(net)[1], var_pixel=var_pixel, tape=tape,
                adj1=a1, adj2=a2)
    ks = net._kernel(ks).materialize()
    var2 = ks.var1 if ks.var2 is None else ks.var2
    return Kernel(
        nngp=ks.nngp if "nngp" in get else None,
        ntk=ks.ntk if "ntk" in get else None,
        var1=ks.var1,
        var2=var2,
    )


# Kernels of non-spatial nets whose (n1, n2) kernel exceeds _SELF_BLOCK_BYTES are
# computed in blocks of _SELF_BLOCK rows inside the compiled program (:func:`_blocked`).
# Measured on a 2-core CPU (depth-4 ReLU NNGP+NTK): the elementwise recursion is memory-bound once
# its (n, n) intermediates leave the cache; blocks of 256 rows stay in cache and skip the lower
# triangle: n = 2048 float64 0.71 s -> 0.21 s, n = 4096 float32 0.75 s -> 0.33 s (blocks of 128
# and 512 were slower; below ~4 MiB the one-piece computation is as fast).
_SELF_BLOCK = 256
_SELF_BLOCK_BYTES = 4 * 2**20


def _kernel_auto(net, x1, x2, get, *, tape: VarTape | None = None, adj=None):
    """``_kernel_impl``, by blocks (:func:`_blocked`) when the kernel is large and the net non-spatial."""
    n1, n2 = x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0]
    big = n1 * n2 * x1.dtype.itemsize > _SELF_BLOCK_BYTES and max(n1, n2) > 2 * _SELF_BLOCK
    if big and x1.ndim == 2 and not _spatial_info(net)[0] and tape is None:
        return _blocked(net, x1, x2, get, _SELF_BLOCK)
    return _kernel_impl(net, x1, x2, get, tape=tape, adj=adj)


def _blocked(net, x1, x2, get, size: int) -> Kernel:
    """``_kernel_impl(net, x1, x2, get)`` for an MLP-type net, by blocks of ``size`` rows.

    One block pair at a time (``lax.map``), so that the intermediates of the elementwise recursion
    stay in cache. Without ``x2``, diagonal blocks are self-kernels (rho = 1 exactly on the
    diagonal, made exactly symmetric) and only the blocks above them are computed, then mirrored:
    about ``(t + 1) / (2 t)`` of the one-piece work for ``t`` blocks. Rows are padded to a multiple
    of ``size`` by repeating the last input and cropped. Off-diagonal blocks differ from the
    one-piece computation only by rounding (their variances are computed as with ``x2`` given
    rather than read off a diagonal), as for ``batch_size`` tiles.
    """
    import numpy as np

    b1 = tiles.blocks(x1, size)
    t1 = b1.shape[0]

    def grid(blocks, t_rows, t_cols):  # (t_rows, t_cols, size, size) -> (t_rows size, t_cols size)
        return blocks.transpose(0, 2, 1, 3).reshape(t_rows * size, t_cols * size)

    if x2 is not None:
        b2 = tiles.blocks(x2, size)
        t2 = b2.shape[0]
        ii, jj = (a.ravel() for a in np.meshgrid(np.arange(t1), np.arange(t2), indexing="ij"))
        k = jax.lax.map(lambda ij: _kernel_impl(net, b1[ij[0]], b2[ij[1]], get), (jnp.asarray(ii), jnp.asarray(jj)))
        n1, n2 = x1.shape[0], x2.shape[0]
        out = {f: None if getattr(k, f) is None else grid(getattr(k, f).reshape(t1, t2, size, size), t1, t2)[:n1, :n2]
               for f in ("nngp", "ntk")}
        var1 = k.var1.reshape(t1, t2, size)[:, 0].reshape(-1)[:n1]
        var2 = k.var2.reshape(t1, t2, size)[0].reshape(-1)[:n2]
        return Kernel(nngp=out["nngp"], ntk=out["ntk"], var1=var1, var2=var2)

    diag = jax.lax.map(lambda u: _kernel_impl(net, u, None, get), b1)
    ii, jj = np.triu_indices(t1, 1)
    off = jax.lax.map(lambda ij: _kernel_impl(net, b1[ij[0]], b1[ij[1]], get), (jnp.asarray(ii), jnp.asarray(jj)))
    n = x1.shape[0]

    # block (I, J) of the result: diag[I] on the diagonal, off[k] above it and off[k]^T below,
    # where k numbers the pairs I < J; one static gather builds the grid
    pair = {(i, j): k for k, (i, j) in enumerate(zip(ii, jj))}
    src = np.array([[i if i == j else t1 + pair[i, j] if i < j else t1 + len(ii) + pair[j, i] for j in range(t1)]
                    for i in range(t1)])

    upper = np.triu(np.ones((size, size), bool))

    def assemble(d, o):
        # mirrored after the map, from its stored output: inside the map XLA may fuse the recursion into
        # both operands of the where and evaluate (j, i) apart from (i, j), rounding them differently
        # (seen at XLA's -O0 with the loop emitters); a loop's output cannot be fused into its consumer
        d = jnp.where(upper, d, jnp.swapaxes(d, 1, 2))
        stacked = jnp.concatenate([d, o, jnp.swapaxes(o, 1, 2)])
        return grid(stacked[src], t1, t1)[:n, :n]

    out = {f: None if getattr(diag, f) is None else assemble(getattr(diag, f), getattr(off, f))
           for f in ("nngp", "ntk")}
    # the variances read off the stored diagonal blocks: bit for bit the diagonal, whatever XLA fuses
    var = (diag.var1 if diag.nngp is None else jnp.diagonal(diag.nngp, axis1=1, axis2=2)).reshape(-1)[:n]
    return Kernel(nngp=out["nngp"], ntk=out["ntk"], var1=var, var2=var)


_kernel = hyper.jit_net(_kernel_auto, static_argnames=("get",))  # jax.jit, net static but for array hyperparameters


def _check_attn(net, attn) -> None:
    """``ow.kernel(..., attn=)``: the attention limit is implemented for logit exponents above 1/2 only."""
    if attn is None:
        return
    if isinstance(attn, bool) or not isinstance(attn, (int, float)) or attn != attn:
        raise TypeError(f"ow.kernel: attn must be a float (Parametrization.attn), got {attn!r}")
    if attn <= 0.5 and walk_any(net, "attention"):
        what = ("the logits q.k / sqrt(d) stay O(1) Gaussian at infinite width, so attention stays random; the "
                "output is a Gaussian process only when heads -> inf as well (Hron et al. 2020, Thm 3), with a "
                "kernel needing E[softmax(u) softmax(v)^T] over Gaussian logits u, v: use Attention(logits='gaussian') "
                "for that limit (its Monte Carlo over logits)"
                if attn == 0.5 else
                "the logits grow with width and attention tends to a hard (argmax) attention with no Gaussian limit")
        raise NotImplementedError(
            f"ow.kernel: the infinite-width kernel of Attention with attention-logit exponent attn={attn:g} is not "
            f"implemented: {what}. Implemented: attn > 1/2 (e.g. the 1/d logits of ow.MUP and ow.MF, attn=1), "
            "where the logits vanish and attention is uniform causal averaging."
        )


@_precision.exact
def kernel(net, x1, x2=None, *, get=("nngp", "ntk"), batch_size: int | str | None = "auto",
           memory_budget: int | None = None, attn: float | None = None, progress_bar: bool = True,
           adjacency=None, param=None, mask=None) -> Kernel:
    """Infinite-width NNGP and NTK of ``net`` between ``x1`` and ``x2``.

    For a network whose hidden layers are infinitely wide, the output at
    initialisation is a Gaussian process with covariance ``nngp`` (Neal 1996;
    Lee et al. 2018; Matthews et al. 2018), and gradient descent in the NTK
    parametrisation evolves it as a linear model with the deterministic kernel
    ``ntk`` (Jacot et al. 2018). Both are computed layer by layer:

        Dense:       nngp' = w^2 nngp + b^2,          ntk' = w^2 ntk + nngp'
        activation:  nngp' = E[phi(u) phi(v)],        ntk' = ntk * E[phi'(u) phi'(v)]

    with ``(u, v)`` Gaussian with the incoming covariance. Closed forms are
    used for Relu, LeakyRelu, Abs, Erf, Gelu, Sin and Identity (see
    :mod:`owidth.kernels.dual`); Tanh, Sigmoid, Silu, Softplus, ``ActivationFn``
    and consecutive smooth nonlinearities use quadrature (see
    :mod:`owidth.kernels.quadrature`).

    Args:
      net: a width-free spec (``ow.serial(...)`` or a single layer).
      x1: (n1, d) inputs, or (n1, *spatial, channels) for networks with
        spatial layers (``Conv``, ``AvgPool``, ``GlobalAvgPool``, ``Flatten``),
        or (n1, length) tokens for sequence networks starting with
        ``Embedding`` (``Attention`` is taken in its ``1/d``-logit limit: see
        :class:`ow.Attention`).
      x2: (n2, d) inputs (same feature shape as ``x1``), or ``None`` for ``x1`` against itself (the result is
        then exactly symmetric).
      get: ``"nngp"``, ``"ntk"`` or both (default); what is not asked for is
        ``None`` in the result (the NTK is skipped with ``get="nngp"``; the
        NTK always needs the NNGP).
      batch_size: ``"auto"`` (default): tiles only where they pay, sized
        from ``memory_budget``: one untiled call when the kernel's states fit
        (MLPs, unpooled CNNs), tiles when they do not, and always tiles for
        pooled CNNs (``AvgPool``/``GlobalAvgPool``), whose states keep all
        pixel pairs (10^6 numbers per input pair at 32x32 pixels): tiles
        of at most ``tiles.SPEED_TILE_BYTES`` of states, inside the budget.
        An int ``b``: tiles of ``b`` rows of ``x1`` by ``b`` rows of ``x2``
        (any N: the last tile is padded and cropped). ``None``: one untiled
        call, no memory check. Tiles are spread over ``jax.devices()`` with
        ``jax.sharding``. Without ``x2`` only tiles on and above the diagonal
        are computed and mirrored (exactly symmetric). Pooled CNNs compute
        each input's own pixel covariances once and replay its per-pixel
        variances in the tiles of different inputs
        (:mod:`owidth.kernels.tiles`). Same result as untiled up to
        rounding. Inside ``jax.jit``/``jax.grad`` (traced inputs) ``"auto"``
        computes untiled.
      memory_budget: bytes the kernel's intermediate states may take (all
        devices together) for ``batch_size="auto"`` or an int; default half
        the free accelerator memory, or a quarter of the host's available
        memory on CPU (:func:`owidth.kernels.tiles.default_budget`). The
        estimate is ``tiles.LIVE_STATES`` times the largest per-layer state
        of the tile, plus two per-entry node grids for quadrature activations
        (benchmarked peak memory stays below it). If one input
        pair does not fit, ``MemoryError`` says how much it needs, before
        anything is compiled.
      attn: the attention-logit exponent (:attr:`ow.Parametrization.attn`)
        of the finite networks whose limit is wanted, for specs with
        ``Attention``. ``None`` (default) or any value above 1/2: logits
        vanish at infinite width (the ``1/d`` rule of muP has ``attn = 1``)
        and the kernel is that of uniform causal averaging (see
        :class:`ow.Attention`). ``attn <= 1/2`` (``1/sqrt(d)``: SP, NTP)
        raises ``NotImplementedError``: that limit (Hron et al. 2020) is not
        implemented.
      progress_bar: a tqdm bar over tiles, shown once a tiled call has run
        for 3 s (``OWIDTH_NO_PROGRESS=1`` silences it).
      adjacency: for graph networks (with :class:`ow.Aggregate`), whose
        inputs are node features (n, V, C): the graphs' adjacency matrices,
        ``a1`` of shape (n1, V, V) without ``x2``, ``(a1, a2)`` with it.
        Tiles slice them with the inputs. Refused for nets without
        ``Aggregate``.
      mask: padding of variable-size inputs (sequences, sets, graphs padded to one shape): ``m1``
        (n1, *S) without ``x2``, ``(m1, m2)`` with it, True at padding positions. Equivalently, give
        the padding positions as NaN in every feature. Padding is zero after every layer and
        ``GlobalAvgPool`` averages over the valid positions, so the kernel is that of the unpadded
        inputs (see ``owidth.layers.masking`` for the layers that take padding).
      param: whose NTK: ``None`` or ``ow.NTP`` (default), the NTK
        parametrization (every parameter ``w ~ N(0, 1)`` behind a multiplier
        ``w_std / sqrt(fan_in)``); or ``ow.SP.with_base_width(n)``, the
        standard parametrization of neural-tangents'
        ``parameterization='standard'`` (Sohl-Dickstein et al. 2020): the raw
        weights ``W ~ N(0, w_std^2 / fan_in)`` and biases ``b ~ N(0, b_std^2)``
        are trained with one learning rate, so a weight layer adds
        ``fan_in * m + 1`` to the NTK instead of ``w_std^2 m + b_std^2`` (``m``
        its input covariance averaged over each unit's inputs, ``fan_in``
        the data dimension (times the filter area) for a first layer and
        ``base_width`` (times it) for hidden ones: the NTK of hidden width
        ``n = base_width`` trained at learning rate ``eta``; at width ``n``
        and learning rate ``eta n0 / n`` the hidden terms are the same and
        the first layer's and the biases' shrink like ``n0 / n``). The NNGP
        does not depend on ``param``. Dense, Conv, ConvTranspose and ConvLocal layers only.
        A depth exponent (``dataclasses.replace(ow.NTP, alpha=0.5)``) multiplies every
        :func:`ow.Residual` branch by ``(L / L0)^-alpha`` as in the finite network, ``L`` its residual
        blocks: NNGP and NTK then both change (``nngp' = nngp + (L / L0)^-2alpha scale^2 nngp_block``).

    Returns:
      A :class:`Kernel` with ``nngp``/``ntk`` of shape (n1, n2), per output
      unit (with trailing pixel axes when the network ends on spatial
      layers). Computed in float64 when ``jax_enable_x64`` is on, else float32.

    The computation is jit-compiled once per (net, get, shapes); it can also
    be called inside ``jax.jit``/``jax.grad`` by the user.

    Hyperparameters (``w_std``, ``b_std``, activation parameters such as
    ``LeakyRelu(a)``, ``Erf(a, b, shift)``, ``Sin(a, b, shift)``) may be JAX
    scalars, also tracers, so that ``jax.grad``/``jax.jit``/``jax.vmap`` of
    any function of the kernel with respect to them work::

        def evidence(w):
            k = ow.kernel(ow.serial(ow.Dense(w_std=w), ow.Relu(), ow.Dense(out=1)), x, get="nngp")
            return ow.predict.log_marginal_likelihood(k, y, 0.1)

        jax.grad(evidence)(1.3)

    Python-float hyperparameters are static (compiled per value, as before);
    JAX-array ones are traced (one compilation for all their values). See
    :func:`ow.Dense` for negative or non-finite traced values.

    References:
      - Neal 1996, Bayesian Learning for Neural Networks (Springer), Ch. 2.
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>
      - Matthews et al. 2018, Gaussian Process Behaviour in Wide Deep Neural Networks. <https://arxiv.org/abs/1804.11271>
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>
      - Arora et al. 2019, On Exact Computation with an Infinitely Wide Neural Net (CNTK). <https://arxiv.org/abs/1904.11955>
      - Cho & Saul 2009, Kernel Methods for Deep Learning (NeurIPS 2009): the arc-cosine kernels.

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 1.0], [1.0, -1.0]])   # q = |x|^2 / d = 1, orthogonal inputs
      >>> net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=1))
      >>> k = ow.kernel(net, x)
      >>> k.nngp.shape, k.ntk.shape
      ((2, 2), (2, 2))
      >>> round(float(k.nngp[0, 0]), 4), round(float(k.nngp[0, 1]), 4)   # w^2 q / 2 = 1; arc-cosine at 90 deg: 1/pi
      (1.0, 0.3183)
      >>> round(float(k.ntk[0, 0]), 4), round(float(k.ntk[0, 1]), 4)     # 1 + 2 * 1/2 = 2; 1/pi + 0
      (2.0, 0.3183)
      >>> ow.kernel(net, x, get="nngp").ntk is None
      True
    """
    if not isinstance(net, Layer):
        raise TypeError(f"ow.kernel: net must be an owidth layer or ow.serial(...), got {type(net).__name__}")
    get = _checks.kernel_get(get, where="ow.kernel")
    _check_attn(net, attn)
    if not net._has_weights():
        raise ValueError("ow.kernel: net has no weight layer (Dense); add one, e.g. ow.serial(..., ow.Dense(out=1))")
    rank = None if _spatial_info(net)[0] else 2
    x1, x2, padded = masking.prepare("ow.kernel", net, x1, x2, mask)
    x1 = _checks.as_float_array("x1", x1, where="ow.kernel", rank=rank, padding=padded)
    if x2 is not None:
        x2 = _checks.as_float_array("x2", x2, where="ow.kernel", rank=rank, padding=padded)
        _checks.same_features(x1, x2, where="ow.kernel")
    for name, x in (("x1", x1), ("x2", x2)):
        if x is not None:
            _checks.gram_in_range(name, x, where="ow.kernel")
            check_tokens(net, x, name=name, where="ow.kernel")
    net = _with_param(net, param)
    if padded:
        net = masking.Masked(net)
    a1, a2 = adjacency_pair("ow.kernel", net, x1, x2, adjacency)
    adj = None if a1 is None else (a1, a2)
    _check_structure(net, get, x2 is None, tuple(x1.shape[1:]))
    size = _tile_size(net, x1, x2, batch_size, memory_budget)
    if size is None:
        return _finite(_kernel(net, x1, x2, get, adj=adj))
    full = _spatial_info(net)[1]
    return _finite(tiles.tiled(_kernel_auto, net, x1, x2, get, size, full=full,
                               pixel=full and walk_all(net, "pixel_var"), progress_bar=progress_bar, adj=adj))


def _with_param(net, param):
    """``net``, or ``net`` wrapped to give the kernel under ``param``: the standard parametrization's NTK
    (``param=ow.SP...``) and/or the residual branches' depth multiplier ``(L / L0)^-alpha``."""
    if param is None:
        return net
    if not isinstance(param, Parametrization):
        raise TypeError(f"ow.kernel: param must be an ow.Parametrization (ow.NTP or ow.SP.with_base_width(n)), got "
                        f"{param!r}")
    mult = param.depth_multiplier(residual_depth(net))  # as in the finite network
    if (param.a, param.b) == (NTP.a, NTP.b):
        return net if mult == 1.0 else KernelParam(net, depth_mult=mult)
    if (param.a, param.b) != (SP.a, SP.b):
        raise ValueError(
            f"ow.kernel: param={param.name!r} (a={param.a}, b={param.b}): the infinite-width NTK is implemented for "
            "the NTK parametrization (ow.NTP) and the standard one (ow.SP.with_base_width(n)); under ow.MUP and ow.MF "
            "the network is not in the kernel regime (its features move; see ow.dmft for that limit)")
    others = sorted({type(layer).__name__ for layer in net.walk() if layer.caps.weights and not layer._standard_ntk})
    if others:
        raise NotImplementedError(f"ow.kernel: param=ow.SP is implemented for Dense, Conv, ConvTranspose and ConvLocal "
                                  f"layers (neural-tangents' parameterization='standard'); this net has "
                                  f"{', '.join(others)}. Use param=ow.NTP.")
    return KernelParam(net, sp_width=param.base_width, depth_mult=mult)


def _finite(k: Kernel) -> Kernel:
    """``k``, or a ``FloatingPointError`` if a concrete kernel holds Inf/NaN: the layers' variances
    overflowed the dtype (they grow by ``w_std^2 E phi'(u)^2`` per layer in the ordered phase's
    complement). One pass over the result on the host; skipped under an outer trace (``jax.jit``,
    ``jax.grad``), where values are not known."""
    arrays = [a for a in (k.nngp, k.ntk) if a is not None]
    if any(isinstance(a, jax.core.Tracer) for a in arrays):
        return k
    if not all(np.isfinite(np.asarray(a)).all() for a in arrays):  # on the host: no program to compile per shape
        dtype = arrays[0].dtype
        raise FloatingPointError(
            f"ow.kernel: the kernel overflowed {dtype} (Inf/NaN entries): the pre-activation variances grow "
            f"layer by layer beyond {float(jnp.finfo(dtype).max):.3g}. Rescale the inputs or lower w_std, use fewer "
            "layers, or enable float64 with jax.config.update('jax_enable_x64', True).")
    return k


@cached(maxsize=256)
def _live_states(template) -> int:
    """Kernel-sized arrays alive at once (``tiles.LIVE_STATES``), plus what a layer's rule keeps beyond
    them (``Layer._kernel_extra_states``: a quadrature rule's per-entry node grids)."""
    return tiles.LIVE_STATES + max(layer._kernel_extra_states() for layer in template.walk())


def _tile_size(net, x1, x2, batch_size, memory_budget) -> int | None:
    """Rows per tile (``None``: untiled) from ``batch_size`` and ``memory_budget``, checked before compiling."""
    where = "ow.kernel"
    if memory_budget is not None:
        _checks.positive_number("memory_budget", memory_budget, where=where, what=" of bytes")
    if isinstance(batch_size, str) and batch_size != "auto":
        raise ValueError(f"{where}: batch_size must be 'auto', a positive int or None, got {batch_size!r}")
    if batch_size is None:
        return None
    n1, n2 = x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0]
    spatial, full = _spatial_info(net)
    traced = any(isinstance(x, jax.core.Tracer) for x in (x1, x2) if x is not None)
    template, leaves = hyper.split(net)
    live = _live_states(template)
    pair_bytes = tiles.entries_per_pair(tuple(x1.shape[1:]), spatial, full) * x1.dtype.itemsize
    devices = len(jax.devices())
    if batch_size == "auto":
        if traced or hyper.has_tracers(leaves):
            return None
        budget = tiles.default_budget() if memory_budget is None else int(memory_budget)
        return tiles.choose_tile(n1, n2, pair_bytes=pair_bytes, budget=budget, devices=devices, full=full, live=live)
    size = _checks.positive_int("batch_size", batch_size, where=where)
    if max(n1, n2) > size and hyper.has_tracers(leaves):
        raise ValueError(f"{where}: batch_size={size} needs concrete hyperparameters (tiles are assembled on the "
                         "host); pass batch_size='auto' or None inside jax.grad/jit/vmap over w_std, b_std, ...")
    if memory_budget is not None:
        need = size * size * pair_bytes * live * devices
        if need > memory_budget:
            raise MemoryError(
                f"{where}: tiles of batch_size={size} need about {need / 2**30:.3g} GiB of kernel states "
                f"({devices} device(s)), more than memory_budget={memory_budget / 2**30:.3g} GiB; use a smaller "
                "batch_size or batch_size='auto'")
    return size if max(n1, n2) > size else None
