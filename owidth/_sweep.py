"""Sweeps: a declared grid, run group by group, persisted to netCDF and resumable.

A :class:`Sweep` declares a grid over ``width x [extra axes] x seed x lr x
alpha|gamma0``. :func:`run_sweep` cuts it into *groups*, one per
``(width, extra values)``: each group is one :func:`ow.train` call, i.e. one
compiled program in which seeds x lrs x richness scales are vmapped. Widths
and the ``extra`` axes (``param``, ``optimizer``, ...) change the compiled
program, so they are the natural unit of work and of persistence.

What is persisted, in ``out_dir``:

* ``manifest.json``: its format version (``owidth_sweep_format``), the
  sweep's *fingerprint* (a SHA-256 of a canonical JSON description of the
  configuration, see :meth:`Sweep.describe`), that description itself, the
  list of groups (file name and labels) and, for each finished group, the
  SHA-256 of its file.
* ``group-NNNN_width<w>[_<axis><label>...].nc``: one netCDF file per finished
  group, with dims ``(width, [extra axes], seed, lr, alpha|gamma0, step)``
  (each of length 1 on width and the extra axes) and the attrs
  ``sweep_fingerprint`` and ``sweep_group``.

Each group file is written to a temporary file in the same folder and then
moved into place with ``os.replace`` (atomic on POSIX and Windows), and only
then is it added to the manifest (also written atomically). An interrupted
sweep (Ctrl-C, crash, killed job) therefore leaves only whole group files; a
rerun with the same configuration checks the files on disk (they open, carry
this sweep's fingerprint and group label, have the expected coordinates and,
where the manifest recorded one, the same SHA-256), skips them and trains only
the missing groups. Nothing is ever overwritten: a folder that holds another
configuration, a group file that does not open (e.g. truncated), or a netCDF
file that is not this sweep's raises ``ValueError`` naming the file. (The
one exception: a manifest that records no finished group, with no group file
beside it -- e.g. a first attempt that failed on bad data -- is replaced.)
A group file that exists but is missing from the manifest (a crash between
the two writes) is checked and adopted. Leftover temporary files
(``.group-*.tmp``) are deleted. Only netCDF and JSON are written (never
pickle).

A manifest is checked in full when it is read, by :func:`run_sweep` and
:func:`load_sweep` alike: every field and type, and every group file name must
be exactly the name the sweep gives that group (``group-NNNN_width<w>...nc``:
no path separator, so never a file outside the folder; a group file that is a
link resolving outside the folder is refused too). A manifest that fails
raises ``ValueError`` saying what is wrong.

While :func:`run_sweep` runs, it holds an operating-system file lock on
``out_dir/.sweep.lock`` (:mod:`filelock`; released, and the file removed, when
it returns or fails; the lock of a killed process is released by the system).
A second run into the same folder meanwhile raises ``RuntimeError`` at once
instead of training the same groups twice. :func:`load_sweep` takes no lock.

A write that fails (disk full, permissions, a read-only folder) raises an
``OSError`` (``RuntimeError`` for the netCDF library's own errors) "could not
write <file>: <reason>; nothing was lost: rerun to resume", the original
error chained: the finished groups are on disk and a rerun trains the rest.

The fingerprint covers the widths, learning rates, seeds, richness values,
steps, the parametrization's exponents, the optimizer, every ``ow.train``
option, the ``extra`` axes, the network's ``repr`` (with memory addresses
removed) and the data (SHA-256 of each array's bytes, with its dtype and
shape); not ``members_per_batch``: results with different values are equal up
to floating-point reassociation (~1e-15).
Callables cannot be hashed stably across processes: metric functions enter
by their qualified name (``module.qualname``), functions inside the net by
the name in its ``repr``, so editing a function's body without renaming it
is *not* detected -- use a new ``out_dir`` (or rename the function) then.

References:
  - Yang et al. 2022, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter
    Transfer (width x learning-rate grids per parametrization). <https://arxiv.org/abs/2203.03466>
  - Everett et al. 2024, Scaling Exponents Across Parameterizations and Optimizers (grids over
    width, learning rate, parametrization and optimizer). <https://arxiv.org/abs/2407.05872>
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import itertools
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from owidth import _checks, _executor, _optim, _train
from owidth._progress import progress as _progress_bar
from owidth.param import Parametrization

_WHERE = "ow.Sweep"
_MANIFEST = "manifest.json"
_FORMAT = 1
# ow.train keywords an ``extra`` axis may sweep: they change the compiled program but
# neither the variables recorded nor the step coordinate.
_EXTRA_OK = ("param", "optimizer", "center", "batch_size", "weight_decay", "momentum", "adam_eps", "linearized")
# ``ow.train``'s defaults, read off its signature (never repeated here).
_TRAIN_DEFAULTS = {k: v.default for k, v in inspect.signature(_train.train).parameters.items()
                   if v.default is not inspect.Parameter.empty}
# the ``ow.train`` options a Sweep passes through unchanged (the grid fields are handled apart)
_OPTIONS = ("param", "optimizer", "center", "loss", "batch_size", "record_every", "weight_decay", "momentum",
            "adam_eps", "linearized", "metrics", "record_outputs", "members_per_batch")
_OPTION_DEFAULTS = {k: _TRAIN_DEFAULTS[k] for k in _OPTIONS}
_TMP = re.compile(r"^\.group-.*\.tmp$|^\.manifest\.json\..*\.tmp$")
# held by a running ow.run_sweep; neither a group file (*.nc) nor a temporary file (_TMP)
_LOCK = ".sweep.lock"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# the fields of manifest.json, all required (format 1)
_MANIFEST_FIELDS = ("owidth_sweep_format", "fingerprint", "config", "rich_name", "extra_axes", "groups", "done")


# --------------------------------------------------------------------------- #
# Canonical description (for the fingerprint)
# --------------------------------------------------------------------------- #
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _qualname(fn: Callable) -> str:
    fn = getattr(fn, "__wrapped__", fn)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _array_desc(a) -> dict:
    arr = np.ascontiguousarray(np.asarray(a))
    return {"shape": list(arr.shape), "dtype": arr.dtype.str, "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}


def _describe(v):
    """A JSON-able, process-independent description of a configuration value."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else repr(float(v))
    if isinstance(v, Parametrization):
        return {"Parametrization": {f.name: _describe(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    if isinstance(v, np.ndarray) or hasattr(v, "__array__") and hasattr(v, "shape"):
        return {"array": _array_desc(v)}
    if isinstance(v, Mapping):
        return {str(k): _describe(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [_describe(x) for x in v]
    if callable(v) and not dataclasses.is_dataclass(v):
        return {"callable": _qualname(v)}
    return {"repr": _ADDRESS.sub("", repr(v))}


def _label(axis: str, value) -> str | int | float:
    if isinstance(value, Parametrization):
        return value.name
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise ValueError(f"{_WHERE}: extra[{axis!r}] value {value!r} has no obvious label; give a mapping "
                     f"{{label: value}} instead, e.g. extra={{{axis!r}: {{'a': ..., 'b': ...}}}}")


def _extra_axis(axis: str, values) -> tuple[tuple[Any, Any], ...]:
    """``((label, value), ...)`` for one extra axis, labels unique and all str or all numbers."""
    if axis not in _EXTRA_OK:
        raise ValueError(f"{_WHERE}: extra axis {axis!r} cannot be swept; use one of {list(_EXTRA_OK)} "
                         "(widths, lr, seeds and alpha/gamma0 have their own fields)")
    if isinstance(values, Mapping):
        pairs = tuple(values.items())
        for lab, _ in pairs:
            if isinstance(lab, bool) or not isinstance(lab, (str, int, float, np.integer, np.floating)):
                raise ValueError(f"{_WHERE}: extra[{axis!r}] labels must be strings or numbers, got {lab!r}")
        pairs = tuple((_label(axis, lab), v) for lab, v in pairs)
    elif isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{_WHERE}: extra[{axis!r}] must be a list of values or a {{label: value}} mapping, "
                        f"got {values!r}")
    else:
        pairs = tuple((_label(axis, v), v) for v in values)
    if not pairs:
        raise ValueError(f"{_WHERE}: extra[{axis!r}] is empty; give at least one value")
    labels = [lab for lab, _ in pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{_WHERE}: extra[{axis!r}] labels are not unique: {labels}; give a {{label: value}} mapping")
    if len({isinstance(lab, str) for lab in labels}) > 1:
        raise ValueError(f"{_WHERE}: extra[{axis!r}] labels mix strings and numbers: {labels}")
    return pairs


# --------------------------------------------------------------------------- #
# The declaration
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Sweep:
    """A grid of trainings: ``width x [extra axes] x seed x lr x alpha|gamma0``, persisted and resumable.

    Example (in a notebook)::

        import owidth as ow
        sweep = ow.Sweep(
            net=ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)),
            data=(x, y), test=(x_test, y_test),
            widths=[64, 256, 1024], lr=[0.1, 0.3, 1.0], seeds=4,
            alpha=[0.1, 1.0, 10.0], steps=2000,
            extra={"param": [ow.NTP, ow.MUP]},          # a dataset dim labelled "ntp", "mup"
            metrics={"ntk_move": ntk_movement},
        )
        ds = sweep.run("runs/lazy-rich")     # Ctrl-C and rerun: continues where it stopped
        ds = ow.load_sweep("runs/lazy-rich") # later, elsewhere
        ds.train_loss.sel(param="mup", step=2000).mean("seed")

    Fields (keyword-only; the ``ow.train`` keywords of the same names):
      net, data, test: the spec, ``(x, y)`` and optional ``(x_test, y_test)``.
      widths: one int or a list (a dataset dim; one group each).
      lr, seeds, alpha | gamma0: vmapped inside each group (dataset dims).
      steps, param, optimizer, loss, batch_size, record_every, center,
      weight_decay, momentum, adam_eps, linearized, metrics, record_outputs,
      members_per_batch: passed to :func:`ow.train` unchanged.
      extra: ``{ow.train keyword: values}`` -- further axes that change the
        compiled program, one group per combination, each a dataset dim named by
        the keyword (after ``width``, in mapping order). Values are a list
        (labels: a Parametrization's ``name``, strings and numbers as they are)
        or a ``{label: value}`` mapping. Allowed keywords: ``param``,
        ``optimizer``, ``center``, ``batch_size``, ``weight_decay``,
        ``momentum``, ``adam_eps``, ``linearized``. A keyword swept here must
        keep its field at the default. After validation the field holds
        ``{keyword: ((label, value), ...)}``.

    See the module docstring for what is written to disk, how resuming works and
    what the fingerprint (:attr:`fingerprint`) covers (callables: by qualified
    name only).

    References:
      - Yang et al. 2022, Tensor Programs V (learning-rate transfer across widths).
        <https://arxiv.org/abs/2203.03466>
      - Everett et al. 2024, Scaling Exponents Across Parameterizations and Optimizers.
        <https://arxiv.org/abs/2407.05872>

    Examples:
      A declaration is checked at once (as ``ow.train`` checks its arguments); nothing is trained yet:

      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
      >>> y = np.array([1.0, -1.0, 0.0, 1.0])
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> sweep = ow.Sweep(net=net, data=(x, y), widths=[8, 16], lr=[0.1, 0.5], seeds=2, steps=2,
      ...                  extra={"param": [ow.NTP, ow.MUP]})
      >>> for g in sweep.groups():   # one compiled program (and one file) per width and param
      ...     print(g["name"], g["labels"])
      group-0000_width8_paramntp.nc {'param': 'ntp'}
      group-0001_width8_parammup.nc {'param': 'mup'}
      group-0002_width16_paramntp.nc {'param': 'ntp'}
      group-0003_width16_parammup.nc {'param': 'mup'}
      >>> len(sweep.fingerprint), sweep.rich_name
      (64, 'alpha')
    """

    net: Any
    data: tuple[Any, Any]
    widths: int | Sequence[int]
    lr: float | Sequence[float]
    steps: int
    seeds: int | Sequence[int] = _TRAIN_DEFAULTS["seeds"]
    alpha: float | Sequence[float] | None = _TRAIN_DEFAULTS["alpha"]
    gamma0: float | Sequence[float] | None = _TRAIN_DEFAULTS["gamma0"]
    test: tuple[Any, Any] | None = _TRAIN_DEFAULTS["test"]
    param: Parametrization = _TRAIN_DEFAULTS["param"]
    optimizer: str = _TRAIN_DEFAULTS["optimizer"]
    loss: str = _TRAIN_DEFAULTS["loss"]
    batch_size: int | None = _TRAIN_DEFAULTS["batch_size"]
    record_every: int | None = _TRAIN_DEFAULTS["record_every"]
    center: bool = _TRAIN_DEFAULTS["center"]
    weight_decay: float = _TRAIN_DEFAULTS["weight_decay"]
    momentum: float = _TRAIN_DEFAULTS["momentum"]
    adam_eps: float = _TRAIN_DEFAULTS["adam_eps"]
    linearized: bool = _TRAIN_DEFAULTS["linearized"]
    metrics: Mapping[str, Callable] | None = _TRAIN_DEFAULTS["metrics"]
    record_outputs: bool = _TRAIN_DEFAULTS["record_outputs"]
    members_per_batch: int | None = _TRAIN_DEFAULTS["members_per_batch"]
    extra: Mapping[str, Sequence | Mapping] = dataclasses.field(default_factory=dict)
    _plan: _train.TrainPlan = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        setf = lambda name, v: object.__setattr__(self, name, v)  # noqa: E731
        widths = _checks.positive_ints("widths", self.widths, where=_WHERE)
        setf("widths", widths)
        setf("steps", _checks.positive_int("steps", self.steps, where=_WHERE))
        # every ow.train argument is checked as ow.train checks it: the sweep builds its plan
        setf("_plan", _train.plan(self.net, self.data, **self._train_kwargs(), where=_WHERE))
        if not isinstance(self.extra, Mapping):
            raise TypeError(f"{_WHERE}: extra must be a mapping {{ow.train keyword: values}}, got {self.extra!r}")
        extra = {}
        for axis, values in self.extra.items():
            pairs = _extra_axis(axis, values)
            current = getattr(self, axis)
            if current is not _OPTION_DEFAULTS[axis] and current != _OPTION_DEFAULTS[axis]:
                raise ValueError(f"{_WHERE}: {axis} is both a field ({current!r}) and an extra axis; "
                                 f"leave the field at its default ({_OPTION_DEFAULTS[axis]!r}) when sweeping it")
            if axis == "optimizer":
                for _, v in pairs:
                    _optim.family(v, where=_WHERE)
            if axis == "param":
                for _, v in pairs:
                    if not isinstance(v, Parametrization):
                        raise TypeError(f"{_WHERE}: extra['param'] values must be ow.Parametrization, got {v!r}")
            extra[axis] = pairs
        setf("extra", extra)

    # ------------------------------------------------------------------ #
    @property
    def rich_name(self) -> str:
        return "gamma0" if self.gamma0 is not None else "alpha"

    def _options(self) -> dict:
        return {k: getattr(self, k) for k in _OPTIONS}

    def _train_kwargs(self) -> dict:
        """``ow.train``'s keywords (besides net and data) for the whole declaration, fields as given."""
        return {"widths": self.widths, "lr": self.lr, "steps": self.steps, "seeds": self.seeds, "alpha": self.alpha,
                "gamma0": self.gamma0, "test": self.test, "progress_bar": False, **self._options()}

    def plan(self, group: Mapping | None = None) -> _train.TrainPlan:
        """The :func:`ow.train` plan of one group of :meth:`groups` (its width and extra values), or of the
        declaration as a whole (all widths, the fields' values) when ``group`` is None."""
        if group is None:
            return self._plan
        kwargs = {**self._train_kwargs(), "widths": [group["width"]], **group["kwargs"]}
        return _train.plan(self.net, self.data, **kwargs, where=_WHERE)

    def describe(self) -> dict:
        """The canonical JSON description the fingerprint hashes (also stored in the manifest)."""
        plan = self._plan
        # members_per_batch changes results only by floating-point reassociation (~1e-15): not part of the config
        options = {k: v for k, v in self._options().items() if k != "members_per_batch"}
        return {
            "format": _FORMAT,
            "net": _ADDRESS.sub("", repr(self.net)),
            "data": [_array_desc(a) for a in self.data],
            "test": None if self.test is None else [_array_desc(a) for a in self.test],
            "widths": list(self.widths),
            "lr": _describe(plan.lrs.tolist()),
            "seeds": plan.seeds.tolist(),
            self.rich_name: _describe(plan.rich.tolist()),
            "steps": self.steps,
            "options": _describe(options),
            "extra": {axis: [[lab, _describe(v)] for lab, v in pairs] for axis, pairs in self.extra.items()},
        }

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of :meth:`describe` as sorted JSON: equal configurations, equal fingerprints."""
        return _hash_config(self.describe())

    def groups(self) -> list[dict]:
        """The groups in run order: ``{"name", "width", "labels": {axis: label}, "kwargs": {keyword: value}}``."""
        axes = list(self.extra)
        out = []
        for i, combo in enumerate(itertools.product(self.widths, *(self.extra[a] for a in axes))):
            width, picks = combo[0], combo[1:]
            labels = {a: lab for a, (lab, _) in zip(axes, picks)}
            out.append({"name": _group_name(i, width, labels, axes), "width": width, "labels": labels,
                        "kwargs": {a: v for a, (_, v) in zip(axes, picks)}})
        return out

    def run(self, out_dir: str | os.PathLike, *, progress: bool = True, executor=None, retries: int = 2):
        """:func:`run_sweep` ``(self, out_dir, progress=progress, executor=executor, retries=retries)``."""
        return run_sweep(self, out_dir, progress=progress, executor=executor, retries=retries)


# --------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------- #
def _hash_config(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_error(path: Path, err: BaseException) -> Exception:
    """What a failed write of ``path`` re-raises (``raise _write_error(path, err) from err``): an ``OSError``
    (with ``err``'s errno) for an ``OSError``, else a ``RuntimeError`` (the netCDF library's HDF errors)."""
    msg = f"{_WHERE}: could not write {path}: {type(err).__name__}: {err}; nothing was lost: rerun to resume"
    if not isinstance(err, OSError):
        return RuntimeError(msg)
    new = OSError(msg)
    new.errno = err.errno
    return new


def _atomic_write(path: Path, write: Callable[[Path], None], *, exclusive: bool = False) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, fsync it, then ``os.replace`` it onto ``path``; with
    ``exclusive``, ``os.link`` it to ``path`` instead, which does nothing if ``path`` exists (written by another
    attempt), so a file once written is never replaced.

    A failure (``OSError``, or ``RuntimeError`` from the netCDF library) raises :func:`_write_error`; ``path``
    is then untouched and the temporary file removed (or, if even that fails, removed by the next run)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
    except (OSError, RuntimeError) as err:
        raise _write_error(path, err) from err
    finally:
        with contextlib.suppress(OSError):  # e.g. a read-only folder: the next run deletes it (_TMP)
            tmp.unlink(missing_ok=True)


def _write_json(path: Path, obj) -> None:
    def write(tmp):
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    _atomic_write(path, write)


def _group_key(width: int, labels: Mapping) -> str:
    return json.dumps({"width": width, **labels}, sort_keys=True)


def _group_name(index: int, width: int, labels: Mapping, axes: Sequence[str]) -> str:
    """The file name of group ``index`` (labels in ``axes`` order): ``group-NNNN_width<w>[_<axis><label>...].nc``
    with every character outside ``[A-Za-z0-9._=-]`` replaced by ``-``, so never a path separator.
    The only names a manifest may give (:func:`_manifest_problem`)."""
    slug = "".join(f"_{a}{labels[a]}" for a in axes)
    return re.sub(r"[^A-Za-z0-9._=-]", "-", f"group-{index:04d}_width{width}{slug}") + ".nc"


def _group_path(out: Path, name: str) -> Path:
    """``out / name``, refused (``ValueError``) unless it resolves (links followed) to a file directly in ``out``."""
    path = out / name
    if "/" in name or "\\" in name or os.sep in name or path.resolve().parent != out.resolve():
        raise ValueError(f"{_WHERE}: group file {path} resolves to {path.resolve()}, outside {out.resolve()}; a "
                         "sweep folder holds its group files itself: replace the link by the file it points to "
                         "(or move that file into the folder) and rerun")
    return path


def _expected_coords(sweep: Sweep, group: dict) -> dict:
    coords = sweep.plan().coords()
    coords["width"] = [group["width"]]
    coords.update({a: [lab] for a, lab in group["labels"].items()})
    return coords


def _open_group(path: Path, sweep: Sweep, fingerprint: str, group: dict, sha: str | None):
    """Load a group file and check it is this sweep's group; ``ValueError`` naming the file otherwise."""
    import xarray as xr

    fix = (f"; it was not written by this sweep (or is damaged). Move it out of {path.parent} (or use a new "
           "out_dir) and rerun: the group will be recomputed")
    try:
        ds = xr.load_dataset(path, engine="netcdf4")
    except Exception as err:  # noqa: BLE001  (netCDF4/HDF5 raise OSError, RuntimeError, ValueError, ...)
        raise ValueError(f"{_WHERE}: group file {path} cannot be read as netCDF ({type(err).__name__}: {err})"
                         f"{fix}") from err
    if ds.attrs.get("sweep_fingerprint") != fingerprint:
        raise ValueError(f"{_WHERE}: {path} does not carry this sweep's fingerprint "
                         f"(has {ds.attrs.get('sweep_fingerprint')!r}, expected {fingerprint!r}){fix}")
    key = _group_key(group["width"], group["labels"])
    if ds.attrs.get("sweep_group") != key:
        raise ValueError(f"{_WHERE}: {path} holds group {ds.attrs.get('sweep_group')!r}, expected {key!r}{fix}")
    for name, want in _expected_coords(sweep, group).items():
        have = ds.coords[name].values if name in ds.coords else None
        want = np.asarray(want)
        if have is None or have.shape != want.shape or not all(
                (a == b) or (isinstance(a, float) and np.isnan(a) and np.isnan(b))
                for a, b in zip(have.tolist(), want.tolist())):
            raise ValueError(f"{_WHERE}: {path} has coordinate {name}={None if have is None else have.tolist()}, "
                             f"expected {want.tolist()}{fix}")
    if sha is not None and _sha256_file(path) != sha:
        raise ValueError(f"{_WHERE}: {path} differs from the file the manifest recorded (SHA-256 mismatch){fix}")
    return ds


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _manifest_problem(m) -> str | None:
    """What is wrong with a parsed ``manifest.json`` (``None`` if nothing): every field :func:`run_sweep`
    writes, with its type; group names exactly :func:`_group_name`'s; groups forming the grid
    ``width x extra axes`` in run order (as :func:`load_sweep` assembles them); ``done`` naming only groups."""
    if not isinstance(m, dict):
        return f"expected a JSON object, got {type(m).__name__}"
    if "owidth_sweep_format" not in m:  # every owidth that wrote manifests wrote it
        return "no owidth_sweep_format field (every manifest ow.run_sweep writes has one)"
    if not _is_int(m["owidth_sweep_format"]) or m["owidth_sweep_format"] != _FORMAT:
        return f"owidth_sweep_format must be {_FORMAT}, got {_short(m['owidth_sweep_format'])}"
    missing = [k for k in _MANIFEST_FIELDS if k not in m]
    if missing:
        return f"missing field(s) {missing}"
    unknown = sorted(set(m) - set(_MANIFEST_FIELDS))
    if unknown:
        return f"unknown field(s) {unknown}"
    if not isinstance(m["fingerprint"], str) or not _SHA256.match(m["fingerprint"]):
        return f"fingerprint must be a SHA-256 (64 lowercase hex digits), got {_short(m['fingerprint'])}"
    if not isinstance(m["config"], dict):
        return f"config must be an object, got {type(m['config']).__name__}"
    if m["rich_name"] not in ("alpha", "gamma0"):
        return f"rich_name must be 'alpha' or 'gamma0', got {_short(m['rich_name'])}"
    axes = m["extra_axes"]
    if not isinstance(axes, list) or not all(isinstance(a, str) and a in _EXTRA_OK for a in axes) \
            or len(set(axes)) != len(axes):
        return f"extra_axes must be a list of distinct keywords among {list(_EXTRA_OK)}, got {_short(axes)}"
    groups = m["groups"]
    if not isinstance(groups, list) or not groups:
        return f"groups must be a non-empty list, got {_short(groups)}"
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or sorted(g) != ["labels", "name", "width"]:
            return f"groups[{i}] must be an object with the fields name, width and labels, got {_short(g)}"
        if not _is_int(g["width"]) or g["width"] < 1:
            return f"groups[{i}].width must be a positive integer, got {_short(g['width'])}"
        labels = g["labels"]
        if not isinstance(labels, dict) or sorted(labels) != sorted(axes) or not all(
                isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in labels.values()):
            return f"groups[{i}].labels must map each of extra_axes {axes} to a string or a number, got {_short(labels)}"
        name = _group_name(i, g["width"], labels, axes)
        if g["name"] != name:
            return f"groups[{i}].name is {_short(g['name'])}, expected {name!r} (the name the sweep gives this group)"
    for a in axes:
        if len({isinstance(g["labels"][a], str) for g in groups}) > 1:
            return f"the labels of extra axis {a!r} mix strings and numbers"
    # JSON text of each coordinate: equal for equal values (NaN included)
    keys = [tuple(json.dumps(v) for v in (g["width"], *(g["labels"][a] for a in axes))) for g in groups]
    grid = list(itertools.product(*(dict.fromkeys(k[j] for k in keys) for j in range(1 + len(axes)))))
    if keys != grid:
        return f"groups do not form the grid {' x '.join(['width', *axes])} in run order"
    done, names = m["done"], {g["name"] for g in groups}
    if not isinstance(done, dict):
        return f"done must be an object {{group file name: SHA-256}}, got {type(done).__name__}"
    for name, sha in done.items():
        if name not in names:
            return f"done names {_short(name)}, which is not one of its groups"
        if not isinstance(sha, str) or not _SHA256.match(sha):
            return f"done[{name!r}] must be a SHA-256 (64 lowercase hex digits), got {_short(sha)}"
    return None


def _read_manifest(out: Path) -> dict | None:
    """``out/manifest.json`` parsed and checked (:func:`_manifest_problem`); ``None`` if there is none."""
    path = out / _MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        problem = f"not JSON ({err})"
    else:
        version = manifest.get("owidth_sweep_format") if isinstance(manifest, dict) else None
        if _is_int(version) and version > _FORMAT:
            raise ValueError(f"{_WHERE}: {path} was written by a newer owidth (sweep format {version}; this one "
                             f"reads format {_FORMAT}); upgrade owidth to read or resume it")
        problem = _manifest_problem(manifest)
    if problem is not None:
        raise ValueError(f"{_WHERE}: {path} is not a valid sweep manifest: {problem}; it was not written by "
                         f"ow.run_sweep, or was edited or damaged. Delete it and rerun the same sweep into {out} "
                         "(its group files are checked against the sweep and kept), or run the sweep into a new "
                         "out_dir")
    return manifest


@contextlib.contextmanager
def _folder_lock(out: Path):
    """Hold the operating-system lock ``out/.sweep.lock`` (:class:`filelock.FileLock`) for the block, or raise
    ``RuntimeError`` at once if another run holds it. On leaving, the file is removed while still locked (a run
    that opened it meanwhile finds it deleted -- filelock checks -- and fails as held), then the lock released."""
    from filelock import FileLock, Timeout

    path = out / _LOCK
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout as err:
        raise RuntimeError(
            f"{_WHERE}: another run holds {out} (lock {path}); two runs into one folder would train the same "
            f"groups twice. Wait for it to finish, or run this sweep into another out_dir. If no run uses {out} "
            f"any more (the system releases the lock of a process that died, but not on filesystems without "
            f"file locks), delete {path} and rerun") from err
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        yield
    finally:
        if os.name == "posix":  # Windows cannot delete an open file; filelock deletes it there on release
            with contextlib.suppress(OSError):
                path.unlink()
        lock.release()


def _check_folder(sweep: Sweep, out: Path, manifest: dict | None, config: dict, fingerprint: str) -> None:
    """Refuse a folder that holds another sweep or stray netCDF files."""
    if manifest is not None and manifest["fingerprint"] != fingerprint:
        old, new = manifest.get("config", {}), config
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"{_WHERE}: {out} holds a sweep with a different configuration (fingerprint "
                         f"{manifest['fingerprint'][:12]}..., this one {fingerprint[:12]}...; differing: {diff}). "
                         "Use a new out_dir, or delete the folder to discard the old results")
    names = {g["name"] for g in sweep.groups()}
    stray = sorted(p.name for p in out.glob("*.nc") if p.name not in names)
    if stray:
        raise ValueError(f"{_WHERE}: {out} holds netCDF files that are not groups of this sweep: {stray}; "
                         "use a new out_dir or move them away")


# --------------------------------------------------------------------------- #
# Run and load
# --------------------------------------------------------------------------- #
def run_sweep(sweep: Sweep, out_dir: str | os.PathLike, *, progress: bool = True, executor=None,
              retries: int = 2):
    """Run (or resume) ``sweep`` into ``out_dir`` and return :func:`load_sweep` ``(out_dir)``.

    Groups ``(width, extra values)`` are trained one :func:`ow.train` call
    each (one compile each), in :meth:`Sweep.groups` order, with a progress
    bar over groups. A group already on disk with this sweep's fingerprint is
    checked and skipped; each new group is written atomically (temporary file,
    then ``os.replace``) and recorded in ``manifest.json``. Rerunning a complete
    sweep trains nothing. Raises ``ValueError`` (before training anything) if
    ``out_dir`` holds a different configuration, a manifest that is not valid,
    a group file that does not open or is not this sweep's, or other netCDF
    files; ``RuntimeError`` at once if another run holds ``out_dir`` (the lock
    ``out_dir/.sweep.lock``, held while this runs); and ``OSError`` (or
    ``RuntimeError``) "could not write <file>: <reason>; nothing was lost:
    rerun to resume" if a write fails.

    On an executor. ``executor`` is any object with ``submit(fn, *args) -> future`` whose futures have
    ``done()``, ``result()`` and ``exception()``: a ``concurrent.futures.ProcessPoolExecutor`` (give it
    ``mp_context=multiprocessing.get_context("spawn")``: JAX does not survive ``fork``), a
    ``dask.distributed.Client`` (a ``LocalCluster``, or a Slurm/PBS cluster through dask-jobqueue), a submitit
    executor. Each group is one task: the worker trains it and writes its file itself, atomically and
    exclusively (a temporary file linked to its name, so a group whose file exists is never written again,
    e.g. by a task the scheduler restarted), so ``out_dir`` must be a folder every worker sees (a shared
    filesystem). The driver keeps the lock, the manifest and a progress bar over groups; a task that fails
    is resubmitted up to ``retries`` times (Dask also reschedules the tasks of a worker that died); groups that
    still fail are reported together, with their reasons, after the others are saved (``RuntimeError``; rerun
    to resume). A ``ProcessPoolExecutor`` whose worker process died is broken for good (Python's rule): its
    remaining groups are reported, and a rerun with a new executor resumes them. Training is deterministic, so
    the result is identical to the serial run's.

    Examples:
      One group (width 8), 2 seeds x 2 learning rates; a rerun finds the group on disk and trains nothing:

      >>> import os, tempfile
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
      >>> y = np.array([1.0, -1.0, 0.0, 1.0])
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> sweep = ow.Sweep(net=net, data=(x, y), widths=8, lr=[0.1, 0.5], seeds=2, steps=2)
      >>> with tempfile.TemporaryDirectory() as out:
      ...     ds = ow.run_sweep(sweep, out, progress=False)
      ...     again = ow.run_sweep(sweep, out, progress=False)
      ...     files = sorted(os.listdir(out))
      >>> files
      ['group-0000_width8.nc', 'manifest.json']
      >>> dict(ds.sizes)
      {'width': 1, 'seed': 2, 'lr': 2, 'alpha': 1, 'step': 3}
      >>> bool(again.identical(ds)), ds.attrs["sweep_fingerprint"] == sweep.fingerprint
      (True, True)
    """
    _executor.check(executor, where=_WHERE)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"{_WHERE}: retries must be an int >= 0, got {retries!r}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(out, err) from err
    with _folder_lock(out):
        return _run_locked(sweep, out, progress=progress, executor=executor, retries=retries)


def _run_locked(sweep: Sweep, out: Path, *, progress: bool, executor=None, retries: int = 0):
    """:func:`run_sweep`'s work, with ``out`` existing and locked."""
    config = sweep.describe()  # hashes the data once per run
    fingerprint = _hash_config(config)
    manifest = _read_manifest(out)
    if manifest is not None and manifest["fingerprint"] != fingerprint and not manifest["done"] \
            and not any(out.glob("*.nc")):
        manifest = None  # an earlier attempt that finished nothing (e.g. bad data): nothing to protect
    _check_folder(sweep, out, manifest, config, fingerprint)
    for p in out.iterdir():  # temporary files of an interrupted write
        if _TMP.match(p.name):
            try:
                p.unlink()
            except OSError as err:
                raise _write_error(p, err) from err
    groups = sweep.groups()
    done = dict(manifest["done"]) if manifest is not None else {}
    todo = []
    for g in groups:  # check everything on disk before training anything
        path = _group_path(out, g["name"])
        if path.exists():
            _open_group(path, sweep, fingerprint, g, done.get(g["name"]))
            done.setdefault(g["name"], _sha256_file(path))
        else:
            done.pop(g["name"], None)
            todo.append(g)

    def save_manifest():
        _write_json(out / _MANIFEST, {
            "owidth_sweep_format": _FORMAT, "fingerprint": fingerprint, "config": config,
            "rich_name": sweep.rich_name, "extra_axes": list(sweep.extra),
            "groups": [{"name": g["name"], "width": g["width"], "labels": g["labels"]} for g in groups],
            "done": {g["name"]: done[g["name"]] for g in groups if g["name"] in done}})

    save_manifest()
    plans = [sweep.plan(g) for g in todo]  # every group's arguments checked before anything is trained
    bar = _progress_bar(total=len(groups), desc="ow.sweep", enabled=progress)
    bar.update(len(groups) - len(todo))
    if executor is not None:
        try:
            _run_on(executor, sweep, out, fingerprint, todo, retries, done, save_manifest, bar)
        finally:
            bar.close()
        return load_sweep(out)
    try:
        for g, plan in zip(todo, plans):
            bar.set_description(f"ow.sweep width={g['width']}" + "".join(f" {a}={v}" for a, v in g["labels"].items()))
            ds = _train_group(plan, g)
            ds.attrs.update(sweep_fingerprint=fingerprint, sweep_group=_group_key(g["width"], g["labels"]))
            path = _group_path(out, g["name"])
            _atomic_write(path, lambda tmp, ds=ds: ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4"))
            done[g["name"]] = _sha256_file(path)
            save_manifest()
            bar.update(1)
    finally:
        bar.close()
    return load_sweep(out)



def _run_on(executor, sweep: Sweep, out: Path, fingerprint: str, todo: list, retries: int, done: dict,
            save_manifest: Callable[[], None], bar) -> None:
    """Run every group in ``todo`` on ``executor`` (one :func:`_work_group` task each, :func:`owidth._executor.run`),
    record the finished ones in ``done`` and the manifest as they come, and raise ``RuntimeError`` naming the
    groups that still failed after ``retries`` resubmissions, with their reasons."""
    def finished(name, result):
        done[name] = result[1]
        save_manifest()
        bar.update(1)

    failed = _executor.run(executor, _work_group, ((g["name"], (sweep, g, str(out), fingerprint)) for g in todo),
                           retries=retries, on_result=finished)
    for p in out.iterdir():  # every task has ended: temporary files left are those of workers that died
        if _TMP.match(p.name) and p.name.startswith(".group-"):
            with contextlib.suppress(OSError):
                p.unlink()
    if failed:
        raise RuntimeError(f"{_WHERE}: {_executor.failure_message(failed, what='groups', total=len(todo), retries=retries)}"
                           f"; the other groups are saved in {out}: rerun to resume (with a new executor if this "
                           "one is broken)")


def _work_group(sweep: Sweep, group: dict, out: str, fingerprint: str) -> tuple[str, str]:
    """One group on a worker: train it and write its file exclusively (never over an existing one, e.g. from an
    earlier attempt of a task that was thought lost); return ``(name, sha256)`` of the file."""
    path = _group_path(Path(out), group["name"])
    if not path.exists():
        ds = _train_group(sweep.plan(group), group)
        ds.attrs.update(sweep_fingerprint=fingerprint, sweep_group=_group_key(group["width"], group["labels"]))
        _atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4"), exclusive=True)
    return group["name"], _sha256_file(path)


def _train_group(plan: _train.TrainPlan, group: dict):
    ds = _train.execute(plan)  # looked up at call time: tests count and interrupt the groups' trainings here
    for i, (axis, label) in enumerate(group["labels"].items()):
        ds = ds.expand_dims({axis: [label]}, axis=1 + i)
    return ds


def load_sweep(out_dir: str | os.PathLike, *, allow_partial: bool = False):
    """All group files of the sweep in ``out_dir`` as one ``xarray.Dataset``.

    Dims ``(width, [extra axes], seed, lr, alpha|gamma0, step)``; the result is
    identical whether the sweep ran in one go or was interrupted and resumed.
    Attrs that differ between groups (e.g. ``param``'s exponents along a
    ``param`` axis) are dropped: the axis label names them. Raises
    ``ValueError`` listing the missing groups unless ``allow_partial``, in
    which case they are NaN with ``status="missing"``. The manifest is checked
    first (every field and type; group file names must be the sweep's own, so
    no file outside ``out_dir`` is ever opened), then every group file as in
    :func:`run_sweep` (fingerprint, group, SHA-256).

    Examples:
      >>> import os, tempfile
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
      >>> y = np.array([1.0, -1.0, 0.0, 1.0])
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> sweep = ow.Sweep(net=net, data=(x, y), widths=8, lr=[0.1, 0.5], seeds=2, steps=2)
      >>> with tempfile.TemporaryDirectory() as out:
      ...     ran = sweep.run(out, progress=False)
      ...     ds = ow.load_sweep(out)               # later, elsewhere: the same dataset
      ...     os.remove(os.path.join(out, "group-0000_width8.nc"))   # as if interrupted before it
      ...     try:
      ...         ow.load_sweep(out)
      ...     except ValueError as err:
      ...         print(err)
      ow.Sweep: ... is incomplete: 1 of 1 groups missing (['group-0000_width8.nc']); rerun the sweep ...
      >>> bool(ds.identical(ran)), ds.train_loss.dims
      (True, ('width', 'seed', 'lr', 'alpha', 'step'))

      A manifest naming a file the sweep would not write is refused before anything is opened:

      >>> import json
      >>> with tempfile.TemporaryDirectory() as out:
      ...     ran = sweep.run(out, progress=False)
      ...     path = os.path.join(out, "manifest.json")
      ...     with open(path) as f:
      ...         manifest = json.load(f)
      ...     manifest["groups"][0]["name"] = "../elsewhere.nc"
      ...     with open(path, "w") as f:
      ...         json.dump(manifest, f)
      ...     try:
      ...         ow.load_sweep(out)
      ...     except ValueError as err:
      ...         print(err)
      ow.Sweep: .../manifest.json is not a valid sweep manifest: groups[0].name is '../elsewhere.nc', expected ...
    """
    import xarray as xr

    out = Path(out_dir)
    manifest = _read_manifest(out)
    if manifest is None:
        raise ValueError(f"{_WHERE}: {out} has no {_MANIFEST}; it is not a sweep folder (run the sweep first)")
    fingerprint, groups = manifest["fingerprint"], manifest["groups"]
    present, missing = {}, []
    for g in groups:
        path = _group_path(out, g["name"])  # the name is the sweep's own (checked by _read_manifest)
        if not path.exists():
            missing.append(g["name"])
            continue
        present[g["name"]] = _open_group_loose(path, fingerprint, g, manifest["done"].get(g["name"]))
    if missing and (not allow_partial or not present):
        raise ValueError(f"{_WHERE}: {out} is incomplete: {len(missing)} of {len(groups)} groups missing "
                         f"({missing}); rerun the sweep to compute them, or load_sweep(..., allow_partial=True)")
    template = next(iter(present.values()))
    axes = ["width", *manifest["extra_axes"]]
    pieces = []
    for g in groups:
        if g["name"] in present:
            ds = present[g["name"]]
        else:
            ds = template.copy(deep=True)
            ds.attrs = {}
            for name, var in ds.data_vars.items():
                if name == "status":
                    ds[name] = var.copy(data=np.full(var.shape, "missing", dtype=object))
                elif name == "diverged_step":
                    ds[name] = var.copy(data=np.full(var.shape, -1, dtype=var.dtype))
                else:
                    ds[name] = var.copy(data=np.full(var.shape, np.nan, dtype=np.result_type(var.dtype, float)))
            ds = ds.assign_coords({"width": [g["width"]], **{a: [lab] for a, lab in g["labels"].items()}})
        pieces.append(ds)
    nested = _nest(pieces, [len(dict.fromkeys(_axis_values(groups, a))) for a in axes])
    ds = xr.combine_nested(nested, concat_dim=axes, combine_attrs="drop_conflicts", join="exact",
                           data_vars="all", coords="minimal", compat="equals")
    ds.attrs.pop("sweep_group", None)
    ds.attrs["sweep_fingerprint"] = fingerprint
    return ds


def _axis_values(groups, axis):
    return [g["width"] if axis == "width" else g["labels"][axis] for g in groups]


def _nest(flat: list, sizes: list[int]):
    if len(sizes) == 1:
        return flat
    step = len(flat) // sizes[0]
    return [_nest(flat[i * step:(i + 1) * step], sizes[1:]) for i in range(sizes[0])]


def _open_group_loose(path: Path, fingerprint: str, group: dict, sha: str | None):
    """Like :func:`_open_group` without the Sweep (from the manifest): fingerprint, group label, SHA-256."""
    import xarray as xr

    fix = f"; rerun the sweep (it refuses and explains) or move the file out of {path.parent}"
    if sha is not None and _sha256_file(path) != sha:
        raise ValueError(f"{_WHERE}: {path} differs from the file the manifest recorded (SHA-256 mismatch){fix}")
    try:
        ds = xr.load_dataset(path, engine="netcdf4")
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{_WHERE}: group file {path} cannot be read as netCDF ({type(err).__name__}: {err})"
                         f"{fix}") from err
    key = _group_key(group["width"], group["labels"])
    if ds.attrs.get("sweep_fingerprint") != fingerprint or ds.attrs.get("sweep_group") != key:
        raise ValueError(f"{_WHERE}: {path} is not group {key} of this sweep{fix}")
    return ds


__all__ = ["Sweep", "load_sweep", "run_sweep"]
