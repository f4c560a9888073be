"""A hub restart neither loses nor duplicates GPU allocations."""

from __future__ import annotations

import pytest
from support.hub import processes_mentioning, start_hub
from support.kernel import run_in_kernel

pytestmark = pytest.mark.slow

KEEP_SERVERS = """
c.JupyterHub.cleanup_servers = False
c.Spawner.poll_interval = 1
"""

VISIBLE = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"


def test_restart_keeps_gpu_allocations(hub_home):
    home = hub_home
    env = {"DESILAB_GPUS": "0,1"}
    hub = start_hub(home, env=env, config=KEEP_SERVERS)
    try:
        for user in ("alice", "bob", "carol"):
            hub.create_user(user)
        assert hub.spawn("alice", "gpu").status_code in (201, 202)
        hub.wait_ready("alice")
        alice_gpu = run_in_kernel(hub.url, "alice", hub.token_for("alice"), VISIBLE, "desilab-gpu")
        alice_pid = hub.server_pid("alice")
    finally:
        assert hub.stop() == 0
    assert any(p.pid == alice_pid for p in processes_mentioning(home)), "alice's server survived"

    hub = start_hub(home, env=env, config=KEEP_SERVERS, ports=hub.ports)
    try:
        assert hub.user_model("alice")["servers"][""]["ready"]
        assert hub.spawn("bob", "gpu").status_code in (201, 202)
        hub.wait_ready("bob")
        bob_gpu = run_in_kernel(hub.url, "bob", hub.token_for("bob"), VISIBLE, "desilab-gpu")
        assert {alice_gpu.strip(), bob_gpu.strip()} == {"0", "1"}, "no GPU handed out twice"
        r = hub.spawn("carol", "gpu")
        assert r.status_code == 409 and "(by alice, bob)" in r.json()["message"]
        again = run_in_kernel(hub.url, "alice", hub.token_for("alice"), VISIBLE, "desilab-gpu")
        assert again == alice_gpu, "alice's server still works with its GPU"
        hub.stop_server("alice")
        assert hub.spawn("carol", "gpu").status_code in (201, 202), "alice's GPU was released"
        hub.wait_ready("carol")
        hub.stop_server("carol")
        hub.stop_server("bob")
    finally:
        assert hub.stop() == 0
    assert processes_mentioning(home) == []
