"""Width-free architecture description: layers and combinators, one module per family.

* :mod:`owidth.layers.dense`: ``Dense``.
* :mod:`owidth.layers.activations`: closed-form activations (relu family, ``Erf``, ``Gelu``, ``Sin``,
  ``Cos``, ``Rbf``, ``Exp``, ``Gaussian``, ``Gabor``, ``Sign``, polynomials, rectified monomials,
  ``Identity``, the kernel-only ``ExpNormalized``, user-supplied duals in ``Elementwise``), quadrature
  (``Tanh``, ``Sigmoid``, ``Silu``, ``Softplus``, ``ActivationFn``) and compositions.
* :mod:`owidth.layers.combinators`: ``serial``, ``parallel``, ``Residual``, ``concat``,
  ``product``, ``repeat``.
* :mod:`owidth.layers.conv`: ``Conv``, ``AvgPool``, ``SumPool``, ``GlobalAvgPool``, ``GlobalSumPool``, ``Flatten``.
* :mod:`owidth.layers.conv_more`: ``ConvTranspose``, ``ConvLocal``, ``ImageResize``.
* :mod:`owidth.layers.graph`: ``Aggregate`` (graph neural networks, adjacency side input).
* :mod:`owidth.layers.norm`: ``LayerNorm``.
* :mod:`owidth.layers.dropout`: ``Dropout``.
* :mod:`owidth.layers.shape`: ``Index`` (with ``Slice``).
* :mod:`owidth.layers.sequence`: ``Embedding``, ``Attention``, ``TakePosition``, ``transformer``.

Every layer is a frozen dataclass carrying its infinite-width kernel rule and its finite-network
rule (:mod:`owidth.layers._base`); all of them are also exported as ``ow.<Name>``.
"""

from owidth.layers._base import Caps, Layer, WeightLayer
from owidth.layers.activations import (
    Abs,
    Activation,
    ActivationFn,
    Composed,
    Cos,
    Elementwise,
    Erf,
    Exp,
    ExpNormalized,
    Gabor,
    Gaussian,
    Gelu,
    Hermite,
    Identity,
    LeakyRelu,
    Monomial,
    Polynomial,
    Quadrature,
    Rbf,
    RectifiedMonomial,
    Relu,
    Sigmoid,
    Sign,
    Silu,
    Sin,
    Softplus,
    Swish,
    Tanh,
)
from owidth.layers.combinators import (
    Concat,
    Parallel,
    Product,
    Repeat,
    Residual,
    Serial,
    concat,
    parallel,
    product,
    repeat,
    serial,
)
from owidth.layers.conv import AvgPool, Conv, Flatten, GlobalAvgPool, GlobalSumPool, SumPool
from owidth.layers.conv_more import ConvLocal, ConvTranspose, ImageResize
from owidth.layers.dense import Dense
from owidth.layers.dropout import Dropout
from owidth.layers.graph import Aggregate
from owidth.layers.norm import LayerNorm
from owidth.layers.shape import Index, Slice
from owidth.layers.sequence import Attention, Embedding, TakePosition, transformer

__all__ = [
    "Caps", "Layer", "WeightLayer",
    "Dense",
    "Activation", "Relu", "LeakyRelu", "Abs", "Erf", "Gelu", "Sin", "Identity",
    "Quadrature", "ActivationFn", "Composed", "Tanh", "Sigmoid", "Silu", "Swish", "Softplus",
    "Cos", "Rbf", "Exp", "Gaussian", "Gabor", "Sign", "ExpNormalized", "Polynomial", "Monomial", "Hermite",
    "RectifiedMonomial", "Elementwise",
    "Serial", "Parallel", "Concat", "Product", "Repeat", "serial", "parallel", "concat", "product", "Residual",
    "repeat",
    "Conv", "AvgPool", "SumPool", "Flatten", "GlobalAvgPool", "GlobalSumPool",
    "ConvTranspose", "ConvLocal", "ImageResize",
    "Aggregate",
    "LayerNorm",
    "Dropout", "Index", "Slice",
    "Embedding", "Attention", "TakePosition", "transformer",
]
