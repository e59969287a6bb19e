"""``ow.kernel(..., batch_size=b)``: tiles give the untiled kernel, on one device or several."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import owidth as ow
from owidth.kernels import tiles

NETS = {
    "mlp": (ow.serial(ow.Dense(w_std=1.4, b_std=0.3), ow.Relu(), ow.Dense(w_std=1.4, b_std=0.3), ow.Gelu(),
                      ow.LayerNorm(), ow.Dense(out=1)), (5,)),
    "cnn-gap": (ow.serial(ow.Conv(filter_shape=(3, 3), w_std=1.4, b_std=0.1), ow.Relu(), ow.GlobalAvgPool(),
                          ow.Dense(out=1)), (4, 4, 2)),
    "cnn-flatten": (ow.serial(ow.Conv(filter_shape=(2, 2), w_std=1.4, b_std=0.1), ow.Erf(), ow.Flatten(),
                              ow.Dense(out=1)), (3, 4, 2)),
}


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


# cnn-gap by default (pixel-pixel covariances through tiles); the others (~6-8 s each) with the slow tests
@pytest.mark.parametrize("name", [n if n == "cnn-gap" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(NETS)])
def test_tiled_equals_untiled(name):
    net, shape = NETS[name]
    rng = np.random.default_rng(0)
    n1, n2 = (23, 11) if len(shape) == 1 else (13, 7)
    x1, x2 = rng.standard_normal((n1, *shape)), rng.standard_normal((n2, *shape))
    full, cross = ow.kernel(net, x1), ow.kernel(net, x1, x2)
    b = 5  # divides none of 23, 11, 13, 7: padded and cropped last tiles (each size compiles anew)
    k = ow.kernel(net, x1, batch_size=b)
    assert np.array_equal(k.nngp, np.asarray(k.nngp).T) and np.array_equal(k.ntk, np.asarray(k.ntk).T)
    for got, ref in [(k.nngp, full.nngp), (k.ntk, full.ntk), (k.var1, full.var1), (k.var2, full.var2)]:
        assert rel(got, ref) < 1e-12
    k = ow.kernel(net, x1, x2, batch_size=b)
    for got, ref in [(k.nngp, cross.nngp), (k.ntk, cross.ntk), (k.var1, cross.var1), (k.var2, cross.var2)]:
        assert rel(got, ref) < 1e-12
    only = ow.kernel(net, x1, batch_size=6, get="nngp")
    assert only.ntk is None and rel(only.nngp, full.nngp) < 1e-12


def test_batch_size_checked_before_compiling():
    net, shape = NETS["mlp"]
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ow.kernel(net, np.ones((3, *shape)), batch_size=0)
    with pytest.raises(TypeError, match="batch_size"):
        ow.kernel(net, np.ones((3, *shape)), batch_size=2.5)


SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import owidth as ow
    sys.path[:0] = [{here!r}, {tests!r}]
    from test_tiles import NETS
    rng = np.random.default_rng(1)
    out = {{"devices": len(jax.devices())}}
    for name, (net, shape) in NETS.items():
        x1, x2 = rng.standard_normal((19, *shape)), rng.standard_normal((9, *shape))
        k = ow.kernel(net, x1, batch_size=4)
        k2 = ow.kernel(net, x1, x2, batch_size=4)
        np.savez({tmp!r} + "/" + name + ".npz", x1=x1, x2=x2, nngp=k.nngp, ntk=k.ntk, nngp2=k2.nngp, ntk2=k2.ntk)
    print(json.dumps(out))
""")


@pytest.mark.slow  # ~30 s: a second process compiling every tiled kernel for four devices
def test_four_fake_cpu_devices_equal_one(tmp_path):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()  # + tests/conftest.py's
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # compile-bound, as the default suite (tests/conftest.py)
    script = SCRIPT.format(here=str(pathlib.Path(__file__).parent), tests=str(pathlib.Path(__file__).parents[1]),
                           tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=pathlib.Path(__file__).parents[2], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["devices"] == 4
    for name, (net, _) in NETS.items():
        r = np.load(tmp_path / f"{name}.npz")
        k, k2 = ow.kernel(net, r["x1"]), ow.kernel(net, r["x1"], r["x2"])  # one device, untiled
        assert np.array_equal(r["nngp"], r["nngp"].T)
        for got, ref in [(r["nngp"], k.nngp), (r["ntk"], k.ntk), (r["nngp2"], k2.nngp), (r["ntk2"], k2.ntk)]:
            assert rel(got, ref) < 1e-12, name


# Pooled CNNs: tiles of different inputs run with per-pixel variances replayed from each input's own
# pass (VarTape); every combination of pooling, a pixel-valued output, residual sums, quadrature
# activations and Flatten after pooling must give the untiled kernel.
_C = dict(filter_shape=(3, 3), w_std=1.4, b_std=0.3)
POOLED = {
    "myrtle": (ow.serial(ow.Conv(**_C), ow.Relu(), ow.Conv(**_C), ow.Relu(), ow.AvgPool((2, 2)), ow.Conv(**_C),
                         ow.Relu(), ow.AvgPool((2, 2)), ow.GlobalAvgPool(), ow.Dense(out=1)), (8, 8, 2)),
    "pixel-output": (ow.serial(ow.Conv(**_C), ow.Erf(), ow.AvgPool((2, 2)), ow.Dense(out=1)), (6, 6, 2)),
    # Tanh's quadrature on every pixel pair with its default 64 nodes per axis took 130 s unoptimised; the tiles
    # must equal the untiled kernel whatever the rule, so a coarse one
    "residual-tanh-flatten": (ow.serial(ow.Conv(**_C), ow.Residual(ow.Tanh(nodes=12), ow.Conv(**_C)), ow.Gelu(),
                                        ow.AvgPool((2, 2), strides=(1, 1), padding="SAME"), ow.Conv(**_C), ow.Relu(),
                                        ow.Flatten(), ow.Dense(out=1)), (5, 4, 3)),
    "strided-1d": (ow.serial(ow.Conv(filter_shape=(3,), strides=(2,), w_std=1.2), ow.LeakyRelu(0.2),
                             ow.AvgPool((2,)), ow.Dense(), ow.Abs(), ow.GlobalAvgPool(), ow.Dense(out=2)), (9, 2)),
}


@pytest.mark.slow  # ~10-15 s each; by default tiles are checked by test_tiled_equals_untiled[cnn-gap]
@pytest.mark.parametrize("name", sorted(POOLED))
def test_pooled_tiles_replay_variances(name):
    net, shape = POOLED[name]
    assert ow.layers._base.walk_all(net, "pixel_var")
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((7, *shape)), rng.standard_normal((5, *shape))
    x1[3] = x1[1]  # a duplicated input: its cross entries must equal its diagonal
    full, cross = ow.kernel(net, x1, batch_size=None), ow.kernel(net, x1, x2, batch_size=None)
    for b in (2, "auto"):  # 2 divides neither 7 nor 5 (each size compiles anew)
        k, k2 = ow.kernel(net, x1, batch_size=b), ow.kernel(net, x1, x2, batch_size=b)
        if k.nngp.ndim == 2:
            assert np.array_equal(k.nngp, np.asarray(k.nngp).T)
        for got, ref in [(k.nngp, full.nngp), (k.ntk, full.ntk), (k.var1, full.var1), (k2.nngp, cross.nngp),
                         (k2.ntk, cross.ntk), (k2.var1, cross.var1), (k2.var2, cross.var2)]:
            assert got.shape == ref.shape and rel(got, ref) < 1e-12
    k = ow.kernel(net, x1, batch_size=2)
    assert rel(k.nngp[1, 3], k.nngp[1, 1]) < 1e-12 and rel(k.ntk[3, 1], k.ntk[3, 3]) < 1e-12


def test_auto_tiles_and_memory_budget():
    net, shape = POOLED["myrtle"]
    x = np.random.default_rng(2).standard_normal((6, *shape))
    one_pair = 2 * (8 * 8) ** 2 * 8 * tiles.LIVE_STATES  # two inputs' worth of pair states, float64
    k = ow.kernel(net, x, batch_size="auto", memory_budget=4 * one_pair)  # tiles of 2 rows at most
    assert rel(k.ntk, ow.kernel(net, x, batch_size=None).ntk) < 1e-12
    with pytest.raises(MemoryError, match="GiB"):
        ow.kernel(net, x, memory_budget=one_pair / 4)
    with pytest.raises(MemoryError, match="batch_size=4"):
        ow.kernel(net, x, batch_size=4, memory_budget=one_pair)
    for bad in (0, -1.0, float("nan"), float("inf"), "1GB", True):
        with pytest.raises(ValueError, match="memory_budget"):
            ow.kernel(net, x, memory_budget=bad)
    with pytest.raises(ValueError, match="batch_size must be 'auto'"):
        ow.kernel(net, x, batch_size="big")


def test_choose_tile_respects_the_budget():
    for budget in (2**24, 2**28, 2**31):
        for full in (True, False):
            pair_bytes = 4 * (32 * 32) ** (2 if full else 1)
            try:
                rows = tiles.choose_tile(300, 300, pair_bytes=pair_bytes, budget=budget, devices=2, full=full)
            except MemoryError:
                assert pair_bytes * tiles.LIVE_STATES * 2 > budget
                continue
            if rows is None:  # untiled: everything fits
                assert not full and 300 * 300 * pair_bytes * tiles.LIVE_STATES <= budget
            else:
                assert 1 <= rows <= 300 and rows * rows * pair_bytes * tiles.LIVE_STATES * 2 <= budget
    # MLP states are small: auto never tiles them below the budget
    assert tiles.choose_tile(2048, 2048, pair_bytes=8, budget=2**30, devices=1, full=False) is None
