"""Experiment figures read at a glance: what each panel plots, on which axes (synthetic data, no training)."""

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from owidth.experiments import coord_check


def _coord_check_dataset():
    widths, steps = [64, 128, 256], [0, 1, 2, 3]
    n = np.array(widths, float)[:, None, None, None]
    t = np.array(steps, float)[None, None, :, None]
    shape = (len(widths), 2, len(steps), 3)  # (width, seed, step, layer)
    flat = np.broadcast_to(0.02 * t, shape)  # muP: flat in width, 0 at step 0
    grow = np.broadcast_to(0.02 * t * n / 64, shape)  # SP: ~ n
    delta = np.stack([grow, flat])  # (param, width, seed, step, layer)
    dims = ("param", "width", "seed", "step", "layer")
    slope = np.where(np.array(steps)[None, :, None] > 0, np.array([1.0, 0.0])[:, None, None], np.nan)
    slope = np.broadcast_to(slope, (2, len(steps), 3))  # (param, step, layer)
    return xr.Dataset({"size": (dims, 1.0 + delta), "delta": (dims, delta),
                       "slope_size": (("param", "step", "layer"), 0 * slope),
                       "slope_delta": (("param", "step", "layer"), slope)},
                      coords={"param": ["sp", "mup"], "width": widths, "seed": [0, 1], "step": steps,
                              "layer": [0, 1, 2]}, attrs={"lr": 0.01})


def test_coord_check_same_quantity_on_one_shared_log_axis():
    """TP V Fig. 5: every panel plots the coordinate change |h_t - h_0| for t >= 1 on a shared log-log axis."""
    ds = _coord_check_dataset()
    fig = coord_check.figure(ds)
    axes = np.array(fig.axes[:6]).reshape(2, 3)
    first = axes[0, 0]
    for ax in axes.flat:
        assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
        assert ax.get_shared_y_axes().joined(first, ax)
        assert ax.get_ylim() == first.get_ylim()
    lo, hi = first.get_ylim()
    assert lo <= 0.02 and hi >= 0.06 * 4  # the whole range of both parametrizations is on the axis
    for row, p in enumerate(("sp", "mup")):
        assert p.lower() in axes[row, 0].get_ylabel().lower() and "h_0" in axes[row, 0].get_ylabel()
        for layer, ax in enumerate(axes[row]):
            lines = ax.get_lines()
            assert [line.get_label() for line in lines] == ["step 1", "step 2", "step 3"]
            for t, line in zip((1, 2, 3), lines):
                want = ds.delta.sel(param=p, step=t).isel(layer=layer).mean("seed").values
                np.testing.assert_allclose(line.get_ydata(), want)
    plt.close(fig)


def test_lazy_rich_panels_of_one_row_share_the_colour_scale():
    """NTP and muP phase diagrams are comparable cell by cell: one colour scale per row, with a colorbar each."""
    from owidth.experiments import lazy_rich

    widths, alphas, steps = [64, 256], [0.3, 1.0, 3.0], [0, 100]
    rng = np.random.default_rng(0)
    dims = ("param", "width", "seed", "lr", "alpha", "step")
    shape = (2, len(widths), 2, 1, len(alphas), len(steps))
    ds = xr.Dataset({"ntk_movement": (dims, 10 ** rng.uniform(-3, 0, shape)),
                     "test_loss": (dims, rng.uniform(0, 1, shape))},
                    coords={"param": ["ntp", "mup"], "width": widths, "seed": [0, 1], "lr": [1.0], "alpha": alphas,
                            "step": steps})
    fig = lazy_rich.figure(ds)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 4
    for a, b in (images[:2], images[2:]):
        assert a.norm.vmin == b.norm.vmin and a.norm.vmax == b.norm.vmax
    lines = [ax for ax in fig.axes if ax.get_lines()]
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in lines) and len(lines) == 2
    plt.close(fig)
