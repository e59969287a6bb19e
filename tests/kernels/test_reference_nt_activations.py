"""Agreement with neural-tangents 0.6.5 on its closed-form activations (Cos, Rbf, Exp, Gaussian,
Gabor, Sign, ExpNormalized, Polynomial, Monomial, Hermite, RectifiedMonomial). Reference file made by
``benchmarks/peers/nt_reference.py --only act`` in the legacy venv; NT is never imported here.

NT evaluates its angle formulas of Sign and RectifiedMonomial at angle 0 (an input with itself, the
diagonal of the (x1, x1) kernels), where they are ill-conditioned: rounding leaves an angle ~1e-8
(``arccos`` of 1 - eps), which the next layer turns into errors of 1e-4 (Sign) or 65% (the NTK of
RectifiedMonomial, whose autodiff derivative there is 0), and RectifiedMonomial's
``(pi - theta) / sin(theta)`` is NaN at angle exactly 0: on that diagonal after one such layer, and,
as its variances are NaN too, everywhere after a second one. So on those architectures the (x1, x1)
diagonal is checked against exact moments instead, and the two-layer RectifiedMonomial against the
arc-cosine kernels (Cho & Saul 2009) in numpy; elsewhere owidth matches NT to 1e-8, and owidth is
finite everywhere.
"""

import functools
import json
import pathlib

import numpy as np
import pytest

from helpers import build, load_archs, load_inputs, reference_kernels

REF = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_activation_kernels.npz")
ARCHS = load_archs(REF)
KEYS = ("nngp11", "ntk11", "nngp12", "ntk12")

# NT 0.6.5's RectifiedMonomial defect (above): where its kernels are NaN, per architecture.
NT_NAN = {"rectified_monomial0": "diagonal11", "rectified_monomial2": "diagonal11",
          "rectified_monomial3": "diagonal11", "rectified_monomial2_twice": "everywhere"}
# where NT's (x1, x1) diagonal is unreliable (NaN, or finite but wrong): compared off the diagonal only
NT_ANGLE_ZERO = {"sign", *NT_NAN}


@functools.cache
def _owidth(name):
    """owidth's kernels of architecture ``name`` (once per test process: the checks below reuse them)."""
    return reference_kernels(build(ARCHS[name]), REF, name)


# ~0.5-2 s each (two kernel programs compiled per architecture): three in the default suite (exponential,
# polynomial, angular closed forms), the rest with the slow tests
FAST = {"gabor", "polynomial", "rectified_monomial2"}


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(ARCHS)])
def test_matches_neural_tangents(name):
    kernels = _owidth(name)
    compared = 0
    for key in KEYS:
        got, ref = kernels[key], REF[f"{name}/{key}"]
        assert got.shape == ref.shape, (name, key)
        assert np.all(np.isfinite(got)), (name, key, got)
        ok = np.isfinite(ref)
        if name in NT_ANGLE_ZERO and key.endswith("11"):
            ok &= ~np.eye(len(ref), dtype=bool)
        if ok.any():
            err = np.max(np.abs(got - ref)[ok]) / np.max(np.abs(ref[ok]))
            assert err < 1e-8, (name, key, err)
            compared += 1
    assert compared == (0 if NT_NAN.get(name) == "everywhere" else 4), name
    np.testing.assert_array_equal(kernels["nngp11"], kernels["nngp11"].T)


def _double_factorial(n):
    return 1 if n <= 0 else n * _double_factorial(n - 2)


def _relu_moment(k, q):
    """E max(u, 0)^k, u ~ N(0, q): half the Gaussian moment (k - 1)!! q^(k/2) (k even)."""
    return _double_factorial(k - 1) * q ** (k // 2) / 2


@pytest.mark.parametrize("name", [n if n == "sign" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(NT_ANGLE_ZERO - {"rectified_monomial2_twice"})])
def test_diagonal_at_angle_zero(name):
    """The (x1, x1) diagonal where NT's is unreliable, from exact moments: E sign(u)^2 = 1 with no NTK
    through Sign; E phi^2 = E relu^(2n), E phi'^2 = n^2 E relu^(2n - 2) for phi = relu^n."""
    arch = ARCHS[name]
    (w1, b1), (w_out, b_out) = [(kw["w_std"], kw["b_std"]) for layer, kw in (arch[0], arch[-1])]
    x1, _ = load_inputs(REF, name)
    q = w1**2 * np.sum(x1 * x1, axis=1) / x1.shape[1] + b1**2  # first pre-activation variances
    if name == "sign":  # [Dense, Sign, Dense, Sign, Dense(1)]: each Sign's variance is 1, the NTK below it 0
        nngp = np.full_like(q, w_out**2 + b_out**2)
        ntk = nngp
    else:  # [Dense, RectifiedMonomial(n), Dense(1)]
        n = arch[1][1]["degree"]
        nngp = w_out**2 * _relu_moment(2 * n, q) + b_out**2
        ntk = w_out**2 * q * (n**2 * _relu_moment(2 * n - 2, q) if n else 0.0) + nngp
    got = _owidth(name)
    np.testing.assert_allclose(np.diag(got["nngp11"]), nngp, rtol=1e-12)
    np.testing.assert_allclose(np.diag(got["ntk11"]), ntk, rtol=1e-12)


def _arccos(q1, q2, c, degree):
    """E relu(u)^n relu(v)^n for (u, v) of covariance [[q1, c], [c, q2]] (Cho & Saul 2009), n = 1, 2."""
    cos = np.clip(c / np.sqrt(q1 * q2), -1.0, 1.0)
    theta, sin = np.arccos(cos), np.sqrt(1.0 - cos**2)
    j = {1: sin + (np.pi - theta) * cos, 2: 3 * sin * cos + (np.pi - theta) * (1 + 2 * cos**2)}[degree]
    return (q1 * q2) ** (degree / 2) * j / (2 * np.pi)


@pytest.mark.slow  # ~2.4 s
def test_two_rectified_monomial_layers_match_the_arc_cosine_kernels():
    """Where NT is NaN everywhere: [Dense, relu^2, Dense, relu^2, Dense(1)] composed in numpy from the
    degree-2 arc-cosine kernel (NNGP) and 4x the degree-1 one (E phi' phi', phi' = 2 relu)."""
    name = "rectified_monomial2_twice"
    arch = ARCHS[name]
    assert [layer for layer, _ in arch] == ["Dense", "RectifiedMonomial", "Dense", "RectifiedMonomial", "Dense"]
    assert arch[1][1]["degree"] == arch[3][1]["degree"] == 2
    (w1, b1), (w2, b2), (w3, b3) = [(arch[i][1]["w_std"], arch[i][1]["b_std"]) for i in (0, 2, 4)]
    x1, x2 = load_inputs(REF, name)
    got = _owidth(name)
    for key, xb in (("11", x1), ("12", x2)):
        def layer(cov, var_a, var_b, ntk):
            a, b = var_a[:, None], var_b[None, :]
            return _arccos(a, b, cov, 2), ntk * 4 * _arccos(a, b, cov, 1)

        d = x1.shape[1]
        cov = w1**2 * x1 @ xb.T / d + b1**2
        va, vb = w1**2 * np.sum(x1 * x1, 1) / d + b1**2, w1**2 * np.sum(xb * xb, 1) / d + b1**2
        k, ntk = layer(cov, va, vb, cov)
        cov, ntk = w2**2 * k + b2**2, w2**2 * ntk + w2**2 * k + b2**2
        va, vb = w2**2 * _relu_moment(4, va) + b2**2, w2**2 * _relu_moment(4, vb) + b2**2
        k, ntk = layer(cov, va, vb, ntk)
        nngp, ntk = w3**2 * k + b3**2, w3**2 * ntk + w3**2 * k + b3**2
        for kind, want in (("nngp", nngp), ("ntk", ntk)):
            err = np.max(np.abs(got[kind + key] - want)) / np.max(np.abs(want))
            assert err < 1e-12, (kind + key, err)


def test_neural_tangents_fails_only_on_rectified_monomial():
    """NT's kernels are non-finite (NaN, never inf) exactly where NT_NAN says, finite elsewhere; owidth
    is finite at all of those entries (test_matches_neural_tangents)."""
    failing = set()
    for name in ARCHS:
        bad = {key: ~np.isfinite(REF[f"{name}/{key}"]) for key in KEYS}
        if not any(b.any() for b in bad.values()):
            continue
        failing.add(name)
        assert all(np.isnan(REF[f"{name}/{key}"][b]).all() for key, b in bad.items()), name
        if NT_NAN.get(name) == "everywhere":
            assert all(b.all() for b in bad.values()), name
        else:  # only (some of) the diagonal of the (x1, x1) kernels, the same entries in nngp and ntk
            off = ~np.eye(len(bad["nngp11"]), dtype=bool)
            assert not (bad["nngp11"] & off).any() and not bad["nngp12"].any() and not bad["ntk12"].any(), name
            np.testing.assert_array_equal(bad["nngp11"], bad["ntk11"])
    assert failing == set(NT_NAN)


def test_reference_covers_the_activations():
    names = {layer for arch in ARCHS.values() for layer, _ in arch}
    assert {"Cos", "Rbf", "Exp", "Gaussian", "Gabor", "Sign", "ExpNormalized", "Polynomial", "Monomial",
            "Hermite", "RectifiedMonomial"} <= names
    # NT's Hermite rule assumes unit pre-activation variance: its architectures take rows with |x|^2 = d
    kinds = json.loads(str(REF["inputs"]))
    for name, kind in kinds.items():
        if any(layer == "Hermite" for layer, _ in ARCHS[name]):
            assert kind == "xunit" and ARCHS[name][0] == ["Dense", {"w_std": 1.0, "b_std": 0.0}], name
    for x in (REF["xunit1"], REF["xunit2"]):
        np.testing.assert_allclose(np.sum(x * x, axis=1), x.shape[1], rtol=1e-14)
