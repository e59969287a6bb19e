"""owidth: infinite-width theory and finite trained networks side by side.

One width-free spec, several interpretations::

    import owidth as ow
    net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=1))
    k = ow.kernel(net, x)                 # analytic NNGP / NTK
    model = ow.finite(net, width=512)     # finite network, NTK parametrization
    theta = ow.empirical_ntk(model.apply, model.init(key, x), x)
"""

from owidth import experiments, predict
from owidth.empirical import empirical_ntk, linearize
from owidth.finite import FiniteModel, finite
from owidth.kernels import Kernel, kernel
from owidth.param import NTP, Parametrization, Role
from owidth.spec import (
    Abs,
    Activation,
    Dense,
    Erf,
    Gelu,
    Identity,
    Layer,
    LeakyRelu,
    Parallel,
    Relu,
    Residual,
    Serial,
    Sin,
    parallel,
    serial,
)
from owidth.spec_quadrature import ActivationFn, Sigmoid, Silu, Softplus, Swish, Tanh
from owidth.spec_norm import LayerNorm
from owidth.spec_spatial import AvgPool, Conv, Flatten, GlobalAvgPool

__version__ = "0.1.0"

__all__ = [
    "Abs",
    "Activation",
    "ActivationFn",
    "AvgPool",
    "Conv",
    "Dense",
    "Erf",
    "FiniteModel",
    "Flatten",
    "Gelu",
    "GlobalAvgPool",
    "Identity",
    "Kernel",
    "Layer",
    "LayerNorm",
    "LeakyRelu",
    "NTP",
    "Parallel",
    "Parametrization",
    "Relu",
    "Residual",
    "Role",
    "Serial",
    "Sigmoid",
    "Silu",
    "Sin",
    "Softplus",
    "Swish",
    "Tanh",
    "empirical_ntk",
    "experiments",
    "finite",
    "kernel",
    "linearize",
    "parallel",
    "predict",
    "serial",
]
