"""Differentiable hyperparameters: a spec as a static template plus dynamic scalar leaves (internal).

A spec whose hyperparameters are Python floats is a hashable value and is
passed to ``jax.jit`` as a static argument, as before: one compilation per
(spec, shapes), and none again for the same floats. A hyperparameter may also
be a JAX scalar (a concrete ``jax.Array`` or a tracer of ``jax.grad`` /
``jax.jit`` / ``jax.vmap``); such a spec is not hashable. :func:`split` turns
it into

* a *template*: the same spec with each array hyperparameter replaced by a
  marker :class:`Leaf` ``(i)`` (hashable, static), and
* the tuple of *leaves*: the arrays, in tree order (dynamic arguments),

and :func:`merge` rebuilds the spec from them inside the traced function.
:func:`jit_net` is ``jax.jit`` for functions whose first argument is a spec:
the template is static, the leaves are traced, so a second call with other
array values of the same dtype does not recompile, and ``jax.grad`` flows
through the leaves.

The walk is generic over frozen dataclasses (any field holding a dataclass or
a tuple of them is descended into), so this module imports no layer module.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp

__all__ = ["Leaf", "split", "merge", "count", "has_tracers", "abstract_leaves", "jit_net"]


@dataclasses.dataclass(frozen=True)
class Leaf:
    """Marker in a template: the ``index``-th dynamic hyperparameter (internal)."""

    index: int


def _is_node(value) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _walk(node, fn):
    """Copy of ``node`` with ``fn`` applied to every non-dataclass field value (``None``: unchanged)."""
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        new = _walk_value(value, fn)
        if new is not value:
            changes[f.name] = new
    if not changes:
        return node
    out = copy.copy(node)  # no __post_init__: the values were validated when the user built the spec
    for name, value in changes.items():
        object.__setattr__(out, name, value)
    return out


def _walk_value(value, fn):
    if _is_node(value) and not isinstance(value, Leaf):
        return _walk(value, fn)
    if isinstance(value, tuple) and any(_is_node(v) for v in value):
        new = tuple(_walk_value(v, fn) for v in value)
        return value if all(a is b for a, b in zip(new, value)) else new
    out = fn(value)
    return value if out is None else out


def split(net):
    """``(template, leaves)``: ``net`` with its array hyperparameters replaced by :class:`Leaf` markers,
    and those arrays in tree order. A spec of Python floats is returned as is, with no leaves."""
    leaves = []

    def take(value):
        if isinstance(value, jax.Array):  # concrete arrays and tracers alike
            leaves.append(value)
            return Leaf(len(leaves) - 1)
        return None

    template = _walk(net, take)
    return template, tuple(leaves)


def merge(template, leaves):
    """Inverse of :func:`split`: the spec with each :class:`Leaf` replaced by its array."""
    if not leaves:
        return template
    return _walk(template, lambda v: leaves[v.index] if isinstance(v, Leaf) else None)


def count(template) -> int:
    """Number of :class:`Leaf` markers in a template."""
    n = [0]

    def see(value):
        if isinstance(value, Leaf):
            n[0] += 1
        return None

    _walk(template, see)
    return n[0]


def has_tracers(leaves) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in leaves)


def abstract_leaves(template):
    """Shape/dtype stand-ins for the leaves of ``template`` (scalars of the default float dtype)."""
    return tuple(jax.ShapeDtypeStruct((), jnp.result_type(float)) for _ in range(count(template)))


def jit_net(fn=None, *, static_argnames: tuple[str, ...] = ()):
    """``jax.jit(fn, static_argnames=("net", *static_argnames))`` for a spec that may hold array hyperparameters.

    ``fn(net, ...)``'s first argument is the spec: it is split into a static
    template and traced leaves (:func:`split`) and rebuilt inside the trace.
    Other arguments are bound to ``fn``'s signature, so they may be passed by
    position or by name as before; those named in ``static_argnames`` are
    static (hashable), the rest are traced.
    """
    if fn is None:
        return functools.partial(jit_net, static_argnames=static_argnames)
    sig = inspect.signature(fn)
    static = frozenset(static_argnames)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def traced(template, statics, leaves, dynamic):
        return fn(merge(template, leaves), **dict(statics), **dynamic)

    @functools.wraps(fn)
    def wrapper(net, *args, **kwargs):
        bound = sig.bind(net, *args, **kwargs)
        bound.apply_defaults()
        items = list(bound.arguments.items())[1:]
        statics = tuple((k, v) for k, v in items if k in static)
        dynamic = {k: v for k, v in items if k not in static}
        template, leaves = split(net)
        return traced(template, statics, leaves, dynamic)

    wrapper._traced = traced
    wrapper._cache_size = traced._cache_size  # as on a jitted function: compilations so far (tests count them)
    wrapper.clear_cache = traced.clear_cache
    return wrapper
