"""Deprecated: the layers moved to :mod:`owidth.layers` (one module per family). Importing from here warns."""

from owidth._deprecated import moved

__getattr__ = moved("owidth.spec_norm", "owidth.layers", ("LayerNorm",))
