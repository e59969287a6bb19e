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
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks
from owidth._progress import progress
from owidth.param import NTP, Parametrization, optimizer_family, scale_updates

_LOSSES = ("mse", "xent")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a user metric sees at a record point (one ensemble member, traced).

    Attributes:
      apply: ``apply(params, x)``, the (possibly linearized) network, uncentred and unscaled.
      params, params0: current and initial parameters.
      x_train, y_train, x_test, y_test: the data (``x_test``/``y_test`` may be None).
      alpha: the member's output scale (traced scalar).
      model: the finite model (``roles``, ``lr_scales``, ...).
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


@dataclasses.dataclass(frozen=True)
class _Cfg:
    """Static configuration of the compiled programs (hashable: the jit cache key)."""

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

    @property
    def keep_params0(self) -> bool:
        return self.linearized or bool(self.metrics)


# --------------------------------------------------------------------------- #
# Pieces of one member's program
# --------------------------------------------------------------------------- #
def _apply_fn(cfg: _Cfg, params0):
    if not cfg.linearized:
        return cfg.model.apply

    def f_lin(params, x):
        delta = jax.tree.map(lambda p, p0: p - p0, params, params0)
        y0, dy = jax.jvp(lambda p: cfg.model.apply(p, x), (params0,), (delta,))
        return y0 + dy

    return f_lin


def _loss(kind: str, f, y):
    if kind == "mse":
        return 0.5 * jnp.mean(jnp.sum((f - y) ** 2, axis=-1))
    logz = jax.nn.logsumexp(f, axis=-1)  # labels (N,) or (N, length) for sequence outputs
    return jnp.mean(logz - jnp.take_along_axis(f, y[..., None], axis=-1)[..., 0])


def _tx(cfg: _Cfg, lr, alpha, scales):
    import optax

    family = optimizer_family(cfg.optimizer, where="ow.train")
    rich = alpha ** -2.0 if family == "sgd" else 1.0 / alpha
    parts = []
    if cfg.weight_decay and family == "sgd":  # L2 penalty on the gradient
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    if cfg.optimizer == "momentum":
        parts.append(optax.trace(decay=cfg.momentum))
    if family == "adam":
        parts.append(optax.scale_by_adam(eps=cfg.eps))
    parts.append(scale_updates(scales))
    if cfg.weight_decay and cfg.optimizer == "adamw":  # decoupled: lr * wd fixed across widths, as MuAdamW
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.scale(-lr * rich))
    return optax.chain(*parts)


def _scales(cfg: _Cfg, x):
    return cfg.model.lr_scales(x, optimizer=cfg.optimizer)


def _init_member(cfg: _Cfg, key, lr, alpha, x, xt):
    k_init, k_data = jax.random.split(key)
    params = cfg.model.init(k_init, x)
    tx = _tx(cfg, lr, alpha, _scales(cfg, x))
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
    if cfg.keep_params0:
        state["params0"] = params
    if cfg.center:
        state["f0"] = cfg.model.apply(params, x)
        if xt is not None:
            state["f0_test"] = cfg.model.apply(params, xt)
    return state


def _output(cfg: _Cfg, st, x, f0):
    f = _apply_fn(cfg, st.get("params0"))(st["params"], x)
    if cfg.center:
        f = f - f0
    return st["alpha"] * f


def _step(cfg: _Cfg, st, t, x, y):
    f0 = st.get("f0")
    if cfg.batch_size is not None:
        idx = jax.random.choice(jax.random.fold_in(st["key"], t), x.shape[0], (cfg.batch_size,), replace=False)
        x, y = x[idx], y[idx]
        f0 = None if f0 is None else f0[idx]

    def objective(params):
        return _loss(cfg.loss, _output(cfg, {**st, "params": params}, x, f0), y)

    value, grads = jax.value_and_grad(objective)(st["params"])
    tx = _tx(cfg, st["lr"], st["alpha"], _scales(cfg, x))
    updates, opt = tx.update(grads, st["opt"], st["params"])
    params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), st["params"], updates)
    bad = ~jnp.isfinite(value)
    first = bad & ~st["diverged"]
    return {**st, "params": params, "opt": opt, "diverged": st["diverged"] | bad,
            "diverged_step": jnp.where(first, t, st["diverged_step"]).astype(jnp.int32)}


def _record(cfg: _Cfg, st, x, y, xt, yt):
    rec = {}
    for split, (xs, ys, f0) in {"train": (x, y, st.get("f0")), "test": (xt, yt, st.get("f0_test"))}.items():
        if xs is None:
            continue
        f = _output(cfg, st, xs, f0)
        rec[f"{split}_loss"] = _loss(cfg.loss, f, ys)
        if cfg.loss == "xent":
            rec[f"{split}_accuracy"] = jnp.mean(jnp.argmax(f, axis=-1) == ys)
        if cfg.record_outputs and split == "test":
            rec["test_output"] = f
    if cfg.metrics:
        snap = Snapshot(apply=_apply_fn(cfg, st["params0"]), params=st["params"], params0=st["params0"],
                        x_train=x, y_train=y, x_test=xt, y_test=yt, alpha=st["alpha"], model=cfg.model)
        for name, fn in cfg.metrics:
            rec[name] = jnp.asarray(fn(snap), dtype=jnp.result_type(float))
    ok = st["valid"] & ~st["diverged"]
    return {k: jnp.where(ok, v, jnp.nan) for k, v in rec.items()}


# --------------------------------------------------------------------------- #
# Compiled programs (cached on the static configuration)
# --------------------------------------------------------------------------- #
@functools.partial(jax.jit, static_argnames=("cfg",))
def _init_all(cfg, keys, lrs, alphas, x, xt):
    return jax.vmap(lambda k, lr, a: _init_member(cfg, k, lr, a, x, xt))(keys, lrs, alphas)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("state",))
def _run_chunk(cfg, state, start, x, y, xt, yt):
    """``cfg.chunk`` record intervals for every member: record, then ``record_every`` steps."""

    def member(st):
        def interval(st, j):
            rec = _record(cfg, st, x, y, xt, yt)
            t0 = (start + j) * cfg.record_every

            def one(s, i):
                return _step(cfg, s, t0 + i, x, y), None

            st, _ = jax.lax.scan(one, st, jnp.arange(cfg.record_every))
            return st, rec

        return jax.lax.scan(interval, st, jnp.arange(cfg.chunk))

    if cfg.member_batch is None:
        return jax.vmap(member)(state)
    return jax.lax.map(member, state, batch_size=cfg.member_batch)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _record_all(cfg, state, x, y, xt, yt):
    return jax.vmap(lambda st: _record(cfg, st, x, y, xt, yt))(state)


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #
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


def _targets(name: str, y, n: int, loss: str, *, where: str) -> jax.Array:
    y = np.asarray(y)
    if y.shape[:1] != (n,):
        raise ValueError(f"{where}: {name} has {y.shape[0] if y.ndim else 'no'} rows but the inputs have {n}")
    if loss == "xent":
        if y.ndim not in (1, 2) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{where}: loss='xent' needs integer class labels of shape ({n},) (or ({n}, length) for "
                             f"sequence outputs), got {y.dtype} {y.shape}")
        return jnp.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"{where}: loss='mse' needs targets of shape ({n},) or ({n}, k), got {y.shape}")
    return _checks.as_float_array(name, y, where=where)


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


def _member_batch(requested, members: int, points: int, width: int, *, where: str) -> int | None:
    if requested is not None:
        requested = _checks.positive_int("members_per_batch", requested, where=where)
        return None if requested >= members else requested
    if jax.default_backend() != "cpu":
        return None
    budget = 256 * 1024 // (points * width * jnp.dtype(jnp.result_type(float)).itemsize)
    batch = 1 << max(0, int(budget).bit_length() - 1) if budget >= 1 else 1
    return None if batch >= members else batch


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
      weight_decay: L2 penalty for sgd/momentum, decoupled decay for adamw.
      momentum: decay of ``"momentum"``. adam_eps: Adam's epsilon.
      linearized: train the network's linearization around its initialisation instead.
      metrics: ``{name: fn(Snapshot) -> scalar}`` recorded alongside the losses.
      record_outputs: also record the test outputs (``test_output``).
      members_per_batch: how many ensemble members one step advances at once
        inside the compiled program (``jax.lax.map`` over batches of vmapped
        members). ``None`` (default): all members at once on GPU/TPU; on CPU,
        batches whose activations (points x width) stay within ~256 KiB, because
        XLA's CPU batched matmuls are slower than one member after another for
        wide members (benchmarks/ensembles.py, 2 cores, 256 members, width 128 x
        512 points, 100 steps: 17.7 s all vmapped, 10.7 s with this default,
        10.9 s as a loop over single-member programs; width 32 x 64 points:
        0.31 s all vmapped, 0.38 s with this default). Results do not depend on it.
      progress_bar: show a tqdm bar (also silenced by OWIDTH_NO_PROGRESS=1).
      return_params: also return ``{width: params}`` with leading (seed, lr, alpha) axes.

    Returns:
      ``xarray.Dataset`` with ``train_loss`` (and ``test_loss``, accuracies,
      metrics) over ``(width, seed, lr, alpha|gamma0, step)``; ``status``
      (``"ok"``, ``"diverged"`` for a non-finite loss, ``"invalid"`` for bad
      hyper-parameters) and ``diverged_step`` over ``(width, seed, lr,
      alpha|gamma0)``. Records after a divergence are NaN.
    """
    import xarray as xr

    where = "ow.train"
    from owidth.finite import finite

    if loss not in _LOSSES:
        raise ValueError(f"{where}: loss={loss!r} is not known; use 'mse' or 'xent'")
    optimizer_family(optimizer, where=where)
    if weight_decay and optimizer == "adam":
        raise ValueError(f"{where}: weight_decay with optimizer='adam' is ambiguous; use optimizer='adamw' (decoupled)")
    if isinstance(widths, (int, np.integer)) and not isinstance(widths, bool):
        widths = [widths]
    widths = [_checks.positive_int("widths", w, where=where) for w in widths]
    if len(set(widths)) != len(widths):
        raise ValueError(f"{where}: widths contains duplicates: {widths}")
    steps = _checks.positive_int("steps", steps, where=where)
    if alpha is not None and gamma0 is not None:
        raise ValueError(f"{where}: give alpha or gamma0 (= 1/alpha), not both")
    rich_name = "gamma0" if gamma0 is not None else "alpha"
    rich = _values(rich_name, gamma0 if gamma0 is not None else (1.0 if alpha is None else alpha), where=where)
    alphas = 1.0 / rich if gamma0 is not None else rich
    lrs = _values("lr", lr, where=where)
    seed_list = _seeds(seeds, where=where)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{where}: data must be a pair (x_train, y_train)")
    x = _checks.as_float_array("x_train", data[0], where=where, rank=None)
    y = _targets("y_train", data[1], x.shape[0], loss, where=where)
    xt = yt = None
    if test is not None:
        if not isinstance(test, (tuple, list)) or len(test) != 2:
            raise TypeError(f"{where}: test must be a pair (x_test, y_test)")
        xt = _checks.as_float_array("x_test", test[0], where=where, rank=None)
        _checks.same_features(x, xt, where=where)
        yt = _targets("y_test", test[1], xt.shape[0], loss, where=where)
    if batch_size is not None:
        batch_size = _checks.positive_int("batch_size", batch_size, where=where)
        if batch_size > x.shape[0]:
            raise ValueError(f"{where}: batch_size={batch_size} exceeds the {x.shape[0]} training points")
        if batch_size == x.shape[0]:
            batch_size = None
    record_every = _default_record_every(steps) if record_every is None else _checks.positive_int(
        "record_every", record_every, where=where)
    if steps % record_every:
        raise ValueError(f"{where}: steps={steps} is not a multiple of record_every={record_every}")
    metrics = tuple((metrics or {}).items())
    for name, fn in metrics:
        if not callable(fn) or name in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            raise ValueError(f"{where}: metric {name!r} must be a callable with a new name")
    intervals = steps // record_every
    chunk = _chunk(intervals)

    grid = np.meshgrid(np.arange(seed_list.size), np.arange(lrs.size), np.arange(alphas.size), indexing="ij")
    si, li, ai = (g.ravel() for g in grid)
    keys = jax.vmap(jax.random.key)(jnp.asarray(seed_list[si]))
    member_lr = jnp.asarray(lrs[li], dtype=jnp.result_type(float))
    member_alpha = jnp.asarray(alphas[ai], dtype=jnp.result_type(float))
    shape = (seed_list.size, lrs.size, alphas.size)

    per_width, params_out = [], {}
    bar = progress(total=steps * len(widths), desc=where, enabled=progress_bar)
    try:
        for width in widths:
            model = finite(net, width=width, param=param)
            if width == widths[0]:
                _check_outputs(model, x, y, loss, where=where)
                if yt is not None:
                    _check_outputs(model, xt, yt, loss, where=where)
            cfg = _Cfg(model=model, optimizer=optimizer, loss=loss, batch_size=batch_size, center=bool(center),
                       linearized=bool(linearized), record_every=record_every, chunk=chunk,
                       weight_decay=float(weight_decay), momentum=float(momentum), eps=float(adam_eps),
                       metrics=metrics, record_outputs=bool(record_outputs and xt is not None),
                       member_batch=_member_batch(members_per_batch, len(si), batch_size or x.shape[0], width,
                                                  where=where))
            bar.set_description(f"{where} width={width}")
            state = _init_all(cfg, keys, member_lr, member_alpha, x, xt)
            recs = []
            for start in range(0, intervals, chunk):
                state, rec = _run_chunk(cfg, state, start, x, y, xt, yt)
                recs.append(rec)
                bar.update(chunk * record_every)
            final = _record_all(cfg, state, x, y, xt, yt)
            recs = {k: np.concatenate([np.asarray(r[k]) for r in recs] + [np.asarray(final[k])[:, None]], axis=1)
                    for k in final}
            status = np.where(~np.asarray(state["valid"]), "invalid",
                              np.where(np.asarray(state["diverged"]), "diverged", "ok"))
            per_width.append((recs, status, np.asarray(state["diverged_step"])))
            if return_params:
                params_out[width] = jax.tree.map(lambda p: p.reshape(shape + p.shape[1:]), state["params"])
    finally:
        bar.close()

    dims = ("width", "seed", "lr", rich_name)
    data_vars = {}
    for name in per_width[0][0]:
        stacked = np.stack([r[name] for r, _, _ in per_width])  # (W, M, R, ...)
        extra = stacked.shape[3:]
        extra_dims = ("point", "out")[: len(extra)] if name == "test_output" else tuple(f"{name}_dim{i}" for i in range(len(extra)))
        data_vars[name] = (dims + ("step",) + extra_dims, stacked.reshape((len(widths),) + shape + stacked.shape[2:]))
    data_vars["status"] = (dims, np.stack([s for _, s, _ in per_width]).reshape((len(widths),) + shape).astype(str))
    data_vars["diverged_step"] = (dims, np.stack([d for _, _, d in per_width]).reshape((len(widths),) + shape))
    coords = {"width": widths, "seed": seed_list, "lr": lrs, rich_name: rich,
              "step": np.arange(intervals + 1) * record_every}
    attrs = {
        "param": param.name, "a": list(param.a), "b": list(param.b), "c_sgd": list(param.c_sgd),
        "c_adam": list(param.c_adam), "base_width": param.base_width, "optimizer": optimizer, "loss": loss,
        "steps": steps, "batch_size": -1 if batch_size is None else batch_size, "center": int(bool(center)),
        "linearized": int(bool(linearized)), "n_train": int(x.shape[0]), "n_test": 0 if xt is None else int(xt.shape[0]),
        "weight_decay": float(weight_decay),
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    return (ds, params_out) if return_params else ds


__all__ = ["Snapshot", "train"]

