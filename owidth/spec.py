"""Deprecated: the layers moved to :mod:`owidth.layers` (one module per family). Importing from here warns."""

from owidth._deprecated import moved

__getattr__ = moved("owidth.spec", "owidth.layers", ("Layer", "Dense", "Serial", "Parallel", "serial", "parallel", "Residual", "Activation", "Relu", "LeakyRelu", "Abs", "Erf", "Gelu", "Sin", "Identity",))
