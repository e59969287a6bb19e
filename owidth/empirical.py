"""Empirical (finite-width) kernels: the NTK, the output covariance, NTK-vector products, Taylor expansions.

For a network ``f(theta, x)`` with ``k`` outputs the empirical NTK is

    Theta_ab(x, x') = sum_p  d f_a(x)/d theta_p  d f_b(x')/d theta_p

(Jacot et al. 2018). At initialisation in the NTK parametrisation it
converges to the analytic kernel of :func:`ow.kernel` as width grows, with
fluctuations of order ``width^-1/2``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from owidth import _checks, _precision
from owidth import _jaxpr_ntk
from owidth._caches import cached
from owidth._finite import FiniteModel

__all__ = ["empirical_ntk", "empirical_nngp", "empirical_ntk_vp", "linearize", "taylor_expand"]

_OUTPUTS = ("trace", "full")
_IMPLS = ("auto", "jacobian", "ntvp", "structured")
_JACOBIAN_BYTES = 2**31  # auto: Jacobian contraction below 2 GiB of Jacobians


def _check_fn(where: str, apply_fn) -> None:
    if not callable(apply_fn):
        raise TypeError(f"{where}: apply_fn must be a function (params, x) -> outputs, got {type(apply_fn).__name__}")


def _as_2d(y: jax.Array) -> jax.Array:
    return y[:, None] if y.ndim == 1 else y.reshape(y.shape[0], -1)


def _contract(j1, j2, outputs: str):
    """sum_p J1[i, a, p] J2[j, b, p] over all leaves."""
    leaves = zip(jax.tree.leaves(j1), jax.tree.leaves(j2))
    if outputs == "trace":
        terms = [jnp.einsum("iap,jap->ij", a.reshape(*a.shape[:2], -1), b.reshape(*b.shape[:2], -1)) for a, b in leaves]
    else:
        terms = [jnp.einsum("iap,jbp->ijab", a.reshape(*a.shape[:2], -1), b.reshape(*b.shape[:2], -1)) for a, b in leaves]
    return sum(terms)


def _per_example(apply_fn, independent: bool):
    """``g(p, x) -> (N, k)``; with independent examples the maps below are vmapped over single examples."""
    if not independent:
        return lambda p, x: _as_2d(apply_fn(p, x))
    return lambda p, xi: _as_2d(apply_fn(p, xi[None]))[0]


@functools.partial(jax.jit, static_argnames=("apply_fn", "outputs", "same", "independent"))
def _ntk_jacobian(apply_fn, params, x1, x2, outputs, same, independent):
    g = _per_example(apply_fn, independent)

    def jac(x):
        if independent:  # one example at a time: N times less work than the batch Jacobian
            return jax.vmap(lambda xi: jax.jacrev(g)(params, xi))(x)
        return jax.jacrev(g)(params, x)

    j1 = jac(x1)
    j2 = j1 if same else jac(x2)
    k = _contract(j1, j2, outputs)
    if outputs == "trace":
        k = k / jax.tree.leaves(j1)[0].shape[1]
    return k


@functools.partial(jax.jit, static_argnames=("apply_fn", "independent"))
def _ntvp_columns(apply_fn, params, x1, x2, rows, independent):
    """Columns (i, a) for i in ``rows``: J2 (J1^T e_ia) by one VJP and one JVP each, vmapped."""
    g = _per_example(apply_fn, independent)

    def column(i, a):
        if independent:
            out, vjp = jax.vjp(lambda p: g(p, x1[i]), params)
            e = jax.nn.one_hot(a, out.shape[0], dtype=out.dtype)
        else:
            out, vjp = jax.vjp(lambda p: g(p, x1), params)
            e = jax.nn.one_hot(i * out.shape[1] + a, out.size, dtype=out.dtype).reshape(out.shape)
        (grad,) = vjp(e)
        return jax.jvp(lambda p: _as_2d(apply_fn(p, x2)), (params,), (grad,))[1]  # (n2, k)

    k = jax.eval_shape(lambda: _as_2d(apply_fn(params, x1[:1]))).shape[1]
    ii, aa = jnp.repeat(rows, k), jnp.tile(jnp.arange(k), rows.shape[0])
    return jax.vmap(column)(ii, aa).reshape(rows.shape[0], k, x2.shape[0], k)  # (rows, a, n2, b)


def _ntk_ntvp(apply_fn, params, x1, x2, outputs, independent, chunk):
    """NTK-vector products, ``chunk`` input rows at a time (vmapped, no XLA loop)."""
    blocks = [
        _ntvp_columns(apply_fn, params, x1, x2, jnp.arange(i, min(i + chunk, x1.shape[0])), independent)
        for i in range(0, x1.shape[0], chunk)
    ]
    full = jnp.concatenate(blocks, axis=0).transpose(0, 2, 1, 3)  # (n1, n2, a, b)
    if outputs == "trace":
        return jnp.trace(full, axis1=2, axis2=3) / full.shape[-1]
    return full


@cached(maxsize=256)
def _output_size(apply_fn, signature) -> int:
    params_struct, x_struct = signature
    shape = jax.eval_shape(lambda p, x: _as_2d(apply_fn(p, x)), jax.tree.unflatten(*params_struct), x_struct).shape
    return shape[1]


@functools.partial(jax.jit, static_argnames=("model", "outputs", "same"))
def _ntk_structured(model, params, x1, x2, outputs, same):
    """Layer-structured NTK of an owidth finite model with only Dense weights.

    For ``z = x @ (m W) + c b`` the per-example gradients are rank one,
    ``df_a/dW = m x (df_a/dz)^T`` and ``df_a/db = c df_a/dz``, so

        Theta_ab(x, x') = sum_layers [m^2 <x_l, x'_l> + c^2] <delta_la(x), delta_lb(x')>

    with ``x_l`` the layer input and ``delta_la = df_a/dz_l``. It needs one
    forward and ``k`` backward passes per input batch and O(N width) memory,
    instead of O(N #params) for the Jacobian.
    """

    def signals(x):
        _, tape0 = model.apply_taped(params, x)
        taps0 = [jnp.zeros(shape, x.dtype) for shape in tape0.out_shapes]

        def f(taps):
            y, tape = model.apply_taped(params, x, taps)
            return _as_2d(y), tape.inputs

        y, vjp_fn, inputs = jax.vjp(f, taps0, has_aux=True)
        eye = jnp.eye(y.shape[1], dtype=y.dtype)
        deltas = jax.vmap(lambda e: vjp_fn(jnp.broadcast_to(e[None, :], y.shape))[0])(eye)  # per layer (k, N, out)
        return inputs, deltas, tape0.layers

    h1, d1, layers = signals(x1)
    h2, d2, _ = (h1, d1, layers) if same else signals(x2)
    total = 0.0
    for a1, a2, e1, e2, (scale, has_b) in zip(h1, h2, d1, d2, layers):
        gram = scale.w_mult**2 * (a1 @ a2.T) + (scale.b_mult**2 if has_b else 0.0)
        if outputs == "trace":
            total = total + gram * jnp.einsum("aip,ajp->ij", e1, e2) / e1.shape[0]
        else:
            total = total + gram[:, :, None, None] * jnp.einsum("aip,bjp->ijab", e1, e2)
    return total


@cached(maxsize=256)
def _leaf_fn(apply_fn, treedef):
    """One ``(leaves, x) -> (n, k)`` function per (apply_fn, tree): the jitted structured NTK compiles once."""
    return _jaxpr_ntk.leaf_fn(apply_fn, treedef)


@cached(maxsize=256)
def _jaxpr_plan(apply_fn, signature) -> tuple[int, int]:
    """(number of structured leaves, floats of structured signals per example) from the jaxpr of ``apply_fn``."""
    (treedef, leaf_structs), x_struct = signature
    fn = _leaf_fn(apply_fn, treedef)
    closed = jax.make_jaxpr(fn)(list(leaf_structs), x_struct)
    plan = _jaxpr_ntk.analyse(closed, list(leaf_structs), x_struct)
    return len(plan.structured), plan.signal_floats


def _structured_model(apply_fn):
    """The FiniteModel behind ``apply_fn`` if it is ``model.apply`` of a Dense-only model, else None."""
    model = getattr(apply_fn, "__self__", None)
    if isinstance(model, FiniteModel) and getattr(apply_fn, "__func__", None) is FiniteModel.apply:
        return model if model.structured() else None
    return None


@_precision.exact
def empirical_ntk(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x1,
    x2=None,
    *,
    outputs: str = "trace",
    implementation: str = "auto",
    batch_size: int | None = None,
    independent_examples: bool = True,
) -> jax.Array:
    """Empirical NTK of ``apply_fn(params, x)`` between ``x1`` and ``x2``.

    Args:
      apply_fn: pure function ``(params, x) -> (batch,)`` or ``(batch, k)``.
        Pass the same function object across calls to reuse the compilation
        (for example ``model.apply``).
      params: parameter pytree to differentiate.
      x1, x2: (n1, d) and (n2, d) inputs; ``x2=None`` uses ``x1``.
      outputs: ``"trace"`` (default) averages ``Theta_aa`` over the ``k``
        outputs, giving an (n1, n2) array comparable to the per-output
        analytic kernel; ``"full"`` returns (n1, n2, k, k).
      implementation: ``"structured"`` contracts the structure of the
        derivatives instead of the Jacobians (Novak et al. 2022, sec. 4,
        neural-tangents' ``STRUCTURED_DERIVATIVES``): a weight ``W`` that enters
        ``apply_fn`` only through matrix products ``y = dot_general(A, W)``
        (``x @ W``, ``jnp.dot``, an einsum, a flax ``nn.Dense``, also shared
        between layers) has rank-one per-example gradients
        ``df_a/dW[b, c, g] = sum_m A[b, m, c] delta_a[b, m, g]``, with
        ``delta_a = df_a/dy`` (``b``: batch axes of the product, ``m``: free
        axes of ``A``, ``c``: contracted, ``g``: free axes of ``W``), so its
        NTK block is a Gram of layer inputs times a Gram of cotangents,

            <df_a(x)/dW, df_b(x')/dW> = sum_{b,m,m'} [A A'^T]_{b m m'} [delta_a delta'_b^T]_{b m m'},

        computed from one forward and ``k`` backward passes with O(N width)
        memory, without any (N, k, fan_in, fan_out) Jacobian. The weights are
        found in the jaxpr of ``apply_fn`` (followed through transposes,
        reshapes, float casts, scalar factors and ``jit`` calls); every other
        parameter (biases, scales, embeddings, any use not recognised) is
        differentiated directly in the same backward pass and contracted as
        in ``"jacobian"``, so it works for any pure ``apply_fn``. For
        ``model.apply`` of an ``ow.finite`` model made of Dense layers and
        activations with (batch, features) inputs, the layer tape of the
        model is used instead (same maths, no jaxpr). ``"jacobian"``
        materialises per-example Jacobians and contracts them; ``"ntvp"``
        builds the kernel from NTK-vector products (one VJP and one JVP per
        column) with memory independent of the number of inputs. ``"auto"``:
        the tape for such ``ow.finite`` models; else, with
        ``independent_examples``, ``"structured"`` when it recognises weights
        and its signals take at most half the Jacobians' memory; else the
        Jacobian when the Jacobians take less than 2 GiB, else ntvp. All agree
        to rounding.
      batch_size: compute the kernel in blocks of this many inputs (any N;
        the last block may be smaller), bounding peak memory by one block.
      independent_examples: ``apply_fn`` treats the examples of a batch
        independently (true for every owidth layer), so Jacobians are taken
        one example at a time (N times less work than through the whole
        batch). Set ``False`` for functions that mix examples (batch norm).

    Returns:
      The kernel as a float array.

    References:
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>
      - Novak, Sohl-Dickstein & Schoenholz 2022, Fast Finite Width Neural Tangent Kernel, sec. 4. <https://arxiv.org/abs/2206.08720>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> import jax.numpy as jnp
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> x = np.array([[1.0, 1.0], [1.0, -1.0]])
      >>> model = ow.finite(net, width=4096)
      >>> theta = ow.empirical_ntk(model.apply, model.init(jax.random.key(0), x), x)
      >>> theta.shape
      (2, 2)
      >>> bool(np.allclose(theta, ow.kernel(net, x).ntk, atol=0.1))   # wide: close to the analytic NTK
      True
      >>> mlp = lambda p, x: jnp.tanh(x @ p["w"] + p["b"]) @ p["v"]   # any pure function
      >>> p = {"w": np.ones((2, 8)), "b": np.zeros((1, 8)), "v": np.ones((8, 2))}
      >>> a = ow.empirical_ntk(mlp, p, x, outputs="full", implementation="structured")
      >>> bool(np.allclose(a, ow.empirical_ntk(mlp, p, x, outputs="full", implementation="jacobian")))
      True
    """
    where = "ow.empirical_ntk"
    _check_fn(where, apply_fn)
    if outputs not in _OUTPUTS:
        raise ValueError(f"{where}: outputs={outputs!r}; use one of {_OUTPUTS}")
    if implementation not in _IMPLS:
        raise ValueError(f"{where}: implementation={implementation!r}; use one of {_IMPLS}")
    if batch_size is not None:
        batch_size = _checks.positive_int("batch_size", batch_size, where=where)
    # inputs keep their dtype: integer inputs (token ids for an embedding) are fine
    x1 = _checks.as_float_array("x1", x1, where=where, rank=None, cast=False)
    same = x2 is None
    x2 = x1 if same else _checks.as_float_array("x2", x2, where=where, rank=None, cast=False)
    _checks.same_features(x1, x2, where=where)
    model = _structured_model(apply_fn) if x1.ndim == 2 else None  # the tape contracts (batch, features) inputs
    if implementation == "auto" and model is not None:
        implementation = "structured"
    if batch_size is not None and max(x1.shape[0], x2.shape[0]) > batch_size:
        return _blocked(apply_fn, params, x1, x2, same, outputs=outputs, implementation=implementation,
                        batch_size=batch_size, independent=independent_examples)
    if implementation == "structured" and model is not None:
        return _ntk_structured(model, params, x1, x2, outputs, same)
    leaves, treedef = jax.tree.flatten(params)
    if implementation == "structured":
        return _jaxpr_ntk.ntk(_leaf_fn(apply_fn, treedef), leaves, x1, x2, outputs, same, independent_examples)
    n_params = sum(math.prod(p.shape) for p in leaves)
    leaf_structs = tuple(jax.ShapeDtypeStruct(p.shape, p.dtype) for p in leaves)
    signature = ((treedef, leaf_structs), jax.ShapeDtypeStruct((1, *x1.shape[1:]), x1.dtype))
    k = _output_size(apply_fn, signature)
    n_rows = x1.shape[0] + (0 if same else x2.shape[0])
    if implementation == "auto" and independent_examples:
        # the jaxpr-structured kernel when it recognises weights and keeps at most half the Jacobians' memory
        n_structured, floats = _jaxpr_plan(apply_fn, signature)
        nbytes = n_rows * floats * x1.dtype.itemsize
        if n_structured and 2 * floats <= k * n_params and nbytes <= _JACOBIAN_BYTES:
            return _jaxpr_ntk.ntk(_leaf_fn(apply_fn, treedef), leaves, x1, x2, outputs, same, True)
    if implementation == "auto":
        nbytes = n_rows * k * n_params * x1.dtype.itemsize
        implementation = "jacobian" if nbytes <= _JACOBIAN_BYTES else "ntvp"
    if implementation == "jacobian":
        return _ntk_jacobian(apply_fn, params, x1, x2, outputs, same, independent_examples)
    # as many rows per chunk as keep the vmapped gradients under the Jacobian budget
    chunk = max(1, min(x1.shape[0], _JACOBIAN_BYTES // max(1, k * n_params * x1.dtype.itemsize)))
    return _ntk_ntvp(apply_fn, params, x1, x2, outputs, independent_examples, chunk)


def _blocked(apply_fn, params, x1, x2, same, *, outputs, implementation, batch_size, independent):
    """Assemble the kernel from (batch_size x batch_size) blocks; peak memory is that of one block."""
    starts1 = range(0, x1.shape[0], batch_size)
    starts2 = range(0, x2.shape[0], batch_size)
    rows = []
    for i in starts1:
        row = []
        for j in starts2:
            b1 = x1[i : i + batch_size]
            b2 = None if same and i == j else x2[j : j + batch_size]
            row.append(empirical_ntk(apply_fn, params, b1, b2, outputs=outputs, implementation=implementation,
                                     independent_examples=independent))
        rows.append(jnp.concatenate(row, axis=1))
    return jnp.concatenate(rows, axis=0)


def linearize(apply_fn: Callable[[Any, jax.Array], jax.Array], params0: Any) -> Callable[[Any, jax.Array], jax.Array]:
    """First-order Taylor expansion of ``apply_fn`` in the parameters around ``params0``.

        f_lin(theta, x) = f(theta0, x) + J(theta0, x) (theta - theta0)

    computed with one ``jax.jvp`` per call (no Jacobian is stored). Trained by
    gradient descent on the MSE, a single-output ``f_lin`` follows the closed
    form of :func:`ow.predict.gradient_descent` with its empirical NTK exactly
    (Lee et al. 2019); wide networks approach it. (With k > 1 outputs the
    finite-width NTK has cross-output blocks that the per-output kernel of
    ``predict`` omits.)

    References:
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=1)), width=8)
      >>> x = np.ones((2, 3))
      >>> params0 = model.init(jax.random.key(0), x)
      >>> f_lin = ow.linearize(model.apply, params0)
      >>> bool(np.allclose(f_lin(params0, x), model.apply(params0, x)))   # equal at params0
      True
    """
    _check_fn("ow.linearize", apply_fn)

    def f_lin(params, x):
        delta = jax.tree.map(lambda p, p0: p - p0, params, params0)
        y0, dy = jax.jvp(lambda p: apply_fn(p, x), (params0,), (delta,))
        return y0 + dy

    return f_lin


@_precision.exact
def empirical_nngp(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, x1, x2=None, *,
                   outputs: str = "trace") -> jax.Array:
    """The outputs' second moment for one network: ``f(x1) f(x2)^T`` over the readout units.

    For ``k`` outputs, ``outputs="trace"`` (default) gives ``(1/k) sum_a f_a(x1_i) f_a(x2_j)``, an
    (n1, n2) array whose average over random initialisations is the NNGP of :func:`ow.kernel` (per output
    unit; neural-tangents' ``empirical_nngp_fn`` with the readout axis traced); ``"full"`` gives the
    (n1, n2, k, k) array ``f_a(x1_i) f_b(x2_j)``.

    Args:
      apply_fn: ``(params, x) -> (batch,)`` or ``(batch, k)``.
      params: the network's parameters.
      x1, x2: inputs; ``x2=None`` uses ``x1``.
      outputs: ``"trace"`` or ``"full"``.

    Returns:
      The kernel as a float array.

    References:
      - Neal 1996, Bayesian Learning for Neural Networks, ch. 2.
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=3)), width=16)
      >>> x = np.ones((2, 4))
      >>> ow.empirical_nngp(model.apply, model.init(jax.random.key(0), x), x).shape
      (2, 2)
    """
    where = "ow.empirical_nngp"
    _check_fn(where, apply_fn)
    if outputs not in _OUTPUTS:
        raise ValueError(f"{where}: outputs={outputs!r}; use one of {_OUTPUTS}")
    x1 = _checks.as_float_array("x1", x1, where=where, rank=None, cast=False)
    f1 = _as_2d(apply_fn(params, x1))
    f2 = f1 if x2 is None else _as_2d(apply_fn(params, _checks.as_float_array("x2", x2, where=where, rank=None,
                                                                              cast=False)))
    if outputs == "full":
        return jnp.einsum("ia,jb->ijab", f1, f2)
    return f1 @ f2.T / f1.shape[1]


@_precision.exact
def empirical_ntk_vp(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, x1, x2=None
                     ) -> Callable[[jax.Array], jax.Array]:
    """NTK-vector products ``v -> Theta(x1, x2) v`` without forming the kernel.

    ``Theta(x1, x2) v = J(x1) (J(x2)^T v)``: one VJP at ``x2`` (done once, here) and one JVP at ``x1``
    per product, so memory is that of a forward and backward pass, whatever the number of inputs
    (neural-tangents' ``empirical_ntk_vp_fn``). ``v`` has the shape of ``apply_fn(params, x2)``, the
    result that of ``apply_fn(params, x1)``; the kernel is the full one, output blocks included
    (:func:`empirical_ntk` with ``outputs="full"``, contracted with ``v``). Use it in iterative solvers
    (conjugate gradients, Lanczos) on kernels too large to store.

    Args:
      apply_fn: ``(params, x) -> outputs``.
      params: the network's parameters.
      x1, x2: inputs; ``x2=None`` uses ``x1``.

    Returns:
      A function ``ntk_vp(v)``; it is ``jax.jit``-able and linear in ``v``.

    References:
      - Novak et al. 2022, Fast Finite Width Neural Tangent Kernel. <https://arxiv.org/abs/2206.08720>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=1)), width=32)
      >>> x = np.random.default_rng(0).normal(size=(5, 3))
      >>> params = model.init(jax.random.key(0), x)
      >>> v = np.ones((5, 1))
      >>> theta = ow.empirical_ntk(model.apply, params, x)
      >>> bool(np.allclose(ow.empirical_ntk_vp(model.apply, params, x)(v), theta @ v))
      True
    """
    where = "ow.empirical_ntk_vp"
    _check_fn(where, apply_fn)
    x1 = _checks.as_float_array("x1", x1, where=where, rank=None, cast=False)
    x2 = x1 if x2 is None else _checks.as_float_array("x2", x2, where=where, rank=None, cast=False)
    _checks.same_features(x1, x2, where=where)
    out2, vjp2 = jax.vjp(lambda p: apply_fn(p, x2), params)

    def ntk_vp(v):
        v = jnp.asarray(v, out2.dtype)
        if v.shape != out2.shape:
            raise ValueError(f"{where}: v has shape {v.shape}; it must have the shape of apply_fn(params, x2), "
                             f"{out2.shape}")
        (tangent,) = vjp2(v)
        return jax.jvp(lambda p: apply_fn(p, x1), (params,), (tangent,))[1]

    return ntk_vp


def taylor_expand(apply_fn: Callable[[Any, jax.Array], jax.Array], params0: Any, degree: int
                  ) -> Callable[[Any, jax.Array], jax.Array]:
    """Taylor expansion of ``apply_fn`` in the parameters around ``params0``, to order ``degree``:

        f_d(theta, x) = sum_{k <= d} (1/k!) d^k/dt^k f(theta0 + t (theta - theta0), x) |_{t=0}

    ``degree=1`` is :func:`linearize` (Lee et al. 2019); ``degree=2`` the quadratic model of wide
    networks beyond the kernel regime (Huang & Yau 2020; Bai & Lee 2020). The derivatives are nested
    forward-mode JVPs along ``theta - theta0`` (no Hessian is stored); order ``d`` costs about ``2^d``
    forward passes.

    Args:
      apply_fn: ``(params, x) -> outputs``.
      params0: the expansion point.
      degree: the order, an int >= 0 (0: the constant ``f(theta0, x)``).

    Returns:
      ``f_d(params, x)``, with the signature of ``apply_fn``.

    References:
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent. <https://arxiv.org/abs/1902.06720>
      - Huang & Yau 2020, Dynamics of Deep Neural Networks and Neural Tangent Hierarchy. <https://arxiv.org/abs/1909.08156>
      - Bai & Lee 2020, Beyond Linearization: On Quadratic and Higher-Order Approximation of Wide Neural Networks. <https://arxiv.org/abs/1910.01619>

    Examples:
      >>> import jax.numpy as jnp
      >>> import owidth as ow
      >>> f = lambda p, x: jnp.sin(p * x)
      >>> f2 = ow.taylor_expand(f, 0.0, 2)        # sin(p x) = p x + O(p^3)
      >>> round(float(f2(0.1, 1.0)), 6)
      0.1
    """
    where = "ow.taylor_expand"
    _check_fn(where, apply_fn)
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise ValueError(f"{where}: degree={degree!r} must be an int >= 0")

    def f_taylor(params, x):
        delta = jax.tree.map(lambda p, p0: p - p0, params, params0)
        leaves = jax.tree.leaves(params0)
        dtype = jnp.result_type(*leaves) if leaves else jnp.result_type(float)

        def along(t):
            return (apply_fn(jax.tree.map(lambda p0, d: p0 + t * d, params0, delta), x),)

        derivs = along  # derivs(t) = (g(t), g'(t), ..., g^(k)(t))
        for _ in range(degree):
            derivs = functools.partial(_one_more_derivative, derivs)
        terms = derivs(jnp.zeros((), dtype))
        return functools.reduce(lambda a, b: a + b, (term / math.factorial(k) for k, term in enumerate(terms)))

    return f_taylor


def _one_more_derivative(derivs, t):
    """``(g, ..., g^(k))(t)`` -> ``(g, ..., g^(k+1))(t)`` by one JVP in ``t``."""
    primal, tangent = jax.jvp(derivs, (t,), (jnp.ones_like(t),))
    return (*primal, tangent[-1])
