"""The logic behind the Ray cluster widget: plain Python, tested headless.

:class:`RayClusterController` runs backend calls on worker threads (the kernel's
main thread stays free), keeps one :class:`ControllerState` with progress, the
last error in plain words, the cluster record, its live status and the list of
the user's clusters, and calls subscribers whenever that state changes. The
ipywidgets view (:mod:`.ray_widget`) only renders the state and forwards clicks.

Timing hooks: ``timings`` holds ``time.perf_counter()`` stamps per event
(``start_called``, ``start_ready``, ``scale_called``, ``scale_done``, ...) and
``on_event`` callbacks get ``(name, stamp)``; ``start_seconds`` is
Start-to-ready of the last start.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from .ray_backends import LocalRayBackend, RayBackend
from .ray_cluster import (
    ClusterInfo,
    ClusterRequest,
    ClusterStatus,
    ProfileLimitError,
    RayLaunchError,
)


@dataclass(frozen=True)
class ControllerState:
    phase: str = "idle"  # idle, starting, ready, scaling, stopping, stopped, failed
    busy: bool = False
    progress: float | None = None
    message: str = ""
    error: str = ""
    cluster: ClusterInfo | None = None
    status: ClusterStatus | None = None
    clusters: tuple[ClusterInfo, ...] = field(default_factory=tuple)


def plain_error(action: str, exc: BaseException) -> str:
    """An exception as a sentence for the user."""
    if isinstance(exc, ProfileLimitError | RayLaunchError):
        text = str(exc)
    elif isinstance(exc, OSError):
        text = f"the system refused: {exc.strerror or exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return f"Could not {action}: {text}"


class RayClusterController:
    """Start, scale, watch and stop one Ray cluster; list and stop the user's others."""

    def __init__(
        self,
        backend: RayBackend | None = None,
        *,
        owner_pid: int | None = None,
        status_interval: float = 2.0,
        on_change: Callable[[ControllerState], None] | None = None,
    ):
        self.backend = backend or LocalRayBackend(config=_ipython_config())
        self.owner_pid = os.getpid() if owner_pid is None else owner_pid
        self.status_interval = status_interval
        self._state = ControllerState()
        self._lock = threading.RLock()
        self._subscribers: list[Callable[[ControllerState], None]] = []
        self._events: list[Callable[[str, float], None]] = []
        self._ops = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-widget-op")
        self._side = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ray-widget-stop")
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self.timings: dict[str, float] = {}
        if on_change:
            self.subscribe(on_change)

    # -- state -------------------------------------------------------------------
    @property
    def state(self) -> ControllerState:
        return self._state

    @property
    def cluster(self) -> ClusterInfo | None:
        return self._state.cluster

    def subscribe(self, callback: Callable[[ControllerState], None]) -> None:
        self._subscribers.append(callback)

    def on_event(self, callback: Callable[[str, float], None]) -> None:
        self._events.append(callback)

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._state = replace(self._state, **changes)
            state = self._state
        for cb in list(self._subscribers):
            with contextlib.suppress(Exception):  # a broken view must not break the logic
                cb(state)

    def _mark(self, name: str) -> None:
        stamp = time.perf_counter()
        self.timings[name] = stamp
        for cb in list(self._events):
            cb(name, stamp)

    def _progress(self, message: str, fraction: float | None = None) -> None:
        self._update(message=message, progress=fraction)

    @property
    def start_seconds(self) -> float | None:
        t = self.timings
        if "start_called" in t and "start_ready" in t:
            return t["start_ready"] - t["start_called"]
        return None

    # -- operations ----------------------------------------------------------------
    def _run(
        self,
        pool: ThreadPoolExecutor,
        action: str,
        fn: Callable[[], Any],
        phase: str,
        fail_phase: str | None = None,
    ) -> Future:
        def job() -> Any:
            try:
                return fn()
            except BaseException as e:
                self._update(
                    busy=False,
                    progress=None,
                    error=plain_error(action, e),
                    phase=fail_phase or self._state.phase,
                    message="",
                )
                raise

        self._update(busy=True, phase=phase, error="", progress=0.0)
        return pool.submit(job)

    def _refuse(self, action: str, exc: BaseException) -> Future:
        self._update(error=plain_error(action, exc))
        f: Future = Future()
        f.set_exception(exc)
        return f

    def start(
        self,
        workers: int = 1,
        cpus: int | None = None,
        gpus: int = 0,
        memory: int | None = None,
        *,
        name: str | None = None,
        idle_timeout: float | None = None,
        keep_after_kernel_exit: bool = False,
        wait: bool = False,
    ) -> Future | ClusterInfo:
        """Start a cluster (``memory`` in bytes per worker, object store included)."""
        self._mark("start_called")
        if self._state.busy:
            return self._refuse(
                "start a cluster",
                RayLaunchError(
                    f"this notebook is still {self._state.phase}; wait for it to finish"
                ),
            )
        if self._state.cluster is not None and self._state.cluster.live:
            return self._refuse(
                "start a cluster",
                RayLaunchError(
                    f"this notebook already runs {self._state.cluster.name}; stop it or scale it"
                ),
            )
        try:
            plan = self.backend.plan(
                ClusterRequest(workers=workers, cpus=cpus, gpus=gpus, memory=memory)
            )
        except ProfileLimitError as e:
            return self._refuse("start a cluster", e)

        def go() -> ClusterInfo:
            info = self.backend.start(
                plan,
                name=name,
                idle_timeout=idle_timeout,
                owner_pid=None if keep_after_kernel_exit else self.owner_pid,
                progress=self._progress,
            )
            self._mark("start_ready")
            self._update(
                cluster=info,
                phase="ready",
                busy=False,
                progress=1.0,
                message=f"ready in {self.start_seconds:.1f} s: {plan.summary()}",
            )
            self._ensure_polling()
            self._refresh_list()
            return info

        self._update(cluster=None, status=None, message=f"starting {plan.summary()}")
        future = self._run(self._ops, "start the cluster", go, "starting", "failed")
        return future.result() if wait else future

    def scale(self, workers: int, *, wait: bool = False) -> Future | ClusterInfo:
        """Add or remove worker nodes (the head stays)."""
        info = self._state.cluster
        if info is None or not info.live:
            return self._refuse("scale", RayLaunchError("no cluster is running in this notebook"))
        if self._state.busy:
            return self._refuse(
                "scale",
                RayLaunchError(
                    f"this notebook is still {self._state.phase}; wait for it to finish"
                ),
            )
        try:
            self.backend.plan_scale(info, workers)
        except ProfileLimitError as e:
            return self._refuse(f"scale to {workers} workers", e)

        def go() -> ClusterInfo:
            self._mark("scale_called")
            new = self.backend.scale(info.id, workers, progress=self._progress)
            self._mark("scale_done")
            self._update(
                cluster=new,
                phase="ready",
                busy=False,
                progress=1.0,
                message=f"{new.workers} workers",
            )
            self.refresh_status()
            return new

        future = self._run(self._ops, f"scale to {workers} workers", go, "scaling", "ready")
        return future.result() if wait else future

    def stop(self, cluster_id: str | None = None, *, wait: bool = False) -> Future | ClusterInfo:
        """Stop this notebook's cluster, or any of the user's by id."""
        own = self._state.cluster
        cid = cluster_id or (own.id if own else None)
        if cid is None:
            return self._refuse("stop", RayLaunchError("no cluster is running in this notebook"))
        mine = own is not None and own.id == cid

        def go() -> ClusterInfo:
            self._mark("stop_called")
            info = self.backend.stop(cid)
            self._mark("stop_done")
            if mine:
                self._update(
                    cluster=info,
                    status=None,
                    phase="stopped",
                    busy=False,
                    progress=None,
                    message=f"stopped: {info.message}",
                )
            else:
                self._update(busy=False, progress=None, message=f"stopped {info.name}")
            self._refresh_list()
            return info

        if mine:
            self._update(phase="stopping", busy=True, error="", message="stopping")
            pool = self._side
        else:
            pool = self._side
        f = pool.submit(self._guard(f"stop {cid}", go))
        return f.result() if wait else f

    def _guard(self, action: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def job() -> Any:
            try:
                return fn()
            except BaseException as e:
                self._update(busy=False, progress=None, error=plain_error(action, e))
                raise

        return job

    def set_idle_timeout(self, seconds: float | None) -> None:
        info = self._state.cluster
        if info is None or not info.live:
            raise RayLaunchError("no cluster is running in this notebook")
        self.backend.set_idle_timeout(info.id, seconds)

    # -- watching --------------------------------------------------------------------
    def refresh_status(self) -> ClusterStatus | None:
        """Read the cluster's record and live status once (also notices a stop)."""
        info = self._state.cluster
        if info is None:
            return None
        try:
            fresh = self.backend.get(info.id)
        except RayLaunchError as e:
            self._update(error=str(e))
            return None
        if not fresh.live:
            if info.live and not self._state.busy:
                self._update(
                    cluster=fresh,
                    status=None,
                    phase=fresh.status,
                    message=f"{fresh.status}: {fresh.message}",
                    progress=None,
                )
            return None
        try:
            status = self.backend.status(info.id)
        except RayLaunchError as e:
            self._update(cluster=fresh, error=f"Could not read the cluster's status: {e}")
            return None
        changes: dict[str, Any] = {"cluster": fresh, "status": status}
        if self._state.error.startswith("Could not read the cluster's status"):
            changes["error"] = ""
        self._update(**changes)
        return status

    def _refresh_list(self) -> None:
        try:
            self._update(clusters=tuple(self.backend.list()))
        except Exception as e:
            self._update(error=plain_error("list your clusters", e))

    def refresh(self) -> Future:
        """Refresh the list of the user's clusters and this cluster's status."""

        def go() -> None:
            self._refresh_list()
            self.refresh_status()

        return self._side.submit(go)

    def _ensure_polling(self) -> None:
        if self._poller and self._poller.is_alive():
            return
        self._stop_polling.clear()
        self._poller = threading.Thread(target=self._poll, name="ray-widget-status", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        n = 0
        while not self._stop_polling.wait(self.status_interval):
            info = self._state.cluster
            if info is None or not info.live:
                self._refresh_list()
                return
            if not self._state.busy:
                self.refresh_status()
            n += 1
            if n % 5 == 0:
                self._refresh_list()

    def close(self) -> None:
        """Stop watching (the cluster keeps running)."""
        self._stop_polling.set()
        self._ops.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=False)

    # -- convenience -----------------------------------------------------------------
    @property
    def connect_snippet(self) -> str:
        info = self._state.cluster
        return info.connect_snippet() if info and info.live else ""

    @property
    def dashboard_url(self) -> str:
        info = self._state.cluster
        return info.dashboard_url if info and info.live else ""

    def default_request(self) -> ClusterRequest:
        """What Start asks for by default: one worker with the whole profile."""
        plan = self.backend.plan(ClusterRequest())
        return plan.request


def _ipython_config() -> Any:
    """The kernel's traitlets config (``ipython_config.py``), so traits can be set there."""
    try:
        from IPython import get_ipython

        ip = get_ipython()
        return ip.config if ip is not None else None
    except Exception:
        return None


def list_ray_clusters(backend: RayBackend | None = None) -> list[ClusterInfo]:
    """The user's running Ray clusters, whichever notebook started them."""
    return (backend or LocalRayBackend(config=_ipython_config())).list()


def stop_ray_cluster(cluster_id: str, backend: RayBackend | None = None) -> ClusterInfo:
    """Stop one of the user's Ray clusters by id (see :func:`list_ray_clusters`)."""
    return (backend or LocalRayBackend(config=_ipython_config())).stop(cluster_id)
