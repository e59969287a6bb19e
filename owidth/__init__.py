"""owidth: infinite-width theory and finite trained networks side by side.

One width-free spec, several interpretations::

    import owidth as ow
    net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=1))
    k = ow.kernel(net, x)                 # analytic NNGP / NTK
    model = ow.finite(net, width=512)     # finite network, NTK parametrization
    theta = ow.empirical_ntk(model.apply, model.init(key, x), x)
"""

from owidth import experiments, layers, measure, predict, theory
from owidth._caches import clear_caches
from owidth._finite import FiniteModel, finite
from owidth._kernel import kernel
from owidth._protocol import FiniteNetwork, Intermediates
from owidth.empirical import empirical_nngp, empirical_ntk, empirical_ntk_vp, linearize, taylor_expand
from owidth.flax_bridge import FlaxModel, FlaxNet, from_flax
from owidth.kernels import Kernel
from owidth.layers import (
    Abs,
    Activation,
    ActivationFn,
    Attention,
    AvgPool,
    Conv,
    Cos,
    Dense,
    Elementwise,
    Embedding,
    Erf,
    Exp,
    ExpNormalized,
    Flatten,
    Gabor,
    Gaussian,
    Gelu,
    GlobalAvgPool,
    GlobalSumPool,
    Hermite,
    Identity,
    Layer,
    LayerNorm,
    LeakyRelu,
    Monomial,
    Parallel,
    Polynomial,
    Rbf,
    RectifiedMonomial,
    Relu,
    Residual,
    Serial,
    Sigmoid,
    Sign,
    Silu,
    Sin,
    Softplus,
    SumPool,
    Swish,
    TakePosition,
    Tanh,
    parallel,
    serial,
    transformer,
)
from owidth._sweep import Sweep, load_sweep, run_sweep
from owidth._train import Snapshot, train
from owidth.monte_carlo import MonteCarloKernel, monte_carlo_kernel
from owidth.meanfield import DMFTConvergenceError, DMFTResult, dmft
from owidth.measure import coord_check
from owidth.param import MF, MUP, NTP, SP, Parametrization, Regime, Role, scale_by_width

__version__ = "0.1.0"

__all__ = [
    "Abs",
    "Activation",
    "ActivationFn",
    "Attention",
    "AvgPool",
    "Conv",
    "Cos",
    "DMFTConvergenceError",
    "DMFTResult",
    "Dense",
    "Elementwise",
    "Embedding",
    "Erf",
    "Exp",
    "ExpNormalized",
    "FiniteModel",
    "FiniteNetwork",
    "Flatten",
    "FlaxModel",
    "FlaxNet",
    "Gabor",
    "Gaussian",
    "Gelu",
    "GlobalAvgPool",
    "GlobalSumPool",
    "Hermite",
    "Identity",
    "Intermediates",
    "Kernel",
    "Layer",
    "LayerNorm",
    "LeakyRelu",
    "MF",
    "MUP",
    "Monomial",
    "MonteCarloKernel",
    "NTP",
    "Parallel",
    "Parametrization",
    "Polynomial",
    "Rbf",
    "RectifiedMonomial",
    "Regime",
    "Relu",
    "Residual",
    "Role",
    "SP",
    "Serial",
    "Sigmoid",
    "Sign",
    "Silu",
    "Sin",
    "Snapshot",
    "Softplus",
    "SumPool",
    "Sweep",
    "Swish",
    "TakePosition",
    "Tanh",
    "clear_caches",
    "coord_check",
    "dmft",
    "empirical_nngp",
    "empirical_ntk",
    "empirical_ntk_vp",
    "experiments",
    "finite",
    "from_flax",
    "kernel",
    "layers",
    "linearize",
    "load_sweep",
    "measure",
    "monte_carlo_kernel",
    "parallel",
    "predict",
    "run_sweep",
    "scale_by_width",
    "serial",
    "taylor_expand",
    "theory",
    "train",
    "transformer",
]
