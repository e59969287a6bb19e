"""ow.predict against neural-tangents 0.6.5's predict module (tests/reference/nt_predict.npz, written by
benchmarks/peers/nt_predict_reference.py in the legacy venv; see its docstring for what each entry is).

Agreement is to 1e-8 relative to each array's largest entry (entries that vanish, e.g. the training-set
covariance at t = inf, are compared on that scale). Times: NT's step t at learning rate lr is owidth's
time ``lr t`` (one output, so both normalise the MSE by 1/(2n))."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow

REF = np.load(pathlib.Path(__file__).parent / "reference" / "nt_predict.npz")
RTOL = 1e-8


def close(ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=RTOL * np.abs(ref).max())


def kernel(block, ntk_as="ntk"):
    k = ow.Kernel(nngp=REF[f"k_{block}/nngp"], ntk=REF[f"k_{block}/{ntk_as}"], var1=None, var2=None)
    return k


def test_gp_inference_nngp_and_ntk():
    y = REF["y"]
    nngp = ow.predict.nngp_posterior(REF["k_train/nngp"], REF["k_test_train/nngp"], y,
                                     k_test_test=REF["k_test_test/nngp"])
    close(nngp.mean_test[0], REF["gp/nngp/mean"])
    close(nngp.cov_test[0], REF["gp/nngp/cov"])
    ntk = ow.predict.ntk_posterior(kernel("train"), kernel("test_train"), y, k_test_test=REF["k_test_test/nngp"])
    close(ntk.mean_test[0], REF["gp/ntk/mean"])
    close(ntk.cov_test[0], REF["gp/ntk/cov"])


@pytest.mark.parametrize("g", [pytest.param("ntk", marks=pytest.mark.slow), "nngp"])
def test_gradient_descent_mse_ensemble(g):
    """NT's get='nngp' trains with the NNGP as the tangent kernel (only the readout trained)."""
    times = float(REF["lr"]) * REF["ens_t"]
    p = ow.predict.ntk_posterior(kernel("train", ntk_as=g), kernel("test_train", ntk_as=g), REF["y"], times=times,
                                 k_test_test=REF["k_test_test/nngp"])
    for i in range(times.size):
        close(p.mean_test[i], REF[f"ens/{g}/mean"][i])
        close(p.cov_test[i], REF[f"ens/{g}/cov"][i])
        close(p.mean_train[i], REF[f"ens_train/{g}/mean"][i])
        # a vanishing covariance (t = inf) is compared on the prior's scale
        np.testing.assert_allclose(p.cov_train[i], REF[f"ens_train/{g}/cov"][i], rtol=0,
                                   atol=RTOL * np.abs(REF["k_train/nngp"]).max())


@pytest.mark.slow  # ~1 s; the closed form is checked against optax loops by default
def test_gradient_descent_mse_from_one_network():
    times = float(REF["lr"]) * REF["flow_t"]
    p = ow.predict.gradient_flow(REF["k_train/ntk"], REF["k_test_train/ntk"], REF["y"], times=times,
                                 f0_train=REF["f0_train"][:, :1], f0_test=REF["f0_test"][:, :1])
    close(p.mean_train, REF["mse/train"])
    close(p.mean_test, REF["mse/test"])


def test_gradient_descent_cross_entropy_ode():
    def cross_entropy(f, y):
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(f, axis=-1), axis=-1))

    times = float(REF["lr"]) * REF["flow_t"]
    p = ow.predict.gradient_flow(REF["k_train/ntk"], REF["k_test_train/ntk"], REF["y_onehot"], times=times,
                                 loss=cross_entropy, f0_train=REF["f0_train"], f0_test=REF["f0_test"])
    close(p.mean_train, REF["xent/train"])
    close(p.mean_test, REF["xent/test"])
