"""Monte Carlo estimates of the NNGP and NTK over random finite networks, with standard errors.

For a network ``f`` of width ``n`` with independent random initialisations ``theta_s``,

    nngp_hat = (1/S) sum_s (1/k) sum_a f_a(theta_s, x1) f_a(theta_s, x2)
    ntk_hat  = (1/S) sum_s Theta_emp(theta_s; x1, x2)        (the per-output trace, :func:`ow.empirical_ntk`)

estimate the width-``n`` network's kernels; under ``ow.NTP`` they converge to :func:`ow.kernel` as
``n -> inf`` (Neal 1996; Lee et al. 2018; Jacot et al. 2018), with a sampling error ``~ S^-1/2``
reported per entry (``.stderr``) and an ``O(1/n)`` bias (none for the NNGP of one hidden layer).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks
from owidth._finite import finite
from owidth._progress import progress
from owidth.empirical import empirical_ntk
from owidth.kernels.state import Kernel
from owidth.layers import masking
from owidth.layers._base import Layer, walk_any
from owidth.layers.graph import adjacency_pair
from owidth.param import NTP, Parametrization

__all__ = ["MonteCarloKernel", "monte_carlo_kernel"]

_BATCH_BYTES = 2**30  # default chunk: about 1 GiB of per-network parameters and Jacobians


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MonteCarloKernel(Kernel):
    """A :class:`ow.Kernel` estimated by Monte Carlo, with its standard errors.

    Attributes:
      nngp, ntk, var1, var2: the sample means (as in :class:`ow.Kernel`).
      stderr: a :class:`ow.Kernel` of the standard errors of each entry, ``std / sqrt(samples)``
        (sample standard deviation, ``ddof=1``).
      samples: the number of networks averaged.
    """

    stderr: Kernel | None = None
    samples: int = dataclasses.field(default=0, metadata={"static": True})


def _chunk_stats(model, x1, x2, keys, mask, get, adj=None, padded=False):
    """Masked mean and sum of squared deviations over the networks of one chunk. ``adj``: ``(a1, a2)``,
    graph adjacencies for nets with ``Aggregate`` (``a2`` None without ``x2``), or None."""
    apply, z1, z2 = model.apply, x1, x2
    if adj is not None:
        # each graph's adjacency rides along as extra node features, so that the empirical NTK (which
        # takes per-example inputs) slices it with x: z = [x | a], (n, V, C + V)
        c = x1.shape[-1]
        apply = lambda p, z, **kw: model.apply(p, z[..., :c], adjacency=z[..., c:], **kw)  # noqa: E731
        z1 = jnp.concatenate([x1.astype(adj[0].dtype), adj[0]], axis=-1)
        z2 = None if x2 is None else jnp.concatenate([x2.astype(adj[1].dtype), adj[1]], axis=-1)

    if padded:  # NaN padding rides in the data (sliced with each input); read back as the mask
        base, c = apply, x1.shape[-1]

        def apply(p, z, **kw):
            return base(p, z, mask=jnp.all(jnp.isnan(z[..., :c]), axis=-1), **kw)

    random = isinstance(getattr(model, "net", None), Layer) and walk_any(model.net, "random")

    def one(key):
        if random:  # train-mode dropout: a mask per network, drawn independently for x1 and for x2
            key, k1, k2 = jax.random.split(key, 3)
            run1 = functools.partial(_with_key, apply, k1)
            run2 = functools.partial(_with_key, apply, k2)
        else:
            run1 = run2 = apply
        params = model.init(key, x1)
        f1 = run1(params, z1)
        f1 = f1[:, None] if f1.ndim == 1 else f1
        f2 = f1 if x2 is None else run2(params, z2)
        f2 = f2[:, None] if f2.ndim == 1 else f2
        out = {"var1": jnp.mean(f1 * f1, axis=1), "var2": jnp.mean(f2 * f2, axis=1)}
        if "nngp" in get:
            out["nngp"] = f1 @ f2.T / f1.shape[1]
        if "ntk" in get:
            if random:  # Jacobians through the whole batch: a mask per row (a single-row pass would reuse one)
                z = z1 if z2 is None else jnp.concatenate([z1, z2])  # one pass over [x1; x2]: independent masks
                ntk = empirical_ntk(run1, params, z, independent_examples=False)
                out["ntk"] = ntk if z2 is None else ntk[:z1.shape[0], z1.shape[0]:]
            else:
                out["ntk"] = empirical_ntk(run1, params, z1, z2)
        return out

    if isinstance(getattr(model, "net", None), Layer) and any(
            layer.caps.weights and layer.caps.spatial for layer in model.net.walk()):
        # Convolutions of many networks at once (vmapped weights) become grouped convolutions, which XLA's
        # CPU backend lowers with temporaries growing like the square of the group (measured: 2 MB per
        # network at 64 networks, 29 MB at 1024): a loop over groups of 16 keeps them linear.
        values = jax.lax.map(one, keys, batch_size=min(16, keys.shape[0]))
    else:
        values = jax.vmap(one)(keys)
    count = jnp.sum(mask)

    def stats(v):
        w = mask.reshape((-1,) + (1,) * (v.ndim - 1)).astype(v.dtype)
        mean = jnp.sum(w * v, axis=0) / count
        return mean, jnp.sum(w * (v - mean[None]) ** 2, axis=0)

    return {name: stats(v) for name, v in values.items()}


def _with_key(apply, key, params, z):
    return apply(params, z, key=key)


_chunk_stats_jit = jax.jit(_chunk_stats, static_argnames=("model", "get", "padded"))


def monte_carlo_kernel(net, x1, x2=None, *, width: int, samples: int, key: jax.Array,
                       param: Parametrization = NTP, get=("nngp", "ntk"), batch: int | None = None,
                       progress_bar: bool = True, adjacency=None, mask=None) -> MonteCarloKernel:
    """NNGP and NTK of ``net`` at width ``width``, averaged over ``samples`` random initialisations.

    The networks are drawn with ``ow.finite(net, width=width, param=param)`` from
    ``jax.random.split(key, samples)`` (the same networks whatever ``batch``) and evaluated ``batch`` at a time (vmapped; one compiled program for all chunks). The means are
    accumulated in float64 on the host with Chan et al.'s pairwise update, so that the standard errors
    stay accurate over many chunks. Nets with :class:`ow.Dropout` run in train mode, as
    :func:`ow.kernel` describes them: each network draws its masks, independently for ``x1`` and
    ``x2`` (the NTK between them from one pass over both).

    Args:
      net: width-free spec (or a flax model wrapped by :func:`ow.from_flax`) whose output is
        ``(batch, k)`` or ``(batch,)``.
      x1, x2: inputs; ``x2=None`` uses ``x1``.
      width: hidden width of the sampled networks.
      samples: number of networks, >= 2.
      key: a JAX PRNG key.
      param: the parametrization of the sampled networks (default :data:`ow.NTP`, whose kernels are
        those of :func:`ow.kernel` in the limit).
      get: ``"nngp"``, ``"ntk"`` or both (a tuple).
      batch: networks per compiled chunk; default: as many as keep one chunk's parameters and
        Jacobians near 1 GiB.
      progress_bar: show a tqdm bar over chunks (``OWIDTH_NO_PROGRESS=1`` silences it).
      adjacency: graph adjacencies for nets with :class:`ow.Aggregate` (node features ``x1`` of shape
        (n1, V, C)): ``a1`` (n1, V, V) without ``x2``, ``(a1, a2)`` with it (as in :func:`ow.kernel`).
      mask: padding of variable-size inputs, as in :func:`ow.kernel` (or NaN in all features of a
        padding position).

    Returns:
      A :class:`ow.MonteCarloKernel`: the means (``nngp``, ``ntk``, ``var1``, ``var2``), ``stderr``
      (a ``Kernel`` of standard errors) and ``samples``.

    References:
      - Neal 1996, Bayesian Learning for Neural Networks, ch. 2.
      - Novak et al. 2019, Bayesian Deep Convolutional Networks with Many Channels are Gaussian Processes. <https://arxiv.org/abs/1810.05148>
      - Chan, Golub & LeVeque 1979, Updating Formulae and a Pairwise Algorithm for Computing Sample Variances.

    Examples:
      >>> import numpy as np
      >>> import jax
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=1))
      >>> x = np.array([[1.0, 0.0], [0.6, 0.8]])
      >>> mc = ow.monte_carlo_kernel(net, x, width=64, samples=2000, key=jax.random.key(0), progress_bar=False)
      >>> exact = ow.kernel(net, x)
      >>> bool(np.all(np.abs(mc.nngp - exact.nngp) < 5 * mc.stderr.nngp))   # one hidden layer: unbiased
      True
    """
    where = "ow.monte_carlo_kernel"
    width = _checks.positive_int("width", width, where=where)
    samples = _checks.positive_int("samples", samples, where=where)
    if samples < 2:
        raise ValueError(f"{where}: samples={samples}; at least 2 networks are needed for a standard error")
    get = _checks.kernel_get(get, where=where)
    _checks.prng_key("key", key, where=where)
    x1, x2, padded = masking.prepare(where, net, x1, x2, mask)
    if padded and not isinstance(net, Layer):
        raise ValueError(f"{where}: padding (NaN positions or mask=) is read by owidth nets; a flax model does not "
                         "take it")
    x1 = _checks.as_float_array("x1", x1, where=where, rank=None, cast=False, padding=padded)
    x2 = None if x2 is None else _checks.as_float_array("x2", x2, where=where, rank=None, cast=False,
                                                        padding=padded)
    if x2 is not None:
        _checks.same_features(x1, x2, where=where)
    model = finite(net, width=width, param=param)
    a1, a2 = (None, None) if not isinstance(net, Layer) else adjacency_pair(where, net, x1, x2, adjacency)
    if adjacency is not None and not isinstance(net, Layer):
        raise ValueError(f"{where}: adjacency= is read by ow.Aggregate in owidth nets; a flax model does not take it")
    adj = None if a1 is None else (a1, a2)
    side = ({} if adj is None else {"adjacency": a1}) | ({"mask": jnp.all(jnp.isnan(x1), axis=-1)} if padded else {})
    shapes = jax.eval_shape(lambda k: model.apply(model.init(k, x1), x1, **side), key)
    if len(shapes.shape) > 2:
        raise ValueError(f"{where}: the network's output has shape {shapes.shape}; the kernels are defined for "
                         "outputs (batch, k): end it with a readout (e.g. Flatten() or GlobalAvgPool(), then "
                         "Dense(out=k))")
    if batch is None:
        leaves = jax.tree.leaves(jax.eval_shape(model.init, key, x1))
        n_params = sum(math.prod(p.shape) for p in leaves)
        outs = 1 if len(shapes.shape) == 1 else shapes.shape[1]
        n_inputs = x1.shape[0] + (0 if x2 is None else x2.shape[0])
        per_net = n_params * shapes.dtype.itemsize * (1 + (n_inputs * outs if "ntk" in get else 0))
        batch = max(1, min(samples, _BATCH_BYTES // max(per_net, 1)))
    batch = _checks.positive_int("batch", batch, where=where)
    batch = min(batch, samples)
    chunks = -(-samples // batch)
    # the same networks whatever the batch: keys for ``samples`` networks, the last chunk padded (masked out)
    keys = jax.random.split(key, samples)
    keys = jnp.concatenate([keys, jnp.repeat(keys[:1], chunks * batch - samples, axis=0)]).reshape(chunks, batch)
    n_done, mean, m2 = 0, {}, {}
    with progress(total=chunks, desc="monte carlo kernel", enabled=progress_bar, delay=2.0) as bar:
        for c in range(chunks):
            count = min(batch, samples - c * batch)
            mask = jnp.arange(batch) < count
            stats = jax.device_get(_chunk_stats_jit(model, x1, x2, keys[c], mask, get, adj, padded))
            # Chan, Golub & LeVeque: merge (n_done, mean, m2) with the chunk's (count, m, s); exact for the first
            total = n_done + count
            for k, (m, s) in stats.items():
                delta = np.asarray(m, np.float64) - mean.get(k, 0.0)
                mean[k] = mean.get(k, 0.0) + delta * (count / total)
                m2[k] = m2.get(k, 0.0) + np.asarray(s, np.float64) + delta**2 * (n_done * count / total)
            n_done += count
            bar.update(1)
    dtype = shapes.dtype
    se = {k: np.sqrt(m2[k] / (samples - 1) / samples) for k in m2}

    def arr(d, k):
        return jnp.asarray(d[k], dtype) if k in d else None

    stderr = Kernel(nngp=arr(se, "nngp"), ntk=arr(se, "ntk"), var1=arr(se, "var1"), var2=arr(se, "var2"))
    return MonteCarloKernel(nngp=arr(mean, "nngp"), ntk=arr(mean, "ntk"), var1=arr(mean, "var1"),
                            var2=arr(mean, "var2"), stderr=stderr, samples=samples)
