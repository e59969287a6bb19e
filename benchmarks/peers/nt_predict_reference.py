"""Dump neural-tangents 0.6.5 ``predict`` references for owidth's tests (tests/test_reference_nt_predict.py).

Run inside the legacy venv (never imported by owidth or its tests):

    $(bash benchmarks/peers/build_venv.sh) benchmarks/peers/nt_predict_reference.py

writes tests/reference/nt_predict.npz, all float64, from tiny kernels of fixed random data (an
infinitely wide Dense-Relu-Dense net from NT's own ``kernel_fn``; the kernels are saved and the test
passes them to owidth as arrays):

* ``k_*``: NNGP and NTK blocks train-train (6 x 6), test-train (4 x 6), test-test (4 x 4);
  ``y`` (6, 1) regression targets, ``y_onehot`` (6, 3) class labels, ``f0_*`` one network's outputs.
* ``gp/{nngp,ntk}/{mean,cov}``: ``gp_inference(k_train, y)(get, k_test_train, k_test_test)``
  (the t = inf NNGP posterior and NTK-GP, no regulariser).
* ``ens/{nngp,ntk}/{mean,cov}`` and ``ens_train/...``: ``gradient_descent_mse_ensemble(kernel_fn,
  x_train, y, learning_rate=LR)(t, x_test or None, get, compute_cov=True)`` at steps ``ens_t``
  (``ens_t`` = inf is NT's ``t=None``).
* ``mse/{train,test}``: ``gradient_descent_mse(ntk, y, LR)(t, f0_train, f0_test, k_test_train)``.
* ``xent/{train,test}``: ``gradient_descent(cross_entropy, ntk, y_onehot, LR)(t, f0_train, f0_test,
  k_test_train)``, NT's gradient flow for a general loss by ``jax.experimental.ode.odeint``. NT calls
  odeint with its default tolerances (rtol = atol = 1.4e-8), whose error would dominate a 1e-8
  comparison; here its ``ode.odeint`` is swapped for the same solver with rtol = atol = 1e-13 (the
  ODE NT solves is unchanged).

NT's time unit is ``learning_rate * t`` with the loss ``1/(2 n k) sum ||f - y||^2`` (its expm1 is
normalised by ``y.size``), owidth's is ``1/(2n)``: with one output (k = 1) they agree; the cross-entropy
is a user loss, the same callable in both.

Not recorded: NT's ``gradient_descent(..., momentum=)``. It integrates a continuous-time ODE
(``f'' = (beta - 1)/sqrt(lr) f' - Theta grad L`` in units ``sqrt(lr) t``), not the discrete heavy-ball
recursion of ``optax.sgd(lr, momentum=beta)`` that ``ow.predict.gradient_descent(..., momentum=)``
solves exactly; the two differ at O(1) in general, so there is nothing to agree to 1e-8 with.
"""

import functools
import pathlib
import types

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import ode  # noqa: E402
from neural_tangents import predict, stax  # noqa: E402
from neural_tangents._src import predict as nt_predict_src  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "reference" / "nt_predict.npz"
LR = 0.7
ENS_T = np.array([0.0, 0.3, 2.0, 25.0, np.inf])
FLOW_T = np.array([0.0, 0.5, 3.0, 20.0])


def cross_entropy(f, y):
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(f, axis=-1), axis=-1))


def main():
    rng = np.random.RandomState(2024)
    x_train, x_test = rng.randn(6, 3), rng.randn(4, 3)
    y = rng.randn(6, 1)
    y_onehot = np.eye(3)[rng.randint(0, 3, size=6)]
    _, _, kernel_fn = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.2), stax.Relu(),
                                  stax.Dense(1, W_std=1.0, b_std=0.1))
    k_dd = kernel_fn(x_train, None, ("nngp", "ntk"))
    k_td = kernel_fn(x_test, x_train, ("nngp", "ntk"))
    k_tt = kernel_fn(x_test, None, ("nngp", "ntk"))
    out = {"x_train": x_train, "x_test": x_test, "y": y, "y_onehot": y_onehot, "lr": np.array(LR),
           "ens_t": ENS_T, "flow_t": FLOW_T}
    for name, k in (("train", k_dd), ("test_train", k_td), ("test_test", k_tt)):
        out[f"k_{name}/nngp"], out[f"k_{name}/ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)

    gp = predict.gp_inference(k_dd, y)(get=("nngp", "ntk"), k_test_train=k_td, k_test_test=k_tt)
    for g in ("nngp", "ntk"):
        out[f"gp/{g}/mean"], out[f"gp/{g}/cov"] = np.asarray(getattr(gp, g).mean), np.asarray(getattr(gp, g).covariance)

    ens = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y, learning_rate=LR)
    for prefix, xt in (("ens", x_test), ("ens_train", None)):
        finite = ens(ENS_T[:-1], xt, ("nngp", "ntk"), compute_cov=True)
        inf = ens(None, xt, ("nngp", "ntk"), compute_cov=True)
        for g in ("nngp", "ntk"):
            fin, last = getattr(finite, g), getattr(inf, g)
            out[f"{prefix}/{g}/mean"] = np.concatenate([np.asarray(fin.mean), np.asarray(last.mean)[None]])
            out[f"{prefix}/{g}/cov"] = np.concatenate([np.asarray(fin.covariance), np.asarray(last.covariance)[None]])

    f0_train, f0_test = 0.3 * rng.randn(6, 3), 0.3 * rng.randn(4, 3)
    out["f0_train"], out["f0_test"] = f0_train, f0_test
    mse = predict.gradient_descent_mse(k_dd.ntk, y, learning_rate=LR)
    out["mse/train"], out["mse/test"] = (np.asarray(a) for a in mse(FLOW_T, f0_train[:, :1], f0_test[:, :1], k_td.ntk))

    nt_predict_src.ode = types.SimpleNamespace(odeint=functools.partial(ode.odeint, rtol=1e-13, atol=1e-13))
    flow = predict.gradient_descent(cross_entropy, k_dd.ntk, y_onehot, learning_rate=LR)
    out["xent/train"], out["xent/test"] = (np.asarray(a) for a in flow(FLOW_T, f0_train, f0_test, k_td.ntk))

    out["versions"] = np.array(f'{{"jax": "{jax.__version__}", "neural_tangents": "0.6.5"}}')
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
