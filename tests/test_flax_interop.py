"""ow.empirical_ntk on a plain flax module (any pure apply function works)."""

import jax
import numpy as np
from flax import linen as nn

import owidth as ow
from helpers import sphere


class MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(1)(x)


def test_flax_module_ntk_matches_explicit_gradients():
    module = MLP(width=16)
    x1, x2 = sphere(4, 3, 0), sphere(3, 3, 1)
    params = module.init(jax.random.key(0), x1)
    k = ow.empirical_ntk(module.apply, params, x1, x2)
    k_ntvp = ow.empirical_ntk(module.apply, params, x1, x2, implementation="ntvp")

    def grad(x):
        g = jax.grad(lambda p: module.apply(p, x[None])[0, 0])(params)
        return np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)])

    ref = np.array([[grad(a) @ grad(b) for b in x2] for a in x1])
    # flax keeps float32 parameters even with x64 on: float32 accuracy
    np.testing.assert_allclose(k, ref, rtol=1e-6)
    np.testing.assert_allclose(k_ntvp, ref, rtol=1e-6)


def test_integer_inputs_reach_apply_fn_unchanged():
    """Token ids through an embedding: inputs are not cast to float."""
    emb = nn.Embed(num_embeddings=5, features=4)
    params = emb.init(jax.random.key(0), np.array([[0]]))

    def apply(p, ids):
        return emb.apply(p, ids).sum(axis=(1, 2))

    ids = np.array([[1], [3], [1]])
    k = np.asarray(ow.empirical_ntk(apply, params, ids))
    # one-hot rows: the NTK is 1 where the tokens agree (times features), 0 elsewhere
    np.testing.assert_allclose(k, 4.0 * (ids == ids.T), atol=1e-6)
