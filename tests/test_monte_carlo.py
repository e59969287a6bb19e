"""ow.monte_carlo_kernel: unbiased at one hidden layer, error ~ samples^-1/2, standard errors that mean
what they say, and the same estimate whatever the chunking."""

import jax
import numpy as np
import pytest

import owidth as ow
from helpers import sphere

NET = ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Erf(), ow.Dense(out=2, w_std=1.1, b_std=0.1))
X = sphere(6, 3, 0)


@pytest.mark.slow  # ~7 s: 12 estimates of up to 6400 networks
def test_error_falls_like_inverse_sqrt_samples():
    """One hidden layer: E[f f'] and E[Theta_emp] equal the analytic kernels at any width, so the error is
    sampling error alone: the RMS error over the 21 distinct entries of both kernels (relative to
    sqrt(K_ii K_jj)), averaged over 8 keys, falls with log-log slope in [-0.6, -0.4] from 100 to 6400 networks
    (measured for three sets of keys: -0.487, -0.512, -0.493; with 3 keys the slope scattered to -0.40)."""
    exact = ow.kernel(NET, X)
    sizes = [100, 400, 1600, 6400]
    iu = np.triu_indices(len(X))
    errs = []
    for s in sizes:
        e = []
        for seed in range(8):
            mc = ow.monte_carlo_kernel(NET, X, width=8, samples=s, key=jax.random.key(seed), batch=100,
                                       progress_bar=False)
            for what in ("nngp", "ntk"):
                ref = np.asarray(getattr(exact, what))
                scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))[iu]  # entries near 0 count as much
                e.append(np.mean(((np.asarray(getattr(mc, what))[iu] - ref[iu]) / scale) ** 2))
        errs.append(np.sqrt(np.mean(e)))
    slope = np.polyfit(np.log(sizes), np.log(errs), 1)[0]
    assert -0.6 <= slope <= -0.4, (slope, errs)


def test_standard_errors_are_calibrated_and_chunking_changes_nothing():
    """z = (estimate - exact) / stderr of one entry over 60 independent estimates (100 networks each) has
    mean square near 1 (measured 1.02-1.19 for four sets of keys: the per-network products are
    heavier-tailed than Gaussian); the estimate and its standard error do not depend on how the networks
    are chunked (Chan et al.'s merge)."""
    exact = ow.kernel(NET, X)
    z = []
    for seed in range(60):
        mc = ow.monte_carlo_kernel(NET, X, width=8, samples=100, key=jax.random.key(5000 + seed), batch=100,
                                   progress_bar=False)
        for what in ("nngp", "ntk"):
            z.append(((np.asarray(getattr(mc, what)) - getattr(exact, what)) / getattr(mc.stderr, what))[0, 1])
    assert 0.6 < np.mean(np.square(z)) < 1.6, np.mean(np.square(z))
    one = ow.monte_carlo_kernel(NET, X, width=8, samples=300, key=jax.random.key(0), batch=100, progress_bar=False)
    # 300 = 42 chunks of 7 and a last one of 6 (padded and masked)
    many = ow.monte_carlo_kernel(NET, X, width=8, samples=300, key=jax.random.key(0), batch=7, progress_bar=False)
    for what in ("nngp", "ntk", "var1"):
        np.testing.assert_allclose(getattr(many, what), getattr(one, what), rtol=1e-12)
        np.testing.assert_allclose(getattr(many.stderr, what), getattr(one.stderr, what), rtol=1e-9)
    assert one.samples == 300 and isinstance(one, ow.Kernel)
    np.testing.assert_allclose(one.var1, np.diagonal(one.nngp), rtol=1e-12)


def test_cross_kernel_and_nngp_only():
    x2 = sphere(2, 3, 5)
    mc = ow.monte_carlo_kernel(NET, X, x2, width=8, samples=50, key=jax.random.key(0), get="nngp", progress_bar=False)
    assert mc.nngp.shape == (6, 2) and mc.ntk is None and mc.stderr.ntk is None and mc.var2.shape == (2,)


def test_bad_arguments_are_refused_with_a_fix():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="at least 2 networks"):
        ow.monte_carlo_kernel(NET, X, width=8, samples=1, key=key)
    with pytest.raises(ValueError, match="get="):
        ow.monte_carlo_kernel(NET, X, width=8, samples=10, key=key, get=("nngp", "cov"))
    with pytest.raises(TypeError, match="typed PRNG key"):
        ow.monte_carlo_kernel(NET, X, width=8, samples=10, key=0)
    conv = ow.serial(ow.Conv(filter_shape=(2, 2)), ow.Relu())
    with pytest.raises(ValueError, match="end it with a readout"):
        ow.monte_carlo_kernel(conv, np.ones((2, 4, 4, 1)), width=4, samples=10, key=key)
