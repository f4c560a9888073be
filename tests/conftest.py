"""Shared fixtures: real hubs with real PostgreSQL on loopback."""

from __future__ import annotations

import pytest
from support.hub import processes_mentioning, start_hub

FAST_POLL = """
c.Spawner.poll_interval = 1
c.JupyterHub.last_activity_interval = 5
"""


@pytest.fixture(scope="session")
def gpu_hub(tmp_path_factory):
    """One hub for the spawn tests: two simulated GPUs, fast polling."""
    home = tmp_path_factory.mktemp("gpu-hub")
    hub = start_hub(home, env={"DESILAB_GPUS": "0,1"}, config=FAST_POLL)
    yield hub
    assert hub.stop() == 0, hub.log()[-3000:]
    assert processes_mentioning(home) == []
