"""Local Ray clusters with real Ray: start, status, tasks, scale, list and stop from
another notebook, idle timeout, cleanup after the kernel is killed, failures.

Every test sweeps its clusters' processes (by their environment marker) at the end,
pass or fail, so no Ray process outlives the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from desilab.extensions import (
    ClusterRequest,
    LocalRayBackend,
    ProfileLimits,
    RayLaunchError,
)
from desilab.extensions.ray_cluster import GiB
from desilab.extensions.ray_registry import cluster_dirs, marked_processes, read_json, sweep
from traitlets import default

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LIMITS = ProfileLimits("cpu-test", 2, 4 * GiB, ())


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def registry():
    # not under pytest's tmp_path: concurrent pytest runs of the same account rotate it
    root = Path(tempfile.mkdtemp(prefix="desilab-ray-test-", dir="/tmp"))
    reg = root / "ray"
    yield reg
    for folder in cluster_dirs(reg):  # pass or fail: nothing of ours keeps running
        sweep(folder.name, timeout=10)
        shutil.rmtree(read_json(folder / "spec.json").get("temp_dir", "/nonexistent"), True)
    shutil.rmtree(root, ignore_errors=True)


def backend(registry, **kw) -> LocalRayBackend:
    return LocalRayBackend(
        registry_dir=str(registry),
        token_path=str(registry.parent / "auth_token"),
        limits=LIMITS,
        idle_check_interval=1.0,
        stop_grace=5.0,
        start_timeout=300.0,  # a loaded 2-core machine starts Ray slowly
        service_prefix="/user/alice/",
        **kw,
    )


DRIVER = """
import os, sys, time
{env}
import ray
ray.init(address="{address}", logging_level="ERROR")

@ray.remote(num_cpus=1)
def work(seconds):
    time.sleep(seconds)
    return os.getpid()

print("connected", flush=True)
print("result", ray.get(work.remote({seconds})), flush=True)
"""


def run_driver(info, seconds: float) -> subprocess.Popen:
    """A notebook connecting with the widget's snippet and running one task."""
    env = "\n".join(
        line for line in info.connect_snippet().splitlines() if line.startswith("os.environ")
    )
    code = DRIVER.format(env="import os\n" + env, address=info.address, seconds=seconds)
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_start_status_tasks_scale_list_and_stop_from_another_notebook(registry):
    mine = backend(registry)
    t0 = time.perf_counter()
    info = mine.start(mine.plan(ClusterRequest(workers=1, cpus=1)), owner_pid=os.getpid())
    started = time.perf_counter() - t0
    assert info.status == "ready" and info.workers == 1
    assert info.dashboard_url == f"/user/alice/proxy/{info.dashboard_port}/"
    procs = marked_processes(info.id)
    assert procs, "no process carries the cluster's marker"
    # Ray was given the profile's numbers, not the machine's
    cmd = " ".join(
        psutil.Process(read_json(registry / info.id / "state.json")["nodes"][0]["pid"]).cmdline()
    )
    assert "--num-cpus=1" in cmd and "--object-store-memory=" in cmd
    assert "--dashboard-host=127.0.0.1" in cmd
    status = mine.status(info.id)
    assert len(status.alive_nodes) == 1 and status.cpus == 1 and status.gpus == 0
    assert status.memory == pytest.approx(info.node.total_memory, rel=0.01)

    driver = run_driver(info, seconds=8)
    try:
        seen = wait_for(lambda: mine.status(info.id).running_tasks, 60, "a running task")
        assert seen == 1
        out, _ = driver.communicate(timeout=90)
        assert "result" in out, out
    finally:
        driver.kill()

    other = backend(registry)  # another notebook of the same user
    listed = other.list()
    assert [(i.id, i.address, i.status) for i in listed] == [(info.id, info.address, "ready")]

    info = mine.scale(info.id, 2)
    assert info.workers == 2
    status = wait_for(
        lambda: len((s := mine.status(info.id)).alive_nodes) == 2 and s, 30, "2 nodes"
    )
    assert status.cpus == 2
    with pytest.raises(ValueError, match="asked for 3 workers, your profile cpu-test allows 2"):
        mine.scale(info.id, 3)
    info = mine.scale(info.id, 1)
    wait_for(lambda: len(mine.status(info.id).alive_nodes) == 1, 30, "1 node after scale-down")

    stopped = other.stop(info.id)
    assert stopped.status == "stopped" and "stopped from a notebook" in stopped.message
    assert marked_processes(info.id) == []
    assert other.list() == [] and mine.list(include_stopped=True)[0].status == "stopped"
    for p in procs:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    print(f"start-to-ready {started:.1f} s")


def test_idle_cluster_stops_itself(registry):
    b = backend(registry)
    # kept after its kernel exits: only the idle timeout (or a Stop) ends it
    info = b.start(b.plan(ClusterRequest(cpus=1)), idle_timeout=3, owner_pid=None)
    assert "kept until stopped or idle" in info.owner
    stopped = wait_for(lambda: (i := b.get(info.id)).status == "stopped" and i, 60, "idle stop")
    assert stopped.message == "idle for 3 s with no running tasks"
    # the supervisor writes that state last, then exits
    wait_for(lambda: marked_processes(info.id) == [], 10, "the supervisor to exit")


KERNEL = """
import json, sys
from desilab.extensions import LocalRayBackend, ProfileLimits, RayClusterController
from desilab.extensions.ray_cluster import GiB
backend = LocalRayBackend(registry_dir=sys.argv[1], token_path=sys.argv[2],
                          limits=ProfileLimits("cpu-test", 2, 4 * GiB, ()),
                          start_timeout=300.0)
try:
    info = RayClusterController(backend).start(workers=2, cpus=1, wait=True)
except Exception as e:
    print(f"error: {e}", flush=True)
    raise
print(json.dumps({"id": info.id}), flush=True)
sys.stdin.read()  # a kernel idling until killed
"""


def test_dead_worker_is_noticed_and_killed_kernel_leaves_no_ray_process(registry):
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL, str(registry), str(registry.parent / "auth_token")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = kernel.stdout.readline()
        assert line.startswith("{"), f"the kernel could not start a cluster: {line}"
        cid = json.loads(line)["id"]
        procs = marked_processes(cid)
        names = [p.name() for p in procs]
        assert names.count("raylet") == 2 and "gcs_server" in names, names
        # a worker node dies: the cluster goes on with the head and says so
        state = read_json(registry / cid / "state.json")
        worker = psutil.Process(state["nodes"][1]["pid"])
        next(p for p in worker.children(recursive=True) if p.name() == "raylet").kill()
        state = wait_for(
            lambda: (st := read_json(registry / cid / "state.json"))["workers"] == 1 and st,
            60,
            "the supervisor to notice the dead worker",
        )
        assert state["status"] == "ready"
        assert state["message"].startswith("worker 2 exited unexpectedly")
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(10)
        t0 = time.monotonic()
        wait_for(lambda: marked_processes(cid) == [], 30, "the cluster's processes to exit")
        gone = time.monotonic() - t0
        state = read_json(registry / cid / "state.json")
        assert state["status"] == "stopped"
        assert state["stop_reason"] == (
            f"the notebook kernel that started it (pid {kernel.pid}) exited"
        )
        assert backend(registry).list() == []
        print(f"kernel killed: all {len(procs)} processes gone in {gone:.1f} s")
    finally:
        kernel.kill()


class BadArgsBackend(LocalRayBackend):
    """Fails to start: ``ray start`` refuses its arguments."""

    @default("extra_args")
    def _bad(self):
        return ["--num-cpus=lots"]


def test_failed_start_says_why_and_leaves_nothing(registry):
    b = BadArgsBackend(
        registry_dir=str(registry), token_path=str(registry.parent / "t"), limits=LIMITS
    )
    with pytest.raises(RayLaunchError) as info:
        b.start(b.plan(ClusterRequest(cpus=1)))
    text = str(info.value)
    assert "the head node did not start" in text and "'lots' is not a valid integer" in text
    (folder,) = cluster_dirs(registry)
    assert marked_processes(folder.name) == []
    assert b.list() == []
