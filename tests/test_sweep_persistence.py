"""Sweep folders under attack, concurrency and disk errors: manifests naming files outside the folder, manifests of
the wrong shape, two drivers into one folder, failing writes (issue 24)."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import xarray as xr

import owidth as ow
from owidth import _train

NET = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
Y = np.array([1.0, -1.0, 0.0, 1.0])
INVALID = "manifest.json is not a valid sweep manifest: "
NOTHING_LOST = "; nothing was lost: rerun to resume"


def could_not_write(path):
    return rf"could not write {re.escape(str(path))}: "


def make_sweep(**over):
    """Two groups (widths 4 and 8), one seed and one learning rate, two steps: about a second to train."""
    return ow.Sweep(**{**dict(net=NET, data=(X, Y), widths=[4, 8], lr=0.1, steps=2), **over})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep's folder (copy it before changing it) and its dataset."""
    out = tmp_path_factory.mktemp("finished") / "sweep"
    return out, make_sweep().run(out, progress=False)


@pytest.fixture
def folder(finished, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(finished[0], out)
    return out


@pytest.fixture
def calls(monkeypatch):
    """Counts the groups trained (one ``_train.execute`` each)."""

    class Calls:
        n = 0

    real = _train.execute

    def counting(*args, **kwargs):
        Calls.n += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(_train, "execute", counting)
    return Calls


def edit_manifest(out, edit):
    """``edit(manifest)`` changes the manifest in place (returning None) or returns a replacement."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    new = edit(manifest)
    path.write_text(json.dumps(manifest if new is None else new))


def without(field):
    return lambda m: {k: v for k, v in m.items() if k != field}


# --------------------------------------------------------------------------- #
# 1. Path traversal
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_manifest_naming_a_file_outside_the_folder_is_refused(folder, calls, where):
    outside = folder.parent / "outside.nc"
    shutil.copy(folder / "group-0000_width4.nc", outside)  # a valid group file: only its place is wrong
    name = "../outside.nc" if where == "relative" else str(outside)

    def point_outside(m):
        m["groups"][0]["name"] = name
        m["done"][name] = m["done"].pop("group-0000_width4.nc")

    edit_manifest(folder, point_outside)
    (folder / "group-0000_width4.nc").unlink()
    # (long names are shortened with "..." in the message)
    refused = rf"{INVALID}groups\[0\]\.name is '{re.escape(name[:20])}.*, expected 'group-0000_width4.nc'"
    with pytest.raises(ValueError, match=refused):
        ow.load_sweep(folder)
    with pytest.raises(ValueError, match=refused):
        ow.load_sweep(folder, allow_partial=True)
    with pytest.raises(ValueError, match=refused):  # the resume path reads the same manifest
        make_sweep().run(folder, progress=False)
    assert calls.n == 0


@pytest.mark.skipif(os.name != "posix", reason="symbolic links need privileges on Windows")
def test_group_file_linking_outside_the_folder_is_refused(folder, calls):
    outside = folder.parent / "outside.nc"
    (folder / "group-0001_width8.nc").rename(outside)
    (folder / "group-0001_width8.nc").symlink_to(outside)
    with pytest.raises(ValueError, match=r"group-0001_width8.nc resolves to .*outside.nc, outside .*replace the link"):
        ow.load_sweep(folder)
    with pytest.raises(ValueError, match=r"group-0001_width8.nc resolves to .*outside.nc, outside"):
        ow.run_sweep(make_sweep(), folder, progress=False)
    assert calls.n == 0


# --------------------------------------------------------------------------- #
# 2. Strict manifest schema
# --------------------------------------------------------------------------- #
BAD_MANIFESTS = {
    "no groups": (without("groups"), r"missing field\(s\) \['groups'\]"),
    "done a list": (lambda m: m.update(done=[]), r"done must be an object \{group file name: SHA-256\}, got list"),
    "done a string": (lambda m: m.update(done="all"), r"done must be an object .*, got str"),
    "done a number": (lambda m: m.update(done={"group-0000_width4.nc": 5}), r"done\['group-0000_width4.nc'\] must be"),
    "done another file": (lambda m: m["done"].update({"x.nc": "0" * 64}), r"done names 'x.nc', which is not one of"),
    "groups an object": (lambda m: m.update(groups={}), r"groups must be a non-empty list, got \{\}"),
    "group a string": (lambda m: m["groups"].__setitem__(0, "g.nc"), r"groups\[0\] must be an object with the fields"),
    "width a string": (lambda m: m["groups"][1].update(width="8"), r"groups\[1\]\.width must be a positive integer"),
    "labels a list": (lambda m: m["groups"][0].update(labels=[]), r"groups\[0\]\.labels must map each of extra_axes"),
    "unknown axis": (lambda m: m.update(extra_axes=["steps"]), r"extra_axes must be a list of distinct keywords"),
    "fingerprint": (lambda m: m.update(fingerprint=None), r"fingerprint must be a SHA-256 .*, got None"),
    "config a list": (lambda m: m.update(config=[]), r"config must be an object, got list"),
    "rich_name": (lambda m: m.update(rich_name=1), r"rich_name must be 'alpha' or 'gamma0', got 1"),
    "groups reordered": (lambda m: m["groups"].reverse(),
                         r"groups\[0\]\.name is 'group-0001_width8.nc', expected 'group-0000_width8.nc'"),
    "no version": (without("owidth_sweep_format"), r"no owidth_sweep_format field"),
    "version a string": (lambda m: m.update(owidth_sweep_format="1"), r"owidth_sweep_format must be 1, got '1'"),
    "unknown field": (lambda m: m.update(note="hi"), r"unknown field\(s\) \['note'\]"),
    "a list": (lambda m: [m], r"expected a JSON object, got list"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_manifest_of_the_wrong_shape_is_refused_with_what_is_wrong(folder, calls, case):
    edit, what = BAD_MANIFESTS[case]
    edit_manifest(folder, edit)
    fix = r"; it was not written by ow.run_sweep, or was edited or damaged\. Delete it and rerun the same sweep"
    with pytest.raises(ValueError, match=INVALID + what + ".*" + fix):
        ow.load_sweep(folder)
    with pytest.raises(ValueError, match=INVALID + what):
        make_sweep().run(folder, progress=False)
    assert calls.n == 0


def test_manifest_groups_must_form_the_grid_and_bad_json_is_refused(tmp_path):
    # numeric and string labels, axes not in alphabetical order (the manifest's JSON sorts the labels' keys)
    sweep = make_sweep(widths=[4, 8], extra={"weight_decay": [0.0, 1e-5], "param": [ow.NTP, ow.MUP]})
    manifest = {"owidth_sweep_format": 1, "fingerprint": sweep.fingerprint, "config": sweep.describe(),
                "rich_name": "alpha", "extra_axes": ["weight_decay", "param"], "done": {},
                "groups": [{"name": g["name"], "width": g["width"], "labels": g["labels"]} for g in sweep.groups()]}
    assert manifest["groups"][3]["name"] == "group-0003_width4_weight_decay1e-05_parammup.nc"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    with pytest.raises(ValueError, match=r"is incomplete: 8 of 8 groups missing"):  # the manifest itself is valid
        ow.load_sweep(tmp_path)
    del manifest["groups"][7]  # names still right, but width 8 x 1e-05 x mup is missing
    (tmp_path / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    with pytest.raises(ValueError, match=INVALID + r"groups do not form the grid width x weight_decay x param in run"):
        ow.load_sweep(tmp_path, allow_partial=True)
    (tmp_path / "manifest.json").write_text('{"fingerprint": ')
    with pytest.raises(ValueError, match=INVALID + r"not JSON \(Expecting value"):
        ow.load_sweep(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "owidth_sweep_format": 2}))
    with pytest.raises(ValueError, match=r"written by a newer owidth \(sweep format 2; this one reads format 1\)"):
        ow.load_sweep(tmp_path)


def test_manifest_written_by_the_sweep_is_valid_and_names_only_its_groups(finished):
    out, ds = finished
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["owidth_sweep_format"] == 1
    assert [g["name"] for g in manifest["groups"]] == [g["name"] for g in make_sweep().groups()]
    xr.testing.assert_identical(ow.load_sweep(out), ds)


# --------------------------------------------------------------------------- #
# 3. One run per folder
# --------------------------------------------------------------------------- #
HELD = r"another run holds .*sweep \(lock .*\.sweep\.lock\).*If no run uses .* delete .*\.sweep\.lock and rerun"


def test_second_driver_into_the_same_folder_fails_at_once(tmp_path, monkeypatch):
    """Two ``run_sweep`` in two threads: the second raises at once while the first trains, and trains nothing."""
    out = tmp_path / "sweep"
    training, finish = threading.Event(), threading.Event()
    first = None  # the first driver's thread, below
    trained_by = []
    real = _train.execute

    def execute(*args, **kwargs):
        trained_by.append(threading.current_thread())
        if threading.current_thread() is not first:
            raise AssertionError("a second driver trained a group of a folder another run holds")
        training.set()
        finish.wait(timeout=60)
        return real(*args, **kwargs)

    monkeypatch.setattr(_train, "execute", execute)
    result = {}
    first = threading.Thread(target=lambda: result.update(ds=make_sweep().run(out, progress=False)))
    first.start()
    try:
        assert training.wait(timeout=60)
        for run in (lambda: make_sweep().run(out, progress=False),
                    lambda: ow.run_sweep(make_sweep(), out, progress=False)):
            start = time.perf_counter()
            with pytest.raises(RuntimeError, match=HELD) as err:
                run()
            assert time.perf_counter() - start < 5  # at once: no waiting for the lock
            assert str(out) in str(err.value)
    finally:
        finish.set()
        first.join(timeout=120)
    assert not first.is_alive() and "ds" in result
    assert trained_by == [first, first]
    assert not (out / ".sweep.lock").exists()  # removed on release
    assert sorted(p.name for p in out.iterdir()) == ["group-0000_width4.nc", "group-0001_width8.nc", "manifest.json"]
    xr.testing.assert_identical(make_sweep().run(out, progress=False), result["ds"])  # free again


def test_lock_held_by_another_process_and_released_when_it_dies(folder, calls, finished):
    code = ("import sys\nfrom filelock import FileLock\nlock = FileLock(sys.argv[1], timeout=0)\nlock.acquire()\n"
            "print('held', flush=True)\nsys.stdin.read()")
    with subprocess.Popen([sys.executable, "-c", code, str(folder / ".sweep.lock")],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(RuntimeError, match=HELD):
                make_sweep().run(folder, progress=False)
            # the lock file is neither a group file nor a stray one: reading needs no lock
            xr.testing.assert_identical(ow.load_sweep(folder), finished[1])
        finally:
            holder.kill()  # a driver that dies: the system releases its lock, its lock file stays behind
            holder.wait(timeout=30)
    assert (folder / ".sweep.lock").exists()
    xr.testing.assert_identical(make_sweep().run(folder, progress=False), finished[1])
    assert calls.n == 0
    assert not (folder / ".sweep.lock").exists()


# --------------------------------------------------------------------------- #
# 4. Disk errors
# --------------------------------------------------------------------------- #
def _fail_second_group(monkeypatch, error):
    real = xr.Dataset.to_netcdf
    written = []

    def to_netcdf(self, path, *args, **kwargs):
        written.append(path)
        if len(written) == 2:
            raise error
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", to_netcdf)


@pytest.mark.parametrize("error, kind, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), OSError, r"OSError: \[Errno 28\] No space left on device"),
    (RuntimeError("NetCDF: HDF error"), RuntimeError, r"RuntimeError: NetCDF: HDF error"),
])
def test_failing_group_write_says_nothing_was_lost_and_a_rerun_resumes(tmp_path, monkeypatch, calls, finished,
                                                                       error, kind, reason):
    out = tmp_path / "sweep"
    with monkeypatch.context() as patch:
        _fail_second_group(patch, error)
        message = could_not_write(out / "group-0001_width8.nc") + reason + NOTHING_LOST + "$"
        with pytest.raises(kind, match=message) as err:
            make_sweep().run(out, progress=False)
    assert err.value.__cause__ is error
    assert isinstance(err.value, OSError) == isinstance(error, OSError)
    if isinstance(error, OSError):
        assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in out.iterdir()) == ["group-0000_width4.nc", "manifest.json"]  # no lock, no tmp
    calls.n = 0
    xr.testing.assert_identical(make_sweep().run(out, progress=False), finished[1])
    assert calls.n == 1  # only the group that failed


def test_failing_manifest_write(tmp_path, monkeypatch, calls):
    import pathlib

    out = tmp_path / "sweep"
    denied = PermissionError(errno.EACCES, "Permission denied")

    def write_text(self, *args, **kwargs):
        raise denied

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    with pytest.raises(OSError, match=could_not_write(out / "manifest.json") + r"PermissionError: \[Errno 13\] "
                                      r"Permission denied" + NOTHING_LOST + "$") as err:
        make_sweep().run(out, progress=False)
    assert err.value.__cause__ is denied and err.value.errno == errno.EACCES
    assert calls.n == 0 and sorted(p.name for p in out.iterdir()) == []  # no temporary file, no lock file left


def test_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")  # a file where a folder should be
    message = could_not_write(tmp_path / "file" / "sweep") + ".*Error: .*" + NOTHING_LOST
    with pytest.raises(OSError, match=message) as err:
        make_sweep().run(tmp_path / "file" / "sweep", progress=False)
    assert isinstance(err.value.__cause__, OSError)


def test_lock_that_cannot_be_created(tmp_path, monkeypatch, calls):
    import filelock

    out = tmp_path / "sweep"

    def acquire(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(filelock.FileLock, "acquire", acquire)
    with pytest.raises(OSError, match=could_not_write(out / ".sweep.lock") + "PermissionError: .*" + NOTHING_LOST):
        make_sweep().run(out, progress=False)
    assert calls.n == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that bind (not root)")
def test_read_only_folder(folder):
    (folder / "group-0001_width8.nc").unlink()
    folder.chmod(0o555)
    try:
        with pytest.raises(OSError, match="could not write .*" + NOTHING_LOST):
            make_sweep().run(folder, progress=False)
    finally:
        folder.chmod(0o755)
    assert sorted(p.name for p in folder.iterdir()) == ["group-0000_width4.nc", "manifest.json"]
