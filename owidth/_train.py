"""``ow.train``: ensembles of finite networks trained as one vmapped program per width.

Seeds x learning rates x richness scales are flattened into one ensemble
axis and vmapped; the training loop is a ``lax.scan``, compiled once per
width (widths change shapes) and reused across calls with the same
configuration. Results come back as an ``xarray.Dataset`` with named dims
``(width, seed, lr, alpha | gamma0, step)``.

Richness (lazy vs rich training). With output scale ``alpha`` the trained
model is ``f_alpha = alpha * (f(w) - f(w0))`` (centred, Chizat, Oyallon &
Bach 2019) and each update is multiplied by ``alpha^-2`` (SGD-like) or
``alpha^-1`` (Adam-like), so the function-space step is alpha-independent at
leading order while the weights move by ``O(1/alpha)``: large alpha is lazy
(kernel) training, small alpha rich. For SGD this is exactly gradient descent
on ``L(alpha (f - f0)) / alpha^2`` (Chizat et al.). The Bordelon & Pehlevan
(2022) richness ``gamma0`` (output ``f / gamma0``, learning rate
``eta0 gamma0^2``) is the same dynamics with ``alpha = 1 / gamma0``;
``ow.train(..., gamma0=...)`` labels the axis ``gamma0``. Under MUP/MF,
``gamma0 -> 0`` is the NTK limit and ``gamma0 = O(1)`` feature learning.

Three steps, each usable alone (``ow.Sweep`` builds the same plans):
:func:`plan` checks ``ow.train``'s arguments and returns a frozen
:class:`TrainPlan`; :func:`run` trains it, one compiled :class:`Program` per
width; :func:`assemble` builds the ``xarray.Dataset``. ``train = assemble(run(plan(...)))``.

References:
  - Chizat, Oyallon & Bach 2019, On Lazy Training in Differentiable Programming (output scale
    ``alpha``, centring). <https://arxiv.org/abs/1812.07956>
  - Bordelon & Pehlevan 2022, Self-Consistent Dynamical Field Theory of Kernel Evolution in Wide
    Neural Networks (richness ``gamma0``). <https://arxiv.org/abs/2205.09653>
  - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient
    Descent (``linearized=True``). <https://arxiv.org/abs/1902.06720>
  - Yang & Hu 2021, Tensor Programs IV (the parametrizations). <https://arxiv.org/abs/2011.14522>
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks, _optim
from owidth._objective import LOSSES, loss_fn, targets
from owidth._progress import progress
from owidth.layers.sequence import check_tokens
from owidth.param import NTP, Parametrization, model_scales

__all__ = ["Program", "Snapshot", "TrainPlan", "WidthRun", "assemble", "execute", "init_members", "mask_params", "member_keys", "member_step",
           "param_attrs", "param_from_attrs", "plan", "record_members", "run", "run_chunk", "train"]

_WHERE = "ow.train"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a user metric sees at a record point (one ensemble member, traced).

    Attributes:
      apply: ``apply(params, x)``, the (possibly linearized) network, uncentred and unscaled.
      params, params0: current and initial parameters.
      x_train, y_train, x_test, y_test: the data (``x_test``/``y_test`` may be None).
      alpha: the member's output scale (traced scalar).
      model: the finite model (``roles``, ``lr_scales``, ...).
      loss: the training loss (``"mse"`` or ``"xent"``).
      f0: the centring offset, ``apply(params0, x_train)`` when ``ow.train(center=True)``, else None.
      mask: the member's boolean masks (a pytree like ``params``) when ``ow.train(masks=...)``, else None:
        masked entries of ``params`` are zero and stay zero, and ``apply`` is the masked network
        (``apply(where(mask, params, 0), x)``), so derivatives taken through it (the sharpness, the
        NTK) live in the kept coordinates only, where training moves.

    :meth:`objective` is the full-batch training loss as a function of the parameters, the one whose
    curvature ``ow.measure.sharpness`` measures.

    A metric ``fn(snapshot) -> scalar`` passed as ``ow.train(..., metrics={name: fn})`` is traced
    inside the compiled training loop: use ``jax.numpy``, not numpy or Python control flow on values.

    Examples:
      The squared distance travelled by the weights, evaluated here on a hand-built snapshot at
      initialisation (``ow.train`` builds one per member and record point):

      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> import owidth as ow
      >>> def weight_move(s):
      ...     moves = jax.tree.map(lambda p, p0: jnp.sum((p - p0) ** 2), s.params, s.params0)
      ...     return sum(jax.tree.leaves(moves))
      >>> x, y = np.ones((3, 2)), np.zeros((3, 1))
      >>> model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8)
      >>> params = model.init(jax.random.key(0), x)
      >>> snap = ow.Snapshot(apply=model.apply, params=params, params0=params, x_train=x, y_train=y,
      ...                    x_test=None, y_test=None, alpha=1.0, model=model)
      >>> float(weight_move(snap))
      0.0
    """

    apply: Callable
    params: Any
    params0: Any
    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array | None
    y_test: jax.Array | None
    alpha: jax.Array
    model: Any
    loss: str = "mse"
    f0: jax.Array | None = None
    mask: Any = None

    def objective(self, params) -> jax.Array:
        """The full-batch training loss at ``params``: ``loss(alpha (apply(params, x) - f0), y)``."""
        f = self.apply(params, self.x_train)
        if self.f0 is not None:
            f = f - self.f0
        return loss_fn(self.loss, self.alpha * f, self.y_train)


@dataclasses.dataclass(frozen=True)
class Program:
    """Static configuration of one width's compiled programs (hashable: the jit cache key)."""

    model: Any
    optimizer: str
    loss: str
    batch_size: int | None
    center: bool
    linearized: bool
    record_every: int
    chunk: int
    weight_decay: float
    momentum: float
    eps: float
    metrics: tuple[tuple[str, Callable], ...]
    record_outputs: bool
    member_batch: int | None = None
    b1: float = 0.9
    b2: float = 0.999
    clip: float | None = None
    schedule: Callable | None = None

    @property
    def keep_params0(self) -> bool:
        return self.linearized or bool(self.metrics)


# --------------------------------------------------------------------------- #
# Pieces of one member's program
# --------------------------------------------------------------------------- #
def _apply_fn(prog: Program, params0):
    if not prog.linearized:
        return prog.model.apply
    from owidth.empirical import linearize

    return linearize(prog.model.apply, params0)


def _tx(prog: Program, lr, alpha, scales):
    """The member's optimizer; the richness factor ``alpha^-2`` (SGD-like) or ``alpha^-1`` (Adam-like) scales ``lr``."""
    rich = alpha ** -2.0 if _optim.family(prog.optimizer, where=_WHERE) == "sgd" else 1.0 / alpha
    return _optim.make(prog.optimizer, lr=lr * rich, weight_decay=prog.weight_decay, momentum=prog.momentum,
                       eps=prog.eps, b1=prog.b1, b2=prog.b2, clip=prog.clip, schedule=prog.schedule, where=_WHERE,
                       **scales)


def _scales(prog: Program, x) -> dict:
    return model_scales(prog.model, x, prog.optimizer)


def mask_params(params, mask):
    """``params`` with the entries where ``mask`` is False set to exactly zero (``ow.prune.apply``)."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), p.dtype)), params, mask)


def _masked_apply(apply, mask, params, x):
    return apply(mask_params(params, mask), x)


def member_keys(key) -> tuple[jax.Array, jax.Array]:
    """A member's (initialisation, data) keys from its seed's key ``jax.random.key(seed)``."""
    k_init, k_data = jax.random.split(key)
    return k_init, k_data


def _init_member(prog: Program, key, lr, alpha, x, xt, given=None, mask=None):
    k_init, k_data = member_keys(key)
    params = prog.model.init(k_init, x) if given is None else given
    if mask is not None:
        params = mask_params(params, mask)
    tx = _tx(prog, lr, alpha, _scales(prog, x))
    valid = jnp.isfinite(lr) & (lr > 0) & jnp.isfinite(alpha) & (alpha > 0)
    state = {
        "params": params,
        "opt": tx.init(params),
        "lr": jnp.where(valid, lr, 0.0),
        "alpha": jnp.where(valid, alpha, 1.0),
        "key": k_data,
        "valid": valid,
        "diverged": jnp.zeros((), bool),
        "diverged_step": jnp.full((), -1, jnp.int32),
    }
    if mask is not None:
        state["mask"] = mask
    if prog.keep_params0:
        state["params0"] = params
    if prog.center:
        state["f0"] = prog.model.apply(params, x)
        if xt is not None:
            state["f0_test"] = prog.model.apply(params, xt)
    return state


def _output(prog: Program, st, x, f0):
    f = _apply_fn(prog, st.get("params0"))(st["params"], x)
    if prog.center:
        f = f - f0
    return st["alpha"] * f


def member_step(prog: Program, st, t, x, y):
    """One optimizer step of one member's state ``st`` at step ``t`` (minibatch drawn from ``t``)."""
    f0 = st.get("f0")
    if prog.batch_size is not None:
        idx = jax.random.choice(jax.random.fold_in(st["key"], t), x.shape[0], (prog.batch_size,), replace=False)
        x, y = x[idx], y[idx]
        f0 = None if f0 is None else f0[idx]

    def objective(params):
        return loss_fn(prog.loss, _output(prog, {**st, "params": params}, x, f0), y)

    value, grads = jax.value_and_grad(objective)(st["params"])
    tx = _tx(prog, st["lr"], st["alpha"], _scales(prog, x))
    updates, opt = tx.update(grads, st["opt"], st["params"])
    params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), st["params"], updates)
    if "mask" in st:  # pruned entries stay exactly zero, whatever the optimizer's update (decay, momentum, Adam)
        params = mask_params(params, st["mask"])
    bad = ~jnp.isfinite(value)
    first = bad & ~st["diverged"]
    return {**st, "params": params, "opt": opt, "diverged": st["diverged"] | bad,
            "diverged_step": jnp.where(first, t, st["diverged_step"]).astype(jnp.int32)}


def _record(prog: Program, st, x, y, xt, yt):
    rec = {}
    for split, (xs, ys, f0) in {"train": (x, y, st.get("f0")), "test": (xt, yt, st.get("f0_test"))}.items():
        if xs is None:
            continue
        f = _output(prog, st, xs, f0)
        rec[f"{split}_loss"] = loss_fn(prog.loss, f, ys)
        if prog.loss == "xent":
            rec[f"{split}_accuracy"] = jnp.mean(jnp.argmax(f, axis=-1) == ys)
        if prog.record_outputs and split == "test":
            rec["test_output"] = f
    if prog.metrics:
        apply = _apply_fn(prog, st["params0"])
        if "mask" in st:  # the network the optimizer trains: derivatives (Hessian, NTK) in the kept coordinates only
            apply = functools.partial(_masked_apply, apply, st["mask"])
        snap = Snapshot(apply=apply, params=st["params"], params0=st["params0"],
                        x_train=x, y_train=y, x_test=xt, y_test=yt, alpha=st["alpha"], model=prog.model,
                        loss=prog.loss, f0=st.get("f0"), mask=st.get("mask"))
        for name, fn in prog.metrics:
            rec[name] = jnp.asarray(fn(snap), dtype=jnp.result_type(float))
    ok = st["valid"] & ~st["diverged"]
    return {k: jnp.where(ok, v, jnp.nan) for k, v in rec.items()}


# --------------------------------------------------------------------------- #
# Compiled programs (cached on the static configuration)
# --------------------------------------------------------------------------- #
@functools.partial(jax.jit, static_argnames=("prog",))
def init_members(prog, keys, lrs, alphas, x, xt, given=None, masks=None):
    """Initial states of all members (leading axis: member), one per (key, lr, alpha); ``given``: their
    starting parameters (leading axis: member) instead of random ones; ``masks``: their boolean masks
    (leading axis: member), kept in the state and applied at every step."""
    return jax.vmap(lambda k, lr, a, p, m: _init_member(prog, k, lr, a, x, xt, p, m))(keys, lrs, alphas, given, masks)


@functools.partial(jax.jit, static_argnames=("prog",), donate_argnames=("state",))
def run_chunk(prog, state, start, x, y, xt, yt):
    """``prog.chunk`` record intervals for every member: record, then ``record_every`` steps."""
    return _advance(prog, state, start, x, y, xt, yt)


@functools.partial(jax.jit, static_argnames=("prog", "mesh"), donate_argnames=("state",))
def run_chunk_sharded(prog, mesh, state, start, x, y, xt, yt):
    """:func:`run_chunk` with the members split over the devices of ``mesh`` (axis ``"member"``): each device
    advances its own members with the single-device program (``jax.shard_map``); members are independent, so
    nothing is communicated."""
    spec, rep = jax.sharding.PartitionSpec("member"), jax.sharding.PartitionSpec()
    body = jax.shard_map(lambda st, t, a, b, c, d: _advance(prog, st, t, a, b, c, d), mesh=mesh,
                         in_specs=(spec, rep, rep, rep, rep, rep), out_specs=(spec, spec))
    return body(state, start, x, y, xt, yt)


def _advance(prog, state, start, x, y, xt, yt):
    def member(st):
        def interval(st, j):
            rec = _record(prog, st, x, y, xt, yt)
            t0 = (start + j) * prog.record_every

            def one(s, i):
                return member_step(prog, s, t0 + i, x, y), None

            st, _ = jax.lax.scan(one, st, jnp.arange(prog.record_every))
            return st, rec

        return jax.lax.scan(interval, st, jnp.arange(prog.chunk))

    if prog.member_batch is None:
        return jax.vmap(member)(state)
    return jax.lax.map(member, state, batch_size=prog.member_batch)


@functools.partial(jax.jit, static_argnames=("prog",))
def record_members(prog, state, x, y, xt, yt):
    """The records of every member's current state."""
    return jax.vmap(lambda st: _record(prog, st, x, y, xt, yt))(state)


# --------------------------------------------------------------------------- #
# Plan: the validated arguments
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True, eq=False)
class TrainPlan:
    """``ow.train``'s arguments, checked: what :func:`run` trains and :func:`assemble` labels.

    Built by :func:`plan` (never directly). Arrays: ``x``, ``y``, ``x_test``,
    ``y_test`` (jax), ``seeds``, ``lrs``, ``rich`` (numpy, the coordinates of
    the result); every other field is ``ow.train``'s keyword of the same name
    after validation (``record_every`` resolved, ``batch_size`` None for full batch).
    """

    net: Any
    x: jax.Array
    y: jax.Array
    x_test: jax.Array | None
    y_test: jax.Array | None
    widths: tuple[int, ...]
    seeds: np.ndarray
    lrs: np.ndarray
    rich_name: str
    rich: np.ndarray
    steps: int
    record_every: int
    param: Parametrization
    optimizer: str
    loss: str
    batch_size: int | None
    center: bool
    weight_decay: float
    momentum: float
    adam_eps: float
    linearized: bool
    metrics: tuple[tuple[str, Callable], ...]
    record_outputs: bool
    members_per_batch: int | None
    progress_bar: bool
    return_params: bool
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    clip_norm: float | None = None
    schedule: Callable | None = None
    init_params: Any = None  # {width: pytree}, leaves per member or with leading (seed, lr, rich) axes
    masks: Any = None  # {width: pytree of bool}, same layout as init_params

    @property
    def alphas(self) -> np.ndarray:
        """Output scales of the richness axis (``1 / gamma0`` for a ``gamma0`` axis)."""
        return 1.0 / self.rich if self.rich_name == "gamma0" else self.rich

    @property
    def shape(self) -> tuple[int, int, int]:
        """(seeds, lrs, richness values): the member grid."""
        return (self.seeds.size, self.lrs.size, self.rich.size)

    @property
    def intervals(self) -> int:
        return self.steps // self.record_every

    def coords(self) -> dict[str, Any]:
        """Coordinates of the result: ``width, seed, lr, alpha|gamma0, step``."""
        return {"width": list(self.widths), "seed": self.seeds, "lr": self.lrs, self.rich_name: self.rich,
                "step": np.arange(self.intervals + 1) * self.record_every}

    def model(self, width: int):
        from owidth._finite import finite

        return finite(self.net, width=width, param=self.param)

    def program(self, width: int, model=None) -> Program:
        """The compiled program's static configuration at ``width``."""
        members = int(np.prod(self.shape))
        return Program(
            model=self.model(width) if model is None else model, optimizer=self.optimizer, loss=self.loss,
            batch_size=self.batch_size, center=self.center, linearized=self.linearized,
            record_every=self.record_every, chunk=_chunk(self.intervals), weight_decay=self.weight_decay,
            momentum=self.momentum, eps=self.adam_eps, metrics=self.metrics,
            record_outputs=self.record_outputs and self.x_test is not None, b1=self.adam_b1, b2=self.adam_b2,
            clip=self.clip_norm, schedule=self.schedule,
            member_batch=_member_batch(self.members_per_batch, members, self.batch_size or self.x.shape[0], width))


def _per_width(name: str, given, widths, *, where: str):
    """``{width: pytree}`` from ``init_params`` or ``masks`` (checked against the widths; shapes in
    :func:`_member_tree`)."""
    if given is None:
        return None
    if isinstance(given, Mapping) and given and all(isinstance(k, (int, np.integer)) for k in given):
        missing = sorted(set(widths) - {int(k) for k in given})
        if missing:
            raise ValueError(f"{where}: {name} has nothing for widths {missing}; give {{width: {name}}} "
                             "for every width")
        return {int(k): v for k, v in given.items() if int(k) in widths}
    if len(widths) != 1:
        raise ValueError(f"{where}: {name} for {len(widths)} widths must be a mapping {{width: {name}}}")
    return {widths[0]: given}


def _check_mask_values(masks, *, where: str) -> None:
    """Every leaf of every width's masks is boolean, or numbers that are all 0 or 1 (checked on the host)."""
    for width, tree in masks.items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            arr = np.asarray(leaf)
            at = f"masks at width {width}, leaf {jax.tree_util.keystr(path) or '(root)'}"
            if arr.dtype == bool:
                continue
            if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
                raise TypeError(f"{where}: {at} has dtype {arr.dtype}; masks are boolean (True = keep) or 0/1 numbers")
            bad = ~((arr == 0) | (arr == 1))
            if bad.any():
                raise ValueError(f"{where}: {at} holds values other than 0 and 1 (e.g. {arr[bad].ravel()[0]!r}); "
                                 "masks are binary: pass scores through ow.prune (e.g. ow.prune.magnitude) to get masks")


def _member_tree(p, model, width: int, x, name: str):
    """``p.init_params`` or ``p.masks`` at ``width`` for every member (leading axis: member), checked against
    the model's parameter shapes; masks become boolean."""
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    want = jax.eval_shape(model.init, key, jax.ShapeDtypeStruct(x.shape, x.dtype))
    given = getattr(p, name)[width]
    members = int(np.prod(p.shape))
    if jax.tree.structure(given) != jax.tree.structure(want):
        raise ValueError(f"ow.train: {name} at width {width} has the structure {jax.tree.structure(given)}, "
                         f"not that of the model's parameters {jax.tree.structure(want)}")

    def one(g, w):
        g = jnp.asarray(g, dtype=bool if name == "masks" else w.dtype)
        if g.shape == w.shape or (name == "masks" and g.shape == ()):
            return jnp.broadcast_to(g, (members,) + w.shape)
        if g.shape == p.shape + w.shape:
            return g.reshape((members,) + w.shape)
        raise ValueError(f"ow.train: a {name} leaf at width {width} has shape {g.shape}; expected {w.shape} "
                         f"(one member) or {p.shape + w.shape} (seed, lr, {p.rich_name}) + that")

    return jax.tree.map(one, given, want)


def _values(name: str, value, *, where: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{where}: {name} must be a number or a non-empty 1-D list of numbers, got {value!r}")
    return arr


def _seeds(seeds, *, where: str) -> np.ndarray:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return np.arange(_checks.positive_int("seeds", seeds, where=where))
    arr = np.atleast_1d(np.asarray(seeds))
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 0):
        raise ValueError(f"{where}: seeds must be a positive int (count) or a list of non-negative ints, got {seeds!r}")
    if len(set(arr.tolist())) != arr.size:
        raise ValueError(f"{where}: seeds contains duplicates: {arr.tolist()}")
    return arr


def _pair(name: str, value, what: str, *, where: str) -> tuple[Any, Any]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{where}: {name} must be a pair {what}")
    return value[0], value[1]


def _default_record_every(steps: int) -> int:
    if steps <= 100:
        return 1
    return max(d for d in range(1, steps // 50 + 1) if steps % d == 0)


def _chunk(intervals: int) -> int:
    target = max(1, intervals // 20)
    return max(d for d in range(1, target + 1) if intervals % d == 0)


def _check_outputs(model, x, y, loss: str, *, where: str) -> None:
    """The network's output size must match the targets (no silent broadcasting)."""
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    out = jax.eval_shape(lambda k, xs: model.apply(model.init(k, xs), xs), key, x)
    if loss == "xent" and y.ndim == 2:  # per-position labels: (batch, length, k) outputs
        if out.shape[:-1] != y.shape:
            raise ValueError(f"{where}: labels of shape {y.shape} need outputs of shape {y.shape + ('k',)}, the "
                             f"network gives {out.shape} (leave out TakePosition for per-position outputs)")
    elif len(out.shape) != 2:
        raise ValueError(f"{where}: the network's output has shape {out.shape}; ow.train needs (batch, k) outputs "
                         "(end the network in ow.Dense(out=k), after a Flatten or GlobalAvgPool for images; "
                         "(batch, length, k) outputs need (batch, length) labels with loss='xent')")
    k = out.shape[-1]
    if loss == "mse" and y.shape[1] != k:
        raise ValueError(f"{where}: targets have {y.shape[1]} columns but the network has {k} outputs")
    if loss == "xent":
        labels = np.asarray(y)
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"{where}: class labels must lie in [0, {k}) for a network with {k} outputs, "
                             f"got [{labels.min()}, {labels.max()}]")


class _ByIdentity:
    """A metric that cannot be hashed (e.g. an instance of a class defining ``__eq__`` but no
    ``__hash__``), hashed and compared by identity, so that it can sit in the static :class:`Program`
    (the jit cache key): the compiled program is reused for that same object only. The cache holds
    the object, so its ``id`` cannot be reused by another one while the entry lives."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.fn is self.fn

    def __hash__(self):
        return id(self.fn)

    def __repr__(self):
        return repr(self.fn)


def _qualname(fn) -> str:
    """``module.qualname`` of a callable (of the wrapped one for :class:`_ByIdentity`): an attr without addresses."""
    fn = getattr(fn, "fn", fn) if isinstance(fn, _ByIdentity) else fn
    fn = getattr(fn, "func", fn)  # functools.partial
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _hashable(fn):
    """``fn`` itself when it can be hashed (by value, as a static jit argument), else ``fn`` keyed by identity."""
    try:
        hash(fn)
    except TypeError:
        return _ByIdentity(fn)
    return fn


def _member_batch(requested, members: int, points: int, width: int) -> int | None:
    if requested is not None:
        return None if requested >= members else requested
    if jax.default_backend() != "cpu":
        return None
    budget = 256 * 1024 // (points * width * jnp.dtype(jnp.result_type(float)).itemsize)
    batch = 1 << max(0, int(budget).bit_length() - 1) if budget >= 1 else 1
    return None if batch >= members else batch


def plan(net, data, *, where: str = _WHERE, **options) -> TrainPlan:
    """Check ``ow.train(net, data, **options)``'s arguments (before any compilation) and return its plan.

    Takes exactly :func:`train`'s arguments (same names and defaults: they are
    read off its signature); raises ``TypeError``/``ValueError`` saying what to
    change, prefixed by ``where`` (the caller's name, e.g. ``"ow.Sweep"``).
    """
    bound = _SIGNATURE.bind(net, data, **options)
    bound.apply_defaults()
    a = bound.arguments
    loss = a["loss"]
    if loss not in LOSSES:
        raise ValueError(f"{where}: loss={loss!r} is not known; use 'mse' or 'xent'")
    if not isinstance(a["param"], Parametrization):
        raise TypeError(f"{where}: param must be an ow.Parametrization (e.g. ow.NTP), got {a['param']!r}")
    _optim.check(a["optimizer"], weight_decay=a["weight_decay"], momentum=a["momentum"], eps=a["adam_eps"],
                 b1=a["adam_b1"], b2=a["adam_b2"], clip=a["clip_norm"], schedule=a["schedule"], eps_name="adam_eps",
                 prefix="adam_", where=where)
    widths = _checks.positive_ints("widths", a["widths"], where=where)
    steps = _checks.positive_int("steps", a["steps"], where=where)
    alpha, gamma0 = a["alpha"], a["gamma0"]
    if alpha is not None and gamma0 is not None:
        raise ValueError(f"{where}: give alpha or gamma0 (= 1/alpha), not both")
    rich_name = "gamma0" if gamma0 is not None else "alpha"
    rich = _values(rich_name, gamma0 if gamma0 is not None else (1.0 if alpha is None else alpha), where=where)
    x_raw, y_raw = _pair("data", data, "(x_train, y_train)", where=where)
    x = _checks.as_float_array("x_train", x_raw, where=where, rank=None)
    check_tokens(net, x, name="x_train", where=where)
    y = targets("y_train", y_raw, x.shape[0], loss, where=where)
    xt = yt = None
    if a["test"] is not None:
        xt_raw, yt_raw = _pair("test", a["test"], "(x_test, y_test)", where=where)
        xt = _checks.as_float_array("x_test", xt_raw, where=where, rank=None)
        _checks.same_feature_shape("x_train", x, "x_test", xt, where=where)
        check_tokens(net, xt, name="x_test", where=where)
        yt = targets("y_test", yt_raw, xt.shape[0], loss, where=where)
    batch_size = a["batch_size"]
    if batch_size is not None:
        batch_size = _checks.positive_int("batch_size", batch_size, where=where)
        if batch_size > x.shape[0]:
            raise ValueError(f"{where}: batch_size={batch_size} exceeds the {x.shape[0]} training points")
        if batch_size == x.shape[0]:
            batch_size = None
    record_every = a["record_every"]
    record_every = _default_record_every(steps) if record_every is None else _checks.positive_int(
        "record_every", record_every, where=where)
    if steps % record_every:
        raise ValueError(f"{where}: steps={steps} is not a multiple of record_every={record_every}")
    if a["metrics"] is not None and not isinstance(a["metrics"], Mapping):
        raise TypeError(f"{where}: metrics must be a mapping {{name: fn(snapshot)}}, got {a['metrics']!r}")
    metrics = tuple((a["metrics"] or {}).items())
    for name, fn in metrics:
        if not isinstance(name, str) or not callable(fn) or name in (
                "train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            raise ValueError(f"{where}: metric {name!r} must be a callable with a new name")
    metrics = tuple((name, _hashable(fn)) for name, fn in metrics)
    members_per_batch = a["members_per_batch"]
    if members_per_batch is not None:
        members_per_batch = _checks.positive_int("members_per_batch", members_per_batch, where=where)
    out = TrainPlan(
        net=net, x=x, y=y, x_test=xt, y_test=yt, widths=widths, seeds=_seeds(a["seeds"], where=where),
        lrs=_values("lr", a["lr"], where=where),
        rich_name=rich_name, rich=rich, steps=steps, record_every=record_every, param=a["param"],
        optimizer=a["optimizer"], loss=loss, batch_size=batch_size, center=bool(a["center"]),
        weight_decay=float(a["weight_decay"]), momentum=float(a["momentum"]), adam_eps=float(a["adam_eps"]),
        linearized=bool(a["linearized"]), metrics=metrics, record_outputs=bool(a["record_outputs"]),
        members_per_batch=members_per_batch, progress_bar=bool(a["progress_bar"]),
        return_params=bool(a["return_params"]), adam_b1=float(a["adam_b1"]), adam_b2=float(a["adam_b2"]),
        clip_norm=None if a["clip_norm"] is None else float(a["clip_norm"]),
        schedule=None if a["schedule"] is None else _hashable(a["schedule"]),
        init_params=_per_width("init_params", a["init_params"], widths, where=where),
        masks=_per_width("masks", a["masks"], widths, where=where))
    model = out.model(widths[0])
    _check_outputs(model, x, y, loss, where=where)
    if yt is not None:
        _check_outputs(model, xt, yt, loss, where=where)
    if out.masks is not None:  # values, structure and shapes at every width, before anything compiles
        _check_mask_values(out.masks, where=where)
        for width in widths:  # shapes only: run() builds the members' masks
            jax.eval_shape(lambda w=width: _member_tree(out, out.model(w), w, x, "masks"))
    return out


# --------------------------------------------------------------------------- #
# Run and assemble
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class WidthRun:
    """What :func:`run` brings back for one width (numpy; leading axis: member, in (seed, lr, rich) order).

    Attributes:
      records: ``{name: (members, records, ...)}``: losses, accuracies, metrics, test outputs.
      status: (members,) ``"ok"``, ``"diverged"`` or ``"invalid"``. diverged_step: (members,), -1 if none.
      params: the final parameters with leading (seed, lr, rich) axes, or None.
      density: (members,) the fraction of all parameters the masks keep, or None without masks.
    """

    records: dict[str, np.ndarray]
    status: np.ndarray
    diverged_step: np.ndarray
    params: Any = None
    density: np.ndarray | None = None


def _member_mesh(members: int):
    """``(mesh, pad)``: a 1-D mesh ``"member"`` over ``jax.devices()`` and the members to add so that every device
    gets as many, or ``(None, 0)`` on one device (or with fewer members than devices)."""
    devices = jax.devices()
    if len(devices) < 2 or members < len(devices):
        return None, 0
    return jax.sharding.Mesh(np.array(devices), ("member",)), -members % len(devices)


def run(p: TrainPlan) -> list[WidthRun]:
    """Train every member of the plan at each width: one compiled program per width, members vmapped."""
    grid = np.meshgrid(*(np.arange(n) for n in p.shape), indexing="ij")
    si, li, ai = (g.ravel() for g in grid)
    keys = jax.vmap(jax.random.key)(jnp.asarray(p.seeds[si]))
    member_lr = jnp.asarray(p.lrs[li], dtype=jnp.result_type(float))
    member_alpha = jnp.asarray(p.alphas[ai], dtype=jnp.result_type(float))
    x, y, xt, yt = p.x, p.y, p.x_test, p.y_test
    runs = []
    bar = progress(total=p.steps * len(p.widths), desc=_WHERE, enabled=p.progress_bar)
    try:
        for width in p.widths:
            prog = p.program(width)
            bar.set_description(f"{_WHERE} width={width}")
            given = None if p.init_params is None else _member_tree(p, prog.model, width, x, "init_params")
            masks = None if p.masks is None else _member_tree(p, prog.model, width, x, "masks")
            args = (keys, member_lr, member_alpha, given, masks)
            mesh, pad = _member_mesh(len(si))
            if pad:  # every device gets as many members: repeat the last member, dropped below
                args = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), args)
            state = init_members(prog, *args[:3], x, xt, *args[3:])
            recs = []
            for start in range(0, p.intervals, prog.chunk):
                if mesh is None:
                    state, rec = run_chunk(prog, state, start, x, y, xt, yt)
                else:  # the same sharding object every call (one compiled program); a no-op after the first
                    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("member")))
                    state, rec = run_chunk_sharded(prog, mesh, state, start, x, y, xt, yt)
                recs.append(rec)
                bar.update(prog.chunk * prog.record_every)
            if pad:
                state = jax.tree.map(lambda a: a[:len(si)], state)
                recs = [jax.tree.map(lambda a: a[:len(si)], r) for r in recs]
            final = record_members(prog, state, x, y, xt, yt)
            recs = {k: np.concatenate([np.asarray(r[k]) for r in recs] + [np.asarray(final[k])[:, None]], axis=1)
                    for k in final}
            status = np.where(~np.asarray(state["valid"]), "invalid",
                              np.where(np.asarray(state["diverged"]), "diverged", "ok"))
            params = None
            if p.return_params:
                params = jax.tree.map(lambda a: a.reshape(p.shape + a.shape[1:]), state["params"])
            density = None
            if masks is not None:
                leaves = jax.tree.leaves(masks)
                kept = sum(np.asarray(m.reshape(m.shape[0], -1).sum(axis=1), dtype=np.int64) for m in leaves)
                density = kept / sum(int(np.prod(m.shape[1:])) for m in leaves)
            runs.append(WidthRun(recs, status, np.asarray(state["diverged_step"]), params, density))
    finally:
        bar.close()
    return runs


def assemble(p: TrainPlan, runs: Sequence[WidthRun]):
    """The ``xarray.Dataset`` of :func:`train` from the plan and its runs (and ``{width: params}`` if asked)."""
    import xarray as xr

    dims = ("width", "seed", "lr", p.rich_name)
    lead = (len(p.widths),) + p.shape
    data_vars = {}
    for name in runs[0].records:
        stacked = np.stack([r.records[name] for r in runs])  # (W, M, R, ...)
        extra = stacked.shape[3:]
        extra_dims = ("point", "out")[: len(extra)] if name == "test_output" else tuple(
            f"{name}_dim{i}" for i in range(len(extra)))
        data_vars[name] = (dims + ("step",) + extra_dims, stacked.reshape(lead + stacked.shape[2:]))
    data_vars["status"] = (dims, np.stack([r.status for r in runs]).reshape(lead).astype(str))
    data_vars["diverged_step"] = (dims, np.stack([r.diverged_step for r in runs]).reshape(lead))
    if p.masks is not None:
        data_vars["density"] = (dims, np.stack([r.density for r in runs]).reshape(lead))
    attrs = {
        **param_attrs(p.param), "optimizer": p.optimizer, "loss": p.loss, "steps": p.steps,
        "batch_size": -1 if p.batch_size is None else p.batch_size, "center": int(p.center),
        "linearized": int(p.linearized), "n_train": int(p.x.shape[0]),
        "n_test": 0 if p.x_test is None else int(p.x_test.shape[0]), "weight_decay": p.weight_decay,
        "momentum": p.momentum, "adam_eps": p.adam_eps, "adam_b1": p.adam_b1, "adam_b2": p.adam_b2,
        "clip_norm": -1.0 if p.clip_norm is None else p.clip_norm,
        "schedule": "" if p.schedule is None else _qualname(p.schedule), "init_params": int(p.init_params is not None),
        "masks": int(p.masks is not None),
    }
    ds = xr.Dataset(data_vars, coords=p.coords(), attrs=attrs)
    if p.return_params:
        return ds, {w: r.params for w, r in zip(p.widths, runs)}
    return ds


def execute(p: TrainPlan):
    """``assemble(p, run(p))``: what :func:`train` returns for the plan."""
    return assemble(p, run(p))


# --------------------------------------------------------------------------- #
# The parametrization in a result's attrs
# --------------------------------------------------------------------------- #
def param_attrs(param: Parametrization) -> dict[str, Any]:
    """Every field of ``param`` as netCDF-storable attrs: ``name`` as ``param``, triples as lists, bools as 0/1."""
    out = {}
    for f in dataclasses.fields(Parametrization):
        v = getattr(param, f.name)
        out["param" if f.name == "name" else f.name] = (
            list(v) if isinstance(v, tuple) else int(v) if isinstance(v, bool) else v)
    return out


def param_from_attrs(attrs: Mapping[str, Any]) -> Parametrization:
    """The :class:`ow.Parametrization` recorded by :func:`param_attrs` (e.g. ``ow.train(...).attrs``)."""
    kwargs = {}
    for f in dataclasses.fields(Parametrization):
        v = attrs["param" if f.name == "name" else f.name]
        kind = str(f.type)
        if kind.startswith("tuple"):
            v = tuple(float(c) for c in np.atleast_1d(v))
        elif kind == "bool":
            v = bool(int(v))
        elif kind in ("int", "float", "str"):
            v = {"int": int, "float": float, "str": str}[kind](v)
        kwargs[f.name] = v
    return Parametrization(**kwargs)


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #
def train(
    net,
    data: tuple[Any, Any],
    *,
    widths: int | Sequence[int],
    lr: float | Sequence[float],
    steps: int,
    param: Parametrization = NTP,
    optimizer: str = "sgd",
    seeds: int | Sequence[int] = 1,
    alpha: float | Sequence[float] | None = None,
    gamma0: float | Sequence[float] | None = None,
    center: bool = True,
    loss: str = "mse",
    batch_size: int | None = None,
    test: tuple[Any, Any] | None = None,
    record_every: int | None = None,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    adam_eps: float = 1e-8,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    clip_norm: float | None = None,
    schedule: Callable[[Any], Any] | None = None,
    init_params: Any = None,
    masks: Any = None,
    linearized: bool = False,
    metrics: Mapping[str, Callable[[Snapshot], Any]] | None = None,
    record_outputs: bool = False,
    members_per_batch: int | None = None,
    progress_bar: bool = True,
    return_params: bool = False,
):
    """Train ensembles of ``net`` at each width; seeds x lrs x richness scales vmapped.

    Args:
      net: width-free spec or :func:`ow.from_flax` bridge.
      data: ``(x_train, y_train)``; ``y`` is ``(N,)``/``(N, k)`` real targets
        for ``loss="mse"``, ``(N,)`` integer labels for ``loss="xent"`` (or
        ``(N, length)`` labels for sequence outputs ``(N, length, k)``, e.g.
        next-token prediction; the loss and accuracy average over positions).
        Token inputs ``(N, length)`` for ``ow.Embedding`` are integers.
      widths: one width or a list (one compiled program each).
      lr: base learning rate(s) ``eta``; tensor ``r`` uses ``eta (n/n0)^-c_r``
        (see :class:`ow.Parametrization`). Non-positive or non-finite values
        mark their members ``status="invalid"`` instead of raising.
      steps: number of optimizer steps.
      param: abc-parametrization (default :data:`ow.NTP`).
      optimizer: ``"sgd"`` (full-batch gradient descent, or minibatch SGD with
        ``batch_size``), ``"momentum"``, ``"adam"`` or ``"adamw"``.
      seeds: number of seeds (0..S-1) or a list of seeds; a seed fixes the
        initialisation and the minibatch order.
      alpha: output scale(s) (richness; default 1); ``gamma0`` instead gives
        ``alpha = 1 / gamma0`` and names the axis ``gamma0``. See the module doc.
      center: train ``alpha (f - f0)`` (default) or ``alpha f``.
      loss: ``"mse"`` (``1/(2N) sum_i ||f_i - y_i||^2``) or ``"xent"``
        (softmax cross-entropy).
      batch_size: minibatch size (sampled without replacement each step),
        ``None`` for full batch.
      test: ``(x_test, y_test)`` evaluated at every record.
      record_every: steps between records (default: about 50 records); must divide ``steps``.
      weight_decay: L2 penalty for sgd/momentum, decoupled decay for adamw; finite and >= 0,
        checked up front (``ValueError``; unlike ``lr``, not marked per member).
      momentum: decay of ``"momentum"``, in [0, 1) (checked up front).
      adam_eps: Adam's epsilon, finite and >= 0 (checked up front).
      adam_b1, adam_b2: Adam's moment decays, in [0, 1).
      clip_norm: clip each member's gradient to this global norm before the optimizer
        (``optax.clip_by_global_norm``); None (default) does not clip.
      schedule: a learning-rate schedule, ``step -> multiplier`` of every member's ``lr`` (an optax
        schedule such as ``optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, steps)``); it also scales
        adamw's decoupled decay, as optax does. None: constant.
      init_params: start from these parameters instead of random ones: ``{width: params}`` (or the
        params alone with one width), each leaf either one member's (every member starts there) or with
        leading ``(seed, lr, alpha|gamma0)`` axes, as ``return_params=True`` returns them (to resume a
        run; a centred run restarts centred at them, so resume with ``center=False`` runs exactly).
      masks: fixed binary masks (sparse networks, e.g. from :mod:`ow.prune`): a pytree like the
        parameters, ``{width: masks}`` (or the masks alone with one width), boolean (True = keep) or 0/1
        numbers, each leaf either one shape for every member, with leading ``(seed, lr, alpha|gamma0)``
        axes (a mask per member), or a scalar (``True``: that tensor is not pruned). Masked entries are
        set to zero at initialisation (and in ``init_params``) and after every step, so they stay
        exactly zero under every optimizer (momentum, Adam and weight decay included); the optimizer's
        statistics of masked entries are never used. Not part of ``ow.Sweep``.
      linearized: train the network's linearization around its initialisation instead.
      metrics: ``{name: fn(Snapshot) -> scalar}`` recorded alongside the losses.
        Each ``fn`` is part of the compiled program's static key: a hashable
        ``fn`` by its hash, an unhashable one (e.g. an instance of a class with
        ``__eq__`` but no ``__hash__``) by identity (the program is reused for
        that same object only).
      record_outputs: also record the test outputs (``test_output``).
      members_per_batch: how many ensemble members one step advances at once
        inside the compiled program (``jax.lax.map`` over batches of vmapped
        members). ``None`` (default): all members at once on GPU/TPU; on CPU,
        batches whose activations (points x width) stay within ~256 KiB, because
        XLA's CPU batched matmuls are slower than one member after another for
        wide members (benchmarks/ensembles.py, 2 cores, 256 members, width 128 x
        512 points, 100 steps: 17.7 s all vmapped, 10.7 s with this default,
        10.9 s as a loop over single-member programs; width 32 x 64 points:
        0.31 s all vmapped, 0.38 s with this default). Results are equal up to floating-point reassociation (~1e-15).
        With several devices (``jax.devices()``: GPUs, TPU cores, or
        ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` CPU devices) the members are split over
        them (``jax.shard_map`` over a ``"member"`` mesh axis, padded to a multiple of the device count),
        each device running this same program on its members; still one compile per width, results equal
        to one device's up to reassociation (``tests/test_train_sharded.py``: 1e-12).
      progress_bar: show a tqdm bar (also silenced by OWIDTH_NO_PROGRESS=1).
      return_params: also return ``{width: params}`` with leading (seed, lr, alpha) axes.

    Returns:
      ``xarray.Dataset`` with ``train_loss`` (and ``test_loss``, accuracies,
      metrics) over ``(width, seed, lr, alpha|gamma0, step)``; ``status``
      (``"ok"``, ``"diverged"`` for a non-finite loss, ``"invalid"`` for bad
      hyper-parameters) and ``diverged_step`` over ``(width, seed, lr,
      alpha|gamma0)``. Records after a divergence are NaN. The attrs say how it
      was produced: every field of ``param`` (its ``name`` as ``param``; bools
      as 0/1), the optimizer and its settings, the loss, steps, batch size,
      ``center``, ``linearized`` and the data sizes. With ``masks``: ``density`` over ``(width, seed,
      lr, alpha|gamma0)``, the fraction of all parameters kept.

    References:
      - Chizat, Oyallon & Bach 2019, On Lazy Training in Differentiable Programming (``alpha``,
        ``center``). <https://arxiv.org/abs/1812.07956>
      - Bordelon & Pehlevan 2022, Self-Consistent Dynamical Field Theory of Kernel Evolution in
        Wide Neural Networks (``gamma0``). <https://arxiv.org/abs/2205.09653>
      - Lee et al. 2019, Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient
        Descent (``linearized``). <https://arxiv.org/abs/1902.06720>
      - Yang & Hu 2021, Tensor Programs IV; Yang et al. 2022, Tensor Programs V (per-tensor
        learning rates). <https://arxiv.org/abs/2011.14522>, <https://arxiv.org/abs/2203.03466>

    Examples:
      Two seeds x two learning rates at width 8, 2 steps (one compiled program). The output is
      centred, so at step 0 every member has ``f = 0`` and the loss ``sum y^2 / (2N) = 3/8``:

      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
      >>> y = np.array([1.0, -1.0, 0.0, 1.0])
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> ds = ow.train(net, (x, y), widths=8, lr=[0.1, 0.5], steps=2, seeds=2, progress_bar=False)
      >>> ds.train_loss.dims, ds.train_loss.shape
      (('width', 'seed', 'lr', 'alpha', 'step'), (1, 2, 2, 1, 3))
      >>> ds.step.values.tolist(), ds.attrs["param"], ds.attrs["optimizer"]
      ([0, 1, 2], 'ntp', 'sgd')
      >>> round(float(ds.train_loss.isel(step=0).max()), 4)
      0.375
      >>> sorted(set(ds.status.values.ravel().tolist()))
      ['ok']
    """
    return execute(plan(**locals()))


_SIGNATURE = inspect.signature(train)
