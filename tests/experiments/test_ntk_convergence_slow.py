"""Longer physics checks (``pytest -m slow``; run by .ci/run after the default suite)."""

import jax
import numpy as np
import pytest

import owidth as ow
from owidth.experiments import ntk_convergence

pytestmark = pytest.mark.slow


@pytest.mark.compute_bound
def test_ntk_convergence_to_width_4096():
    """Relative NTK error ~ width^-1/2 over widths 64..4096 (float32, as the CLI runs it)."""
    widths = [64, 256, 1024, 4096]
    net = ntk_convergence.architecture()
    x = ntk_convergence.sphere_data(16, 8, 0)
    with jax.enable_x64(False):
        _, _, err = ntk_convergence.measure(net, x, widths, list(range(6)))
    slope = np.polyfit(np.log(widths), np.log(err.mean(1)), 1)[0]
    assert -0.65 <= slope <= -0.35, (slope, err.mean(1))


@pytest.mark.compute_bound
def test_two_hidden_layer_ntk_monte_carlo_at_width_1024():
    """E[Theta_emp] -> Theta with an O(1/width) bias: 2000 nets at width 1024 agree within 4 SE."""
    net = ow.serial(ow.Dense(w_std=2**0.5, b_std=0.3), ow.Relu(), ow.Dense(w_std=2**0.5, b_std=0.3), ow.Gelu(),
                    ow.Dense(out=1))
    x = ntk_convergence.sphere_data(3, 4, 1)
    model = ow.finite(net, width=1024)
    theta = np.asarray(ow.kernel(net, x, get="ntk").ntk)

    # the structured empirical NTK (per-layer Gram products, equal to the Jacobian's to 1e-10 in
    # tests/layers/test_mlp_monte_carlo.py) is ~10x cheaper than forming 1M-parameter Jacobians
    def one(key):
        return ow.empirical_ntk(model.apply, model.init(key, x), x, implementation="structured")

    batch = jax.jit(lambda keys: jax.lax.map(one, keys, batch_size=20))

    keys = jax.random.split(jax.random.key(7), 2000)
    samples = np.concatenate([np.asarray(batch(keys[i:i + 200])) for i in range(0, 2000, 200)])
    mean, se = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(len(samples))
    assert np.all(np.abs(mean - theta) < 4 * se), np.abs(mean - theta) / se
