"""ow.Sweep / ow.run_sweep / ow.load_sweep: grouped runs, netCDF persistence, resume."""

import json

import numpy as np
import pytest
import xarray as xr

import owidth as ow
from owidth import _train
NET = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=1))
RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 3))
Y = np.sin(X[:, 0])
XT = RNG.normal(size=(4, 3))
YT = np.sin(XT[:, 0])


def param_norm(snap):
    import jax
    import jax.numpy as jnp
    return sum(jnp.sum(p ** 2) for p in jax.tree.leaves(snap.params))


def make_sweep(**over):
    kw = dict(net=NET, data=(X, Y), test=(XT, YT), widths=[4, 8], lr=[0.1, 0.3], seeds=2, alpha=[1.0, 4.0],
              steps=12, record_every=4, extra={"param": [ow.NTP, ow.MUP]}, metrics={"param_norm": param_norm})
    kw.update(over)
    return ow.Sweep(**kw)


@pytest.fixture
def calls(monkeypatch):
    """Counts the groups the sweep trains (one plan executed, i.e. one ow.train, each); ``calls.fail_at = k`` makes
    the k-th (1-based) raise."""

    class Calls:
        n = 0
        fail_at = None

    real = _train.execute

    def counting(*args, **kwargs):
        Calls.n += 1
        if Calls.n == Calls.fail_at:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(_train, "execute", counting)
    return Calls


def test_interrupted_sweep_resumes_only_missing_groups_and_matches_uninterrupted(tmp_path, calls):
    sweep = make_sweep()
    full = sweep.run(tmp_path / "full", progress=False)
    assert calls.n == 4  # 2 widths x 2 params: one ow.train call (one compile) per group
    assert dict(full.sizes) == {"width": 2, "param": 2, "seed": 2, "lr": 2, "alpha": 2, "step": 4}
    assert list(full.train_loss.dims) == ["width", "param", "seed", "lr", "alpha", "step"]
    assert full.param.values.tolist() == ["ntp", "mup"] and full.width.values.tolist() == [4, 8]

    calls.n, calls.fail_at = 0, 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_dir = tmp_path / "resumed"
        ow.run_sweep(sweep, run_dir, progress=False)
    assert sorted(p.name for p in run_dir.glob("*.nc")) == [
        "group-0000_width4_paramntp.nc", "group-0001_width4_parammup.nc"]
    assert sorted(json.loads((run_dir / "manifest.json").read_text())["done"]) == [
        "group-0000_width4_paramntp.nc", "group-0001_width4_parammup.nc"]
    with pytest.raises(ValueError, match="2 of 4 groups missing"):
        ow.load_sweep(run_dir)
    partial = ow.load_sweep(run_dir, allow_partial=True)
    assert (partial.status.sel(width=8) == "missing").all() and (partial.status.sel(width=4) != "missing").all()
    assert np.isnan(partial.train_loss.sel(width=8)).all()

    # a crash can also land between a group's os.replace and the manifest update, or mid-write
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["done"]["group-0001_width4_parammup.nc"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / ".group-0002_width8_paramntp.nc.999.tmp").write_bytes(b"\x89HDF half a file")

    calls.n, calls.fail_at = 0, None
    resumed = ow.run_sweep(sweep, run_dir, progress=False)  # a fresh but equal Sweep would do the same
    assert calls.n == 2  # only the missing width-8 groups; the unrecorded width-4 file is checked and kept
    assert not list(run_dir.glob(".*.tmp"))
    assert len(json.loads((run_dir / "manifest.json").read_text())["done"]) == 4
    xr.testing.assert_identical(resumed, full)
    xr.testing.assert_identical(ow.load_sweep(run_dir), full)

    # rerunning a complete sweep (with an equal, newly built declaration) trains nothing
    calls.n = 0
    again = make_sweep().run(run_dir, progress=False)
    assert calls.n == 0
    xr.testing.assert_identical(again, full)

    # the groups hold what ow.train computes for them
    direct = ow.train(NET, (X, Y), test=(XT, YT), widths=8, lr=[0.1, 0.3], seeds=2, alpha=[1.0, 4.0], steps=12,
                      record_every=4, param=ow.MUP, metrics={"param_norm": param_norm}, progress_bar=False)
    for var in ("train_loss", "test_loss", "param_norm"):
        np.testing.assert_array_equal(full[var].sel(param="mup", width=8).values, direct[var].sel(width=8).values)
    assert (full.status == "ok").all()


def test_files_are_netcdf_and_json_only(tmp_path):
    make_sweep(widths=[4], extra={}).run(tmp_path, progress=False)
    files = sorted(tmp_path.iterdir())
    assert [p.suffix for p in files] == [".nc", ".json"]
    for p in files:
        head = p.read_bytes()[:8]
        assert not head.startswith(b"\x80"), f"{p} looks like a pickle"
        if p.suffix == ".nc":
            assert head == b"\x89HDF\r\n\x1a\n"  # netCDF-4 (HDF5) magic
        else:
            json.loads(p.read_text())
            assert b"pickle" not in p.read_bytes()


def test_corrupted_foreign_and_other_config_are_refused(tmp_path, calls):
    sweep = make_sweep(widths=[4, 8], extra={})
    full = sweep.run(tmp_path, progress=False)
    group = tmp_path / "group-0001_width8.nc"
    good = group.read_bytes()

    # a different configuration in the same folder
    calls.n = 0
    with pytest.raises(ValueError, match="different configuration.*lr"):
        make_sweep(widths=[4, 8], extra={}, lr=[0.1, 0.2]).run(tmp_path, progress=False)
    with pytest.raises(ValueError, match="different configuration.*widths"):
        make_sweep(widths=[4, 16], extra={}).run(tmp_path, progress=False)
    with pytest.raises(ValueError, match="different configuration.*options"):
        make_sweep(widths=[4, 8], extra={}, metrics={"other": lambda snap: 0.0}).run(tmp_path, progress=False)
    with pytest.raises(ValueError, match="different configuration.*data"):
        make_sweep(widths=[4, 8], extra={}, data=(X, Y + 1e-9)).run(tmp_path, progress=False)

    # a truncated group file
    group.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="group-0001_width8.nc.*cannot be read"):
        sweep.run(tmp_path, progress=False)
    with pytest.raises(ValueError, match="group-0001_width8.nc.*SHA-256"):
        ow.load_sweep(tmp_path)
    assert group.read_bytes() == good[: len(good) // 2]  # not overwritten

    # a foreign netCDF file in a group's place, and one beside the groups
    xr.Dataset({"v": ("x", np.arange(3.0))}).to_netcdf(group)
    with pytest.raises(ValueError, match="group-0001_width8.nc.*fingerprint"):
        sweep.run(tmp_path, progress=False)
    group.write_bytes(good)
    xr.Dataset({"v": ("x", np.arange(3.0))}).to_netcdf(tmp_path / "other.nc")
    with pytest.raises(ValueError, match="not groups of this sweep.*other.nc"):
        sweep.run(tmp_path, progress=False)
    (tmp_path / "other.nc").unlink()

    # another group's (valid) file renamed into this group's place
    (tmp_path / "group-0000_width4.nc").rename(tmp_path / "saved.bin")
    (tmp_path / "group-0000_width4.nc").write_bytes(good)
    with pytest.raises(ValueError, match="group-0000_width4.nc.*holds group"):
        sweep.run(tmp_path, progress=False)
    (tmp_path / "saved.bin").replace(tmp_path / "group-0000_width4.nc")
    assert calls.n == 0  # nothing was trained by any refused run

    xr.testing.assert_identical(sweep.run(tmp_path, progress=False), full)
    assert calls.n == 0


def test_gamma0_sweep_over_optimizer_labels_and_validation(tmp_path):
    sweep = ow.Sweep(net=NET, data=(X, Y), widths=4, lr=0.05, gamma0=[0.5, 1.0], steps=4,
                     extra={"optimizer": {"SGD": "sgd", "Adam": "adam"}})
    ds = sweep.run(tmp_path, progress=False)
    assert list(ds.train_loss.dims) == ["width", "optimizer", "seed", "lr", "gamma0", "step"]
    assert ds.optimizer.values.tolist() == ["SGD", "Adam"] and "optimizer" not in ds.attrs
    assert ds.attrs["sweep_fingerprint"] == sweep.fingerprint
    assert not np.allclose(ds.train_loss.sel(optimizer="SGD"), ds.train_loss.sel(optimizer="Adam"))

    with pytest.raises(ValueError, match="both a field"):
        ow.Sweep(net=NET, data=(X, Y), widths=4, lr=0.1, steps=4, optimizer="adam", extra={"optimizer": ["sgd"]})
    with pytest.raises(ValueError, match="cannot be swept"):
        ow.Sweep(net=NET, data=(X, Y), widths=4, lr=0.1, steps=4, extra={"steps": [4, 8]})
    with pytest.raises(ValueError, match="not unique"):
        ow.Sweep(net=NET, data=(X, Y), widths=4, lr=0.1, steps=4, extra={"param": [ow.NTP, ow.NTP]})
    with pytest.raises(ValueError, match="duplicates"):
        ow.Sweep(net=NET, data=(X, Y), widths=[4, 4], lr=0.1, steps=4)
    with pytest.raises(ValueError, match="alpha or gamma0"):
        ow.Sweep(net=NET, data=(X, Y), widths=4, lr=0.1, steps=4, alpha=1.0, gamma0=1.0)
    with pytest.raises(ValueError, match="no manifest"):
        ow.load_sweep(tmp_path / "nowhere")


@pytest.mark.slow  # ~7 s: fresh processes importing owidth
def test_fingerprint_is_stable_across_processes_and_sensitive_to_the_config():
    import subprocess
    import sys

    code = """
import jax.numpy as jnp, numpy as np, owidth as ow
x = np.arange(12.0).reshape(6, 2); y = np.cos(x[:, 0])
net = ow.serial(ow.Dense(), ow.ActivationFn(jnp.tanh), ow.Dense(out=1))  # repr holds a memory address
print(ow.Sweep(net=net, data=(x, y), widths=[4, 8], lr=[0.1], seeds=[0, 1], steps=4,
               metrics={"norm": jnp.linalg.norm}, extra={"param": [ow.NTP, ow.MUP]}).fingerprint)
"""
    env_code = "import jax; jax.config.update('jax_enable_x64', True)\n" + code
    here = subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True, check=True)
    import jax.numpy as jnp

    x = np.arange(12.0).reshape(6, 2)
    net = ow.serial(ow.Dense(), ow.ActivationFn(jnp.tanh), ow.Dense(out=1))
    kw = dict(net=net, data=(x, np.cos(x[:, 0])), widths=[4, 8], lr=[0.1], steps=4,
              metrics={"norm": jnp.linalg.norm}, extra={"param": [ow.NTP, ow.MUP]})
    fp = ow.Sweep(seeds=2, **kw).fingerprint  # seeds=2 is seeds=[0, 1]
    assert here.stdout.strip() == fp
    assert ow.Sweep(seeds=2, **{**kw, "extra": {"param": [ow.NTP, ow.MUP.with_base_width(4)]}}).fingerprint != fp
    assert ow.Sweep(seeds=2, **{**kw, "metrics": {"norm": jnp.linalg.det}}).fingerprint != fp


def test_sweep_takes_ow_train_defaults_and_builds_its_plans():
    """The Sweep's option defaults are ow.train's (read off its signature) and its groups are ow.train plans."""
    import dataclasses
    import inspect

    train_params = inspect.signature(ow.train).parameters
    shared = [f for f in dataclasses.fields(ow.Sweep) if f.name in train_params]
    assert len(shared) >= 20
    for f in shared:
        if f.default is not dataclasses.MISSING:
            assert f.default is train_params[f.name].default, f.name
    sweep = make_sweep(widths=[4, 8], extra={"optimizer": ["sgd", "adam"]})
    whole = sweep.plan()
    assert isinstance(whole, _train.TrainPlan) and whole.widths == (4, 8) and whole.optimizer == "sgd"
    group = sweep.groups()[3]
    plan = sweep.plan(group)
    assert plan.widths == (8,) and plan.optimizer == "adam" and not plan.progress_bar
    assert plan.record_every == 4 and plan.seeds.tolist() == [0, 1]
    with pytest.raises(ValueError, match="ow.Sweep: batch_size=100 exceeds"):
        make_sweep(batch_size=100)
