"""The local backend: servers are processes on the hub's machine, with real limits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from typing import Any

from traitlets import Instance, Integer, default

from ..limits import LimitEnforcer, LimitPlan, ResourceLimits
from .base import Backend, LaunchRequest


def _process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


class LocalBackend(Backend):
    """Start the server with ``subprocess.Popen`` inside its own limits.

    Memory and cores are enforced by :class:`~desilab.spawner.limits.LimitEnforcer`
    (cgroup v2, else cgroup v1, else RLIMIT_AS and CPU affinity). The server is
    the leader of its own session; stopping it signals the whole session and then
    kills whatever is left in its cgroup, so kernels, Ray and Dask workers it
    started do not outlive it.
    """

    term_timeout = Integer(
        10, help="Seconds between SIGTERM and SIGKILL when stopping a server."
    ).tag(config=True)

    nice = Integer(
        5,
        help="""Scheduling niceness of user servers (0-19). Above 0, the hub, the proxy and
        PostgreSQL stay responsive when many servers compete for the cores (a class
        logging in at once); users' servers compete with each other as equals.""",
    ).tag(config=True)

    enforcer = Instance(LimitEnforcer)

    @default("enforcer")
    def _enforcer_default(self) -> LimitEnforcer:
        return LimitEnforcer(parent=self, log=self.log)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.proc: subprocess.Popen | None = None
        self.pid = 0
        self.plan: LimitPlan | None = None

    def preexec_fn(self, request: LaunchRequest, plan: LimitPlan):
        """The function run in the child between fork and exec.

        Limits first (joining a cgroup needs root), then the switch to the user's
        account: groups, gid, uid, in that order, so nothing of root remains.
        """
        uid, gid, nice = request.uid, request.gid, self.nice

        def preexec() -> None:
            plan.preexec()
            if nice:
                os.nice(nice)
            if uid is not None and gid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)

        return preexec

    async def start(self, request: LaunchRequest) -> str:
        name = request.owner.replace("/", "-")
        self.plan = self.enforcer.prepare(
            name, ResourceLimits(cpus=tuple(request.cpus), memory_bytes=request.memory_bytes)
        )
        env = dict(request.env)
        env.update(self.plan.env())
        log_file = open(request.log_path, "ab") if request.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                request.cmd,
                env=env,
                cwd=request.cwd,
                preexec_fn=self.preexec_fn(request, self.plan),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )
        except BaseException:
            self.plan.release()
            raise
        finally:
            if log_file is not subprocess.DEVNULL:
                log_file.close()
        self.pid = self.proc.pid
        self.log.info(
            "Started %s (pid %d) on cores %s, memory %d MiB, limits %s",
            request.owner,
            self.pid,
            ",".join(map(str, request.cpus)),
            request.memory_bytes // 2**20,
            self.plan.mechanism,
        )
        return f"http://{request.ip}:{request.port}"

    async def poll(self) -> int | None:
        if self.proc is not None:
            status = self.proc.poll()
            if status is None:
                return None
            return status
        if self.pid and _process_alive(self.pid):
            return None
        return 0

    async def _wait_gone(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self.poll() is not None:
                return True
            await asyncio.sleep(0.05)
        return await self.poll() is not None

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def stop(self, now: bool = False) -> None:
        if self.pid and await self.poll() is None:
            self._signal_group(signal.SIGKILL if now else signal.SIGTERM)
            if not await self._wait_gone(0 if now else self.term_timeout):
                self.log.warning("Server pid %d ignored SIGTERM; killing it", self.pid)
                self._signal_group(signal.SIGKILL)
                await self._wait_gone(5)
        if self.pid:
            # the session may hold children that survived their leader
            self._signal_group(signal.SIGKILL)
        if self.plan is not None:
            self.plan.release()

    def limits_report(self) -> dict[str, str]:
        return dict(self.plan.mechanism) if self.plan else self.enforcer.detect()

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.pid:
            state["pid"] = self.pid
        if self.plan is not None:
            state["limits"] = self.plan.to_state()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self.pid = int(state.get("pid", 0))
        if state.get("limits"):
            self.plan = LimitPlan.from_state(state["limits"])

    def clear_state(self) -> None:
        if self.proc is not None:
            self.proc.poll()
        self.proc = None
        self.pid = 0
        self.plan = None
