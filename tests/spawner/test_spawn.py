"""Spawning through the REST API and the form, with limits checked from inside."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.kernel import run_in_kernel
from support.login import login_session, sign_up_and_approve

pytestmark = pytest.mark.slow

INSIDE = """
import json, os, resource
from pathlib import Path
mem = None
for group in filter(None, os.environ.get("DESILAB_CGROUP", "").split(":")):
    for name in ("memory.max", "memory.limit_in_bytes"):
        f = Path(group) / name
        if f.exists():
            mem = int(f.read_text())
cgroups = Path("/proc/self/cgroup").read_text()
print(json.dumps({
    "affinity": sorted(os.sched_getaffinity(0)),
    "mem": mem,
    "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
    "cgroups": cgroups,
    "env": {k: v for k, v in os.environ.items()
            if k.startswith(("DESILAB_", "CUDA_", "OMP_", "MKL_", "OPENBLAS_"))},
}))
"""


def inside(hub, user, kernel="desilab-cpu") -> dict:
    return json.loads(run_in_kernel(hub.url, user, hub.token_for(user), INSIDE, kernel))


def check_limits(report: dict, profile: str, cpus: int, mem: int, gpus: str = "") -> None:
    env = report["env"]
    assert env["DESILAB_PROFILE"] == profile
    assert env["DESILAB_CPU_LIMIT"] == str(cpus)
    assert env["DESILAB_MEM_LIMIT"] == str(mem)
    assert len(report["affinity"]) == cpus
    assert env["DESILAB_CPUS"] == ",".join(map(str, report["affinity"]))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert env[name] == str(cpus)
    if env["DESILAB_LIMITS_MEMORY"].startswith("cgroup"):
        assert report["mem"] == mem
    else:
        assert env["DESILAB_LIMITS_MEMORY"] == "rlimit"
        assert report["rlimit_as"] == mem
    assert env["DESILAB_GPUS"] == gpus
    assert "DESILAB_DATABASE_URL" in env


@pytest.mark.parametrize(
    "profile, memory", [("cpu-small", 2 * 1024**3), ("cpu-large", 8 * 1024**3)]
)
def test_api_spawn_enforces_the_profile_inside_the_server(gpu_hub, profile, memory):
    user = f"api-{profile}"
    gpu_hub.create_user(user)
    r = gpu_hub.spawn(user, profile)
    assert r.status_code in (201, 202), r.text
    gpu_hub.wait_ready(user)
    try:
        report = inside(gpu_hub, user)
        cpus = 1 if profile == "cpu-small" else len(os.sched_getaffinity(0))
        check_limits(report, profile, cpus, memory)
        assert report["env"]["CUDA_VISIBLE_DEVICES"] == "", "CPU profiles see no GPU"
    finally:
        gpu_hub.stop_server(user)


@pytest.mark.parametrize(
    "profile, memory", [("cpu-small", 2 * 1024**3), ("cpu-large", 8 * 1024**3)]
)
def test_form_spawn_enforces_the_profile(gpu_hub, profile, memory):
    user = f"form-{profile}"
    sign_up_and_approve(gpu_hub, user, "a-long-passw0rd!")
    session = login_session(gpu_hub, user, "a-long-passw0rd!")
    form = session.get(f"{gpu_hub.url}/hub/spawn")
    assert 'value="cpu-small"' in form.text and 'value="gpu"' in form.text
    r = session.post(
        f"{gpu_hub.url}/hub/spawn",
        data={"profile": profile, "_xsrf": session.cookies.get("_xsrf")},
    )
    assert r.status_code == 200, r.text[-2000:]
    gpu_hub.wait_ready(user)
    try:
        cpus = 1 if profile == "cpu-small" else len(os.sched_getaffinity(0))
        check_limits(inside(gpu_hub, user), profile, cpus, memory)
    finally:
        gpu_hub.stop_server(user)


def test_forged_profiles_are_refused_with_the_alternatives(gpu_hub):
    gpu_hub.create_user("forger")
    for body in (
        {"profile": "gpu-xxl"},
        {"profile": ["cpu-small"]},
        {"profile": "cpu-small", "cpus": 64},
    ):
        r = gpu_hub.api("POST", "/users/forger/server", json=body)
        assert r.status_code == 400, r.text
        message = r.json()["message"]
        assert "profile" in message and "Traceback" not in message
    assert (
        "unknown profile 'gpu-xxl'; available: cpu-small, cpu-large, gpu"
        in gpu_hub.api("POST", "/users/forger/server", json={"profile": "gpu-xxl"}).json()[
            "message"
        ]
    )
    assert gpu_hub.user_model("forger")["servers"] == {}

    sign_up_and_approve(gpu_hub, "formforger", "a-long-passw0rd!")
    session = login_session(gpu_hub, "formforger", "a-long-passw0rd!")
    r = session.post(
        f"{gpu_hub.url}/hub/spawn",
        data={"profile": "../../etc", "_xsrf": session.cookies.get("_xsrf")},
    )
    assert r.status_code == 400
    assert (
        "unknown profile &#39;../../etc&#39;" in r.text or "unknown profile '../../etc'" in r.text
    )
    assert gpu_hub.user_model("formforger")["servers"] == {}


def test_students_are_refused_the_gpu_profile(gpu_hub):
    gpu_hub.create_user("student1", groups=("students",))
    r = gpu_hub.spawn("student1", "gpu")
    assert r.status_code == 400
    assert r.json()["message"] == (
        "profile 'gpu' is not available to members of group 'students'; "
        "choose one of: cpu-small, cpu-large"
    )


def test_concurrent_gpu_spawns_get_exclusive_gpus(gpu_hub):
    users = [f"gpu{i}" for i in range(10)]
    for user in users:
        gpu_hub.create_user(user)
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda u: gpu_hub.spawn(u, "gpu"), users))
    started = [u for u, r in zip(users, responses, strict=True) if r.status_code in (201, 202)]
    refused = [r for r in responses if r.status_code == 409]
    assert len(started) == 2, [(r.status_code, r.text) for r in responses]
    assert len(refused) == 8
    assert all("no GPU free" in r.json()["message"] for r in refused)
    try:
        seen = set()
        for user in started:
            gpu_hub.wait_ready(user)
            env = inside(gpu_hub, user, kernel="desilab-gpu")["env"]
            assert env["CUDA_VISIBLE_DEVICES"] == env["DESILAB_GPUS"]
            seen.add(env["CUDA_VISIBLE_DEVICES"])
        assert seen == {"0", "1"}
    finally:
        for user in started:
            gpu_hub.stop_server(user)
    # every GPU is free again: two users who were refused now get one each
    again = [u for u in users if u not in started][:2]
    try:
        for user in again:
            r = gpu_hub.spawn(user, "gpu")
            assert r.status_code in (201, 202), r.text
    finally:
        for user in again:
            gpu_hub.wait_ready(user)
            gpu_hub.stop_server(user)


def test_killed_server_releases_its_gpu(gpu_hub):
    for user in ("victim", "next1", "next2"):
        gpu_hub.create_user(user)
    assert gpu_hub.spawn("victim", "gpu").status_code in (201, 202)
    assert gpu_hub.spawn("next1", "gpu").status_code in (201, 202)
    gpu_hub.wait_ready("victim")
    gpu_hub.wait_ready("next1")
    assert gpu_hub.spawn("next2", "gpu").status_code == 409
    os.kill(gpu_hub.server_pid("victim"), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while gpu_hub.user_model("victim")["servers"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert gpu_hub.user_model("victim")["servers"] == {}, "the hub noticed the death"
    r = gpu_hub.spawn("next2", "gpu")
    assert r.status_code in (201, 202), r.text
    gpu_hub.wait_ready("next2")
    gpu_hub.stop_server("next2")
    gpu_hub.stop_server("next1")
