"""The supervisor of one local Ray cluster: ``python -m desilab.extensions.ray_supervisor DIR``.

Started by :class:`~desilab.extensions.ray_backends.LocalRayBackend` in a session
of its own, so the kernel's process group (interrupts, restarts, SIGKILL of the
group) never reaches it. It

- makes itself a child subreaper, so Ray processes orphaned by a dying parent
  (Ray's dashboard and agents outlive ``ray start`` that way) are re-parented to
  it rather than to init, and stay findable as its descendants;
- runs one ``ray start --block`` per Ray node (the first is the head), each with
  the node's resources and its GPUs in CUDA_VISIBLE_DEVICES, and with
  PR_SET_PDEATHSIG so that even a SIGKILL of the supervisor takes them down;
- watches the kernel that started the cluster (pid + start time), the nodes,
  ``control.json`` (scale, stop, idle timeout, from any notebook) and, every few
  seconds, the cluster's tasks and resources for the idle timeout;
- tears down by SIGTERM to each node, then SIGKILL of everything left that is
  its descendant or carries the cluster's marker, and writes the final state
  with the reason.

Everything it knows goes to ``state.json``; nothing else writes that file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from ..kernels.paths import THREAD_VARIABLES
from .ray_cluster import RayLaunchError, fetch_status, plural, read_token
from .ray_registry import (
    free_ports,
    identity,
    pending_commands,
    process_alive,
    read_json,
    sweep,
    tail,
    write_json,
)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
READY_LINE = "Ray runtime started"

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent: int) -> None:  # runs in the child before exec
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


class Node:
    def __init__(self, index: int, plan: dict[str, Any], proc: subprocess.Popen, log: Path):
        self.index = index
        self.plan = plan
        self.proc = proc
        self.log = log
        self.started = time.time()
        self.ready_at: float | None = None
        self.ps = psutil.Process(proc.pid)
        self.family: set[psutil.Process] = {self.ps}

    def snapshot(self) -> None:
        """Remember the node's processes: after its ``ray start`` dies, its orphans
        are ours (we are their subreaper) but no longer recognisable as this node's."""
        with contextlib.suppress(psutil.Error):
            self.family = {self.ps, *self.ps.children(recursive=True)}

    @property
    def head(self) -> bool:
        return self.index == 0

    @property
    def name(self) -> str:
        return "the head node" if self.head else f"worker {self.index + 1}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.proc.pid,
            "create_time": self.ps.create_time(),
            "log": str(self.log),
            "ready": self.ready_at is not None,
            **self.plan,
        }


class Supervisor:
    def __init__(self, folder: Path):
        self.folder = folder
        self.spec = read_json(folder / "spec.json")
        self.id = self.spec["id"]
        self.nodes: list[Node] = []
        self.status = "starting"
        self.message = "starting the head node"
        self.applied_seq = 0
        self.idle_timeout = self.spec.get("idle_timeout")
        self.last_busy = time.time()
        self.next_idle_check = 0.0
        self.stop_requested: str | None = None
        self.ready_at: float | None = None
        self.ports: dict[str, int] = {}
        self.token = read_token(self.spec.get("token_path"))
        self.env = dict(os.environ)
        self.env.update(self.spec.get("env") or {})
        # the kernel's thread counts are the whole profile's; Ray sets each worker's
        # OMP_NUM_THREADS to its task's CPUs when the variable is unset
        for name in THREAD_VARIABLES:
            self.env.pop(name, None)
        self.failed = False
        self.idle_stop = False
        self.next_snapshot = 0.0

    # -- state ---------------------------------------------------------------
    def write_state(self, **extra: Any) -> None:
        state = {
            "status": self.status,
            "message": self.message,
            "supervisor": identity(),
            "nodes": [n.as_dict() for n in self.nodes],
            "workers": len(self.nodes),
            "address": f"{self.spec['host']}:{self.ports['gcs']}" if self.ports else "",
            "dashboard_port": self.ports.get("dashboard"),
            "ready_at": self.ready_at,
            "idle_timeout": self.idle_timeout,
            "last_busy": self.last_busy,
            "applied_seq": self.applied_seq,
            "updated": time.time(),
        }
        state.update(extra)
        write_json(self.folder / "state.json", state)

    def log(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    # -- nodes ---------------------------------------------------------------
    def node_command(self, index: int, plan: dict[str, Any], agent_port: int) -> list[str]:
        cmd = [
            self.spec["ray"],
            "start",
            "--block",
            f"--node-ip-address={self.spec['host']}",
            f"--num-cpus={plan['cpus']}",
            f"--num-gpus={plan['gpus']}",
            f"--memory={plan['memory']}",
            f"--object-store-memory={plan['object_store_memory']}",
            f"--dashboard-agent-listen-port={agent_port}",
            f"--temp-dir={self.spec['temp_dir']}",
            "--disable-usage-stats",
        ]
        if index == 0:
            cmd += [
                "--head",
                f"--port={self.ports['gcs']}",
                "--include-dashboard=true",
                f"--dashboard-host={self.spec['host']}",
                f"--dashboard-port={self.ports['dashboard']}",
                f"--ray-client-server-port={self.ports['client']}",
            ]
        else:
            cmd.append(f"--address={self.spec['host']}:{self.ports['gcs']}")
        return cmd + list(self.spec.get("extra_args") or [])

    def launch(self, index: int) -> Node:
        plan = (
            self.spec["nodes"][index] if index < len(self.spec["nodes"]) else self.spec["nodes"][-1]
        )
        plan = dict(plan, gpu_ids=self.gpu_ids(index, plan))
        (agent_port,) = free_ports(1)
        env = dict(self.env, CUDA_VISIBLE_DEVICES=",".join(plan["gpu_ids"]))
        log = self.folder / f"node-{index}.log"
        me = os.getpid()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                self.node_command(index, plan, agent_port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.folder,
                preexec_fn=lambda: _die_with_parent(me),
            )
        self.log(f"node {index}: pid {proc.pid}: {' '.join(proc.args)}")
        return Node(index, plan, proc, log)

    def gpu_ids(self, index: int, plan: dict[str, Any]) -> list[str]:
        """GPUs of node ``index``: a slice of the profile's, never shared."""
        gpus = list(self.spec.get("gpus") or [])
        n = int(plan.get("gpus", 0))
        return gpus[index * n : (index + 1) * n]

    def wait_nodes(self, nodes: list[Node], timeout: float) -> dict[Node, str]:
        """Wait until each node's ``ray start`` reports it registered, or fails.

        Returns the nodes that failed, each with the reason in plain words. A stop
        request (or the kernel's death) raises RayLaunchError.
        """
        deadline = time.monotonic() + timeout
        pending = list(nodes)
        failed: dict[Node, str] = {}
        while pending:
            for node in list(pending):
                if READY_LINE in node.log.read_text(errors="replace"):
                    node.ready_at = time.time()
                    pending.remove(node)
                elif node.proc.poll() is not None:
                    failed[node] = (
                        f"{node.name} did not start: {explain_failure(node.log)} "
                        f"(ray start exited with code {node.proc.returncode}; log: {node.log})"
                    )
                    pending.remove(node)
            if self.check_owner() or self.check_stop_request():
                raise RayLaunchError(self.stop_requested or "stop requested")
            if pending and time.monotonic() > deadline:
                for node in pending:
                    failed[node] = (
                        f"{node.name} was not ready after {timeout:.0f} s (log: {node.log})"
                    )
                break
            time.sleep(0.1)
        return failed

    def start_nodes(self, indices: list[int]) -> None:
        """Start nodes (the head is index 0); retry those that time out (busy machine)."""
        attempts = int(self.spec.get("start_attempts", 2))
        timeout = float(self.spec.get("start_timeout", 120))
        for attempt in range(1, attempts + 1):
            again = f" (try {attempt})" if attempt > 1 else ""
            if indices == [0]:
                gcs, dashboard, client, metrics = free_ports(4)
                self.ports = {"gcs": gcs, "dashboard": dashboard, "client": client}
                # the dashboard's own metrics port is fixed (44227) unless set: one per cluster
                self.env["DASHBOARD_METRIC_PORT"] = str(metrics)
                self.message = "starting the head node" + again
            else:
                self.message = f"starting {plural(len(indices), 'worker node')}" + again
            new = [self.launch(i) for i in indices]
            self.nodes = sorted(self.nodes + new, key=lambda n: n.index)
            self.write_state()
            try:
                failed = self.wait_nodes(new, timeout)
            except RayLaunchError:
                self.stop_nodes(new)
                self.nodes = [n for n in self.nodes if n not in new]
                raise
            if not failed:
                return
            self.stop_nodes(list(failed))
            self.nodes = [n for n in self.nodes if n not in failed]
            busy = all(
                "timed out" in n.log.read_text(errors="replace").lower() or "not ready after" in why
                for n, why in failed.items()
            )
            first = next(iter(failed.values()))
            if attempt == attempts or not busy or self.stop_requested or self.check_owner():
                raise RayLaunchError(first)
            self.log(f"retrying after: {first}")
            indices = sorted(n.index for n in failed)

    def start_head(self) -> None:
        self.start_nodes([0])

    def add_workers(self, target: int) -> None:
        self.start_nodes(list(range(len(self.nodes), target)))

    def stop_nodes(self, nodes: list[Node], grace: float | None = None) -> None:
        """SIGTERM (``ray start --block`` stops its node gracefully), then SIGKILL."""
        grace = self.spec.get("stop_grace", 10) if grace is None else grace
        family: list[psutil.Process] = []
        for node in nodes:
            node.snapshot()
            family += list(node.family)
            with contextlib.suppress(OSError):
                node.proc.terminate()
        deadline = time.monotonic() + grace
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(family, timeout=2)
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=1)

    # -- watching ------------------------------------------------------------
    def check_owner(self) -> str | None:
        owner = self.spec.get("owner")
        if owner and not process_alive(owner["pid"], owner.get("create_time")):
            self.stop_requested = f"the notebook kernel that started it (pid {owner['pid']}) exited"
            return self.stop_requested
        return None

    def check_stop_request(self) -> str | None:
        for command in pending_commands(self.folder, self.applied_seq):
            if command.get("stop"):
                self.stop_requested = str(command.get("reason") or "stopped on request")
        return self.stop_requested

    def check_control(self) -> None:
        """Apply the commands notebooks appended to control.json, in order."""
        for command in pending_commands(self.folder, self.applied_seq):
            self.applied_seq = int(command["seq"])
            if command.get("stop"):
                self.stop_requested = str(command.get("reason") or "stopped on request")
                return
            if "idle_timeout" in command:
                self.idle_timeout = command["idle_timeout"]
                self.last_busy = time.time()
            if "workers" in command:
                self.scale(int(command["workers"]))
            self.write_state()

    def scale(self, target: int) -> None:
        if target == len(self.nodes):
            return
        self.status = "scaling"
        if target > len(self.nodes):
            try:
                self.add_workers(target)
                self.message = f"scaled up to {len(self.nodes)} workers"
            except RayLaunchError as e:
                self.message = f"could not add workers: {e}"
        else:
            gone = self.nodes[target:]
            self.message = f"removing {len(gone)} worker node(s)"
            self.write_state()
            self.stop_nodes(list(reversed(gone)))
            self.nodes = self.nodes[:target]
            self.message = f"scaled down to {len(self.nodes)} workers"
        self.status = "ready"

    def check_nodes(self) -> None:
        for node in list(self.nodes):
            code = node.proc.poll()
            if code is None:
                if time.monotonic() > self.next_snapshot:
                    node.snapshot()
                continue
            if node.head:
                self.stop_requested = (
                    f"the head node exited unexpectedly (code {code}):\n{tail(node.log)}"
                )
                self.failed = True
                return
            self.nodes.remove(node)
            self.stop_nodes([node], grace=0)
            self.message = (
                f"worker {node.index + 1} exited unexpectedly (code {code}); see {node.log}"
            )
            self.write_state()
        if time.monotonic() > self.next_snapshot:
            self.next_snapshot = time.monotonic() + 2.0

    def check_idle(self) -> None:
        if not self.idle_timeout or time.monotonic() < self.next_idle_check:
            return
        interval = float(self.spec.get("idle_check_interval", 5.0))
        self.next_idle_check = time.monotonic() + min(interval, self.idle_timeout / 3)
        try:
            busy = fetch_status(self.ports["dashboard"], self.token, timeout=5).busy
        except RayLaunchError as e:
            self.log(f"status unknown, counted as busy: {e}")
            busy = True
        now = time.time()
        if busy:
            self.last_busy = now
        elif now - self.last_busy >= self.idle_timeout:
            self.stop_requested = f"idle for {_duration(self.idle_timeout)} with no running tasks"
            self.idle_stop = True

    # -- main ------------------------------------------------------------------
    def run(self) -> int:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.write_state()
        try:
            self.start_head()
            if len(self.spec["nodes"]) > 1:
                self.add_workers(len(self.spec["nodes"]))
        except RayLaunchError as e:
            self.failed = not self.stop_requested
            return self.teardown(str(e) if self.failed else self.stop_requested)
        except Exception as e:  # a bug or the machine: report it, leave nothing behind
            self.failed = True
            return self.teardown(f"{type(e).__name__}: {e}")
        self.ready_at = time.time()
        self.last_busy = self.ready_at
        self.status, self.message = "ready", "ready"
        self.write_state()
        self.log(f"ready: {len(self.nodes)} node(s), dashboard port {self.ports['dashboard']}")
        poll = float(self.spec.get("poll_interval", 0.5))
        while not self.stop_requested:
            self.reap()
            self.check_owner() or self.check_nodes()
            if not self.stop_requested:
                self.check_control()
            if not self.stop_requested:
                self.check_idle()
            if not self.stop_requested:
                time.sleep(poll)
        return self.teardown(self.stop_requested)

    def reap(self) -> None:
        """Collect orphans re-parented to us (we are their subreaper) once they exit."""
        ours = {n.proc.pid for n in self.nodes}
        for child in psutil.Process().children():
            if child.pid in ours:
                continue
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        self.stop_requested = self.stop_requested or f"stopped by signal {name}"

    def teardown(self, reason: str) -> int:
        self.log(f"stopping: {reason}")
        self.status, self.message = "stopping", reason
        with contextlib.suppress(Exception):
            self.write_state()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self.stop_nodes(list(reversed(self.nodes)))
        finally:
            me = psutil.Process()
            left = sweep(
                self.id,
                also=me.children(recursive=True),
                exclude={os.getpid()},
                timeout=float(self.spec.get("stop_grace", 10)),
            )
            if left:
                self.log(f"processes still alive after SIGKILL: {left}")
            self.nodes = []
            shutil.rmtree(self.spec["temp_dir"], ignore_errors=True)
            self.status = "failed" if self.failed else "stopped"
            self.write_state(
                stop_reason=reason,
                idle_stop=self.idle_stop,
                stopped_at=time.time(),
                leftover_pids=left,
            )
            self.log(f"{self.status}: {reason}")
        return 1 if self.failed else 0


def explain_failure(log: Path) -> str:
    """The error ``ray start`` ended with, in one line (not its traceback)."""
    lines = [line.strip() for line in tail(log, 40, 20000).splitlines() if line.strip()]
    for line in reversed(lines):
        m = re.match(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit)\b:? (.+)$", line)
        if m:
            reason = m.group(1)
            if "timed out" in reason.lower():
                reason += " (the machine may be too busy for Ray's processes to start in time)"
            return reason
    return lines[-1] if lines else "it wrote nothing"


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m desilab.extensions.ray_supervisor CLUSTER_DIR", file=sys.stderr)
        return 2
    return Supervisor(Path(argv[0])).run()


if __name__ == "__main__":
    sys.exit(main())
