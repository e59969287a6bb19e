"""Graph layers: neighbourhood aggregation over the nodes of batched graphs (graph neural networks).

A graph input is a node-feature array ``x`` of shape ``(batch, V, C)`` (``V`` nodes, the one
spatial axis, ``C`` channels) with a dense adjacency ``a`` of shape ``(batch, V, V)`` per graph,
passed as an explicit side input: ``ow.kernel(net, x1, x2, adjacency=(a1, a2))``,
``model.apply(params, x, adjacency=a)``, ``ow.monte_carlo_kernel(net, x1, ..., adjacency=a1)``.
Every other layer treats the node axis as a spatial axis (``Dense`` acts per node, ``GlobalSumPool``
and ``GlobalAvgPool`` read the graph out).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks
from owidth.kernels import spatial as sp
from owidth.kernels.state import KState, self_var
from owidth.layers import masking
from owidth.layers._base import Caps, Layer, walk_any, zero_padding

__all__ = ["Aggregate", "adjacency_pair", "check_graph_input"]


_HOW = ("pass the graphs' adjacency matrices: ow.kernel(net, x1, adjacency=a1) or ow.kernel(net, x1, x2, "
        "adjacency=(a1, a2)); model.apply(params, x, adjacency=a); ow.monte_carlo_kernel(net, x1, ..., adjacency=a1)")


def _agg(a: jax.Array, x: jax.Array) -> jax.Array:
    """``y[n, v, ...] = sum_u a[n, v, u] x[n, u, ...]``: one graph per batch entry."""
    return jnp.einsum("nvu,nu...->nv...", a.astype(x.dtype), x)


def _nodes(ks_spatial, where: str, adj) -> None:
    if len(ks_spatial) != 1:
        raise ValueError(
            f"{where}: Aggregate needs node features of shape (batch, V, channels), one node axis; here its input "
            f"has {len(ks_spatial)} spatial axes {tuple(ks_spatial)} (rank-2 data, or after Flatten/GlobalSumPool, "
            "or an image). Put Aggregate before the readout pooling.")
    if ks_spatial[0] != adj.shape[-1]:
        raise ValueError(
            f"{where}: Aggregate receives {ks_spatial[0]} nodes but the adjacency is {adj.shape[-1]} x "
            f"{adj.shape[-1]}: a layer before it changed the node count (a strided or VALID Conv?)")


@dataclasses.dataclass(frozen=True)
class Aggregate(Layer):
    """Sum over graph neighbours, ``y[v] = sum_u A[v, u] x[u]`` per graph and channel (no parameters).

    The graph neural network layer of Du et al. (2019), GNTK: node features ``x`` (batch, V, C), one
    dense (weighted) adjacency ``A`` (batch, V, V) per graph, with ``A[v, u]`` the weight of the arc
    from node ``u`` into node ``v`` (add self-loops, ``A + I``, for ``h_v + sum_{u in N(v)} h_u``; scale
    rows, ``D^-1 A``, for a mean). The adjacency is a side input of every interpretation (the keyword
    ``adjacency=``); a net with ``Aggregate`` refuses to run without it.

    Kernel rule (Du et al. 2019, Sec. 4; Novak et al. 2020's ``stax.Aggregate``): the layer is linear
    in the node axis, so on all node-pair covariances ``K[i, j, s, t]`` of graphs ``i`` (of ``x1``) and
    ``j`` (of ``x2``)

        nngp'[i, j] = A1[i] nngp[i, j] A2[j]^T,      ntk'[i, j] = A1[i] ntk[i, j] A2[j]^T

    (``V x V`` matrix products), exactly as for a pooling layer with a per-graph pooling matrix. Finite
    networks compute ``einsum("nvu,nuc->nvc", A, x)``; the layer is the same under every
    parametrization (it has no weights).

    :func:`ow.empirical_ntk` takes inputs without side inputs: give it the adjacency as extra node
    features, ``z = concatenate([x, a], -1)`` and ``lambda p, z: model.apply(p, z[..., :C],
    adjacency=z[..., C:])`` (what :func:`ow.monte_carlo_kernel` does), so that it travels with each graph.

    neural-tangents' ``pattern`` is the transpose: its ``pattern[n, u, v]`` is the arc ``u -> v`` and its
    output is ``x @ pattern``. For undirected graphs (symmetric ``A``) the two agree.

    References:
      - Du et al. 2019, Graph Neural Tangent Kernel: Fusing Graph Neural Networks with Graph Kernels, Sec. 4. <https://arxiv.org/abs/1905.13192>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import jax
      >>> import owidth as ow
      >>> a = np.array([[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]])   # a 3-node path with self-loops
      >>> x = np.ones((1, 3, 2))                                                # (graphs, nodes, features)
      >>> net = ow.serial(ow.Dense(), ow.Aggregate(), ow.GlobalSumPool(), ow.Dense(out=1))
      >>> k = ow.kernel(net, x, adjacency=a)     # every node covariance is 1: the sum of A's entries, squared
      >>> float(k.nngp[0, 0]), float(k.ntk[0, 0])
      (49.0, 98.0)
      >>> model = ow.finite(net, width=8)
      >>> model.apply(model.init(jax.random.key(0), x), x, adjacency=a).shape
      (1, 1)
    """

    caps = Caps(spatial=True, mixes_pixels=True, pixel_var=True, adjacency=True)

    def _odd_linear(self) -> bool:
        return True

    def _takes_padding(self) -> bool:
        return True

    def _kernel(self, ks: KState) -> KState:
        if ks.adj1 is None:
            raise ValueError(f"ow.kernel: the net has an Aggregate layer, which needs each graph's adjacency; {_HOW}")
        a1 = ks.adj1
        a2 = a1 if ks.adj2 is None else ks.adj2
        if ks.is_input:  # the data itself: aggregate it
            _nodes(ks.x1.shape[1:-1], "ow.kernel", a1)
            return ks.replace(x1=_agg(a1, ks.x1), x2=None if ks.x2 is None else _agg(a2, ks.x2))
        _nodes(ks.spatial, "ow.kernel", a1)
        ks = masking.remask(ks)  # padding nodes send nothing
        if not ks.full:
            raise AssertionError("owidth internal: Aggregate reached with diagonal pixel covariances")
        dtype = ks.nngp.dtype
        a1, a2 = a1.astype(dtype), a2.astype(dtype)

        def pair(k):  # A1[i] K[i, j] A2[j]^T
            y = jnp.einsum("isu,ijut->ijst", a1, k)
            y = jnp.einsum("ijsu,jtu->ijst", y, a2)
            return sp.mirror(y, 1) if ks.var2 is None else y  # exactly symmetric without x2

        def same(a, v):  # A[i] V[i] A[i]^T on a same-input block
            return jnp.einsum("ijsu,itu->ist", jnp.einsum("isu,iut->ist", a, v)[:, None], a)

        nngp, ntk = sp.on_both(pair, ks.nngp, ks.ntk)
        if ks.var_pixel:  # per-pixel variances: replayed from the graph's own block (tiled kernels)
            var1, var2 = ks.tape.take()
        elif ks.var2 is None:
            var1, var2 = self_var(nngp), None
        else:
            var1, var2 = same(a1, ks.var1), same(a2, ks.var2)
        if ks.tape is not None and ks.tape.recording:
            ks.tape.record(sp.pixel_var(var1, 1, True))
        mean = lambda a, m: None if m is None else jnp.einsum("isu,iu->is", a, m)  # noqa: E731
        return ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, mean1=mean(a1, ks.mean1),
                          mean2=mean(a2, ks.mean2), pre=None, act=None)

    def _check_finite(self, x, dim, ctx):
        if ctx.adjacency is None:
            raise ValueError(f"FiniteModel.apply: the net has an Aggregate layer, which needs each graph's "
                             f"adjacency; {_HOW}")
        _nodes(dim.spatial, "FiniteModel.apply", ctx.adjacency)

    def _init(self, key, dim, ctx):
        if len(dim.spatial) != 1:  # the node count is checked against the adjacency in apply
            _nodes(dim.spatial, "FiniteModel.init", None)
        return (), dim

    def _apply(self, params, x, dim, ctx):
        self._check_finite(x, dim, ctx)
        return _agg(ctx.adjacency, zero_padding(x, ctx)), dim


def check_graph_input(where: str, name: str, x, a) -> jax.Array:
    """``a`` checked against node features ``x`` (batch, V, C) and converted to ``x``'s float dtype:
    shape (batch, V, V), finite values. Raises ``ValueError`` saying what to pass."""
    if not hasattr(a, "shape"):
        try:
            a = np.asarray(a)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise TypeError(f"{where}: {name} must be an array of shape (batch, V, V), got {type(a).__name__}") from err
    if getattr(a, "dtype", None) == bool:
        a = np.asarray(a, np.float64) if not isinstance(a, jax.Array) else a.astype(jnp.result_type(float))
    shape = tuple(a.shape)
    if len(x.shape) != 3:
        raise ValueError(f"{where}: a net with Aggregate takes node features of shape (batch, V, channels) (rank 3) "
                         f"with adjacency (batch, V, V); the inputs matching {name} have shape {tuple(x.shape)}")
    if len(shape) != 3:
        hint = " Add a batch axis, e.g. a[None]." if len(shape) == 2 else ""
        raise ValueError(f"{where}: {name} must have shape (batch, V, V) (rank 3), one adjacency per graph; got "
                         f"shape {shape}.{hint}")
    if shape[1] != shape[2]:
        raise ValueError(f"{where}: {name} must be square per graph, shape (batch, V, V); got shape {shape}")
    n, v = x.shape[0], x.shape[1]
    if shape[0] != n:
        raise ValueError(f"{where}: {name} holds {shape[0]} adjacency matrices but its inputs hold {n} graphs "
                         f"(shape {tuple(x.shape)}); pass one (V, V) adjacency per graph")
    if shape[1] != v:
        raise ValueError(f"{where}: {name} is {shape[1]} x {shape[2]} per graph but the node features have V = {v} "
                         f"nodes (shape {tuple(x.shape)}, (batch, V, channels)); they must have the same node count")
    a = _checks.as_float_array(name, a, where=where, rank=3, cast=False)
    return a.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else a.astype(jnp.result_type(float))


def adjacency_pair(where: str, net, x1, x2, adjacency):
    """``(a1, a2)`` for ``adjacency`` given with ``x1`` and ``x2`` (``a2`` None without ``x2``), checked;
    ``(None, None)`` for a net without ``Aggregate``, which refuses an adjacency."""
    if not walk_any(net, "adjacency"):
        if adjacency is not None:
            raise ValueError(f"{where}: adjacency= is given but the net has no Aggregate layer, the only layer that "
                             "reads it; drop adjacency= or add ow.Aggregate()")
        return None, None
    if adjacency is None:
        raise ValueError(f"{where}: the net has an Aggregate layer, which needs each graph's adjacency: pass "
                         "adjacency=a1 (shape (n1, V, V))"
                         + ("" if x2 is None else " and a2 for x2 as adjacency=(a1, a2)"))
    if x2 is None:
        if isinstance(adjacency, (tuple, list)) and len(adjacency) == 2 and adjacency[1] is None:
            adjacency = adjacency[0]  # (a1, None): as x2=None
        return check_graph_input(where, "adjacency", x1, adjacency), None
    if not (isinstance(adjacency, (tuple, list)) and len(adjacency) == 2):
        raise ValueError(f"{where}: with x2, pass the adjacencies of both inputs as adjacency=(a1, a2), shapes "
                         "(n1, V, V) and (n2, V, V)")
    return (check_graph_input(where, "adjacency[0]", x1, adjacency[0]),
            check_graph_input(where, "adjacency[1]", x2, adjacency[1]))
