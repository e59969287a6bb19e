"""ow.finite_width (issue 20, first part): the 1/n four-point vertex V and NNGP correction K1 of MLPs, against
deep-linear closed forms (exact) and Monte Carlo over finite networks."""

import numpy as np
import pytest

import owidth as ow

X = np.random.default_rng(0).standard_normal((3, 4))


def mlp(act, hidden: int, *, w=1.3, b=0.3, out=1):
    layers = [ow.Dense(w_std=w, b_std=b)]
    for i in range(hidden):
        layers += [act, ow.Dense(w_std=w, b_std=b, out=out if i == hidden - 1 else None)]
    return ow.serial(*layers)


def test_deep_linear_vertex_is_the_closed_form():
    """Linear nets with biases: F(G) = G, J = I, Isserlis' cumulant, so V^(l+1) = w^4 (K_ac K_bd + K_ad K_bc)^(l)
    + w^4 V^(l) (written out here independently of the module) to 1e-12; K1 = 0 (the covariance is exact)."""
    w, b = 1.3, 0.3
    for hidden in (1, 2, 5):
        net = mlp(ow.Identity(), hidden, w=w, b=b)
        e = ow.finite_width.expansion(net, X)
        k = b ** 2 + w ** 2 * X @ X.T / X.shape[1]
        v = np.zeros((3, 3, 3, 3))
        for _ in range(hidden):
            v = w ** 4 * (np.einsum("ac,bd->abcd", k, k) + np.einsum("ad,bc->abcd", k, k)) + w ** 4 * v
            k = b ** 2 + w ** 2 * k
        np.testing.assert_allclose(e.nngp, k, rtol=1e-12)
        np.testing.assert_allclose(e.vertex, v, rtol=1e-12)
        np.testing.assert_array_equal(e.nngp_correction, 0.0)


def test_deep_linear_kurtosis_to_all_orders():
    """One input, no biases: E f^4 = 3 K^2 prod_l (1 + 2/n) exactly (L - 1 hidden layers of width n), so
    V = 2 (L - 1) K^2 to 1e-12, and the residual of the connected 4-point function after V/n falls like n^-2
    (log-log slope <= -1.5 over widths 32..512; here -2 to 2e-2; with one hidden layer it vanishes)."""
    x = np.array([[0.7, -1.1, 0.4]])
    for depth in (2, 3, 5):
        net = ow.serial(*[ow.Dense(w_std=1.1) for _ in range(depth - 1)], ow.Dense(out=1, w_std=1.1))
        e = ow.finite_width.expansion(net, x)
        kk = float(e.nngp[0, 0])
        np.testing.assert_allclose(float(e.vertex[0, 0, 0, 0]), 2 * (depth - 1) * kk ** 2, rtol=1e-12)
        widths = np.array([32, 64, 128, 256, 512])
        exact = 3 * kk ** 2 * ((1 + 2 / widths) ** (depth - 1) - 1)  # E f^4 - 3 (E f^2)^2, E f^2 = K exactly
        predicted = np.array([float(e.connected(int(n))[0, 0, 0, 0]) for n in widths])
        np.testing.assert_allclose(np.asarray(e.kurtosis(512))[0], predicted[-1] / kk ** 2, rtol=1e-12)
        if depth == 2:  # one hidden layer: E f^4 - 3 K^2 = 6 K^2 / n is exactly first order
            np.testing.assert_allclose(predicted, exact, rtol=1e-12)
            continue
        slope = np.polyfit(np.log(widths), np.log(np.abs(exact - predicted)), 1)[0]
        assert slope <= -1.5 and abs(slope + 2) < 2e-2, slope


def test_one_hidden_relu_vertex_is_the_arc_cosine_closed_form():
    """One hidden ReLU layer, no biases: V_(ab)(cd) = w^4 (E[phi_a phi_b phi_c phi_d] - E[phi_a phi_b] E[phi_c phi_d])
    exactly, and the fourth moments of two inputs are Cho & Saul's degree-2 arc-cosine kernel
    E relu(z_a)^2 relu(z_b)^2 = |x_a|^2 |x_b|^2 J_2(theta) / (2 pi) (and 3 q^2 / 2 at one input): to 1e-5."""
    x = np.array([[1.0, 0.3, -0.5], [0.2, -0.9, 0.4]])
    w = 1.4
    e = ow.finite_width.expansion(ow.serial(ow.Dense(w_std=w), ow.Relu(), ow.Dense(out=1, w_std=w)), x)
    k = w ** 2 * x @ x.T / 3
    q0, q1 = k[0, 0], k[1, 1]
    theta = np.arccos(k[0, 1] / np.sqrt(q0 * q1))
    j2 = 3 * np.sin(theta) * np.cos(theta) + (np.pi - theta) * (1 + 2 * np.cos(theta) ** 2)
    m22 = q0 * q1 * j2 / (2 * np.pi)
    j1 = np.sin(theta) + (np.pi - theta) * np.cos(theta)
    f01 = np.sqrt(q0 * q1) * j1 / (2 * np.pi)
    np.testing.assert_allclose(e.vertex[0, 0, 0, 0], w ** 4 * (1.5 * q0 ** 2 - (q0 / 2) ** 2), rtol=1e-12)
    np.testing.assert_allclose(e.vertex[0, 0, 1, 1], w ** 4 * (m22 - q0 * q1 / 4), rtol=1e-5)
    np.testing.assert_allclose(e.vertex[0, 1, 0, 1], w ** 4 * (m22 - f01 ** 2), rtol=1e-5)


PAIRS = [(0, 0), (0, 1), (1, 2), (2, 2), (0, 2)]


def _moments(g, width):
    """n Cov(G_p, G_q) and n (E G_p - ...) over PAIRS with their standard errors (20 batches)."""
    p = np.stack([g[:, a, b] for a, b in PAIRS], 1)
    covs = np.stack([np.cov(part.T) * width for part in np.split(p, 20)])
    means = np.stack([part.mean(0) for part in np.split(p, 20)])
    return (np.cov(p.T) * width, covs.std(0, ddof=1) / np.sqrt(20), p.mean(0), means.std(0, ddof=1) / np.sqrt(20))


@pytest.mark.slow  # ~20 s per case: 40000 networks at widths 32 and 128
@pytest.mark.compute_bound
@pytest.mark.parametrize("act, hidden", [(ow.Relu(), 1), (ow.Relu(), 3), (ow.Tanh(), 2), (ow.Identity(), 2)],
                         ids=["relu-1", "relu-3", "tanh-2", "linear-2"])
def test_vertex_and_nngp_correction_match_monte_carlo(act, hidden):
    """40000 networks at widths 32 and 128 (2..4 Dense layers): n Cov(G) = V + A/n and n (E G - K) = K1 + B/n
    (the O(1/n^2) terms); the values extrapolated from the two widths agree with V and K1 within 3.5 standard
    errors, the test has the power to see V (|V| > 10 SE) and, for the deep ReLU net, K1; the 4-point residual
    after V/n falls faster than 1/n (deep ReLU: from width 32 to 128 by more than 2.5x, slope <= -1.66)."""
    net = mlp(act, hidden)
    e = ow.finite_width.expansion(net, X)
    v = np.array([[float(e.vertex[a, b, c, d]) for c, d in PAIRS] for a, b in PAIRS])
    k = np.array([float(e.nngp[a, b]) for a, b in PAIRS])
    k1 = np.array([float(e.nngp_correction[a, b]) for a, b in PAIRS])
    (c1, s1, m1, t1), (c2, s2, m2, t2) = (_moments(ow.finite_width.last_layer_covariances(net, X, width=n, samples=40000), n) for n in (32, 128))
    # Richardson: C(n) = V + A/n  =>  V = (128 C(128) - 32 C(32)) / 96
    v_ex, v_se = (128 * c2 - 32 * c1) / 96, np.hypot(128 * s2, 32 * s1) / 96
    assert np.all(np.abs(v_ex - v) <= 3.5 * v_se + 1e-3 * np.abs(v).max()), ((v_ex - v) / v_se)
    assert np.abs(v).max() > 10 * v_se.max()
    d1, d2 = 32 * (m1 - k), 128 * (m2 - k)  # n (E G - K) = K1 + B/n
    k1_ex, k1_se = (128 * d2 - 32 * d1) / 96, np.hypot(128 * 128 * t2, 32 * 32 * t1) / 96
    assert np.all(np.abs(k1_ex - k1) <= 3.5 * k1_se), ((k1_ex - k1) / k1_se)
    if isinstance(act, ow.Relu) and hidden == 3:
        i = int(np.argmax(np.abs(k1)))  # the correction is seen: n (E G - K) at width 32 is > 5 SE from 0
        assert abs(d1[i]) > 5 * 32 * t1[i] and abs(k1[i]) > 2 * k1_se[i], (d1[i], 32 * t1[i], k1[i], k1_se[i])
        r32, r128 = np.linalg.norm(c1 - v), np.linalg.norm(c2 - v)
        assert r32 > 2.5 * r128, (r32, r128)


def test_bad_input():
    x = X
    with pytest.raises(NotImplementedError, match="Conv"):
        ow.finite_width.expansion(ow.serial(ow.Conv(filter_shape=(2,)), ow.Relu(), ow.Dense(out=1)), x[:, :, None])
    with pytest.raises(NotImplementedError, match="LayerNorm"):
        ow.finite_width.expansion(ow.serial(ow.Dense(), ow.LayerNorm(), ow.Dense(out=1)), x)
    with pytest.raises(NotImplementedError, match="ends in Relu"):
        ow.finite_width.expansion(ow.serial(ow.Dense(), ow.Relu()), x)
    with pytest.raises(NotImplementedError, match="consecutive activations"):
        ow.finite_width.expansion(ow.serial(ow.Dense(), ow.Relu(), ow.Tanh(), ow.Dense(out=1)), x)
    with pytest.raises(ValueError, match=r"N\^4 = 10000 entries"):
        ow.finite_width.expansion(mlp(ow.Relu(), 1), np.random.default_rng(1).standard_normal((10, 3)),
                                  memory_budget=1000)
    with pytest.raises(ValueError, match="identical or antipodal"):
        ow.finite_width.expansion(mlp(ow.Relu(), 1), np.stack([x[0], x[0], x[1]]))
    with pytest.raises(TypeError, match="owidth network"):
        ow.finite_width.four_point("mlp", x)
