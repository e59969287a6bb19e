"""Regenerates notebooks/*.ipynb (stored without outputs) from the cell sources below.

Run from the repository root: ``python notebooks/_make_notebooks.py``. Edit here, not in Jupyter, so the
notebooks stay output-free and reviewable; tests/test_notebooks.py executes them."""
import nbformat as nbf

def nb(cells, path):
    n = nbf.v4.new_notebook()
    n.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c.strip("\n")) for c in cells]
    n.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbf.write(n, path)

nb(["""md:# Quickstart: one spec, analytic kernels and finite networks

A network is written once, without widths. `ow.kernel` gives its infinite-width NNGP and NTK;
`ow.finite` gives the same network at any width. Jacot et al. (2018): the empirical NTK of a
random NTK-parametrised network converges to the analytic one, with relative error ~ width^-1/2.""",
"""
import jax
import matplotlib.pyplot as plt
import numpy as np

import owidth as ow

net = ow.serial(
    ow.Dense(w_std=2**0.5, b_std=0.1**0.5), ow.Relu(),
    ow.Dense(w_std=2**0.5, b_std=0.1**0.5), ow.Relu(),
    ow.Dense(out=1),
)
rng = np.random.default_rng(0)
x = rng.standard_normal((16, 8))
x /= np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(8)   # on the sphere of radius sqrt(d)
k = ow.kernel(net, x)
print("analytic NTK", k.ntk.shape, "NNGP diagonal", np.round(np.asarray(k.var1[:3]), 3))
""",
"""md:Any activation works: closed forms where they exist, quadrature otherwise.""",
"""
for act in (ow.Relu(), ow.Erf(), ow.Gelu(), ow.Tanh(), ow.Silu()):
    kk = ow.kernel(ow.serial(ow.Dense(), act, ow.Dense(out=1)), x[:4])
    print(f"{type(act).__name__:5s} NTK[0, 1] = {float(kk.ntk[0, 1]):.6f}")
""",
"""
widths = [64, 256, 1024]
errors = []
for width in widths:
    model = ow.finite(net, width=width)       # NTK parametrization (the default)
    errs = []
    for seed in range(4):
        params = model.init(jax.random.key(seed), x)
        theta = ow.empirical_ntk(model.apply, params, x)
        errs.append(np.linalg.norm(theta - k.ntk) / np.linalg.norm(k.ntk))
    errors.append(np.mean(errs))
slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
print(f"relative error ~ width^{slope:.2f} (theory: -0.5)")
plt.loglog(widths, errors, "o-", label=f"measured (slope {slope:.2f})")
plt.loglog(widths, errors[0] * (np.array(widths) / widths[0]) ** -0.5, "k--", label="width^-1/2")
plt.xlabel("width"); plt.ylabel("||NTK_emp - NTK|| / ||NTK||"); plt.legend();
"""], "notebooks/01_quickstart.ipynb")

nb(["""md:# muP and muTransfer

`ow.Parametrization` holds abc exponents (Yang & Hu 2021). `regime` evaluates Tensor Programs IV's
conditions; `ow.coord_check` measures them; `ow.train` sweeps learning rates at several widths in
one compiled program per width.""",
"""
import dataclasses

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import owidth as ow

for p in (ow.SP, ow.NTP, ow.MUP, ow.MF):
    r = p.regime(depth=2, optimizer="adam")
    print(f"{p.name:4s} a={p.a} b={p.b} c_adam={p.c_adam}: stable={r.stable} feature learning={r.feature_learning}")
""",
"""
digits = load_digits()
x, labels = digits.data / 16.0, digits.target
net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=10))
y = np.eye(10)[labels[:64]]
mup = dataclasses.replace(ow.MUP.with_base_width(64), zero_readout=True)
cc = ow.coord_check(net, (x[:64], y), widths=[64, 128, 256], param=mup, lr=0.01, seeds=8)
print("muP log-log slopes of coordinate sizes vs width after 3 Adam steps:", np.round(cc.slope_size.sel(step=3).values, 3))
""",
"""
lrs = 2.0 ** np.arange(-9, -1)
results = {}
for p in (ow.SP, ow.MUP):
    ds = ow.train(net, (x[:1400], labels[:1400]), test=(x[1400:], labels[1400:]), widths=[64, 256],
                  param=p.with_base_width(64), optimizer="adam", loss="xent", batch_size=128,
                  lr=lrs, seeds=1, steps=60, progress_bar=False)
    results[p.name] = ds.test_loss.isel(step=-1, seed=0, alpha=0)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
for ax, (name, loss) in zip(axes, results.items()):
    for width in loss.width.values:
        ax.semilogx(lrs, loss.sel(width=width), "o-", label=f"width {width}")
    ax.set(title=name.upper(), xlabel="Adam learning rate", ylim=(0, 2.5))
axes[0].set_ylabel("test cross-entropy"); axes[1].legend();
for name, loss in results.items():
    best = lrs[np.nanargmin(np.nan_to_num(loss.values, nan=np.inf), axis=1)]
    print(name, "best lr per width:", best)
"""], "notebooks/02_mup_and_mutransfer.ipynb")

nb(["""md:# Lazy vs rich training

With output scale alpha, `ow.train` trains `alpha (f - f0)` (Chizat et al. 2019): large alpha is
lazy (kernel) training, small alpha rich. `ow.measure` observables run inside the compiled program.
The diagonal linear network of Woodworth et al. (2020) shows what richness buys: an l1-like
implicit bias at small alpha.""",
"""
import matplotlib.pyplot as plt
import numpy as np

import owidth as ow

rng = np.random.default_rng(0)
x = rng.standard_normal((32, 8)); x /= np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(8)
y = np.sin(1.5 * x[:, 0])
net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=1))
alphas = [0.3, 1.0, 3.0, 10.0]
ds = ow.train(net, (x, y), widths=[64, 512], lr=1.0, alpha=alphas, steps=200, seeds=2, param=ow.NTP,
              record_every=50, metrics={"ntk_movement": ow.measure.ntk_movement(x)}, progress_bar=False)
move = ds.ntk_movement.isel(step=-1, lr=0).mean("seed")
for width in move.width.values:
    plt.loglog(alphas, move.sel(width=width), "o-", label=f"NTP, width {width}")
plt.loglog(alphas, move.values[0, 1] / np.array(alphas), "k--", label="1/alpha")
plt.xlabel("alpha"); plt.ylabel("relative NTK movement"); plt.legend();
""",
"""
from owidth import theory

d, n = 60, 25
X = rng.standard_normal((n, d)); beta_star = np.zeros(d); beta_star[:3] = [2.0, -1.5, 1.0]
Y = X @ beta_star
for alpha in (0.01, 1.0, 10.0):
    b = theory.woodworth_solution(X, Y, alpha)
    print(f"alpha={alpha:5}: ||beta - beta*|| = {np.linalg.norm(b - beta_star):.3f}, "
          f"distance to min-l2 = {np.linalg.norm(b - theory.min_l2_solution(X, Y)):.3f}")
"""], "notebooks/03_lazy_vs_rich.ipynb")

nb(["""md:# Theory vs practice: wide networks trained by gradient descent

Lee et al. (2019): an infinitely wide NTP network trained by GD on the MSE follows the linearised
dynamics with the analytic NTK. `ow.predict.gradient_descent` gives that prediction; `ow.train` trains
real networks (and their linearisations) as an ensemble.""",
"""
import jax
import matplotlib.pyplot as plt
import numpy as np

import owidth as ow

rng = np.random.default_rng(1)
x = rng.standard_normal((24, 6)); x /= np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(6)
y = np.sin(2 * x[:, 0])
xt = rng.standard_normal((64, 6)); xt /= np.linalg.norm(xt, axis=1, keepdims=True) / np.sqrt(6)
yt = np.sin(2 * xt[:, 0])
net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=1))
steps = [0, 10, 30, 100, 300]
k_train, k_test = ow.kernel(net, x), ow.kernel(net, xt, x)
pred = ow.predict.gradient_descent(k_train, k_test, y, lr=1.0, steps=steps)
theory_loss = [0.5 * np.mean((np.asarray(m).reshape(-1) - yt) ** 2) for m in pred.mean_test]
""",
"""
ds = ow.train(net, (x, y), test=(xt, yt), widths=[128, 1024], lr=1.0, steps=300, seeds=4, record_every=10,
              progress_bar=False)
for width in ds.width.values:
    loss = ds.test_loss.sel(width=width).isel(lr=0, alpha=0)
    plt.semilogx(ds.step[1:], loss.mean("seed")[1:], label=f"width {width} (mean of 4)")
plt.semilogx(steps[1:], theory_loss[1:], "ko", label="infinite width (mean prediction)")
plt.xlabel("GD step"); plt.ylabel("test MSE (1/2 mean)"); plt.legend();
print("final test loss: theory", round(theory_loss[-1], 4), "| width 1024:",
      round(float(ds.test_loss.sel(width=1024).isel(step=-1).mean()), 4))
"""], "notebooks/04_theory_vs_practice.ipynb")

nb(["""md:# Infinite-width feature learning: the DMFT next to muP networks

`ow.dmft` solves the self-consistent dynamical mean-field theory of Bordelon & Pehlevan (NeurIPS 2022):
the exact `width -> inf` limit of full-batch gradient descent under muP at richness `gamma0`. Deep linear
networks are solved exactly; nonlinear ones by Monte Carlo over single-neuron fields, in one causal sweep
over time, with error bars from independent replicas. `gamma0 -> 0` is NTK gradient descent.""",
"""
import jax
jax.config.update("jax_enable_x64", True)  # outputs are O(gamma0) field changes divided by gamma0
import matplotlib.pyplot as plt
import numpy as np

import owidth as ow

rng = np.random.default_rng(0)
x = rng.standard_normal((10, 4)); x /= np.linalg.norm(x, axis=1, keepdims=True) / 2
y = np.sin(x @ np.array([1.0, -0.5, 0.3, 0.0]) + 0.3)
linear = ow.serial(ow.Dense(), ow.Identity(), ow.Dense(), ow.Identity(), ow.Dense(out=1))
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
for g in (1e-4, 0.5, 1.0, 2.0):
    r = ow.dmft(linear, x, y, gamma0=g, lr=0.3, steps=30)
    ax[0].semilogy(r.train_loss, label=f"gamma0={g:g}")
    align = [y @ k @ y / (np.linalg.norm(k) * (y @ y)) for k in r.ntk]
    ax[1].plot(align, label=f"gamma0={g:g}")
ax[0].set(xlabel="step", ylabel="train loss", title="deep linear DMFT (exact)"); ax[0].legend()
ax[1].set(xlabel="step", ylabel="NTK-target alignment", title="richer training aligns the NTK with y");
""",
"""md:A 2-hidden-layer tanh network: the Monte Carlo DMFT (band: 2 standard errors over replicas) and muP
networks of two widths trained by `ow.train` with the same `gamma0` (mean over seeds). The networks'
distance to the DMFT shrinks with width (8x the width: 2.3x closer here, about width^-0.4).""",
"""
tanh = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(), ow.Tanh(), ow.Dense(out=1))
r = ow.dmft(tanh, x, y, gamma0=1.0, lr=0.5, steps=20, samples=2000, response_samples=64, replicas=4,
            progress_bar=False)
ds = ow.train(tanh, (x, y), test=(x, y), widths=[256, 2048], lr=0.5, steps=20, param=ow.MUP, gamma0=1.0,
              seeds=4, record_every=1, record_outputs=True, progress_bar=False)
f = ds.test_output.isel(lr=0, gamma0=0, out=0)  # (width, seed, step, point)
steps = np.arange(21)
for j, color in zip(range(3), ("C0", "C1", "C2")):
    plt.plot(steps, r.f_train[:, j], color=color)
    plt.fill_between(steps, r.f_train[:, j] - 2 * r.f_train_se[:, j], r.f_train[:, j] + 2 * r.f_train_se[:, j],
                     color=color, alpha=0.3)
    for w, marker in zip(f.width.values, ("x", "o")):
        plt.plot(steps, f.sel(width=w).mean("seed")[:, j], marker, ms=3, color=color)
plt.xlabel("step"); plt.ylabel("output"); plt.title("tanh: MC DMFT (lines) vs width 256 (x), 2048 (o)")
for w in f.width.values:
    dist = np.sqrt(((f.sel(width=w).values - r.f_train) ** 2).mean(axis=(-2, -1)))
    print(f"width {w}: RMS distance to the DMFT over the trajectory {dist.mean():.4f} (mean over seeds)")
""",
"""md:Cost: the Monte Carlo sweep takes `O(S (T Q)^2 + S^2 T Q)` for `S` sampled neurons and
`O(S_r (T Q)^3)` time, `O(S_r (T Q)^2)` memory for the response Jacobians of `S_r` of them (`Q` train +
test points, `T` steps): about 10 s for 10 points and 100 steps on 2 CPU cores. The error bars are the
statistical error; Monte Carlo DMFT is also biased by `O(1 / samples)`, which more replicas do not reduce."""],
   "notebooks/05_dmft.ipynb")

nb(["""md:# Fitting hyperparameters by evidence maximisation

The NNGP of an infinitely wide network is a Gaussian-process prior; its hyperparameters (`w_std`,
`b_std`, the observation noise) can be fitted by maximising the log marginal likelihood of the training
targets (type-II maximum likelihood; Rasmussen & Williams 2006, sec. 5.4):

    log p(Y) = sum_c [ -1/2 y_c^T (K + s^2 I)^-1 y_c - 1/2 log det(K + s^2 I) - n/2 log 2 pi ]

`ow.predict.log_marginal_likelihood` computes it by Cholesky; hyperparameters of `ow.kernel` may be JAX
scalars, so `jax.grad` gives its gradient and optax climbs it. Data: 200 scikit-learn digits (shipped
with scikit-learn, no download), targets the centred one-hot labels of the 10 classes (one GP per
class, summed in the evidence; Lee et al. 2018).""",
"""
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import owidth as ow

digits = load_digits()
order = np.random.default_rng(0).permutation(len(digits.target))
x = digits.data[order] / 16.0
y = np.eye(10)[digits.target[order]] - 0.1
x_train, y_train, x_test, y_test = x[:200], y[:200], x[200:700], y[200:700]


def net(w_std, b_std):
    return ow.serial(ow.Dense(w_std=w_std, b_std=b_std), ow.Relu(),
                     ow.Dense(w_std=w_std, b_std=b_std), ow.Relu(),
                     ow.Dense(out=1, w_std=w_std, b_std=b_std))


def evidence(theta):
    \"\"\"log p(Y_train) per target entry; theta holds the logs of w_std, b_std and the noise variance.\"\"\"
    k = ow.kernel(net(jnp.exp(theta["log_w"]), jnp.exp(theta["log_b"])), x_train, get="nngp")
    return ow.predict.log_marginal_likelihood(k, y_train, jnp.exp(theta["log_noise"])) / y_train.size
""",
"""md:Start from Dense's default `w_std = 1`, a small bias `b_std = 0.1` and noise variance 0.1, and run
Adam on the logs (they stay positive). One compilation: the hyperparameters are traced.""",
"""
start = {"log_w": np.log(1.0), "log_b": np.log(0.1), "log_noise": np.log(0.1)}
opt = optax.adam(0.1)


@jax.jit
def step(theta, state):
    value, grad = jax.value_and_grad(lambda t: -evidence(t))(theta)
    updates, state = opt.update(grad, state)
    return optax.apply_updates(theta, updates), state, -value


theta, state, path = dict(start), opt.init(start), [start]
for i in range(80):
    theta, state, value = step(theta, state)
    path.append(theta)
fitted = {k: float(np.exp(v)) for k, v in theta.items()}
print(f"evidence per entry: start {float(evidence(start)):.3f}, fitted {float(value):.3f}")
print("fitted w_std = {log_w:.3f}, b_std = {log_b:.4f}, noise = {log_noise:.5f}".format(**fitted))
""",
"""md:Held out: the log predictive density of 500 test digits under the NNGP posterior
(`ow.predict.nngp_posterior`, per test point and summed over the 10 outputs), and the accuracy of the
posterior mean's argmax.""",
"""
def held_out(theta):
    w_std, b_std, noise = (float(np.exp(theta[k])) for k in ("log_w", "log_b", "log_noise"))
    n = net(w_std, b_std)
    post = ow.predict.nngp_posterior(ow.kernel(n, x_train, get="nngp"), ow.kernel(n, x_test, x_train, get="nngp"),
                                     y_train, noise=noise, k_test_test=ow.kernel(n, x_test, get="nngp"))
    mean = np.asarray(post.mean_test[0])
    var = np.diag(np.asarray(post.cov_test[0]))[:, None] + noise   # predictive variance of a noisy target
    lpd = -0.5 * ((y_test - mean) ** 2 / var + np.log(2 * np.pi * var))
    return lpd.sum(1).mean(), np.mean(mean.argmax(1) == y_test.argmax(1))


for name, t in (("start", start), ("fitted", theta)):
    lpd, acc = held_out(t)
    print(f"{name:6s}: held-out log likelihood {lpd:7.3f} per test digit, accuracy {acc:.3f}")
""",
"""md:The evidence surface: over (w_std, noise) at the fitted b_std, and over (w_std, b_std) at the fitted
noise, with the optimiser's path. `jax.vmap` evaluates the whole grid in one compiled call.""",
"""
grid = jax.jit(jax.vmap(lambda a, b, c: evidence({"log_w": a, "log_b": b, "log_noise": c})))
lw = np.linspace(-0.7, 1.2, 9)
panels = [("log_noise", np.linspace(-8.0, 0.0, 9)), ("log_b", np.linspace(-6.0, 1.0, 9))]
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, (other, values) in zip(axes, panels):
    a, b = np.meshgrid(lw, values)
    args = {"log_w": a.ravel(), "log_b": np.full(a.size, theta["log_b"]), "log_noise": np.full(a.size, theta["log_noise"])}
    args[other] = b.ravel()
    z = np.asarray(grid(args["log_w"], args["log_b"], args["log_noise"])).reshape(a.shape)
    cs = ax.contourf(np.exp(a), np.exp(b), np.maximum(z, z.max() - 3.0), levels=20)
    fig.colorbar(cs, ax=ax, label="log evidence per entry (clipped 3 below max)")
    ax.plot([np.exp(p["log_w"]) for p in path], [np.exp(p[other]) for p in path], "w.-", ms=3, label="Adam")
    ax.set(yscale="log", xlabel="w_std", ylabel="b_std" if other == "log_b" else "noise variance")
    ax.legend()
plt.tight_layout();
"""], "notebooks/06_evidence.ipynb")
