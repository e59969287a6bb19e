"""Checks that need a GPU: owidth's float32 results on the accelerator against float64 on the CPU.

Skipped without a GPU (CI has none). Run on a GPU machine with ``bash benchmarks/gpu_check.sh``, which
also runs the benchmarks there; the results it recorded are in ``benchmarks/results/*_gpu.*``.

What is checked: JAX computes float32 matrix products and convolutions in TensorFloat-32 by default on
NVIDIA GPUs since Ampere (10 mantissa bits). owidth's exact quantities (``ow.kernel``, the empirical
NTK, ``ow.predict``) trace theirs at full float32 precision (``owidth/_precision.py``), so on the GPU
they must agree with float64 to float32 accuracy, which a TF32 product (relative error ~1e-3) would
not. The last test shows that the default-precision product on the same inputs is indeed that far off
on this GPU (so the first ones can fail), and finite-network training runs on the GPU and agrees with
the CPU when its products are asked for at full precision.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (jax.default_backend() == 'gpu')")]

# float32 rounding (eps 1.2e-7) amplified by a few layers and the sums over d = 512 features;
# TF32 products are ~1e-3 off
F32_RTOL = 2e-5


def _on_cpu(fn, *args):
    """``fn(*args)`` computed on the CPU (float64 when the inputs are)."""
    with jax.default_device(jax.devices("cpu")[0]):
        return jax.tree.map(np.asarray, fn(*args))


@contextlib.contextmanager
def _float32():
    """float32 as the default dtype (what a GPU user runs): the tests' conftest turns x64 on."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _inputs(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


MLP = ow.serial(ow.Dense(w_std=2**0.5, b_std=0.1), ow.Relu(), ow.Dense(w_std=2**0.5, b_std=0.1), ow.Relu(),
                ow.Dense(w_std=2**0.5, b_std=0.1), ow.Erf(), ow.Dense(out=1))
CNN = ow.serial(ow.Conv(filter_shape=(3, 3), padding="SAME", w_std=2**0.5), ow.Relu(),
                ow.Conv(filter_shape=(3, 3), padding="SAME", w_std=2**0.5), ow.Gelu(),
                ow.GlobalAvgPool(), ow.Dense(out=1))


@pytest.mark.parametrize("name,net,shape", [("mlp", MLP, (96, 512)), ("cnn", CNN, (12, 8, 8, 16))])
def test_kernel_float32_on_gpu_matches_float64(name, net, shape):
    x = _inputs(shape)
    ref = _on_cpu(lambda u: ow.kernel(net, u), x)
    with _float32():
        got = ow.kernel(net, x)
    assert got.ntk.dtype == jnp.float32 and list(got.ntk.devices())[0].platform == "gpu"
    for f in ("nngp", "ntk"):
        err = _rel(getattr(got, f), getattr(ref, f))
        print(f"{name} {f}: float32 on GPU vs float64 on CPU, max rel {err:.2e}")
        assert err < F32_RTOL, (f, err)


def test_tiled_kernel_on_gpu_matches_float64():
    x = _inputs((200, 64), seed=1)
    ref = _on_cpu(lambda u: ow.kernel(MLP, u), x)
    with _float32():
        got = ow.kernel(MLP, x, batch_size=64, progress_bar=False)
    assert got.ntk.dtype == jnp.float32
    assert _rel(got.ntk, ref.ntk) < F32_RTOL and _rel(got.nngp, ref.nngp) < F32_RTOL


def test_empirical_ntk_and_prediction_on_gpu_match_float64():
    x, y = _inputs((64, 256), seed=2), _inputs((64,), seed=3)
    model = ow.finite(MLP, width=512)
    params = model.init(jax.random.key(0), x[:2])
    ref = _on_cpu(lambda p, u: ow.empirical_ntk(model.apply, p, u), params, x)
    with _float32():
        params32 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
        got = ow.empirical_ntk(model.apply, params32, jnp.asarray(x, jnp.float32))
    assert got.dtype == jnp.float32
    err = _rel(got, ref)
    print(f"empirical NTK width 512: float32 on GPU vs float64 on CPU, max rel {err:.2e}")
    assert err < F32_RTOL

    k = ow.kernel(MLP, x)
    kw = jax.tree.map(lambda a: None if a is None else np.asarray(a), k)
    pred_ref = _on_cpu(lambda: ow.predict.gradient_flow(kw.ntk, None, y, times=[1.0, 10.0]).mean_train)
    with _float32():
        pred = ow.predict.gradient_flow(jnp.asarray(kw.ntk, jnp.float32), None, jnp.asarray(y, jnp.float32),
                                        times=[1.0, 10.0]).mean_train
    assert pred.dtype == jnp.float32
    assert _rel(pred, pred_ref) < 1e-4, _rel(pred, pred_ref)


def test_default_precision_is_reduced_here_and_training_runs():
    """On this GPU a float32 product under JAX's default precision is TF32-accurate (the reason for
    owidth/_precision.py); ``ow.train`` runs on it and, at full precision, follows the CPU's float32 run."""
    a = jnp.asarray(_inputs((256, 512)), jnp.float32)
    exact = np.asarray(a, np.float64) @ np.asarray(a, np.float64).T
    default_err = _rel(jax.jit(lambda u: u @ u.T)(a), exact)
    with jax.default_matmul_precision("highest"):
        highest_err = _rel(jax.jit(lambda u: u @ u.T)(a), exact)
    print(f"x x^T, d=512: default precision max rel {default_err:.2e}, 'highest' {highest_err:.2e}")
    assert highest_err < 1e-5
    if default_err < 1e-5:
        pytest.skip("this GPU computes float32 products at full precision by default; nothing more to show")

    x, y = _inputs((128, 32), seed=4), np.tanh(_inputs((128,), seed=5))
    kw = dict(widths=[256], lr=[0.5, 1.0], steps=50, seeds=2, param=ow.MUP, progress_bar=False)
    with _float32():  # float32 on both (the initial weights are drawn per dtype)
        ref = _on_cpu(lambda: ow.train(MLP, (x, y), **kw)["train_loss"].values)
        with jax.default_matmul_precision("highest"):
            ds = ow.train(MLP, (x, y), **kw)
    loss = ds["train_loss"].values
    assert np.all(np.isfinite(loss)) and np.all(loss[..., -1] < 0.5 * loss[..., 0])
    assert _rel(loss, ref) < 1e-3, _rel(loss, ref)
