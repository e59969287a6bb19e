"""The mathematics of infinite-width kernels (NNGP and NTK), independent of the layer classes.

* :mod:`~owidth.kernels.state`: the kernel state that flows through the layer rules, and ``Kernel``.
* :mod:`~owidth.kernels.dual`: closed-form dual kernels of activations.
* :mod:`~owidth.kernels.quadrature`: dual kernels of any activation, by quadrature.
* :mod:`~owidth.kernels.spatial`: pixel-covariance maps of convolutions and pooling.
* :mod:`~owidth.kernels.tiles`: memory-bounded tiles, spread over devices.
* :mod:`~owidth.kernels.hyper`: hyperparameters as traced leaves (``jax.grad`` over ``w_std``).

The entry point ``ow.kernel`` (:mod:`owidth._kernel`) and the layers' rules (:mod:`owidth.layers`)
use them; nothing here imports a layer module.
"""

from owidth.kernels.state import Kernel

__all__ = ["Kernel"]
