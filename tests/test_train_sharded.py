"""ow.train over several devices (issue 21): the members are split over jax.devices() (jax.shard_map over a
"member" mesh axis); 4 fake CPU devices give the one-device result to float64 roundoff, with one compiled
program per width, also after jax.distributed.initialize (the multi-host entry point, on one host)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_SCRIPT = textwrap.dedent("""
    import collections, json, logging, os, sys
    import jax
    if os.environ.get("COORDINATOR"):  # the multi-host entry point, on one host
        jax.distributed.initialize(coordinator_address=os.environ["COORDINATOR"], num_processes=1, process_id=0)
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_log_compiles", True)
    compiled = collections.Counter()

    class Count(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            for name in ("run_chunk_sharded", "run_chunk"):
                if msg.startswith(f"Finished XLA compilation of jit({name})"):
                    compiled[name] += 1

    logging.getLogger("jax").addHandler(Count())
    import numpy as np
    import owidth as ow
    x = np.random.default_rng(0).standard_normal((12, 3)); y = np.sin(x[:, 0])
    net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=1))
    ds = ow.train(net, (x, y), widths=[8, 16], lr=[0.1, 0.5, 1.0], seeds=3, steps=30, test=(x[:4], y[:4]),
                  record_outputs=True, progress_bar=False, optimizer="adam")
    ds.to_netcdf(sys.argv[1])
    print(json.dumps({"devices": len(jax.devices()), "sharded_compiles": compiled["run_chunk_sharded"],
                      "plain_compiles": compiled["run_chunk"]}))
""")


@pytest.mark.slow  # three fresh processes, ~45 s
def test_four_devices_equal_one(tmp_path):
    import xarray as xr

    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    reports = {}
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    for run, devices, coordinator in (("1", 1, ""), ("4", 4, ""), ("4dist", 4, f"localhost:{port}")):
        flags = os.environ.get("XLA_FLAGS", "") + (f" --xla_force_host_platform_device_count={devices}")
        env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu", "COORDINATOR": coordinator}
        out = subprocess.run([sys.executable, str(script), str(tmp_path / f"{run}.nc")], env=env,
                             capture_output=True, text=True, check=True, timeout=300)
        reports[run] = json.loads(out.stdout.strip().splitlines()[-1])
    assert reports["1"] == {"devices": 1, "sharded_compiles": 0, "plain_compiles": 2}
    assert reports["4"] == reports["4dist"] == {"devices": 4, "sharded_compiles": 2, "plain_compiles": 0}
    with xr.open_dataset(tmp_path / "1.nc") as one:
        for run in ("4", "4dist"):
            with xr.open_dataset(tmp_path / f"{run}.nc") as four:
                assert (one.status.values == four.status.values).all()
                for name in ("train_loss", "test_loss", "test_output"):
                    # 9 members on 4 devices (padded to 12): other per-device batches, equal up to reassociation
                    np.testing.assert_allclose(four[name].values, one[name].values, rtol=1e-12, atol=1e-14)
