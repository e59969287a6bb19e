"""One neural-tangents 0.6.5 empirical-NTK measurement for ``benchmarks/empirical_ntk.py``.

Runs inside the legacy venv (jax 0.4.23), never imported by owidth:

    $(bash benchmarks/peers/build_venv.sh) benchmarks/peers/nt_empirical_runner.py \\
        --arch mlp --width 512 --x X.npy --params P.npz --impl JACOBIAN_CONTRACTION --repeats 5 --save OUT.npz

Builds the network of :data:`empirical_ntk.ARCHS` from ``stax`` layers
(NTK parametrisation, ``b_std=None`` where owidth has no bias), takes the
parameter structure from its ``init_fn`` and fills it with owidth's weights
from ``--params`` (same shapes; NT's biases are broadcastable, e.g. (1, out)
or (1, 1, 1, out), owidth's are (out,)). Times
``jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
implementation=X))`` with :func:`kernels.measure`, the protocol the owidth
worker uses, saves the kernel to ``--save`` and prints one JSON line.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/

import empirical_ntk  # noqa: E402  (numpy-only at import; no owidth)
import kernels  # noqa: E402


def nt_layer(name: str, kw: dict, width: int):
    from neural_tangents import stax

    b_std = kw.get("b_std") or None  # owidth's b_std=0 means no bias parameter
    if name == "Dense":
        return stax.Dense(kw.get("out", width), W_std=kw["w_std"], b_std=b_std)
    if name == "Conv":
        return stax.Conv(kw.get("out", width), tuple(kw["filter_shape"]), padding=kw["padding"], W_std=kw["w_std"],
                         b_std=b_std)
    if name == "Relu":
        return stax.Relu()
    if name == "GlobalAvgPool":
        return stax.GlobalAvgPool()
    raise ValueError(name)


def nt_params(nt_init, layers: list[dict], x_shape):
    """NT's params for ``x_shape``, every array replaced by owidth's (``layers`` from ``--params``)."""
    import jax
    import jax.numpy as jnp

    _, template = nt_init(jax.random.PRNGKey(0), x_shape)
    params = []
    for i, (tmpl, ours) in enumerate(zip(template, layers)):
        if not ours:
            if jax.tree_util.tree_leaves(tmpl):
                raise ValueError(f"layer {i}: NT has params {jax.tree_util.tree_map(jnp.shape, tmpl)}, owidth none")
            params.append(tmpl)
            continue
        w_t, b_t = tmpl
        if w_t.shape != ours["w"].shape:
            raise ValueError(f"layer {i}: NT W {w_t.shape} vs owidth w {ours['w'].shape}")
        if (b_t is None) != ("b" not in ours) or (b_t is not None and b_t.size != ours["b"].size):
            raise ValueError(f"layer {i}: NT b {None if b_t is None else b_t.shape} vs owidth {ours.get('b')}")
        b = None if b_t is None else jnp.asarray(ours["b"].reshape(b_t.shape))
        params.append((jnp.asarray(ours["w"]), b))
    if len(params) != len(template):
        raise ValueError(f"{len(template)} NT layers vs {len(layers)} owidth layers")
    return type(template)(params) if isinstance(template, (list, tuple)) else params


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    empirical_ntk.worker_args(p)
    p.add_argument("--repeats", type=int, required=True)
    args = p.parse_args()

    import jax
    import neural_tangents as nt
    from neural_tangents import stax

    init_fn, apply_fn, _ = stax.serial(*[nt_layer(n, kw, args.width) for n, kw in empirical_ntk.ARCHS[args.arch]])
    x = kernels.load_input(args.x, empirical_ntk.DTYPE)
    params = nt_params(init_fn, empirical_ntk.load_params(args.params), x.shape)
    ntk_fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                 implementation=getattr(nt.NtkImplementation, args.impl))

    def f(px):
        return (ntk_fn(px[1], None, px[0]),)

    empirical_ntk.measure_and_emit(jax.jit(f), f, params, x, args)


if __name__ == "__main__":
    main()
