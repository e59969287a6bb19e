"""Layers that select pixels: ``Index`` (numpy-style indexing of the spatial axes) and its ``Slice`` helper."""

from __future__ import annotations

import dataclasses

import numpy as np

from owidth.layers import masking
from owidth.layers._base import Caps, Dim, Layer, zero_padding
from owidth.layers.conv import linear_pixels

__all__ = ["Index", "Slice"]


class _Slice:
    """``ow.Slice[1:3, :, 0]`` is the index ``(slice(1, 3), slice(None), 0)`` (for :class:`Index`)."""

    def __getitem__(self, idx):
        return idx

    def __repr__(self) -> str:
        return "ow.Slice"


Slice = _Slice()


def _freeze(item, where: str):
    """A hashable form of one index item: an int, ``...``, or ``("slice", start, stop, step)``."""
    if item is Ellipsis:
        return item
    if isinstance(item, slice):
        for part in (item.start, item.stop, item.step):
            if part is not None and (isinstance(part, bool) or not isinstance(part, (int, np.integer))):
                raise TypeError(f"{where}: slice {item} must have integer (or omitted) start, stop and step")
        if item.step == 0:
            raise ValueError(f"{where}: slice {item} has step 0")
        return ("slice",) + tuple(None if p is None else int(p) for p in (item.start, item.stop, item.step))
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        return int(item)
    raise TypeError(f"{where}: index items must be ints, slices or ..., got {item!r} (use ow.Slice[...] to write "
                    "an index, e.g. ow.Index(ow.Slice[:, 1:3, ...]))")


def _thaw(item):
    return slice(*item[1:]) if isinstance(item, tuple) else item


def _is_all(item) -> bool:
    return isinstance(item, slice) and item == slice(None)


@dataclasses.dataclass(frozen=True)
class Index(Layer):
    """``x[idx]`` on ``(batch, *spatial, channels)`` activations, as numpy indexes (NT's ``stax.Index``).

    ``idx`` indexes the spatial axes: slices crop or subsample pixels, ints drop an axis (a row of an
    image becomes a sequence), ``...`` stands for the axes not named. The batch axis and the
    channels of a hidden layer are kept whole (``:``): the kernel describes every input and an
    infinitely wide layer has no k-th channel. Raw input features may be indexed.

    Kernel rule: the same selection on both pixel axes of the pixel covariances,
    ``K'(s, t) = K(idx(s), idx(t))``.

    Args:
      idx: an index over ``(batch, *spatial, channels)``, most easily written ``ow.Slice[...]``
        (``ow.Slice[:, 2:5, ::2]`` is ``(slice(None), slice(2, 5), slice(None, None, 2))``).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Conv(filter_shape=(3, 3)), ow.Relu(), ow.Index(ow.Slice[:, 0, ...]),
      ...                 ow.Conv(filter_shape=(2,)), ow.GlobalAvgPool(), ow.Dense(out=1))
      >>> ow.kernel(net, np.ones((2, 5, 5, 1))).nngp.shape     # the first row of each image, then 1-D convolutions
      (2, 2)
    """

    caps = Caps(spatial=True, pixel_var=True)

    idx: tuple

    def __post_init__(self):
        where = "ow.Index"
        idx = self.idx if isinstance(self.idx, tuple) else (self.idx,)
        frozen = tuple(item if isinstance(item, tuple) and item and item[0] == "slice" else _freeze(item, where)
                       for item in idx)
        if sum(item is Ellipsis for item in frozen) > 1:
            raise ValueError(f"{where}: an index can have only one ... (got {self.idx!r})")
        object.__setattr__(self, "idx", frozen)

    def _odd_linear(self) -> bool:
        return True

    def _items(self, shape: tuple[int, ...], *, hidden: bool, where: str = "ow.Index", check: bool = True) -> tuple:
        """The index expanded to one item per axis of an activation of ``shape`` (batch first); ``check``:
        that it fits (off for a padding mask, whose feature axis stands in)."""
        items = [_thaw(i) for i in self.idx]
        n_named = sum(i is not Ellipsis for i in items)
        if n_named > len(shape):
            raise ValueError(f"{where}: index {self._show()} has {n_named} items, but the activations here have only "
                             f"{len(shape)} axes (shape (batch, ...) = {shape})")
        if Ellipsis in items:
            k = items.index(Ellipsis)
            items = items[:k] + [slice(None)] * (len(shape) - n_named) + items[k + 1:]
        else:
            items += [slice(None)] * (len(shape) - n_named)
        if not _is_all(items[0]):
            raise ValueError(f"{where}: index {self._show()} selects from the batch axis; keep it whole (':'), e.g. "
                             "ow.Slice[:, 1:3] (to pick inputs, index the data before the network)")
        if hidden and not _is_all(items[-1]):
            raise ValueError(f"{where}: index {self._show()} selects channels of a hidden layer, which has infinitely "
                             "many in the kernel limit; keep the channel axis whole, or use a Dense(out=k) to map to "
                             "k features")
        if not check:
            return tuple(items)
        try:
            np.empty(shape[1:] if len(shape) > 1 else (), dtype=np.int8)[tuple(items[1:])]
        except IndexError as err:
            raise ValueError(f"{where}: index {self._show()} does not fit activations of shape {shape}: {err}") from err
        return tuple(items)

    def _show(self) -> str:
        def one(i):
            if i is Ellipsis:
                return "..."
            if isinstance(i, tuple):
                s = "" if i[1] is None else str(i[1])
                s += ":" + ("" if i[2] is None else str(i[2]))
                return s + ("" if i[3] is None else f":{i[3]}")
            return str(i)

        return "[" + ", ".join(one(i) for i in self.idx) + "]"

    def _takes_padding(self) -> bool:
        return True

    def _mask_out(self, mask):
        """The selected positions' padding (None once no position axis is left: then padding positions,
        zeroed before the selection, give zero outputs)."""
        items = self._items((*mask.shape, 1), hidden=False, check=False)
        out = mask[items[:-1]]
        return out if out.ndim > 1 else None

    def _kernel(self, ks):
        ks = masking.remask(ks)  # a selected padding position is zero
        if ks.is_input:
            items = self._items(ks.x1.shape, hidden=False)
            if ks.x2 is not None:
                self._items(ks.x2.shape, hidden=False)
            x1 = ks.x1[items]
            if x1.ndim < 2:
                raise ValueError(f"ow.Index: index {self._show()} leaves no feature axis")
            return masking.carry(ks.replace(x1=x1, x2=None if ks.x2 is None else ks.x2[items]), self._mask_out)
        items = self._items((1, *ks.spatial, 1), hidden=not ks.fixed)
        pix = items[1:-1]
        spatial = np.empty(ks.spatial, dtype=np.int8)[pix].shape

        def fn(x, lead):
            pair = ks.full and (lead == 2 or not ks.var_pixel)
            return x[(slice(None),) * lead + pix + (pix if pair else ())]

        return masking.carry(linear_pixels(ks, fn, spatial=spatial, full=ks.full and bool(spatial), mixes=False,
                                           mean_fn=lambda m: m[(slice(None),) + pix]), self._mask_out)

    def _out_dim(self, dim: Dim) -> tuple:
        items = self._items((1, *dim.spatial, dim.size), hidden=dim.scales)
        shape = np.empty((*dim.spatial, dim.size), dtype=np.int8)[items[1:]].shape
        if not shape:
            raise ValueError(f"ow.Index: index {self._show()} leaves no feature axis")
        return items, Dim(shape[-1], dim.scales, tuple(shape[:-1]))

    def _init(self, key, dim, ctx):
        return (), self._out_dim(dim)[1]

    def _apply(self, params, x, dim, ctx):
        items, out = self._out_dim(dim)
        return zero_padding(x, ctx)[items], out
