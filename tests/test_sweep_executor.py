"""ow.run_sweep on executors (issue 21): a ProcessPoolExecutor and a dask.distributed LocalCluster give the serial
run's result exactly; a worker killed in the middle of a group is survived (Dask) or reported (a broken process
pool) with nothing written twice or half; bad executors fail before any work."""

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import owidth as ow

# slow: worker processes start JAX and compile every group. compute_bound: the test process compiles at the
# default optimisation level, as the workers do, so the serial and parallel runs are the same programs
pytestmark = [pytest.mark.slow, pytest.mark.compute_bound]


def _sweep(steps=40):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3))
    y = np.sin(x[:, 0])
    net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=1))
    return ow.Sweep(net=net, data=(x, y), widths=[4, 6, 8, 10], lr=[0.1, 0.5], seeds=2, steps=steps,
                    extra={"param": [ow.NTP, ow.MUP, ow.SP]})  # 12 groups


@pytest.fixture
def worker_env(monkeypatch):
    """Workers are fresh processes: give them the test session's JAX configuration through the environment."""
    monkeypatch.setenv("JAX_ENABLE_X64", "1")
    monkeypatch.setenv("JAX_NUMPY_RANK_PROMOTION", "raise")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


def _files(folder):
    return sorted(os.listdir(folder))


def test_process_pool_equals_serial(tmp_path, worker_env):
    sweep = _sweep()
    serial = ow.run_sweep(sweep, tmp_path / "serial", progress=False)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        parallel = ow.run_sweep(sweep, tmp_path / "pool", progress=False, executor=pool)
    assert len(sweep.groups()) == 12
    assert parallel.identical(serial)
    assert _files(tmp_path / "pool") == _files(tmp_path / "serial")


def test_dask_local_cluster_equals_serial_and_survives_a_killed_worker(tmp_path, worker_env):
    distributed = pytest.importorskip("dask.distributed")
    sweep = _sweep(steps=400)
    serial = ow.run_sweep(sweep, tmp_path / "serial", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        parallel = ow.run_sweep(sweep, tmp_path / "dask", progress=False, executor=client)
        assert parallel.identical(serial)
        # SIGKILL one worker process while it trains a group: the nanny restarts it, the scheduler reruns the
        # lost task, the sweep completes identically and no group file is duplicated or half-written
        pids = list(client.run(os.getpid).values())
        import threading

        at_kill = []

        def kill_soon():  # as soon as the first group is written: the others are being trained
            while not list((tmp_path / "fault").glob("group-*.nc")):
                time.sleep(0.01)
            at_kill.append(len(list((tmp_path / "fault").glob("group-*.nc"))))
            os.kill(pids[0], signal.SIGKILL)

        killer = threading.Thread(target=kill_soon)
        killer.start()
        again = ow.run_sweep(sweep, tmp_path / "fault", progress=False, executor=client)
        killer.join()
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # that worker process is gone
    assert at_kill and at_kill[0] < 12, at_kill  # and it was killed in the middle of the sweep
    assert again.identical(serial)
    assert _files(tmp_path / "fault") == _files(tmp_path / "serial")


def test_broken_process_pool_is_reported_and_a_rerun_resumes(tmp_path, worker_env):
    sweep = _sweep(steps=400)
    serial = ow.run_sweep(sweep, tmp_path / "serial", progress=False)
    out = tmp_path / "pool"
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    import threading

    def kill_soon():  # as soon as the first group is written: the others are being trained
        while not list(out.glob("group-*.nc")):
            time.sleep(0.01)
        os.kill(next(iter(pool._processes)), signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    with pytest.raises(RuntimeError, match=r"groups failed .*BrokenProcessPool.*rerun to resume") as err:
        ow.run_sweep(sweep, out, progress=False, executor=pool)
    killer.join()
    pool.shutdown()
    print(err.value)
    assert not [f for f in _files(out) if f.endswith(".tmp")]  # no half-written file left
    written = [f for f in _files(out) if f.endswith(".nc")]
    assert len(written) < 12  # the kill came in the middle
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        resumed = ow.run_sweep(sweep, out, progress=False, executor=pool)
    assert resumed.identical(serial)


def test_bad_executor_fails_before_any_work(tmp_path):
    with pytest.raises(TypeError, match="submit"):
        ow.run_sweep(_sweep(), tmp_path / "x", executor=object())
    with pytest.raises(ValueError, match="retries"):
        ow.run_sweep(_sweep(), tmp_path / "x", executor=None, retries=-1)
    assert not (tmp_path / "x").exists()
