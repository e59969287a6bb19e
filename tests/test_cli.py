import pytest
"""The console script and the experiment registry."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import xarray as xr

import owidth as ow
from owidth import cli


def test_list(capsys):
    assert cli.main(["list"]) == 0
    assert "ntk-convergence" in capsys.readouterr().out


def test_unknown_experiment(capsys):
    assert cli.main(["run", "no-such-thing"]) == 2
    assert ("available: catapult, coord-check, depth-coord-check, depth-transfer, dmft, double-descent, edge-of-stability, "
            "eps-transfer, finite-width, gradient-coherence, grokking, hessian-spectrum, lazy-rich, learning-curves, "
            "lottery-ticket, mutransfer, mutransfer-transformer") in capsys.readouterr().err


@pytest.mark.slow
def test_wide_vs_kernel_quick(tmp_path, monkeypatch):
    """Trained NTP ensembles approach the kernel prediction like width^-1/2; their variance matches theory."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    summary = ow.experiments.run("wide-vs-kernel", out=tmp_path, quick=True)
    assert summary["slope"] <= -0.35
    assert abs(summary["variance_ratio"] - 1) < 3 * summary["variance_ratio_se"]
    ds = xr.open_dataset(tmp_path / "wide_vs_kernel.nc")
    assert ds.f_test.dims == ("width", "seed", "step", "test")
    # training reduced the train loss of every network
    loss = ((ds.f_train - ds.y_train) ** 2).mean("train")
    assert bool((loss.isel(step=-1) < 0.2 * loss.isel(step=0)).all())
    ds.close()
    assert (tmp_path / "wide_vs_kernel.png").stat().st_size > 10_000


def test_ntk_convergence_quick(tmp_path, capsys, monkeypatch):
    """The README's main job in quick mode: files written, slope near -1/2 printed."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    assert cli.main(["run", "ntk-convergence", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "slope of relative error vs width" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert -0.65 <= summary["slope"] <= -0.35
    ds = xr.open_dataset(tmp_path / "ntk_convergence.nc")
    assert ds.rel_error.dims == ("width", "seed")
    np.testing.assert_allclose(ds.attrs["slope"], summary["slope"])
    # the stored analytic kernel is the library's, the stored errors follow from the stored kernels
    err = np.linalg.norm(ds.ntk_empirical - ds.ntk_analytic, axis=(-2, -1)) / np.linalg.norm(ds.ntk_analytic)
    np.testing.assert_allclose(ds.rel_error, err, rtol=1e-10)
    ds.close()
    assert (tmp_path / "ntk_convergence.png").stat().st_size > 10_000


@pytest.mark.slow  # default suite was 9:59 in CI; these three take ~80 s
def test_coord_check_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):  # as users run it (the test suite turns x64 on)
        summary = ow.experiments.run("coord-check", out=tmp_path, quick=True)
    assert summary["mup_flat"] and summary["sp_readout_update_grows"], summary["step3_slopes"]
    with xr.open_dataset(tmp_path / "coord_check.nc") as ds:
        assert ds["size"].dims == ("param", "width", "seed", "step", "layer")
    assert (tmp_path / "coord_check.png").stat().st_size > 10_000


@pytest.mark.slow  # ~35 s
def test_depth_coord_check_quick(tmp_path, monkeypatch):
    """Residual-MLP coordinates vs depth 4..64: slopes within 0.1 of 0 under depth-muP and CompleteP (the
    stream's size and its update at steps 1..3), above 0.3 under muP."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("depth-coord-check", out=tmp_path, quick=True)
    assert summary["flat"] == {"mup": False, "depth-mup": True, "completep": True}, summary["slopes"]
    assert summary["mup_grows"], summary["slopes"]["mup"]
    with xr.open_dataset(tmp_path / "depth_coord_check.nc") as ds:
        assert ds["size"].dims == ("param", "depth", "seed", "step")
        assert float(ds["out_delta"].sel(param="depth-mup").isel(step=-1).mean()) > 0.01  # training moved it
    assert (tmp_path / "depth_coord_check.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.compute_bound  # 198 residual MLPs of up to 64 blocks, 100 Adam steps each; 84 transformers
def test_depth_transfer_quick(tmp_path, monkeypatch):
    """The best Adam learning rate of residual MLPs stays within one grid step (x2) from depth 4 to 64 under
    depth-muP and CompleteP, and falls by at least two under muP (Tensor Programs VI; CompleteP)."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("depth-transfer", out=tmp_path, quick=True)
    shifts = summary["best_lr_shift_grid_steps"]
    assert abs(shifts["depth-mup"]) <= 1 and abs(shifts["completep"]) <= 1 and shifts["mup"] <= -2, shifts
    lrs = summary["lrs"]
    for p in ("depth-mup", "completep"):  # interior optima: the grid brackets them
        assert lrs[0] < min(summary[p]["best_lr"]) and max(summary[p]["best_lr"]) < lrs[-1], summary[p]
    with xr.open_dataset(tmp_path / "depth_transfer.nc") as ds:
        assert ds.train_loss.dims == ("param", "depth", "seed", "lr", "alpha", "step")
        # the three parametrizations are one network at the base depth: identical losses there
        at_base = ds.train_loss.sel(depth=4)
        np.testing.assert_array_equal(at_base.sel(param="mup"), at_base.sel(param="depth-mup"))
    with xr.open_dataset(tmp_path / "depth_transfer_transformer.nc") as ds:  # the transformer sweep ran and trained
        assert ds.train_loss.dims == ("param", "depth", "seed", "lr", "alpha", "step")
        final = ds.train_loss.isel(step=-1, alpha=0).mean("seed").min("lr")
        assert bool((final < ds.train_loss.isel(step=0, alpha=0).mean(("seed", "lr"))).all())
    assert set(summary["transformer"]["best_lr_shift_grid_steps"]) == {"mup", "depth-mup", "completep"}
    assert (tmp_path / "depth_transfer.png").stat().st_size > 10_000


@pytest.mark.slow  # ~25 s
def test_eps_transfer_quick(tmp_path, monkeypatch):
    """Under muP a fixed Adam epsilon starts to dominate at eps* ~ 1/n (slope -1 +- 0.2); scaled like the
    gradients (scale_eps) eps* is width-independent (slope 0 +- 0.1)."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("eps-transfer", out=tmp_path, quick=True)
    assert abs(summary["slopes"]["fixed"] + 1) <= 0.2 and abs(summary["slopes"]["scaled"]) <= 0.1, summary["slopes"]
    with xr.open_dataset(tmp_path / "eps_transfer.nc") as ds:
        assert ds.final_loss.dims == ("mode", "width", "eps", "seed")
        # at the base width the two modes are the same optimizer: identical losses
        at_base = ds.final_loss.sel(width=64)
        np.testing.assert_array_equal(at_base.sel(mode="fixed"), at_base.sel(mode="scaled"))
        assert bool((ds.final_loss.isel(eps=0) < 0.5 * ds.initial_loss.isel(eps=0)).all())  # small eps: it trains
    assert (tmp_path / "eps_transfer.png").stat().st_size > 10_000


@pytest.mark.slow  # ~100 s
@pytest.mark.compute_bound  # 2 x (5 IMP rounds + 4 x 10 masked networks), 210 steps each
def test_lottery_ticket_quick(tmp_path, monkeypatch):
    """IMP with rewinding to step 10 keeps the dense test accuracy within 1 point at density 0.2 (seed mean,
    NTP and muP) while the same mask reinitialised falls behind; every mask keeps its density and every
    method trains above chance."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("lottery-ticket", out=tmp_path, quick=True)
    assert summary["ticket_ok"], summary["checks"]
    np.testing.assert_allclose(summary["densities"], 0.2 ** (np.arange(5) / 4))
    with xr.open_dataset(tmp_path / "lottery_ticket.nc") as ds:
        assert ds.test_accuracy.dims == ("param", "pruning", "density", "seed")
        assert bool((ds.test_accuracy > 0.5).all())  # chance is 0.1
        dense = ds.test_accuracy.isel(density=0)
        np.testing.assert_array_equal(dense, dense.isel(pruning=0).broadcast_like(dense))
    assert (tmp_path / "lottery_ticket.png").stat().st_size > 10_000


@pytest.mark.slow  # ~30-40 s at -O0 (6 trainings, 6 Lanczos and 6 SLQ programs)
def test_hessian_spectrum_quick(tmp_path, monkeypatch):
    """Trained ReLU MLPs on 2, 5 and 10 digit classes: the Hessian has C - 1 outliers above the bulk for
    cross-entropy and C for MSE (the softmax Hessian diag(p) - p p^T annihilates the all-ones vector); the SLQ
    density integrates to 1, its largest node is Lanczos's top eigenvalue, and its mass above the gap is the
    outliers' share count / D within the probes' sampling error."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("hessian-spectrum", out=tmp_path, quick=True)
    from owidth.experiments.hessian_spectrum import expected, outliers

    for loss in ("xent", "mse"):
        counts = [summary["counts"][loss][str(c)]["64"] for c in (2, 5, 10)]
        assert counts == [expected(loss, c) for c in (2, 5, 10)], (loss, counts)
    assert summary["fraction_exact"] == 1.0 and summary["counts_ok"]
    assert summary["density_integral_max_error"] < 1e-3
    assert summary["slq_top_node_vs_lanczos_max_rel"] < 1e-3
    with xr.open_dataset(tmp_path / "hessian_spectrum.nc") as ds:
        assert ds.top_eigenvalues.dims == ("loss", "classes", "width", "rank")
        top = ds.top_eigenvalues.values
        assert bool((np.diff(top, axis=-1) <= 1e-6 * np.abs(top[..., :1])).all())  # descending
        np.testing.assert_allclose(ds.slq_weights.sum("node"), 1.0, atol=1e-4)  # each probe's quadrature weights
        for loss in ds.loss.values:
            for c in ds.classes.values:
                eigs = ds.top_eigenvalues.sel(loss=loss, classes=c, width=64).values
                k, ratio = outliers(eigs)
                assert k == int(ds.outliers.sel(loss=loss, classes=c, width=64)) and ratio > 2.5, (loss, c, ratio)
                # SLQ's mass above the gap estimates k / D: chi^2_(probes k) / (probes D), relative SE sqrt(2 / (probes k))
                nodes = ds.slq_nodes.sel(loss=loss, classes=c, width=64).values
                weights = ds.slq_weights.sel(loss=loss, classes=c, width=64).values
                mass = weights[nodes > np.sqrt(eigs[k - 1] * eigs[k])].sum() / nodes.shape[0]
                share = k / int(ds.params.sel(loss=loss, classes=c, width=64))
                assert abs(mass / share - 1) < 4 * np.sqrt(2 / (nodes.shape[0] * k)), (loss, c, mass / share)
    assert (tmp_path / "hessian_spectrum.png").stat().st_size > 10_000


@pytest.mark.slow  # ~27-33 s (compile-bound: faster at -O0 than marked compute_bound)
def test_edge_of_stability_quick(tmp_path, monkeypatch):
    """Full-batch GD at 2/lr = k x the initial sharpness, k = 1.15, 1.25, 1.4, 2 (Cohen et al. 2021): under SP,
    NTP and muP the three largest learning rates sharpen to 2/lr and then stay within 10% of it at more than
    half of the remaining records; the smallest never gets there."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("edge-of-stability", out=tmp_path, quick=True)
    assert summary["eos_ok"], summary["runs"]
    for name in ("sp", "ntp", "mup"):
        run = summary["runs"][name]["64"]
        assert run["at_edge"] == 3 and run["reach_step"][-1] == -1, (name, run)
        assert all(s == "ok" for s in run["status"]), run  # at the edge, not diverging
    with xr.open_dataset(tmp_path / "edge_of_stability.nc") as ds:
        assert ds.sharpness.dims == ("param", "width", "k", "step")
        # 2/lr is k times the recorded step-0 sharpness: the lrs were set at ow.train's own initialisation
        s0 = ds.sharpness.isel(step=0)
        np.testing.assert_allclose(2 / (ds.lr * s0), ds.k.broadcast_like(ds.lr), rtol=1e-3)
        # muP at its base width is NTP: the same training, record for record
        np.testing.assert_allclose(ds.sharpness.sel(param="mup"), ds.sharpness.sel(param="ntp"), rtol=1e-5)
        # each run at the edge ends near its own 2/lr: the plateau is set by the learning rate
        final = (ds.sharpness.isel(step=-1) * ds.lr / 2).where(ds.at_edge)
        assert float(abs(final - 1).max()) <= 0.1, final.values
        assert bool((ds.train_loss.isel(step=-1) < 0.1 * ds.train_loss.isel(step=0)).all())  # training goes on
    assert (tmp_path / "edge_of_stability.png").stat().st_size > 10_000


@pytest.mark.slow  # ~15 s
def test_catapult_quick(tmp_path, monkeypatch):
    """Wide NTP ReLU nets at lr = c 2/lambda0 (Lewkowycz et al. 2020): lazy for c < 1 (top NTK eigenvalue within
    5% of lambda0, no loss spike); for 1 < c <= 1.6 a loss spike, convergence (final loss < 1% of the initial)
    and a final top NTK eigenvalue below lambda0 and below 2/lr; divergence for c >= 2.2."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("catapult", out=tmp_path, quick=True)
    assert summary["checks"] == {"lazy_ok": True, "catapult_ok": True, "divergent_ok": True}, summary
    assert summary["phases_ok"] and summary["init_lambda_match"] < 1e-4  # lambda0 is the step-0 record
    with xr.open_dataset(tmp_path / "catapult.nc") as ds:
        assert ds.ntk_top.dims == ("width", "seed", "c", "step")
        phase = ds.phase.isel(width=0)
        for c, want in ((0.5, "lazy"), (1.2, "catapult"), (3.0, "divergent")):
            assert (phase.sel(c=c) == want).all(), (c, phase.sel(c=c).values)
        # the learning rates are c 2 / lambda0 of each seed's own initialisation
        np.testing.assert_allclose(ds.lr * ds.lambda0 / 2, ds.c.broadcast_like(ds.lr), rtol=1e-6)
        # in the catapult phase the kernel's top eigenvalue falls below 2/lr (in units of lambda0: 1/c)
        final = (ds.ntk_top.isel(step=-1) / ds.lambda0).sel(c=[1.1, 1.2, 1.4, 1.6])
        assert bool((final < 1 / final.c).all()), final.values
    assert (tmp_path / "catapult.png").stat().st_size > 10_000


@pytest.mark.slow  # ~20 s
def test_finite_width_quick(tmp_path, monkeypatch):
    """ReLU MLPs with 3 hidden layers at widths 16..64 (10000 networks each): the connected four-point function's
    error without the 1/n vertex falls like 1/n, with it faster than 1/n^1.5 and at least 10x smaller at width 64;
    the covariance error without K1/n falls like 1/n (slope within 0.35 of -1); the NTK's relative variance
    matches ntk_variance within 4 SE with one hidden layer (exact there) and grows with depth; the NTK's mean
    matches ntk_correction within 4 SE at width 16; after 10 GD steps
    the 1/n-corrected mean prediction is closer to the ensemble mean than the infinite-width one at width 64 and
    within 3 SE of it at 64 and 256."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("finite-width", out=tmp_path, quick=True)
    slopes = summary["slopes"]
    assert abs(slopes["four_point_uncorrected"] + 1) < 0.35 and slopes["four_point_corrected"] <= -1.5, slopes
    assert abs(slopes["nngp_uncorrected"] + 1) < 0.35, slopes
    assert max(summary["four_point_corrected_over_uncorrected_widest"]) < 0.1, summary
    with xr.open_dataset(tmp_path / "finite_width.nc") as ds:
        assert ds.kurtosis_monte_carlo.dims == ("hidden_layers", "width")
        # deeper nets are more non-Gaussian at every width (depth-to-width ratio)
        assert bool((ds.kurtosis_theory.sel(hidden_layers=3) > ds.kurtosis_theory.sel(hidden_layers=1)).all())
        assert bool((ds.kurtosis_monte_carlo.sel(hidden_layers=3) > ds.kurtosis_monte_carlo.sel(hidden_layers=1)).all())
        # the NTK's relative variance: exact at any width with one hidden layer, larger for deeper nets
        assert abs(float(ds.ntk_relative_variance_monte_carlo.sel(hidden_layers=1)[-1]
                         - ds.ntk_relative_variance_theory.sel(hidden_layers=1)[-1])) < 4 * float(
            ds.ntk_relative_variance_se.sel(hidden_layers=1)[-1])
        assert bool((ds.ntk_relative_variance_theory.sel(hidden_layers=3)
                     > ds.ntk_relative_variance_theory.sel(hidden_layers=1)).all())
        # the NTK's mean: n (E Theta - H) at the smallest width (16000 networks) within 4 SE of H1
        mc, h1, se = (ds[f"ntk_mean_correction_{k}"].isel(ntk_width=0).values for k in ("monte_carlo", "theory", "se"))
        assert bool((abs(mc - h1) < 4 * se).all()), (mc, h1, se)
        # gradient descent: the 1/n-corrected mean prediction is closer to the ensemble mean at width 64, and
        # within 3 SE of it at every width (20000 networks each)
        gd = ds[["gd_error_corrected", "gd_error_uncorrected", "gd_error_noise"]].to_array().values
        assert gd[0, 0] < gd[1, 0] and bool((gd[0] < 3 * gd[2]).all()), gd
    assert (tmp_path / "finite_width.png").stat().st_size > 10_000


@pytest.mark.slow  # default suite was 9:59 in CI; these three take ~80 s
@pytest.mark.compute_bound  # 132 networks, 150 Adam steps each: 184 s at -O0, 138 s optimised
def test_mutransfer_quick(tmp_path, monkeypatch):
    """The best Adam learning rate stays within one grid step (x2) under muP and drifts under SP."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):  # as users run it (the test suite turns x64 on)
        summary = ow.experiments.run("mutransfer", out=tmp_path, quick=True)
    assert abs(summary["mup"]["shift_grid_steps"]) <= 1 and summary["sp"]["shift_grid_steps"] < -1, summary
    lrs = summary["lrs"]
    assert lrs[0] < min(summary["mup"]["best_lr"]) and max(summary["mup"]["best_lr"]) < lrs[-1]  # interior optimum
    with xr.open_dataset(tmp_path / "mutransfer.nc") as ds:
        assert ds.test_loss.dims == ("param", "width", "seed", "lr", "alpha", "step")
        # under muP the loss-vs-lr curves of different widths nearly coincide (they converge as n grows)
        final = ds.test_loss.isel(step=-1, alpha=0).mean("seed")
        gap = lambda p: float(abs(final.sel(param=p, width=512) - final.sel(param=p, width=128)).max())  # noqa: E731
        assert gap("mup") < 0.1 < gap("sp")
    assert (tmp_path / "mutransfer.png").stat().st_size > 10_000


@pytest.mark.slow  # ~32 s; laziness growing with alpha by default: test_train.test_larger_alpha_is_lazier
def test_lazy_rich_quick(tmp_path, monkeypatch):
    """Kernel movement ~ 1/alpha (slope -1 +- 0.15); it falls with width under NTP at least as fast as
    the n^-1/2 bound (for tanh it is ~ n^-1, Dyer & Gur-Ari 2019) and stays O(1) under muP (+-0.15)."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("lazy-rich", out=tmp_path, quick=True)
    fits = summary["fits"]
    assert abs(fits["ntp_vs_alpha"]["slope"] + 1) < 0.15, fits
    assert fits["ntp_vs_width"]["slope"] < -0.5 - 2 * fits["ntp_vs_width"]["slope_se"], fits
    assert abs(fits["mup_vs_width"]["slope"]) < 0.15, fits
    with xr.open_dataset(tmp_path / "lazy_rich.nc") as ds:
        assert ds.ntk_movement.dims == ("param", "width", "seed", "lr", "alpha", "step")
    assert (tmp_path / "lazy_rich.png").stat().st_size > 10_000


@pytest.mark.slow  # default suite was 9:59 in CI; these three take ~80 s
@pytest.mark.compute_bound  # the Monte Carlo DMFT sweep: 90 s at -O0, 71 s optimised
def test_dmft_quick(tmp_path, monkeypatch):
    """muP networks approach the DMFT as width grows; gamma0 -> 0 is the NTK prediction; richer is faster."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    summary = ow.experiments.run("dmft", out=tmp_path, quick=True)
    assert summary["lazy_relative_error"] < 1e-6
    for g in ("0.5", "1.0", "2.0"):
        assert summary["fits"][f"linear_gamma0_{g}"]["slope"] < -0.3, summary["fits"]
    loss = summary["loss_at_half"]
    assert loss["0"] > loss["0.5"] > loss["1"] > loss["2"], loss
    gain = summary["alignment_gain"]
    assert gain["0"] < gain["0.5"] < gain["1"] < gain["2"], gain
    with xr.open_dataset(tmp_path / "dmft.nc") as ds:
        assert ds.f_net.dims == ("gamma0", "width", "seed", "step", "train")
        np.testing.assert_allclose(ds.f_dmft.sel(gamma0=0.0), ds.f_ntk_prediction, atol=1e-6)
    assert (tmp_path / "dmft.png").stat().st_size > 10_000


def test_console_script_installed():
    exe = shutil.which("owidth") or str(pathlib.Path(sys.executable).parent / "owidth")
    out = subprocess.run([exe, "list"], capture_output=True, text=True, check=True)
    assert "ntk-convergence" in out.stdout and "wide-vs-kernel" in out.stdout


def test_public_api():
    for name in ow.__all__:
        assert hasattr(ow, name), name
