"""Ray widget logic, headless: profile bounds, the controller and the view over the
in-process test double, with failure-injecting subclasses (slow, failing, dying)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from desilab.extensions import (
    ClusterInfo,
    ClusterRequest,
    InProcessRayBackend,
    LocalRayBackend,
    ProfileLimitError,
    ProfileLimits,
    RayClusterController,
    RayClusterWidget,
    RayLaunchError,
)
from desilab.extensions.ray_cluster import (
    GiB,
    _parse_usage,
    plan_cluster,
    proxied_dashboard_url,
)
from traitlets.config import Config

SMALL = ProfileLimits("cpu-small", 1, 2 * GiB, ())
LARGE = ProfileLimits("cpu-large", 4, 9 * GiB, ())
GPU = ProfileLimits("gpu", 4, 17 * GiB, ("2", "3"))


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- failure-injecting doubles ----------------------------------------------------------


class SlowStartBackend(InProcessRayBackend):
    """Each start step takes a while (like a loaded machine)."""

    def __init__(self, **kw):
        super().__init__(step_delay=0.3, **kw)


class FailingStartBackend(InProcessRayBackend):
    def launch(self, info, progress):
        progress("starting the head node", 0.1)
        raise RayLaunchError("the head node did not start: port 6379 is in use")


class DyingBackend(InProcessRayBackend):
    """Starts, then the head node dies: the record turns failed, status fails."""

    def kill(self, cid):
        self.clusters[cid] = replace(
            self.clusters[cid],
            status="failed",
            address="",
            message="the head node exited unexpectedly (code 1): raylet killed by the OOM killer",
        )


class FailingScaleBackend(InProcessRayBackend):
    def resize(self, info, workers, progress):
        raise RayLaunchError("worker 2 did not start: raylet timed out")


# -- profile bounds -----------------------------------------------------------------------


def test_limits_come_from_the_spawners_environment():
    env = {
        "DESILAB_PROFILE": "gpu",
        "DESILAB_CPU_LIMIT": "4",
        "DESILAB_MEM_LIMIT": str(16 * GiB),
        "DESILAB_GPUS": "1,3",
        "CUDA_VISIBLE_DEVICES": "",  # a CPU kernel on a GPU profile
    }
    assert ProfileLimits.from_env(env) == ProfileLimits("gpu", 4, 16 * GiB, ("1", "3"))
    outside = ProfileLimits.from_env({"CUDA_VISIBLE_DEVICES": "0"})
    assert outside.profile == "(no desilab profile)" and outside.gpus == ("0",)
    assert outside.cpus >= 1 and outside.memory > 0


def test_default_plan_uses_the_profile_and_sizes_the_object_store():
    plan = plan_cluster(ClusterRequest(), LARGE, reserved_memory=GiB, object_store_fraction=0.3)
    assert plan.workers == 1
    node = plan.nodes[0]
    assert node.cpus == 4 and node.gpus == 0
    assert node.total_memory == 8 * GiB
    assert node.object_store_memory == int(8 * GiB * 0.3)
    # 1-CPU workers get the CPU share of memory, so the cluster can scale to 4
    plan = plan_cluster(ClusterRequest(workers=2, cpus=1), LARGE)
    assert [n.total_memory for n in plan.nodes] == [2 * GiB, 2 * GiB]
    assert plan_cluster(ClusterRequest(workers=4, cpus=1), LARGE).workers == 4


def test_gpus_are_split_between_workers_never_shared():
    plan = plan_cluster(ClusterRequest(workers=2, cpus=2, gpus=1), GPU)
    assert [n.gpu_ids for n in plan.nodes] == [("2",), ("3",)]


@pytest.mark.parametrize(
    "limits, request_, message",
    [
        (SMALL, ClusterRequest(cpus=8), "asked for 8 CPUs, your profile cpu-small allows 1"),
        (
            LARGE,
            ClusterRequest(workers=3, cpus=2),
            "asked for 6 CPUs (3 workers × 2), your profile cpu-large allows 4",
        ),
        (SMALL, ClusterRequest(workers=2), "asked for 2 workers, your profile cpu-small allows 1"),
        (SMALL, ClusterRequest(gpus=1), "asked for 1 GPU, your profile cpu-small has none"),
        (
            GPU,
            ClusterRequest(workers=2, cpus=1, gpus=2),
            "asked for 4 GPUs (2 workers × 2), your profile gpu allows 2",
        ),
        (
            SMALL,
            ClusterRequest(memory=3 * GiB),
            "asked for 3.0 GiB of memory, your profile cpu-small allows 1.0 GiB for Ray workers "
            "(2.0 GiB limit minus 1.0 GiB kept",
        ),
        (
            ProfileLimits("tiny", 1, GiB + 100 * 1024**2, ()),
            ClusterRequest(),
            "your profile tiny has 1.1 GiB of memory and 1.0 GiB of it is kept",
        ),
        (SMALL, ClusterRequest(workers=0), "a cluster needs at least 1 worker"),
    ],
)
def test_requests_beyond_the_profile_are_refused_in_plain_words(limits, request_, message):
    with pytest.raises(ProfileLimitError) as info:
        plan_cluster(request_, limits)
    assert message in str(info.value)


def test_dashboard_link_goes_through_the_proxy_under_the_users_prefix(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    assert proxied_dashboard_url(8265) == "/user/alice/proxy/8265/"
    assert proxied_dashboard_url(8265, "/user/bob") == "/user/bob/proxy/8265/"
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX")
    assert proxied_dashboard_url(8265) == "/proxy/8265/"


def test_connect_snippet_names_the_token_only_when_not_rays_default():
    info = ClusterInfo(id="a", name="a", backend="local", status="ready", address="127.0.0.1:6")
    assert info.connect_snippet() == 'import ray\nray.init(address="127.0.0.1:6")'
    info.token_path = "/srv/t"
    assert 'os.environ["RAY_AUTH_TOKEN_PATH"] = "/srv/t"' in info.connect_snippet()


def test_usage_text_from_the_dashboard_is_parsed():
    text = "1.0/2.0 CPU\n0B/2.10GiB memory\n0.5/1.0 GPU\n0B/921.60MiB object_store_memory"
    assert _parse_usage(text) == {"CPU": 1.0, "GPU": 0.5}


def test_idle_timeout_and_limits_are_configurable_traits_with_help():
    cfg = Config({"LocalRayBackend": {"idle_timeout": 60.0, "reserved_memory": 2 * GiB}})
    backend = LocalRayBackend(config=cfg, limits=LARGE)
    assert backend.idle_timeout == 60.0 and backend.reserved_memory == 2 * GiB
    assert LocalRayBackend().idle_timeout == 1800.0
    for name in ("idle_timeout", "reserved_memory", "object_store_fraction", "registry_dir"):
        assert backend.trait_metadata(name, "help"), name
        assert backend.trait_metadata(name, "config"), name


def test_server_config_enables_the_proxy_and_the_dask_panel():
    path = Path(__import__("desilab.extensions").extensions.CONFIG_DIR)
    cfg = json.loads((path / "jupyter_server_config.d" / "desilab.json").read_text())
    ext = cfg["ServerApp"]["jpserver_extensions"]
    for name in (
        "desilab.extensions",
        "jupyter_server_proxy",
        "dask_labextension",
        "desilab.extensions.dask_config",
    ):
        assert ext[name] is True, name


# -- controller over the test double ----------------------------------------------------------


def controller(backend_cls=InProcessRayBackend, limits=LARGE, **kw):
    return RayClusterController(backend_cls(limits=limits, **kw), status_interval=0.05)


def test_start_status_scale_stop_list():
    c = controller()
    seen = []
    c.subscribe(lambda s: seen.append((s.phase, s.message)))
    c.start(workers=1, cpus=1).result(5)
    state = c.state
    assert state.phase == "ready" and not state.busy and state.error == ""
    assert state.cluster.workers == 1 and state.cluster.dashboard_url.endswith("/proxy/48265/")
    assert "ray.init(address=" in c.connect_snippet
    assert ("starting", "starting the head node") in seen
    assert c.start_seconds is not None and c.start_seconds >= 0
    wait_for(lambda: c.state.status is not None, what="live status")
    c.backend.running_tasks[c.cluster.id] = 1
    wait_for(lambda: c.state.status.running_tasks == 1, what="running task in status")
    assert c.state.status.cpus_used == 1.0
    c.scale(3).result(5)
    assert c.state.cluster.workers == 3
    wait_for(lambda: len(c.state.status.alive_nodes) == 3, what="3 nodes")
    c.scale(1).result(5)
    assert [i.id for i in c.backend.list()] == [c.cluster.id]
    c.stop().result(5)
    assert c.state.phase == "stopped" and c.backend.list() == []
    c.close()


def test_work_runs_off_the_main_thread_with_progress():
    c = controller(SlowStartBackend)
    fractions = []
    c.subscribe(lambda s: fractions.append(s.progress))
    t0 = time.monotonic()
    future = c.start(cpus=1)
    assert time.monotonic() - t0 < 0.2, "start blocked the caller"
    assert c.state.busy and c.state.phase == "starting"
    assert threading.current_thread() is threading.main_thread()
    # a second Start while starting is refused, not queued
    with pytest.raises(RayLaunchError):
        c.start(cpus=1).result(1)
    assert "still starting" in c.state.error
    future.result(5)
    assert c.state.phase == "ready"
    assert [f for f in fractions if f is not None] == sorted(f for f in fractions if f is not None)
    c.stop().result(5)
    c.close()


def test_refusals_appear_inline_and_nothing_starts():
    c = controller(limits=SMALL)
    with pytest.raises(ProfileLimitError):
        c.start(cpus=8).result(1)
    assert (
        c.state.error == "Could not start a cluster: asked for 8 CPUs, your profile "
        "cpu-small allows 1"
    )
    assert c.backend.list() == [] and c.state.phase == "idle"
    c.start().result(5)
    with pytest.raises(ProfileLimitError):
        c.scale(2).result(1)
    assert "asked for 2 workers, your profile cpu-small allows 1" in c.state.error
    assert c.state.cluster.workers == 1
    c.close()


def test_failed_start_is_reported_in_plain_words():
    c = controller(FailingStartBackend)
    with pytest.raises(RayLaunchError):
        c.start(cpus=1).result(5)
    state = c.state
    assert state.phase == "failed" and not state.busy
    assert state.error == (
        "Could not start the cluster: the head node did not start: port 6379 is in use"
    )
    # the user can try again
    assert c.start(cpus=1)  # refused only by the double's failure, not by state
    c.close()


def test_failed_scale_keeps_the_cluster_and_says_why():
    c = controller(FailingScaleBackend)
    c.start(cpus=1).result(5)
    with pytest.raises(RayLaunchError):
        c.scale(2).result(5)
    assert c.state.phase == "ready" and c.state.cluster.live
    assert c.state.error == "Could not scale to 2 workers: worker 2 did not start: raylet timed out"
    c.close()


def test_a_cluster_that_dies_is_noticed_and_explained():
    c = controller(DyingBackend)
    c.start(cpus=1).result(5)
    c.backend.kill(c.cluster.id)
    wait_for(lambda: c.state.phase == "failed", what="failed phase")
    assert "head node exited unexpectedly" in c.state.message
    assert c.connect_snippet == "" and c.dashboard_url == ""
    c.close()


def test_idle_clusters_are_stopped_with_the_reason():
    c = controller(idle_timeout=0.2)
    c.start(cpus=1).result(5)
    wait_for(lambda: (c.backend.tick() or True) and c.state.phase == "stopped", what="idle stop")
    assert "idle for 0.2 s with no running tasks" in c.state.message


def test_any_notebook_lists_and_stops_the_users_clusters():
    backend = InProcessRayBackend(limits=LARGE)
    mine = RayClusterController(backend, status_interval=0.05)
    other = RayClusterController(backend, status_interval=0.05)
    mine.start(cpus=1).result(5)
    other.refresh().result(5)
    assert [i.id for i in other.state.clusters] == [mine.cluster.id]
    other.stop(mine.cluster.id).result(5)
    wait_for(lambda: mine.state.phase == "stopped", what="owner noticing the stop")
    assert other.state.clusters == ()
    mine.close()
    other.close()


# -- the view ------------------------------------------------------------------------------------


def test_widget_view_renders_state_and_forwards_clicks(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    w = RayClusterWidget(backend=InProcessRayBackend(limits=LARGE), status_interval=0.05)
    assert w.cpus.value == 4 and w.workers.max == 4 and w.gpus.max == 0
    w.cpus.value = 1
    w.start_button.click()
    wait_for(lambda: w.controller.state.phase == "ready", what="ready")
    wait_for(lambda: "Nodes" in w.table.value, what="status table")
    assert 'href="/user/alice/proxy/48265/"' in w.link.value
    assert "ray.init(address=" in w.snippet.value
    assert w.start_button.disabled and not w.stop_button.disabled
    wait_for(
        lambda: (
            len(w.clusters_box.children) == 1 and hasattr(w.clusters_box.children[0], "children")
        ),
        what="cluster row",
    )
    row = w.clusters_box.children[0]
    assert "(this notebook)" in row.children[0].value
    w.workers.value = 2
    w.scale_button.click()
    wait_for(lambda: w.controller.state.cluster.workers == 2, what="scaled")
    row.children[1].click()  # Stop in the list of my clusters
    wait_for(lambda: w.controller.state.phase == "stopped", what="stopped")
    assert w.link.value == "" and w.snippet.value == "" and not w.start_button.disabled
    w.close()


def test_widget_shows_backend_errors_inline():
    w = RayClusterWidget(backend=FailingStartBackend(limits=LARGE), status_interval=0.05)
    w.start_button.click()
    wait_for(lambda: w.controller.state.phase == "failed", what="failure")
    assert "port 6379 is in use" in w.error.value and "color:#b00020" in w.error.value
    assert w.progress.bar_style == "danger"
    w.cpus.value = 1
    w.workers.value = 4
    w.gpus.max = 4
    w.gpus.value = 1
    w.start_button.click()
    assert "asked for 4 GPUs (4 workers × 1), your profile cpu-large has none" in w.error.value
    w.close()


# -- the local registry, without Ray ------------------------------------------------------------


def test_stale_records_are_cleaned_and_their_processes_killed(tmp_path):
    """A cluster whose supervisor died (SIGKILL, OOM) is found by any notebook's list():
    its leftover processes, found by their environment marker, are killed."""
    import os
    import subprocess
    import sys

    from desilab.extensions.ray_registry import MARKER, identity, marked_processes, write_json

    backend = LocalRayBackend(registry_dir=str(tmp_path / "reg"), limits=LARGE, stop_grace=2.0)
    folder = tmp_path / "reg" / "dead0001"
    folder.mkdir(parents=True)
    leftover = subprocess.Popen(  # e.g. a Ray agent orphaned by the dead supervisor
        [sys.executable, "-c", "import time; time.sleep(300)"],
        env=dict(os.environ, **{MARKER: "dead0001"}),
    )
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_json(
        folder / "spec.json",
        {
            "id": "dead0001",
            "created": time.time() - 100,
            "temp_dir": str(tmp_path / "ray-temp"),
            "nodes": [],
        },
    )
    write_json(folder / "supervisor.json", {"pid": gone.pid, "create_time": 1.0})
    write_json(folder / "state.json", {"status": "ready", "workers": 1, "dashboard_port": 1})
    (tmp_path / "ray-temp").mkdir()
    try:
        wait_for(lambda: marked_processes("dead0001"), what="the marked process")
        assert backend.list() == []
        leftover.wait(10)  # killed (and reaped by the sweep: its code is lost)
        assert marked_processes("dead0001") == []
        info = backend.list(include_stopped=True)[0]
        assert info.status == "failed" and "exited unexpectedly" in info.message
        assert not (tmp_path / "ray-temp").exists()
        # the record is pruned once it is older than keep_stopped
        backend.keep_stopped = 0
        assert backend.list(include_stopped=True) == [] and not folder.exists()
    finally:
        leftover.kill()
    assert identity()["pid"] == os.getpid()
