"""ow.predict.kernel_regression: conjugate gradients with a randomised Nystroem preconditioner equal the direct
solve (issue 21); matrix-free kernels; errors that say how to converge."""

import numpy as np
import pytest

import owidth as ow

NET = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(), ow.Relu(), ow.Dense(out=1))


def _problem(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + 7, 10))
    k = np.asarray(ow.kernel(NET, x, get="ntk").ntk)
    y = np.stack([np.sin(x[:n, 0]), np.cos(x[:n, 1])], 1) + 0.1 * rng.standard_normal((n, 2))
    return k[:n, :n], k[n:, :n], y


def test_cg_equals_the_direct_solve():
    k, kxt, y = _problem(400)
    ridge = 1e-4 * np.trace(k) / len(k)
    want = np.linalg.solve(k + ridge * np.eye(len(k)), y)
    for rank in (0, 32, 256):
        p = ow.predict.kernel_regression(k, y, kxt, ridge=ridge, solver="cg", rank=rank)
        np.testing.assert_allclose(p.mean_train[0], k @ want, rtol=0, atol=1e-7 * np.abs(k @ want).max())
        np.testing.assert_allclose(p.mean_test[0], kxt @ want, rtol=0, atol=1e-7 * np.abs(kxt @ want).max())
    d = ow.predict.kernel_regression(k, y[:, 0], kxt, ridge=ridge)
    np.testing.assert_allclose(d.mean_test[0], kxt @ want[:, 0], rtol=1e-9)
    # matrix-free: the kernel as v -> K v
    mf = ow.predict.kernel_regression(lambda v: k @ v, y, kxt, ridge=ridge, solver="cg", rank=32)
    np.testing.assert_allclose(mf.mean_test[0], kxt @ want, rtol=0, atol=1e-7 * np.abs(kxt @ want).max())


def test_nystroem_preconditioner_helps_an_ill_conditioned_kernel():
    """ridge 1e-8 of the mean diagonal: 40 plain CG iterations do not converge, 40 preconditioned ones
    (rank 256) do."""
    k, _, y = _problem(300)
    ridge = 1e-8 * np.trace(k) / len(k)
    with pytest.raises(RuntimeError, match="raise maxiter"):
        ow.predict.kernel_regression(k, y, ridge=ridge, solver="cg", rank=0, maxiter=40, tol=1e-8)
    p = ow.predict.kernel_regression(k, y, ridge=ridge, solver="cg", rank=256, maxiter=40, tol=1e-8)
    want = np.linalg.solve(k + ridge * np.eye(len(k)), y)
    np.testing.assert_allclose(p.mean_train[0], k @ want, rtol=0, atol=1e-5 * np.abs(k @ want).max())


def test_bad_input():
    k, kxt, y = _problem(20)
    with pytest.raises(ValueError, match="solver must be"):
        ow.predict.kernel_regression(k, y, solver="lu")
    with pytest.raises(ValueError, match="needs solver='cg'"):
        ow.predict.kernel_regression(lambda v: k @ v, y)
    with pytest.raises(ValueError, match="rows"):
        ow.predict.kernel_regression(k, y[:5])
    with pytest.raises(ValueError, match=r"\(m, 20\)"):
        ow.predict.kernel_regression(k, y, kxt[:, :5])
    with pytest.raises(ValueError, match="ridge"):
        ow.predict.kernel_regression(k, y, ridge=-1.0)


@pytest.mark.slow  # ~15 s
def test_cg_at_n_4000():
    """N = 4000 (NTK of a 2-hidden-layer ReLU MLP, ridge 1e-4 of the mean diagonal): CG with the default
    preconditioner equals the direct solve to 1e-6."""
    k, kxt, y = _problem(4000)
    ridge = 1e-4 * np.trace(k) / len(k)
    want = np.linalg.solve(k + ridge * np.eye(len(k)), y)
    p = ow.predict.kernel_regression(k, y, kxt, ridge=ridge, solver="cg")
    np.testing.assert_allclose(p.mean_train[0], k @ want, rtol=0, atol=1e-6 * np.abs(k @ want).max())
    np.testing.assert_allclose(p.mean_test[0], kxt @ want, rtol=0, atol=1e-6 * np.abs(kxt @ want).max())
