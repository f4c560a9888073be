"""Dask bounded by the profile: the helper, the Dask panel's factory, the proxied link."""

from __future__ import annotations

import os
import types

import pytest
from desilab.extensions import ProfileLimitError, ProfileLimits, dask_settings
from desilab.extensions import dask_config as dc
from desilab.extensions.ray_cluster import GiB

SMALL = ProfileLimits("cpu-small", 1, 2 * GiB, ())
TWO = ProfileLimits("cpu-two", 2, 3 * GiB, ())


def test_plan_fits_workers_threads_and_memory_to_the_profile():
    assert dc.plan_dask(SMALL) == {
        "n_workers": 1,
        "threads_per_worker": 1,
        "memory_limit": GiB,
        "max_workers": 1,
    }
    plan = dc.plan_dask(TWO)
    assert plan["n_workers"] == 2 and plan["memory_limit"] == GiB
    threads = dc.plan_dask(TWO, processes=False)
    assert threads["n_workers"] == 1 and threads["threads_per_worker"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"n_workers": 4},
            "asked for 4 Dask threads (4 workers × 1), your profile cpu-two allows 2",
        ),
        ({"threads_per_worker": 4}, "asked for 4 Dask threads, your profile cpu-two allows 2"),
        (
            {"n_workers": 1, "memory_limit": "3GiB"},
            "asked for 3.0 GiB of memory for Dask, your profile cpu-two allows 2.0 GiB",
        ),
    ],
)
def test_requests_beyond_the_profile_are_refused(kwargs, message):
    with pytest.raises(ProfileLimitError) as info:
        dc.plan_dask(TWO, **kwargs)
    assert message in str(info.value)


def test_settings_configure_the_panel_factory_and_the_proxied_link():
    s = dask_settings({"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"})
    assert s["labextension.factory"]["module"] == "desilab.extensions.dask_config"
    assert s["labextension.factory"]["class"] == "labextension_cluster"
    assert s["distributed.dashboard.link"] == "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"
    assert "distributed.dashboard.link" not in dask_settings({})


def test_server_extension_sets_the_servers_dask_config_and_the_kernels_link(monkeypatch):
    import dask

    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    monkeypatch.delenv("DASK_DISTRIBUTED__DASHBOARD__LINK", raising=False)
    logged = []
    app = types.SimpleNamespace(log=types.SimpleNamespace(info=lambda *a: logged.append(a)))
    with dask.config.set({}):
        dc._load_jupyter_server_extension(app)
        assert dask.config.get("labextension.factory.class") == "labextension_cluster"
        factory = getattr(
            __import__(dask.config.get("labextension.factory.module"), fromlist=["x"]),
            dask.config.get("labextension.factory.class"),
        )
        assert factory is dc.labextension_cluster
    assert os.environ["DASK_DISTRIBUTED__DASHBOARD__LINK"].endswith("proxy/{port}/status")
    assert logged


@pytest.mark.slow
def test_bounded_local_cluster_respects_the_limits(monkeypatch):
    from distributed import Client

    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    monkeypatch.setenv("DESILAB_PROFILE", "cpu-two")
    monkeypatch.setenv("DESILAB_CPU_LIMIT", "2")
    monkeypatch.setenv("DESILAB_MEM_LIMIT", str(3 * GiB))
    with dc.dask_cluster(processes=False) as cluster:
        info = cluster.scheduler_info
        workers = list(info["workers"].values())
        assert sum(w["nthreads"] for w in workers) == 2
        assert all(w["memory_limit"] == 2 * GiB for w in workers)
        port = cluster.scheduler.http_server.port
        assert cluster.dashboard_link == f"/user/alice/proxy/{port}/status"
        with pytest.raises(ProfileLimitError, match="your profile cpu-two allows 1"):
            cluster.scale(2)
        with pytest.raises(ProfileLimitError):
            cluster.adapt(maximum=5)
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
    with dc.dask_cluster(n_workers=2, threads_per_worker=1) as cluster:  # processes
        workers = list(cluster.scheduler_info["workers"].values())
        assert len(workers) == 2 and all(w["memory_limit"] == GiB for w in workers)
        assert all(w["nthreads"] == 1 for w in workers)
        with pytest.raises(ProfileLimitError, match="asked for 3 Dask workers"):
            cluster.scale(3)
    with pytest.raises(ProfileLimitError, match="asked for 3 Dask threads"):
        dc.dask_cluster(n_workers=3)
