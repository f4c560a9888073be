"""Failure-injecting backends, configured into a real hub by tests.

``ChaosBackend`` picks its failure from the user's name so one hub can serve
every case: ``slow-*`` starts after ``delay`` seconds (longer than JupyterHub's
slow_spawn_timeout), ``failing-*`` cannot launch, ``dying-*`` launches a server
that exits before it listens. Other users get the plain local backend.
"""

from __future__ import annotations

import asyncio

from desilab.spawner.backends import LaunchRequest, LocalBackend
from traitlets import Float


class ChaosBackend(LocalBackend):
    delay = Float(12.0, help="Seconds a slow-* start waits.").tag(config=True)

    async def start(self, request: LaunchRequest) -> str:
        if request.username.startswith("slow-"):
            await asyncio.sleep(self.delay)
        elif request.username.startswith("failing-"):
            raise OSError("injected failure: fork refused")
        elif request.username.startswith("dying-"):
            request.cmd = [
                request.cmd[0],
                "-c",
                "import sys, time; print('injected: server crashing', flush=True); "
                "time.sleep(1); sys.exit(3)",
            ]
        return await super().start(request)
