"""The structured empirical NTK of any pure function, read off its jaxpr (internal; see :func:`ow.empirical_ntk`).

A weight ``W`` that enters ``f`` only through matrix products ``y = dot_general(A, W)`` (a dense layer,
``x @ W``, an einsum) has, for one output ``f_a`` and cotangent ``delta_a = df_a/dy``, the gradient

    df_a/dW[b, c, g] = sum_m A[b, m, c] delta_a[b, m, g]

(``b``: the product's batch axes, ``m``: ``A``'s free axes, ``c``: contracted, ``g``: ``W``'s free axes).
Its NTK block therefore never needs the Jacobian:

    <df_a(x)/dW, df_b(x')/dW> = sum_{b, m, m'} [sum_c A[b, m, c] A'[b, m', c]] [sum_g delta_a[b, m, g] delta'_b[b, m', g]]

a Gram of the layer inputs times a Gram of the cotangents. A weight used by several products sums the
cross terms over every pair of uses. This is neural-tangents' ``STRUCTURED_DERIVATIVES`` restricted to
``dot_general`` (Novak et al. 2022, "Fast Finite Width Neural Tangent Kernel", sec. 4 and app.;
<https://arxiv.org/abs/2206.08720>); the code here is our own.

How: the jaxpr of ``f`` is evaluated equation by equation. Each parameter leaf is followed through
bijective views (transpose, reshape, squeeze, unit-axis broadcast, float casts) and scalar factors
(``mul``/``div`` by a scalar, ``neg``) and through ``jit`` calls; a ``dot_general`` consuming such a view
is a recognised use. Its other operand is recorded, and a zero "tap" is added to its output so that one
VJP per output row gives the cotangent there. A leaf is structured when all its uses are recognised,
its views agree across uses, and the structure is smaller than its Jacobian; every other leaf (biases,
scales, embeddings, parameters used in any other way) is differentiated directly in the same backward
pass and contracted as in the Jacobian method, so the kernel is exact whatever ``f`` is.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Literal

_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call"})  # evaluated inline: transparent to views
_VIEWS = frozenset({"transpose", "reshape", "squeeze", "broadcast_in_dim", "convert_element_type", "copy",
                    "copy_p"})


__all__ = ["Plan", "analyse", "contract", "leaf_fn", "ntk", "restrict", "signals"]


class _View(NamedTuple):
    """A value equal to ``scale * P(leaf)`` for a bijection ``P`` of the leaf's entries."""

    leaf: int
    chain: tuple  # the bijection: ("transpose", perm) and ("reshape", shape) steps applied to the leaf
    scale: Any  # scalar factor (a value for this unit), or None for 1


class _Use(NamedTuple):
    """One ``dot_general`` consuming a view of a leaf (shapes per unit)."""

    dot: int  # occurrence number among the dot_generals that consume a view, in evaluation order
    pos: int  # 0: the view is the lhs, 1: the rhs
    leaf: int
    chain: tuple  # leaf -> the weight as (B, C, G): batch, contracted, free axes
    a_perm: tuple  # other operand -> (B, M, C)
    a_shape: tuple
    y_perm: tuple  # output -> (B, M, G)
    y_shape: tuple
    a_size: int
    y_size: int
    w_size: int


class _Tape:
    """What one evaluation of the jaxpr saw (analysis) and recorded (taps and layer inputs)."""

    def __init__(self, taps=None, keep=frozenset()):
        self.taps = taps or {}
        self.keep = keep  # (dot, pos) whose other operand is recorded
        self.dots = 0
        self.uses: list[_Use] = []
        self.out_avals: dict[int, Any] = {}
        self.unrecognised: set[int] = set()
        self.inputs: dict[tuple[int, int], jax.Array] = {}


def _bind(eqn, invals):
    with eqn.ctx.manager:
        return eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))


def _run(jaxpr, consts, args, arg_views, tape: _Tape):
    """Evaluate ``jaxpr`` like ``jax.core.eval_jaxpr``, following views of parameter leaves."""
    env: dict = {}
    views: dict = {}
    read = lambda a: a.val if isinstance(a, Literal) else env[a]  # noqa: E731
    view_of = lambda a: None if isinstance(a, Literal) else views.get(a)  # noqa: E731
    env.update(zip(jaxpr.constvars, consts))
    for var, val, view in zip(jaxpr.invars, args, arg_views):
        env[var] = val
        if view is not None:
            views[var] = view
    for eqn in jaxpr.eqns:
        invals = [read(a) for a in eqn.invars]
        in_views = [view_of(a) for a in eqn.invars]
        if all(v is None for v in in_views):
            outs, out_views = _bind(eqn, invals), ()
            outs = outs if eqn.primitive.multiple_results else [outs]
        else:
            outs, out_views = _viewed(eqn, invals, in_views, tape)
        env.update(zip(eqn.outvars, outs))
        views.update((var, v) for var, v in zip(eqn.outvars, out_views) if v is not None)
    return [read(a) for a in jaxpr.outvars], [view_of(a) for a in jaxpr.outvars]


def _viewed(eqn, invals, in_views, tape: _Tape):
    """One equation with a parameter view among its operands: follow, record, or mark unrecognised."""
    name = eqn.primitive.name
    if name in _CALLS:
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        jaxpr, consts = (sub.jaxpr, sub.consts) if isinstance(sub, ClosedJaxpr) else (sub, ())
        return _run(jaxpr, consts, invals, in_views, tape)
    out = _bind(eqn, invals)
    if name == "dot_general":
        return [_dot(eqn, invals, in_views, out, tape)], [None]
    viewed = [i for i, v in enumerate(in_views) if v is not None]
    if len(viewed) == 1 and not eqn.primitive.multiple_results:
        view = _follow(eqn, invals, in_views[viewed[0]], viewed[0])
        if view is not None:
            return [out], [view]
    tape.unrecognised.update(in_views[i].leaf for i in viewed)
    outs = out if eqn.primitive.multiple_results else [out]
    return outs, [None] * len(outs)


def _floating(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.floating)


def _follow(eqn, invals, view: _View, i: int) -> _View | None:
    """The view after ``eqn`` when ``eqn`` is a bijection or a scalar factor of operand ``i``, else None."""
    name, src, dst = eqn.primitive.name, eqn.invars[i].aval, eqn.outvars[0].aval
    if not (_floating(src) and _floating(dst)):
        return None
    if name in _VIEWS and src.size == dst.size:
        if name == "transpose":
            return view._replace(chain=(*view.chain, ("transpose", tuple(eqn.params["permutation"]))))
        if name == "reshape" and eqn.params.get("dimensions") is not None:
            return None
        # reshape, squeeze, and broadcast_in_dim that only inserts unit axes keep the entries' order
        return view._replace(chain=(*view.chain, ("reshape", tuple(dst.shape))))
    if name == "neg":
        return view._replace(scale=-1.0 if view.scale is None else -view.scale)
    if name in ("mul", "div") and len(invals) == 2 and (name == "mul" or i == 0):
        other = eqn.invars[1 - i].aval
        if other.shape != () or dst.shape != src.shape:
            return None
        factor = invals[1 - i] if name == "mul" else 1.0 / invals[1 - i]
        return view._replace(scale=factor if view.scale is None else view.scale * factor)
    return None


def _dot(eqn, invals, in_views, out, tape: _Tape):
    """A ``dot_general`` consuming a view: record each viewed operand's use (and its input), add the tap."""
    n = tape.dots
    tape.dots += 1
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    y = eqn.outvars[0].aval
    nb = len(lb)
    for pos, view in enumerate(in_views):
        if view is None:
            continue
        w, a = eqn.invars[pos].aval, eqn.invars[1 - pos].aval
        wc, wb, ac, ab = (lc, lb, rc, rb) if pos == 0 else (rc, rb, lc, lb)
        wf = tuple(d for d in range(w.ndim) if d not in (*wc, *wb))
        af = tuple(d for d in range(a.ndim) if d not in (*ac, *ab))
        size = lambda shape, dims: math.prod(shape[d] for d in dims)  # noqa: E731
        bsz, c, g, m = size(w.shape, wb), size(w.shape, wc), size(w.shape, wf), size(a.shape, af)
        # dot_general's output axes: batch, lhs free, rhs free; we want batch, A free, W free
        lhs_free = tuple(range(nb, nb + (len(af) if pos == 1 else len(wf))))
        rhs_free = tuple(range(nb + len(lhs_free), y.ndim))
        y_perm = (*range(nb), *lhs_free, *rhs_free) if pos == 1 else (*range(nb), *rhs_free, *lhs_free)
        chain = (*view.chain, ("transpose", (*wb, *wc, *wf)), ("reshape", (bsz, c, g)))
        use = _Use(n, pos, view.leaf, chain, (*ab, *af, *ac), (bsz, m, c), y_perm, (bsz, m, g),
                   a.size, y.size, w.size)
        tape.uses.append(use)
        if (n, pos) in tape.keep:
            inp = jnp.transpose(invals[1 - pos], use.a_perm).reshape(use.a_shape)
            tape.inputs[(n, pos)] = inp if view.scale is None else inp * view.scale
    tape.out_avals[n] = y
    return out + tape.taps[n] if n in tape.taps else out


def _index(shape, chain) -> np.ndarray:
    """The leaf's flat entry numbers arranged by ``chain``."""
    index = np.arange(math.prod(shape)).reshape(shape)
    for op, arg in chain:
        index = index.transpose(arg) if op == "transpose" else index.reshape(arg)
    return index


class Plan(NamedTuple):
    """Which leaves are structured, their uses, and the per-unit memory of the signals (in floats)."""

    structured: frozenset
    uses: tuple  # uses of structured leaves
    taps: tuple  # (dot, shape, dtype) of the outputs that get a tap
    k_unit: int  # outputs per unit
    signal_floats: int


def _leaf_views(leaves) -> list:
    return [_View(i, (), None) for i in range(len(leaves))]


def analyse(closed, leaf_avals, x_aval) -> Plan:
    """Trace-time analysis of ``closed`` (the jaxpr of ``(leaves, x) -> (n, k)`` outputs for one unit)."""
    tape = _Tape()

    def go(leaves, x):
        outs, out_views = _run(closed.jaxpr, closed.consts, [*leaves, x], [*_leaf_views(leaves), None], tape)
        tape.unrecognised.update(v.leaf for v in out_views if v is not None)
        return outs

    (out,) = jax.eval_shape(go, leaf_avals, x_aval)
    k_unit = math.prod(out.shape)
    by_leaf: dict[int, list[_Use]] = {}
    for use in tape.uses:
        by_leaf.setdefault(use.leaf, []).append(use)
    structured = set()
    for leaf, uses in by_leaf.items():
        if leaf in tape.unrecognised:
            continue
        if any(u.a_size + k_unit * u.y_size > k_unit * u.w_size or u.a_shape[0] * u.a_shape[1] ** 2 > u.w_size
               for u in uses):
            continue  # the signals, or the Grams over the free axes of A, would be larger than the Jacobian
        if len(uses) > 1:
            shape = leaf_avals[leaf].shape
            first = _index(shape, uses[0].chain)
            if not all(np.array_equal(first, _index(shape, u.chain)) for u in uses[1:]):
                continue
        structured.add(leaf)
    kept = tuple(u for u in tape.uses if u.leaf in structured)
    dots = {u.dot: u for u in kept}
    floats = sum(u.a_size for u in kept) + k_unit * sum(u.y_size for u in dots.values())
    floats += k_unit * sum(math.prod(a.shape) for i, a in enumerate(leaf_avals) if i not in structured)
    taps = tuple((n, tuple(tape.out_avals[n].shape), tape.out_avals[n].dtype) for n in sorted(dots))
    return Plan(frozenset(structured), kept, taps, k_unit, floats)


def signals(closed, plan: Plan, leaves, x):
    """For one unit: the structured uses' inputs ``(B, M, C)`` and cotangents ``(K, B, M, G)``, and the
    direct gradients ``(K, *leaf.shape)`` of the other leaves, from one forward and ``K`` backward passes."""
    keep = frozenset((u.dot, u.pos) for u in plan.uses)
    free = [i for i in range(len(leaves)) if i not in plan.structured]

    def forward(taps, free_leaves):
        args = list(leaves)
        for i, leaf in zip(free, free_leaves):
            args[i] = leaf
        tape = _Tape(taps, keep)
        (y,), _ = _run(closed.jaxpr, closed.consts, [*args, x], [*_leaf_views(args), None], tape)
        return y.reshape(-1), tape.inputs

    taps0 = {n: jnp.zeros(shape, dtype) for n, shape, dtype in plan.taps}
    y, pullback, inputs = jax.vjp(forward, taps0, [leaves[i] for i in free], has_aux=True)
    cts, grads = jax.vmap(pullback)(jnp.eye(y.shape[0], dtype=y.dtype))
    deltas = {(u.dot, u.pos): jnp.transpose(cts[u.dot], (0, *(1 + p for p in u.y_perm))).reshape(-1, *u.y_shape)
              for u in plan.uses}
    return inputs, deltas, grads


def restrict(plan: Plan, leaves: frozenset) -> Plan:
    """``plan`` with only ``leaves`` structured."""
    uses = tuple(u for u in plan.uses if u.leaf in leaves)
    dots = {u.dot for u in uses}
    return plan._replace(structured=leaves, uses=uses, taps=tuple(t for t in plan.taps if t[0] in dots))


def _by_leaf(plan: Plan) -> dict:
    out: dict[int, list] = {}
    for u in plan.uses:
        out.setdefault(u.leaf, []).append((u.dot, u.pos))
    return out


def contract(plan1: Plan, plan2: Plan, s1, s2, n1: int, n2: int, outputs: str):
    """The kernel from the signals of two batches of units (leading axes ``u`` and ``v``).

    Returns (U1, n1, U2, n2) for ``"trace"`` (summed over outputs) or (U1, n1, U2, n2, k, k) for
    ``"full"``, with ``n`` examples and ``k`` outputs per unit."""
    (in1, d1, g1), (in2, d2, g2) = s1, s2
    k = plan1.k_unit // n1
    uses1, uses2 = _by_leaf(plan1), _by_leaf(plan2)
    spec = "uvbmq,unabmg,vpabqg->unvp" if outputs == "trace" else "uvbmq,unabmg,vpcbqg->unvpac"
    u1, u2 = jax.tree.leaves(s1)[0].shape[0], jax.tree.leaves(s2)[0].shape[0]
    total = jnp.zeros((u1, n1, u2, n2) + (() if outputs == "trace" else (k, k)), jnp.result_type(*jax.tree.leaves(s1)))
    for leaf in sorted(uses1):
        for p in uses1[leaf]:
            for q in uses2[leaf]:
                gram = jnp.einsum("ubmc,vbqc->uvbmq", in1[p], in2[q])  # layer inputs: no Jacobian is formed
                e1 = d1[p].reshape(d1[p].shape[0], n1, k, *d1[p].shape[2:])
                e2 = d2[q].reshape(d2[q].shape[0], n2, k, *d2[q].shape[2:])
                total = total + jnp.einsum(spec, gram, e1, e2)
    for a, b in zip(g1, g2):
        a = a.reshape(a.shape[0], n1, k, -1)
        b = b.reshape(b.shape[0], n2, k, -1)
        total = total + jnp.einsum("unaz,vpaz->unvp" if outputs == "trace" else "unaz,vpcz->unvpac", a, b)
    return total


def leaf_fn(apply_fn, treedef):
    """``(leaves, x) -> (n, k)`` outputs of ``apply_fn``; cache it to keep one function per (apply_fn, tree)."""
    return lambda leaves, x: _as_2d(apply_fn(jax.tree.unflatten(treedef, leaves), x))


def _as_2d(y):
    return y[:, None] if y.ndim == 1 else y.reshape(y.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("fn", "outputs", "same", "independent"))
def ntk(fn, leaves, x1, x2, outputs: str, same: bool, independent: bool):
    """The structured empirical NTK of ``fn(leaves, x) -> (n, k)`` (:func:`leaf_fn`): (n1, n2), or
    (n1, n2, k, k) for ``"full"``. ``independent``: one example per unit (vmapped), else the whole batch
    is one unit."""
    struct = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]

    def prepare(x):
        unit = jax.ShapeDtypeStruct(((1,) if independent else x.shape[:1]) + x.shape[1:], x.dtype)
        closed = jax.make_jaxpr(fn)(struct, unit)
        return closed, analyse(closed, struct, unit)

    closed1, plan1 = prepare(x1)
    closed2, plan2 = (closed1, plan1) if (same or independent) else prepare(x2)
    common = plan1.structured & plan2.structured  # batch mode, other batch sizes: the leaves structured in both
    plan1, plan2 = (restrict(p, common) for p in (plan1, plan2))

    def batch(closed, plan, x):
        if independent:
            return jax.vmap(lambda xi: signals(closed, plan, leaves, xi[None]))(x)
        return jax.tree.map(lambda a: a[None], signals(closed, plan, leaves, x))

    s1 = batch(closed1, plan1, x1)
    s2 = s1 if same else batch(closed2, plan2, x2)
    n1, n2 = (1, 1) if independent else (x1.shape[0], x2.shape[0])
    k = plan1.k_unit // n1
    out = contract(plan1, plan2, s1, s2, n1, n2, outputs)
    out = out.reshape((x1.shape[0], x2.shape[0]) + (() if outputs == "trace" else (k, k)))
    return out / k if outputs == "trace" else out
