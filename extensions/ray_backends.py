"""Ray launcher backends: the small interface, the local backend, an in-process double.

:class:`RayBackend` is what the widget logic talks to; a KubeRay backend will be
another subclass. :class:`LocalRayBackend` runs Ray nodes as processes of the
user's server under a supervisor (see :mod:`.ray_supervisor`) and keeps its
records in a per-user registry (see :mod:`.ray_registry`).
:class:`InProcessRayBackend` keeps clusters in a dict and starts nothing: the test
double for the widget logic; tests derive failure-injecting subclasses from it.

Configure through traitlets, e.g. in ``~/.ipython/profile_default/ipython_config.py``::

    c.LocalRayBackend.idle_timeout = 600
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from traitlets import Dict, Float, Instance, Integer, List, Unicode, default
from traitlets.config import LoggingConfigurable

from .ray_cluster import (
    LIVE_STATUSES,
    ClusterInfo,
    ClusterPlan,
    ClusterRequest,
    ClusterStatus,
    GiB,
    NodePlan,
    NodeStatus,
    ProfileLimits,
    RayLaunchError,
    dashboard_login_url,
    fetch_status,
    plan_cluster,
    proxied_dashboard_url,
    read_token,
)
from .ray_registry import (
    MARKER,
    cluster_dirs,
    default_registry,
    ensure_private_dir,
    identity,
    process_alive,
    read_json,
    short_temp_root,
    sweep,
    tail,
    update_control,
    write_json,
)

Progress = Callable[[str, float | None], None]


def _no_progress(message: str, fraction: float | None = None) -> None:
    pass


class RayBackend(LoggingConfigurable):
    """Starts, scales, lists and stops the user's Ray clusters.

    Every method blocks until done (the widget logic calls them off the kernel's
    main thread) and raises :class:`RayLaunchError` or ProfileLimitError with a
    message meant for the user.
    """

    kind = "abstract"

    idle_timeout = Float(
        1800.0,
        help="""Seconds a cluster may sit idle (no running or pending tasks, no CPU
        or GPU held) before it is stopped; 0 never stops an idle cluster.""",
    ).tag(config=True)

    reserved_memory = Integer(
        GiB,
        help="""Bytes of the profile's memory limit kept for the Jupyter server, the
        kernels and Ray's own processes (GCS, raylets, dashboard); Ray workers
        share the rest.""",
    ).tag(config=True)

    object_store_fraction = Float(
        0.3, help="Fraction of each Ray node's memory given to its object store."
    ).tag(config=True)

    start_timeout = Float(
        180.0, help="Seconds a Ray node may take to start before the start fails."
    ).tag(config=True)

    limits = Instance(ProfileLimits, help="The profile's limits (default: from the environment).")

    @default("limits")
    def _limits_default(self) -> ProfileLimits:
        return ProfileLimits.from_env()

    def plan(self, request: ClusterRequest) -> ClusterPlan:
        """Check ``request`` against the profile (ProfileLimitError says why not)."""
        return plan_cluster(
            request,
            self.limits,
            reserved_memory=self.reserved_memory,
            object_store_fraction=self.object_store_fraction,
        )

    def plan_scale(self, info: ClusterInfo, workers: int) -> ClusterPlan:
        node = info.node
        return self.plan(
            ClusterRequest(
                workers=workers,
                cpus=node.cpus if node else None,
                gpus=node.gpus if node else 0,
                memory=node.total_memory if node else None,
            )
        )

    @abstractmethod
    def start(
        self,
        plan: ClusterPlan,
        *,
        name: str | None = None,
        idle_timeout: float | None = None,
        owner_pid: int | None = None,
        progress: Progress = _no_progress,
    ) -> ClusterInfo:
        """Start a cluster and return when it is ready.

        ``owner_pid``: the process (the notebook's kernel) whose exit stops the
        cluster; None keeps it until stopped or idle.
        """

    @abstractmethod
    def scale(
        self, cluster_id: str, workers: int, progress: Progress = _no_progress
    ) -> ClusterInfo:
        """Add or remove worker nodes; return when done."""

    @abstractmethod
    def stop(self, cluster_id: str, reason: str = "stopped from a notebook") -> ClusterInfo:
        """Stop the cluster and every process of it; return when they are gone."""

    @abstractmethod
    def get(self, cluster_id: str) -> ClusterInfo:
        """The cluster's record (RayLaunchError if there is none)."""

    @abstractmethod
    def list(self, include_stopped: bool = False) -> list[ClusterInfo]:
        """The user's clusters, newest first; stale records are cleaned up."""

    @abstractmethod
    def status(self, cluster_id: str) -> ClusterStatus:
        """Live nodes, resources and tasks."""

    @abstractmethod
    def set_idle_timeout(self, cluster_id: str, seconds: float | None) -> None:
        """Change a running cluster's idle timeout (0 or None: never)."""


# ---------------------------------------------------------------------------
# local


def _default_ray() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


class LocalRayBackend(RayBackend):
    """Ray head and workers as processes of the user's server, one supervisor each."""

    kind = "local"

    registry_dir = Unicode("", help="Where cluster records live (default: ~/.desilab/ray).").tag(
        config=True
    )

    token_path = Unicode(
        "",
        help="""Ray authentication token file (default: ~/.ray/auth_token, where
        ``ray.init(address=...)`` finds it). Created with mode 0600 if missing.
        Ray's ports listen on every interface: the token keeps other accounts out.""",
    ).tag(config=True)

    host = Unicode("127.0.0.1", help="Address the Ray nodes and the dashboard use.").tag(
        config=True
    )

    ray_executable = Unicode(help="The ``ray`` command.").tag(config=True)

    @default("ray_executable")
    def _ray_default(self) -> str:
        return _default_ray()

    extra_args = List(Unicode(), help="Extra ``ray start`` arguments for every node.").tag(
        config=True
    )

    ray_env = Dict(
        {
            "RAY_agent_register_timeout_ms": "120000",
            "RAY_raylet_start_wait_time_s": "120",
            "RAY_worker_register_timeout_seconds": "120",
        },
        help="Extra environment for the Ray processes.",
    ).tag(config=True)

    poll_interval = Float(0.5, help="Seconds between the supervisor's checks.").tag(config=True)
    idle_check_interval = Float(
        5.0, help="Seconds between the supervisor's looks at the cluster's tasks."
    ).tag(config=True)
    stop_grace = Float(
        10.0, help="Seconds Ray nodes get to stop after SIGTERM before SIGKILL."
    ).tag(config=True)
    start_attempts = Integer(
        3, help="Tries to start a Ray node that times out (a busy machine can time Ray out)."
    ).tag(config=True)
    keep_stopped = Float(
        600.0, help="Seconds the record of a stopped cluster is kept (to show why it stopped)."
    ).tag(config=True)
    service_prefix = Unicode(
        help="URL prefix of the user's server (default: $JUPYTERHUB_SERVICE_PREFIX)."
    ).tag(config=True)

    @default("service_prefix")
    def _prefix_default(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._children: dict[str, subprocess.Popen] = {}

    # -- paths -----------------------------------------------------------------
    @property
    def registry(self) -> Path:
        return Path(self.registry_dir).expanduser() if self.registry_dir else default_registry()

    @property
    def token_file(self) -> Path:
        return (
            Path(self.token_path).expanduser()
            if self.token_path
            else Path.home() / ".ray" / "auth_token"
        )

    def ensure_token(self) -> Path:
        path = self.token_file
        if not path.exists():
            ensure_private_dir(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path

    def folder(self, cluster_id: str) -> Path:
        folder = self.registry / cluster_id
        if not (folder / "spec.json").exists():
            raise RayLaunchError(f"there is no Ray cluster {cluster_id!r} of yours")
        return folder

    # -- records -----------------------------------------------------------------
    def _info(self, folder: Path) -> ClusterInfo:
        spec = read_json(folder / "spec.json")
        state = read_json(folder / "state.json")
        node = (spec.get("nodes") or [{}])[0]
        owner = spec.get("owner")
        port = state.get("dashboard_port")
        token = spec.get("token_path", "")
        default_token = str(Path.home() / ".ray" / "auth_token")
        return ClusterInfo(
            id=spec["id"],
            name=spec.get("name", spec["id"]),
            backend=self.kind,
            status=state.get("status", "starting"),
            message=state.get("stop_reason") or state.get("message", "starting the supervisor"),
            workers=int(state.get("workers", 0)),
            address=state.get("address", "") if state.get("status") in LIVE_STATUSES else "",
            dashboard_port=port,
            dashboard_url=proxied_dashboard_url(port, self.service_prefix) if port else "",
            dashboard_login_url=dashboard_login_url(port, self.service_prefix) if port else "",
            owner=f"kernel pid {owner['pid']}" if owner else "(none: kept until stopped or idle)",
            created=spec.get("created", 0.0),
            ready_at=state.get("ready_at"),
            idle_timeout=state.get("idle_timeout", spec.get("idle_timeout")),
            node=NodePlan(**{k: (tuple(v) if k == "gpu_ids" else v) for k, v in node.items()})
            if node
            else None,
            log=str(folder / "supervisor.log"),
            token_path="" if token == default_token else token,
        )

    def _supervisor(self, folder: Path) -> dict[str, Any]:
        return read_json(folder / "supervisor.json")

    def _stale(self, folder: Path, info: ClusterInfo) -> bool:
        """A live record whose supervisor is gone."""
        if info.status not in LIVE_STATUSES:
            return False
        sup = self._supervisor(folder)
        if not sup:
            return time.time() - info.created > 60
        child = self._children.get(info.id)
        if child is not None:
            child.poll()
        return not process_alive(sup.get("pid"), sup.get("create_time"))

    def _clean_stale(self, folder: Path, info: ClusterInfo) -> ClusterInfo:
        sup = self._supervisor(folder)
        left = sweep(info.id, timeout=self.stop_grace)
        spec = read_json(folder / "spec.json")
        state = read_json(folder / "state.json")
        reason = (
            f"its supervisor (pid {sup.get('pid', '?')}) exited unexpectedly; "
            f"its Ray processes were stopped. Last lines of {folder / 'supervisor.log'}:\n"
            f"{tail(folder / 'supervisor.log', 5)}"
        )
        state.update(
            status="failed",
            message=reason,
            stop_reason=reason,
            stopped_at=time.time(),
            leftover_pids=left,
            nodes=[],
            workers=0,
        )
        write_json(folder / "state.json", state)
        if spec.get("temp_dir"):
            shutil.rmtree(spec["temp_dir"], ignore_errors=True)
        return self._info(folder)

    def _prune(self, folder: Path) -> None:
        spec = read_json(folder / "spec.json")
        if spec.get("temp_dir"):
            shutil.rmtree(spec["temp_dir"], ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)

    def get(self, cluster_id: str) -> ClusterInfo:
        folder = self.folder(cluster_id)
        info = self._info(folder)
        if self._stale(folder, info):
            info = self._clean_stale(folder, info)
        return info

    def list(self, include_stopped: bool = False) -> list[ClusterInfo]:
        out = []
        for folder in cluster_dirs(self.registry):
            try:
                info = self._info(folder)
            except (LookupError, TypeError, ValueError):  # a half-written record
                continue
            if self._stale(folder, info):
                info = self._clean_stale(folder, info)
            if not info.live:
                stopped_at = read_json(folder / "state.json").get("stopped_at") or 0
                if time.time() - stopped_at > self.keep_stopped:
                    self._prune(folder)
                    continue
                if not include_stopped:
                    continue
            out.append(info)
        return sorted(out, key=lambda i: i.created, reverse=True)

    # -- operations -------------------------------------------------------------
    def start(
        self,
        plan: ClusterPlan,
        *,
        name: str | None = None,
        idle_timeout: float | None = None,
        owner_pid: int | None = None,
        progress: Progress = _no_progress,
    ) -> ClusterInfo:
        registry = ensure_private_dir(self.registry)
        cid = secrets.token_hex(4)
        folder = ensure_private_dir(registry / cid)
        token = self.ensure_token()
        temp = short_temp_root(registry, cid)
        spec = {
            "id": cid,
            "name": name or f"ray-{cid}",
            "created": time.time(),
            "profile": self.limits.profile,
            "host": self.host,
            "ray": self.ray_executable,
            "temp_dir": str(temp),
            "token_path": str(token),
            "nodes": [asdict(n) for n in plan.nodes],
            "gpus": list(self.limits.gpus),
            "owner": identity(owner_pid) if owner_pid else None,
            "idle_timeout": self.idle_timeout if idle_timeout is None else idle_timeout,
            "poll_interval": self.poll_interval,
            "idle_check_interval": self.idle_check_interval,
            "stop_grace": self.stop_grace,
            "start_timeout": self.start_timeout,
            "start_attempts": self.start_attempts,
            "extra_args": list(self.extra_args),
        }
        write_json(folder / "spec.json", spec)
        env = dict(os.environ)
        env.update(self.ray_env)
        env.update(
            {
                MARKER: cid,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(token),
                "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        progress("starting the supervisor", 0.05)
        with open(folder / "supervisor.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "desilab.extensions.ray_supervisor", str(folder)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=folder,
                env=env,
                start_new_session=True,
            )
        self._children[cid] = proc
        write_json(folder / "supervisor.json", identity(proc.pid))
        timeout = self.start_timeout * (self.start_attempts + 1) + 30
        info = self._wait(cid, {"ready", "stopped", "failed"}, timeout, progress, 0.1, 0.9)
        if info.status != "ready":
            raise RayLaunchError(f"the Ray cluster did not start: {info.message}")
        progress("ready", 1.0)
        return info

    def _wait(
        self,
        cid: str,
        statuses: set[str],
        timeout: float,
        progress: Progress,
        lo: float,
        hi: float,
        seq: int | None = None,
    ) -> ClusterInfo:
        folder = self.folder(cid)
        deadline = time.monotonic() + timeout
        last = None
        n = 0
        while True:
            info = self.get(cid)
            state = read_json(folder / "state.json")
            done = info.status in statuses and (
                seq is None or int(state.get("applied_seq", 0)) >= seq
            )
            if not info.live:
                self._reap(cid)
                return info
            if done:
                return info
            applied = seq is None or int(state.get("applied_seq", 0)) >= seq
            if applied and info.message != last:
                last = info.message
                n += 1
                progress(info.message, min(hi, lo + (hi - lo) * (1 - 0.7**n)))
            if time.monotonic() > deadline:
                what = "/".join(sorted(statuses))
                self.stop(cid, reason=f"was not {what} after {timeout:.0f} s")
                raise RayLaunchError(
                    f"the Ray cluster {cid} was not {what} after "
                    f"{timeout:.0f} s and was stopped; see {folder / 'supervisor.log'}"
                )
            time.sleep(0.05)

    def _reap(self, cid: str, timeout: float = 10.0) -> None:
        """Wait for a finished cluster's supervisor to exit (it writes its state last)."""
        child = self._children.pop(cid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=timeout)
            return
        sup = self._supervisor(self.registry / cid)
        deadline = time.monotonic() + timeout
        while process_alive(sup.get("pid"), sup.get("create_time")):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def scale(
        self, cluster_id: str, workers: int, progress: Progress = _no_progress
    ) -> ClusterInfo:
        info = self.get(cluster_id)
        if info.status != "ready":
            raise RayLaunchError(
                f"the cluster {info.name} is {info.status}, not ready: {info.message}"
            )
        self.plan_scale(info, workers)
        before = info.workers
        control = update_control(self.folder(cluster_id), workers=workers)
        progress(f"scaling from {before} to {workers} workers", 0.1)
        info = self._wait(
            cluster_id, {"ready"}, self.start_timeout + 30, progress, 0.1, 0.9, seq=control["seq"]
        )
        if not info.live:
            raise RayLaunchError(f"the cluster stopped while scaling: {info.message}")
        if info.workers != workers:
            raise RayLaunchError(
                info.message or f"the cluster has {info.workers} workers, not {workers}"
            )
        progress(f"{workers} workers", 1.0)
        return info

    def set_idle_timeout(self, cluster_id: str, seconds: float | None) -> None:
        update_control(self.folder(cluster_id), idle_timeout=seconds or 0)

    def stop(self, cluster_id: str, reason: str = "stopped from a notebook") -> ClusterInfo:
        folder = self.folder(cluster_id)
        info = self.get(cluster_id)
        if not info.live:
            return info
        update_control(folder, stop=True, reason=reason)
        sup = self._supervisor(folder)
        deadline = time.monotonic() + self.stop_grace * 2 + 15
        while time.monotonic() < deadline:
            info = self.get(cluster_id)
            if not info.live:
                break
            time.sleep(0.1)
        else:  # the supervisor did not finish: do it here
            if process_alive(sup.get("pid"), sup.get("create_time")):
                with contextlib.suppress(OSError):
                    os.kill(sup["pid"], signal.SIGKILL)
            info = self._clean_stale(folder, info)
        self._reap(cluster_id)
        return info

    def status(self, cluster_id: str) -> ClusterStatus:
        info = self.get(cluster_id)
        if not info.live or not info.dashboard_port:
            raise RayLaunchError(f"the cluster {info.name} is {info.status}: {info.message}")
        token = read_json(self.registry / cluster_id / "spec.json").get("token_path")
        return fetch_status(info.dashboard_port, read_token(token), host=self.host)


# ---------------------------------------------------------------------------
# in-process test double


class InProcessRayBackend(RayBackend):
    """Clusters as records in a dict; nothing runs. For headless widget tests.

    Honours the profile checks, progress, scale, stop, idle timeouts (through
    :meth:`tick`) and live status (``running_tasks`` can be set per cluster).
    Subclass it to inject failures: override :meth:`launch` (start),
    :meth:`resize` (scale) or :meth:`probe` (status).
    """

    kind = "in-process"

    step_delay = Float(0.0, help="Seconds each simulated start step takes.").tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.clusters: dict[str, ClusterInfo] = {}
        self.running_tasks: dict[str, int] = {}
        self.idle_since: dict[str, float] = {}
        self._ports = iter(range(48265, 49000))

    def launch(self, info: ClusterInfo, progress: Progress) -> None:
        """Simulated start: a few progress steps."""
        for i, msg in enumerate(
            ("starting the head node", "waiting for the head node", "head node ready")
        ):
            progress(msg, 0.1 + 0.25 * i)
            if self.step_delay:
                time.sleep(self.step_delay)

    def resize(self, info: ClusterInfo, workers: int, progress: Progress) -> None:
        progress(f"scaling from {info.workers} to {workers} workers", 0.5)
        if self.step_delay:
            time.sleep(self.step_delay)

    def probe(self, info: ClusterInfo) -> ClusterStatus:
        n = info.node
        nodes = [
            NodeStatus(
                node_id=f"{info.id}-{i}",
                alive=True,
                is_head=i == 0,
                cpus=n.cpus,
                cpus_used=0.0,
                gpus=n.gpus,
                gpus_used=0.0,
                memory=n.memory,
                object_store_memory=n.object_store_memory,
            )
            for i in range(info.workers)
        ]
        running = self.running_tasks.get(info.id, 0)
        for node, _ in zip(nodes, range(running), strict=False):
            node.cpus_used = min(node.cpus, 1.0)
        return ClusterStatus(
            nodes=nodes,
            running_tasks=running,
            pending_tasks=0,
            cpus_used=sum(x.cpus_used for x in nodes),
        )

    def start(
        self,
        plan: ClusterPlan,
        *,
        name: str | None = None,
        idle_timeout: float | None = None,
        owner_pid: int | None = None,
        progress: Progress = _no_progress,
    ) -> ClusterInfo:
        cid = secrets.token_hex(4)
        port = next(self._ports)
        info = ClusterInfo(
            id=cid,
            name=name or f"ray-{cid}",
            backend=self.kind,
            status="starting",
            message="starting",
            workers=0,
            owner=f"kernel pid {owner_pid}" if owner_pid else "",
            idle_timeout=self.idle_timeout if idle_timeout is None else idle_timeout,
            node=plan.nodes[0],
            dashboard_port=port,
        )
        self.clusters[cid] = info
        try:
            self.launch(info, progress)
        except Exception as e:
            self.clusters[cid] = replace(info, status="failed", message=str(e))
            raise
        ready = replace(
            info,
            status="ready",
            message="ready",
            workers=plan.workers,
            address=f"127.0.0.1:{port - 10000}",
            ready_at=time.time(),
            dashboard_url=proxied_dashboard_url(port),
        )
        self.clusters[cid] = ready
        self.idle_since[cid] = time.time()
        progress("ready", 1.0)
        return ready

    def get(self, cluster_id: str) -> ClusterInfo:
        try:
            return self.clusters[cluster_id]
        except KeyError:
            raise RayLaunchError(f"there is no Ray cluster {cluster_id!r} of yours") from None

    def list(self, include_stopped: bool = False) -> list[ClusterInfo]:
        self.tick()
        infos = [i for i in self.clusters.values() if include_stopped or i.live]
        return sorted(infos, key=lambda i: i.created, reverse=True)

    def scale(
        self, cluster_id: str, workers: int, progress: Progress = _no_progress
    ) -> ClusterInfo:
        info = self.get(cluster_id)
        if info.status != "ready":
            raise RayLaunchError(
                f"the cluster {info.name} is {info.status}, not ready: {info.message}"
            )
        self.plan_scale(info, workers)
        self.resize(info, workers, progress)
        info = replace(
            self.get(cluster_id), workers=workers, message=f"scaled to {workers} workers"
        )
        self.clusters[cluster_id] = info
        progress(f"{workers} workers", 1.0)
        return info

    def stop(self, cluster_id: str, reason: str = "stopped from a notebook") -> ClusterInfo:
        info = self.get(cluster_id)
        if info.live:
            info = replace(info, status="stopped", message=reason, workers=0, address="")
            self.clusters[cluster_id] = info
        return info

    def status(self, cluster_id: str) -> ClusterStatus:
        info = self.get(cluster_id)
        if not info.live:
            raise RayLaunchError(f"the cluster {info.name} is {info.status}: {info.message}")
        return self.probe(info)

    def set_idle_timeout(self, cluster_id: str, seconds: float | None) -> None:
        self.clusters[cluster_id] = replace(self.get(cluster_id), idle_timeout=seconds or 0)
        self.idle_since[cluster_id] = time.time()

    def tick(self, now: float | None = None) -> None:
        """Apply idle timeouts (what the supervisor does for local clusters)."""
        now = time.time() if now is None else now
        for cid, info in list(self.clusters.items()):
            if not info.live or not info.idle_timeout:
                continue
            if self.running_tasks.get(cid):
                self.idle_since[cid] = now
            elif now - self.idle_since.get(cid, now) >= info.idle_timeout:
                self.clusters[cid] = replace(
                    info,
                    status="stopped",
                    workers=0,
                    address="",
                    message=f"idle for {info.idle_timeout:g} s with no running tasks",
                )
