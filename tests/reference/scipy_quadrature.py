"""Independent float64 references for the quadrature activations, from ``scipy.integrate.quad``
(nested for the 2-D integrals) and numpy's functions only: no owidth import.

``python tests/reference/scipy_quadrature.py`` rewrites ``scipy_quadrature.json`` beside it (about
4 minutes of CPU). The tests read the file; ``tests/kernels/test_quadrature_sweep.py`` has a slow
test that recomputes part of it live and requires agreement to 1e-12, so the file cannot drift from
what scipy says.

Errors are measured relative to the Cauchy-Schwarz scale ``sqrt(E phi(u)^2 E phi(v)^2)``, stored
with each pair (T itself vanishes for odd phi at rho = 0)."""

import json
import pathlib
import warnings

import numpy as np
from scipy import integrate, special

FILE = pathlib.Path(__file__).with_name("scipy_quadrature.json")

VARS = [1e-4, 1e-2, 1.0, 5.0, 30.0, 1e3]
RHOS = [-0.9, 0.0, 0.5, 0.99]
UNEQUAL = [(1e-4, 1e3, 0.5), (1e-2, 30.0, -0.9), (1.0, 1e3, 0.99), (5.0, 1e-4, 0.0), (30.0, 1e3, -0.99),
           (1e3, 1.0, 0.5)]
GRID = [(q, q, r) for q in VARS for r in RHOS] + UNEQUAL
# the default test's share of GRID, where the errors are largest
QUICK = [(1e-4, 1e-4, 0.99), (1e3, 1e3, 0.0), (1e3, 1e3, 0.99), (1e-4, 1e3, 0.5)]
LAYERNORM_EPS = 1e-12  # ow.LayerNorm()'s default (the test checks it still is)


def _sech2(x):
    return 1.0 - np.tanh(x) ** 2


# name: (phi, phi') in numpy
FUNCTIONS = {
    "tanh": (np.tanh, _sech2),
    "sigmoid": (special.expit, lambda x: special.expit(x) * special.expit(-x)),
    "silu": (lambda x: x * special.expit(x), lambda x: special.expit(x) * (1 + x * special.expit(-x))),
    "softplus": (lambda x: np.logaddexp(0.0, x), special.expit),
    "kinked": (lambda x: np.where(x > 0, np.tanh(x), 0.2 * np.tanh(x)),
               lambda x: np.where(x > 0, 1.0, 0.2) * _sech2(x)),
}
LAYERNORM_ACTS = ["tanh", "sigmoid"]


def _quad(f, lo, hi, points):
    with warnings.catch_warnings():  # scipy warns near the roundoff floor; the results are checked by the tests
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        return integrate.quad(f, lo, hi, points=points, epsabs=0.0, epsrel=1e-13, limit=1000)[0]


def _points(lo, hi):
    """Breakpoints where the activations bend (|x| ~ 1), inside (lo, hi)."""
    return [p for p in (-16.0, -4.0, -1.0, 0.0, 1.0, 4.0, 16.0) if lo < p < hi] or None


def ref_mean(f, q):
    """E f(u), u ~ N(0, q), by adaptive quadrature in u."""
    s = np.sqrt(q)
    return _quad(lambda u: f(u) * np.exp(-0.5 * u * u / q) / (s * np.sqrt(2 * np.pi)), -12 * s, 12 * s,
                 _points(-12 * s, 12 * s))


def ref_dual(f, q1, q2, rho):
    """E f(u) f(v): outer quad over u ~ N(0, q1), inner quad over v | u ~ N(rho s2/s1 u, q2 (1 - rho^2)).
    (scipy's error estimates for the nested rule are pessimistic, up to ~1e-10 relative, so they are not
    used; an inaccurate reference would fail the comparison, not pass it.)"""
    s1, s2 = np.sqrt(q1), np.sqrt(q2)
    sig = s2 * np.sqrt(1.0 - rho * rho)

    def inner(u):
        m = rho * s2 / s1 * u
        lo, hi = m - 11 * sig, m + 11 * sig
        return _quad(lambda v: f(v) * np.exp(-0.5 * ((v - m) / sig) ** 2) / (sig * np.sqrt(2 * np.pi)), lo, hi,
                     _points(lo, hi))

    return _quad(lambda u: f(u) * inner(u) * np.exp(-0.5 * u * u / q1) / (s1 * np.sqrt(2 * np.pi)), -11 * s1,
                 11 * s1, _points(-11 * s1, 11 * s1))


def diagonal(name, q):
    """(E phi^2, E phi'^2, E phi) at variance q."""
    f, df = FUNCTIONS[name]
    return [ref_mean(lambda u: f(u) ** 2, q), ref_mean(lambda u: df(u) ** 2, q), ref_mean(f, q)]


def pairs(name, cases):
    """Rows (T, T', scale, scale') for each (q1, q2, rho): T = E phi phi, T' = E phi' phi'."""
    f, df = FUNCTIONS[name]
    diag = {q: diagonal(name, q) for q in sorted({q for c in cases for q in c[:2]})}
    return [[ref_dual(f, q1, q2, rho), ref_dual(df, q1, q2, rho), np.sqrt(diag[q1][0] * diag[q2][0]),
             np.sqrt(diag[q1][1] * diag[q2][1])] for q1, q2, rho in cases]


def layernorm_inputs():
    """One input per variance in VARS (random directions, one nearly parallel pair), d = 5."""
    rng = np.random.default_rng(3)
    d = 5
    u = rng.standard_normal((len(VARS), d))
    u[1] = u[0] + 0.05 * u[1]
    return u / np.linalg.norm(u, axis=1, keepdims=True) * np.sqrt(np.array(VARS) * d)[:, None]


def layernorm(name, x, eps=LAYERNORM_EPS):
    """Chain (i, i+1) entries of nngp, ntk and the ntk diagonal of Dense -> act -> LayerNorm -> Dense(out=1),
    from the scalar references and the LayerNorm rule ``(T - m m') / sqrt(v v')``, ``v = E phi^2 - m^2 + eps``."""
    f, df = FUNCTIONS[name]
    g = x @ x.T / x.shape[1]
    q = np.diag(g)
    mom = np.array([diagonal(name, qi) for qi in q])
    m, v = mom[:, 2], mom[:, 0] - mom[:, 2] ** 2 + eps
    i, j = np.arange(len(x) - 1), np.arange(1, len(x))
    rho = [g[a, b] / np.sqrt(q[a] * q[b]) for a, b in zip(i, j)]
    t = np.array([ref_dual(f, q[a], q[b], r) for a, b, r in zip(i, j, rho)])
    td = np.array([ref_dual(df, q[a], q[b], r) for a, b, r in zip(i, j, rho)])
    nngp = (t - m[i] * m[j]) / np.sqrt(v[i] * v[j])
    ntk = g[i, j] * td / np.sqrt(v[i] * v[j]) + nngp
    return {"nngp": nngp.tolist(), "ntk": ntk.tolist(), "ntk_diag": (q * mom[:, 1] / v + (mom[:, 0] - m * m) / v).tolist()}


def compute():
    out = {"vars": VARS, "grid": GRID, "layernorm_eps": LAYERNORM_EPS, "activations": {}}
    for name in FUNCTIONS:
        out["activations"][name] = {
            "diag": [diagonal(name, q) for q in VARS],
            "grid": pairs(name, GRID),
            "layernorm": layernorm(name, layernorm_inputs()) if name in LAYERNORM_ACTS else None,
        }
        print(name, flush=True)
    return out


def load():
    return json.loads(FILE.read_text())


if __name__ == "__main__":
    FILE.write_text(json.dumps(compute(), indent=1) + "\n")
    print("wrote", FILE)
