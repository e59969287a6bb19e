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


@pytest.mark.parametrize("name", sorted(NETS))
def test_tiled_equals_untiled(name):
    net, shape = NETS[name]
    rng = np.random.default_rng(0)
    n1, n2 = (23, 11) if len(shape) == 1 else (13, 7)
    x1, x2 = rng.standard_normal((n1, *shape)), rng.standard_normal((n2, *shape))
    full, cross = ow.kernel(net, x1), ow.kernel(net, x1, x2)
    for b in (5, 4):  # divides none of 23, 11, 13, 7
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
    sys.path.insert(0, {tests!r})
    from test_tiling import NETS
    rng = np.random.default_rng(1)
    out = {{"devices": len(jax.devices())}}
    for name, (net, shape) in NETS.items():
        x1, x2 = rng.standard_normal((19, *shape)), rng.standard_normal((9, *shape))
        k = ow.kernel(net, x1, batch_size=4)
        k2 = ow.kernel(net, x1, x2, batch_size=4)
        np.savez({tmp!r} + "/" + name + ".npz", x1=x1, x2=x2, nngp=k.nngp, ntk=k.ntk, nngp2=k2.nngp, ntk2=k2.ntk)
    print(json.dumps(out))
""")


def test_four_fake_cpu_devices_equal_one(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    script = SCRIPT.format(tests=str(pathlib.Path(__file__).parent), tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=pathlib.Path(__file__).parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["devices"] == 4
    for name, (net, _) in NETS.items():
        r = np.load(tmp_path / f"{name}.npz")
        k, k2 = ow.kernel(net, r["x1"]), ow.kernel(net, r["x1"], r["x2"])  # one device, untiled
        assert np.array_equal(r["nngp"], r["nngp"].T)
        for got, ref in [(r["nngp"], k.nngp), (r["ntk"], k.ntk), (r["nngp2"], k2.nngp), (r["ntk2"], k2.ntk)]:
            assert rel(got, ref) < 1e-12, name
