"""One neural-tangents 0.6.5 measurement for ``benchmarks/kernels.py``.

Runs inside the legacy venv (jax 0.4.23), never imported by owidth:

    $(bash benchmarks/peers/build_venv.sh) benchmarks/peers/nt_kernels_runner.py \\
        --x X.npy --dtype float32 --repeats 7 --save OUT.npz

Builds the same net as the owidth worker (``--net mlp``: the depth-4 ReLU
MLP; ``--net cnn``: 2 x [Conv 3x3 SAME, Relu], GlobalAvgPool, Dense;
``--net myrtle``: the Myrtle-style net of Shankar et al. 2020, 3 x [Conv 3x3
SAME, Relu] with AvgPool(2x2, stride 2, VALID) after the 2nd and 3rd,
GlobalAvgPool, Dense; all Conv w_std=sqrt 2, b_std=sqrt 0.1, the Dense
out=1, w_std=1, b_std=0; hidden width 512 is irrelevant to the
infinite-width kernel). The conv nets take (N, H, W, C) images of any size
(e.g. 8x8x3 or CIFAR's 32x32x3; Myrtle needs H, W >= 4), from the ``--x``
file. It jits ``kernel_fn`` as its users do,
and times it with :func:`kernels.measure`, the protocol the owidth worker
uses. Saves the NNGP/NTK to ``--save`` and prints one JSON line on stdout.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/

import kernels  # noqa: E402  (numpy-only at import; no owidth)


def nt_kernel_fn(kind: str = "mlp"):
    from neural_tangents import stax

    w, b = 2**0.5, 0.1**0.5
    readout = [stax.GlobalAvgPool(), stax.Dense(1, W_std=1.0, b_std=0.0)]
    if kind in ("cnn", "myrtle"):
        conv_relu = [stax.Conv(512, (3, 3), padding="SAME", W_std=w, b_std=b), stax.Relu()]
        # NT's AvgPool defaults to stride 1 (owidth's to the window), hence the explicit strides
        pool = [stax.AvgPool((2, 2), strides=(2, 2), padding="VALID")]
        body = 2 * conv_relu if kind == "cnn" else 2 * conv_relu + pool + conv_relu + pool
        _, _, kernel_fn = stax.serial(*body, *readout)
        return kernel_fn
    hidden = [l for _ in range(kernels.DEPTH) for l in (stax.Dense(512, W_std=w, b_std=b), stax.Relu())]
    _, _, kernel_fn = stax.serial(*hidden, stax.Dense(1, W_std=1.0, b_std=0.0))
    return kernel_fn


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--x", required=True, help="input .npy (float64; cast to --dtype)")
    p.add_argument("--dtype", choices=kernels.DTYPES, required=True)
    p.add_argument("--repeats", type=int, required=True)
    p.add_argument("--save", required=True, help="where to write the kernels (.npz)")
    p.add_argument("--net", choices=("mlp", "cnn", "myrtle"), default="mlp", help="the workload's architecture")
    args = p.parse_args()

    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    kernel_fn = nt_kernel_fn(args.net)
    x = kernels.load_input(args.x, args.dtype)

    def f(x):
        k = kernel_fn(x, None, kernels.GET)
        return k.nngp, k.ntk

    stats, out = kernels.measure(jax.jit(f), f, x, args.repeats)
    kernels.emit(stats, out, args.save)


if __name__ == "__main__":
    main()
