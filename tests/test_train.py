"""ow.train: vmapped ensembles, richness scale, divergence bookkeeping, persistence; coord check; linearization."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import xarray as xr

import owidth as ow
from helpers import sphere

NET = ow.serial(ow.Dense(w_std=2**0.5, b_std=0.1), ow.Relu(), ow.Dense(out=1, b_std=0.1))
X = sphere(16, 5, 0)
Y = np.sin(X[:, 0])
XT = sphere(8, 5, 1)
YT = np.sin(XT[:, 0])
# a 2 x 3 x 4 x 2 ensemble: two learning rates that train, one that diverges, one that is invalid
ENSEMBLE = dict(test=(XT, YT), widths=[16, 32], lr=[0.1, 0.5, 1e9, -1.0], alpha=[1.0, 4.0], seeds=3, steps=40,
                record_every=10, progress_bar=False)


def test_ensemble_members_are_independent_and_labelled():
    ds = ow.train(NET, (X, Y), **ENSEMBLE)
    assert dict(ds.sizes) == {"width": 2, "seed": 3, "lr": 4, "alpha": 2, "step": 5}
    np.testing.assert_array_equal(ds.step, [0, 10, 20, 30, 40])
    status = ds.status.values
    assert (status[:, :, :2] == "ok").all()
    assert (status[:, :, 2] == "diverged").all()  # lr = 1e9 blows up ...
    assert (status[:, :, 3] == "invalid").all()  # ... and lr < 0 is refused per member, not for the sweep
    assert np.isnan(ds.train_loss.values[:, :, 3]).all()
    assert (ds.diverged_step.values[:, :, 2] >= 0).all() and (ds.diverged_step.values[:, :, :2] == -1).all()
    ok = ds.train_loss.isel(lr=slice(0, 2))
    assert np.isfinite(ok).all() and (ok.isel(step=-1) < 0.5 * ok.isel(step=0)).all()


@pytest.mark.slow  # ~9 s: three more ensembles compiled
def test_members_in_batches_or_alone_train_as_in_the_ensemble():
    ds = ow.train(NET, (X, Y), **ENSEMBLE)
    # advancing members in batches inside the program changes nothing
    batched = ow.train(NET, (X, Y), **ENSEMBLE, members_per_batch=5)
    np.testing.assert_allclose(batched.test_loss, ds.test_loss, rtol=1e-12)
    # one member trained alone gives the same numbers as inside the ensemble
    alone = ow.train(NET, (X, Y), test=(XT, YT), widths=32, lr=0.5, alpha=4.0, seeds=[2], steps=40, record_every=10,
                     progress_bar=False)
    np.testing.assert_allclose(alone.test_loss.values[0, 0, 0, 0],
                               ds.test_loss.sel(width=32, seed=2, lr=0.5, alpha=4.0).values, rtol=1e-12)


def test_second_call_does_not_retrace():
    traces = []

    def weight_norm(snap):
        traces.append(1)  # runs only while tracing
        return sum(jnp.sum(p ** 2) for p in jax.tree.leaves(snap.params))

    kwargs = dict(widths=8, lr=0.1, steps=4, seeds=2, metrics={"weight_norm": weight_norm}, progress_bar=False)
    first = ow.train(NET, (X, Y), **kwargs)
    n = len(traces)
    second = ow.train(NET, (X, Y), **{**kwargs, "lr": 0.3, "alpha": 2.0, "seeds": [5, 7]})  # new values, same shapes
    assert n > 0 and len(traces) == n
    assert first.weight_norm.shape == second.weight_norm.shape == (1, 2, 1, 1, 5)
    assert not np.allclose(first.weight_norm, second.weight_norm)


def test_gamma0_is_bordelon_pehlevan_richness():
    """Bordelon & Pehlevan (2022): output f / gamma0, learning rate eta0 gamma0^2, plain GD on the MSE.
    Written out by hand here and compared with ow.train(gamma0=...), which uses alpha = 1/gamma0."""
    param, width, eta0, steps = ow.MF.with_base_width(4), 32, 0.05, 20
    model = ow.finite(NET, width=width, param=param)
    for gamma0 in (0.5, 2.0):
        key = jax.random.split(jax.random.key(0))[0]  # ow.train's init key for seed 0
        params = model.init(key, X)
        tx = optax.chain(ow.scale_by_width(model, X, optimizer="sgd"), optax.scale(-eta0 * gamma0**2))
        opt = tx.init(params)
        loss = lambda p: 0.5 * jnp.mean((model.apply(p, X)[:, 0] / gamma0 - Y) ** 2)  # noqa: E731
        for _ in range(steps):
            updates, opt = tx.update(jax.grad(loss)(params), opt)
            params = optax.apply_updates(params, updates)
        ds = ow.train(NET, (X, Y), widths=width, param=param, lr=eta0, gamma0=gamma0, center=False, steps=steps,
                      record_every=steps, seeds=1, progress_bar=False)
        assert "gamma0" in ds.dims and "alpha" not in ds.dims
        np.testing.assert_allclose(ds.train_loss.isel(step=-1).item(), loss(params), rtol=1e-10)


def test_larger_alpha_is_lazier():
    """Chizat et al. 2019: with f_alpha = alpha (f - f0) the weights move by O(1/alpha) for the same fit."""

    def movement(snap):
        num = sum(jnp.sum((p - p0) ** 2) for p, p0 in zip(jax.tree.leaves(snap.params), jax.tree.leaves(snap.params0)))
        return jnp.sqrt(num / sum(jnp.sum(p0**2) for p0 in jax.tree.leaves(snap.params0)))

    ds = ow.train(NET, (X, Y), widths=64, lr=0.5, alpha=[1.0, 10.0, 100.0], steps=50, record_every=50, seeds=2,
                  metrics={"movement": movement}, progress_bar=False)
    moved = ds.movement.isel(step=-1).mean("seed").values[0, 0]
    slope = np.polyfit(np.log([1.0, 10.0, 100.0]), np.log(moved), 1)[0]
    assert abs(slope + 1) < 0.15, moved
    loss = ds.train_loss.isel(step=-1).mean("seed").values[0, 0]
    assert np.all(loss < 0.5 * ds.train_loss.isel(step=0).mean("seed").values[0, 0])


def test_minibatch_adam_cross_entropy_and_netcdf_round_trip(tmp_path):
    labels = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)
    net = ow.serial(ow.Dense(), ow.Gelu(), ow.Dense(out=3))
    ds = ow.train(net, (X, labels), test=(XT, (XT[:, 0] > 0).astype(int)), widths=[16, 64], lr=[1e-2, 3e-2],
                  optimizer="adamw", weight_decay=1e-3, loss="xent", batch_size=8, steps=60, seeds=2,
                  param=ow.MUP.with_base_width(16), progress_bar=False)
    assert {"train_accuracy", "test_accuracy"} <= set(ds.data_vars)
    acc = ds.train_accuracy.isel(step=-1).values
    assert ((acc >= 0) & (acc <= 1)).all() and acc.mean() > 0.7
    path = tmp_path / "run.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_identical(back.load(), ds)
    # different seeds see different minibatches and initialisations
    assert not np.allclose(ds.train_loss.sel(seed=0), ds.train_loss.sel(seed=1))


def test_bad_arguments_raise_before_compiling():
    kw = dict(widths=8, lr=0.1, steps=10, progress_bar=False)
    with pytest.raises(ValueError, match="record_every"):
        ow.train(NET, (X, Y), record_every=3, **kw)
    with pytest.raises(ValueError, match="batch_size"):
        ow.train(NET, (X, Y), batch_size=100, **kw)
    with pytest.raises(ValueError, match="optimizer"):
        ow.train(NET, (X, Y), optimizer="lion", **kw)
    with pytest.raises(ValueError, match="integer class labels"):
        ow.train(NET, (X, Y), loss="xent", **kw)
    with pytest.raises(ValueError, match="not both"):
        ow.train(NET, (X, Y), alpha=1.0, gamma0=1.0, **kw)
    with pytest.raises(ValueError, match="rows"):
        ow.train(NET, (X, Y[:3]), **kw)
    with pytest.raises(ValueError, match="NaN"):
        ow.train(NET, (np.full_like(X, np.nan), Y), **kw)
    with pytest.raises(ValueError, match="adamw"):
        ow.train(NET, (X, Y), optimizer="adam", weight_decay=0.1, **kw)
    with pytest.raises(ValueError, match="positive"):
        ow.train(NET, (X, Y), **{**kw, "widths": [8, 0]})
    with pytest.raises(ValueError, match="2 columns but the network has 1 outputs"):
        ow.train(NET, (X, np.stack([Y, Y], 1)), **kw)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        ow.train(NET, (X, np.arange(16) % 3), loss="xent", **kw)


@pytest.mark.slow
def test_coord_check_is_flat_under_mup_and_grows_under_sp():
    """Tensor Programs V coordinate check after 3 Adam steps (lr 0.01): every layer's coordinate
    size has log-log slope within 0.1 of 0 against width under muP (zero readout init, as TP V
    recommends); under SP the readout's update grows with width (slope > 0.3). See the coord-check
    experiment for why SP is judged by its update size."""
    from owidth.experiments._common import digits

    x, labels, _, _ = digits(0)
    x, y = x[:64], np.eye(10)[labels[:64]]
    net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=10))
    kw = dict(widths=[64, 128, 256, 512], optimizer="adam", steps=3, seeds=16, lr=0.01)  # 4 seeds: +-0.1 noise
    mup = ow.coord_check(net, (x, y), param=dataclasses.replace(ow.MUP.with_base_width(64), zero_readout=True), **kw)
    sp = ow.coord_check(net, (x, y), param=ow.SP.with_base_width(64), **kw)
    assert np.all(np.abs(mup.slope_size.isel(step=slice(1, None)).values) < 0.1), mup.slope_size.values
    moved = mup.slope_delta.isel(step=slice(2, None)).values  # hidden layers first move at step 2 (zero readout)
    assert np.all(np.abs(moved) < 0.1), mup.slope_delta.values
    assert np.isnan(mup.slope_delta.sel(step=1).values[:2]).all()  # not moved yet: no slope, not noise
    assert np.isnan(mup.slope_size.sel(step=0).values[-1])  # exactly zero output at init
    assert sp.slope_delta.sel(step=3).values[-1] > 0.3, sp.slope_delta.values
    assert sp.slope_delta.sel(step=1).values[-1] > 0.8  # ~ n^1: r = -1 for SP's readout update
    # with a random readout muP's initial output shrinks like n^-1/2 (its 1/n multiplier)
    random_readout = ow.coord_check(net, (x, y), param=ow.MUP.with_base_width(64), **{**kw, "steps": 1, "seeds": 2})
    assert abs(random_readout.slope_size.sel(step=0).values[-1] + 0.5) < 0.1


@pytest.mark.slow
@pytest.mark.compute_bound  # 100 steps of 32 width-1024 networks: 90 s at -O0, 75 s optimised
def test_ntp_network_approaches_its_linearization():
    """Lee et al. 2019: a wide NTP network trained by GD stays close to its linearization.
    The relative distance of the trained outputs falls with width; Lee et al. bound it by n^-1/2,
    and the 1/n corrections of Dyer & Gur-Ari (2019) make it fall faster in practice
    (measured while writing this test: slope -0.74 over widths 128..2048, 4 seeds)."""
    net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=1))
    x, xt = sphere(16, 6, 0), sphere(8, 6, 1)
    widths = [128, 256, 512, 1024]
    kw = dict(widths=widths, lr=1.0, steps=100, seeds=8, record_outputs=True, progress_bar=False,
              test=(xt, np.zeros(8)), record_every=100)
    f = ow.train(net, (x, np.sin(x[:, 0])), **kw).test_output.isel(step=-1)
    f_lin = ow.train(net, (x, np.sin(x[:, 0])), linearized=True, **kw).test_output.isel(step=-1)
    rel = np.sqrt(((f - f_lin) ** 2).mean(("seed", "lr", "alpha", "point", "out"))) / np.sqrt(
        (f_lin**2).mean(("seed", "lr", "alpha", "point", "out")))
    slope = np.polyfit(np.log(widths), np.log(rel.values), 1)[0]
    assert rel.values[-1] < 0.05 and -1.2 < slope < -0.4, (rel.values, slope)


def test_observables_against_direct_computation():
    """The metric factories of ow.measure give, inside ow.train, what a direct computation gives."""
    net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=1))
    metrics = {"ntk": ow.measure.ntk_movement(X[:6]), "params": ow.measure.param_movement(),
               "features": ow.measure.feature_movement(X[:6]), "align": ow.measure.kernel_alignment(X[:6], Y[:6]),
               "rank": ow.measure.effective_rank(X[:6])}
    ds, params = ow.train(net, (X, Y), widths=16, lr=0.5, steps=10, record_every=10, metrics=metrics,
                          progress_bar=False, return_params=True)
    model = ow.finite(net, width=16)
    p1 = jax.tree.map(lambda a: a[0, 0, 0], params[16])
    p0 = model.init(jax.random.split(jax.random.key(0))[0], X)
    k1 = ow.empirical_ntk(model.apply, p1, X[:6], implementation="jacobian")
    k0 = ow.empirical_ntk(model.apply, p0, X[:6], implementation="jacobian")
    final = ds.isel(step=-1, width=0, seed=0, lr=0, alpha=0)
    np.testing.assert_allclose(final.ntk, np.linalg.norm(k1 - k0) / np.linalg.norm(k0), rtol=1e-8)
    flat = lambda p: np.concatenate([np.ravel(a) for a in jax.tree.leaves(p)])  # noqa: E731
    np.testing.assert_allclose(final.params, np.linalg.norm(flat(p1) - flat(p0)) / np.linalg.norm(flat(p0)), rtol=1e-8)
    h1 = np.tanh(X[:6] @ (p1[0]["w"] / np.sqrt(5)))  # Dense(w_std=1): W = w / sqrt(fan_in)
    h0 = np.tanh(X[:6] @ (p0[0]["w"] / np.sqrt(5)))
    f1, f0 = h1 @ h1.T / 16, h0 @ h0.T / 16
    np.testing.assert_allclose(final.features, np.linalg.norm(f1 - f0) / np.linalg.norm(f0), rtol=1e-8)
    yy = np.outer(Y[:6], Y[:6])
    np.testing.assert_allclose(final.align, np.sum(k1 * yy) / np.linalg.norm(k1) / np.linalg.norm(yy), rtol=1e-8)
    ev = np.clip(np.linalg.eigvalsh(f1), 0, None)
    pr = ev / ev.sum()
    np.testing.assert_allclose(final["rank"], np.exp(-np.sum(pr[pr > 0] * np.log(pr[pr > 0]))), rtol=1e-8)


def test_result_attrs_record_every_parametrization_field(tmp_path):
    """Regression: the attrs dropped zero_readout, attn and zero_query, so a saved result did not say how it was
    produced. Every field of the Parametrization is recorded and reads back to the same value (also from netCDF)."""
    from owidth._train import param_from_attrs

    param = dataclasses.replace(ow.MUP.with_base_width(4), name="mup-custom", zero_readout=True, attn=0.75,
                                zero_query=True, c_adam=(0.25, 1.0, 0.0))
    ds = ow.train(NET, (X, Y), widths=8, lr=0.1, steps=2, param=param, progress_bar=False)
    fields = [f.name for f in dataclasses.fields(ow.Parametrization)]
    assert {"zero_readout", "attn", "zero_query"} <= set(fields)
    assert all(("param" if f == "name" else f) in ds.attrs for f in fields)
    assert param_from_attrs(ds.attrs) == param
    ds.to_netcdf(tmp_path / "run.nc")
    with xr.open_dataset(tmp_path / "run.nc") as back:
        assert param_from_attrs(back.attrs) == param
    assert param_from_attrs(ow.train(NET, (X, Y), widths=8, lr=0.1, steps=2, progress_bar=False).attrs) == ow.NTP


def test_linearized_training_follows_the_empirical_ntk_closed_form():
    """Lee et al. (2019): gradient descent on the MSE of the centred linearization f_lin - f0 gives
    F(t) = (I - (I - lr K / n)^t) y with K the empirical NTK at initialisation, at any width (here 8)."""
    width, lr, steps = 8, 0.5, 6
    ds = ow.train(NET, (X, Y), widths=width, lr=lr, steps=steps, linearized=True, progress_bar=False)
    model = ow.finite(NET, width=width)
    p0 = model.init(jax.random.split(jax.random.key(0))[0], X)  # ow.train's init key for seed 0
    k = ow.empirical_ntk(model.apply, p0, X, implementation="jacobian")
    pred = ow.predict.gradient_descent(k, y_train=Y, lr=lr, steps=np.arange(steps + 1))
    want = 0.5 * np.mean((np.asarray(pred.mean_train).reshape(steps + 1, -1) - Y) ** 2, axis=1)
    np.testing.assert_allclose(ds.train_loss.values[0, 0, 0, 0], want, rtol=1e-9)


def test_plan_checks_arguments_and_labels_the_result():
    """ow.train = assemble(run(plan(...))); the plan holds the checked arguments and the result's coordinates;
    the implementation module is reachable (the public function no longer shadows it)."""
    import importlib

    mod = importlib.import_module("owidth._train")
    assert mod.train is ow.train and callable(ow.train)
    plan = mod.plan(NET, (X, Y), widths=[8, 16], lr=[0.1, 0.2], gamma0=[0.5, 2.0], seeds=3, steps=20, test=(XT, YT),
                    batch_size=16, progress_bar=False)
    assert plan.widths == (8, 16) and plan.rich_name == "gamma0" and plan.record_every == 1
    assert plan.batch_size is None  # the full batch
    np.testing.assert_array_equal(plan.alphas, [2.0, 0.5])
    ds = mod.execute(plan)
    for name, values in plan.coords().items():
        np.testing.assert_array_equal(ds[name].values, values)
    with pytest.raises(TypeError, match="unexpected keyword"):
        mod.plan(NET, (X, Y), widths=8, lr=0.1, steps=2, lerning_rate=0.1)
    with pytest.raises(ValueError, match="ow.Sweep: steps=10 is not a multiple of record_every=3"):
        mod.plan(NET, (X, Y), widths=8, lr=0.1, steps=10, record_every=3, where="ow.Sweep")


@pytest.mark.slow  # ~10 s (four ow.train programs); the factory's schedule, clipping and betas: tests/test_optim.py
def test_schedule_clip_betas_and_init_params():
    """The new ow.train options (issue 18) against optax written out: a schedule, clipping and Adam's b1 equal
    an explicit optax loop from the same initialisation; init_params resumes an uncentred run exactly."""
    width, steps, lr = 16, 12, 0.05
    schedule = optax.linear_schedule(1.0, 0.1, steps)
    model = ow.finite(NET, width=width, param=ow.MUP.with_base_width(8))
    params = model.init(jax.random.split(jax.random.key(0))[0], X)  # ow.train's init key for seed 0
    tx = ow.mu_optimizer(model, X, "adam", lr=lr, b1=0.5, clip_norm=0.5, schedule=schedule)
    opt = tx.init(params)
    loss = lambda p: 0.5 * jnp.mean((model.apply(p, X)[:, 0] - Y) ** 2)  # noqa: E731
    for _ in range(steps):
        updates, opt = tx.update(jax.grad(loss)(params), opt, params)
        params = optax.apply_updates(params, updates)
    kw = dict(widths=width, param=ow.MUP.with_base_width(8), lr=lr, optimizer="adam", center=False, steps=steps,
              record_every=steps, seeds=1, progress_bar=False)
    ds, final = ow.train(NET, (X, Y), adam_b1=0.5, clip_norm=0.5, schedule=schedule, return_params=True, **kw)
    # 4.5e-8 seen: optax evaluates the schedule in float32, and Adam's sqrt(v) normalisation amplifies rounding
    np.testing.assert_allclose(ds.train_loss.isel(step=-1).item(), loss(params), rtol=1e-6)
    assert ds.attrs["adam_b1"] == 0.5 and ds.attrs["clip_norm"] == 0.5 and "polynomial_schedule" in ds.attrs["schedule"]
    # resume: 12 more steps from the returned parameters = 24 steps in one go (constant schedule, no clipping)
    plain = {**kw, "steps": 2 * steps, "record_every": steps}
    whole = ow.train(NET, (X, Y), **plain)
    _, half = ow.train(NET, (X, Y), return_params=True, **kw)
    resumed = ow.train(NET, (X, Y), init_params=half, **{**kw, "seeds": [0]})
    np.testing.assert_allclose(resumed.train_loss.isel(step=0).item(), whole.train_loss.isel(step=1).item(),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="init_params has nothing for widths"):
        ow.train(NET, (X, Y), init_params={8: half[width]}, **kw)
    with pytest.raises(ValueError, match="shape"):
        ow.train(NET, (X, Y), init_params=jax.tree.map(lambda a: a[..., :1], half[width]), **kw)
