"""Ray clusters bounded by the user's profile: limits, plans, cluster records, live status.

Plain Python, no Ray import: the supervisor process, the backends and the widget
share it. ``plan_cluster`` turns a request (workers x CPUs/GPUs/memory) into one
plan per Ray node and refuses anything beyond the profile with a sentence that
names the profile and the numbers. ``fetch_status`` reads a running cluster's
nodes, resources and tasks from its dashboard's HTTP API (with the cluster's
token), so a status table needs neither ``import ray`` nor a driver.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from typing import Any

GiB = 1024**3
MiB = 1024**2
#: Ray refuses object stores below 75 MiB; keep a margin.
MIN_OBJECT_STORE = 80 * MiB
#: Smallest worker we start: object store plus room for a few task processes.
MIN_WORKER_MEMORY = 256 * MiB

STATUSES = ("starting", "ready", "scaling", "stopping", "stopped", "failed")
LIVE_STATUSES = ("starting", "ready", "scaling", "stopping")


class ProfileLimitError(ValueError):
    """A request asks for more than the user's profile allows."""


class RayLaunchError(RuntimeError):
    """A cluster could not be started, scaled or reached; the message says why."""


def gib(n: float | None) -> str:
    """Bytes as ``1.5 GiB`` (or ``unlimited``)."""
    return "unlimited" if n is None else f"{n / GiB:.1f} GiB"


def plural(n: int | float, word: str) -> str:
    return f"{n:g} {word}" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class ProfileLimits:
    """What the server's profile allows, as the spawner put it in the environment."""

    profile: str
    cpus: int
    memory: int | None
    gpus: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ProfileLimits:
        """Read DESILAB_PROFILE, DESILAB_CPU_LIMIT, DESILAB_MEM_LIMIT and DESILAB_GPUS.

        Outside desilab the machine's affinity and memory apply. A CPU kernel has
        ``CUDA_VISIBLE_DEVICES=""`` but the server's GPUs stay in DESILAB_GPUS, and
        those are what a Ray cluster may use.
        """
        env = os.environ if env is None else env
        cpus = env.get("DESILAB_CPU_LIMIT") or str(len(os.sched_getaffinity(0)))
        mem = env.get("DESILAB_MEM_LIMIT")
        if mem:
            memory: int | None = int(mem)
        else:
            try:
                import psutil

                memory = int(psutil.virtual_memory().total)
            except Exception:  # pragma: no cover - psutil is a dependency
                memory = None
        gpus_text = env.get("DESILAB_GPUS")
        if gpus_text is None:
            gpus_text = env.get("CUDA_VISIBLE_DEVICES", "")
        gpus = tuple(g.strip() for g in gpus_text.split(",") if g.strip())
        return cls(
            profile=env.get("DESILAB_PROFILE") or "(no desilab profile)",
            cpus=max(1, int(cpus)),
            memory=memory,
            gpus=gpus,
        )


@dataclass(frozen=True)
class ClusterRequest:
    """What the user asks for: ``workers`` Ray nodes, each with the given resources.

    ``cpus`` defaults to an even share of the profile's CPUs, ``memory`` (bytes,
    object store included) to the same share of its memory, so a cluster can
    later scale up to the profile's CPUs; ``gpus`` defaults to none. The first worker is the
    head node, so a 1-worker cluster is one Ray node, as with ``ray.init``.
    """

    workers: int = 1
    cpus: int | None = None
    gpus: int = 0
    memory: int | None = None


@dataclass(frozen=True)
class NodePlan:
    """One Ray node: its logical resources and its object store."""

    cpus: int
    gpus: int
    gpu_ids: tuple[str, ...]
    memory: int
    object_store_memory: int

    @property
    def total_memory(self) -> int:
        return self.memory + self.object_store_memory


@dataclass(frozen=True)
class ClusterPlan:
    """The nodes to run, checked against the profile."""

    nodes: tuple[NodePlan, ...]
    request: ClusterRequest
    limits: ProfileLimits

    @property
    def workers(self) -> int:
        return len(self.nodes)

    def summary(self) -> str:
        n = self.nodes[0]
        text = f"{plural(self.workers, 'worker')} × {plural(n.cpus, 'CPU')}"
        if n.gpus:
            text += f", {plural(n.gpus, 'GPU')}"
        return text + f", {gib(n.total_memory)} (object store {gib(n.object_store_memory)})"


def plan_cluster(
    request: ClusterRequest,
    limits: ProfileLimits,
    *,
    reserved_memory: int = GiB,
    object_store_fraction: float = 0.3,
) -> ClusterPlan:
    """Plan ``request`` within ``limits`` or raise ProfileLimitError saying why not.

    Ray workers may use the profile's memory minus ``reserved_memory`` (the
    Jupyter server, the kernels and Ray's own processes); each node's object
    store is ``object_store_fraction`` of its memory.
    """
    p = f"your profile {limits.profile}"
    w = request.workers
    if not isinstance(w, int) or w < 1:
        raise ProfileLimitError(f"a cluster needs at least 1 worker, not {w!r}")
    if w > limits.cpus:
        raise ProfileLimitError(
            f"asked for {plural(w, 'worker')}, {p} allows {limits.cpus} "
            f"(every worker needs at least 1 CPU)"
        )
    cpus = request.cpus if request.cpus is not None else max(1, limits.cpus // w)
    if not isinstance(cpus, int) or cpus < 1:
        raise ProfileLimitError(f"each worker needs at least 1 CPU, not {cpus!r}")
    if w * cpus > limits.cpus:
        each = f" ({w} workers × {cpus})" if w > 1 else ""
        raise ProfileLimitError(
            f"asked for {plural(w * cpus, 'CPU')}{each}, {p} allows {limits.cpus}"
        )
    gpus = request.gpus or 0
    if not isinstance(gpus, int) or gpus < 0:
        raise ProfileLimitError(f"GPUs per worker must be 0 or more, not {gpus!r}")
    if w * gpus > len(limits.gpus):
        each = f" ({w} workers × {gpus})" if w > 1 else ""
        allows = f"allows {len(limits.gpus)}" if limits.gpus else "has none"
        raise ProfileLimitError(f"asked for {plural(w * gpus, 'GPU')}{each}, {p} {allows}")

    budget = None if limits.memory is None else limits.memory - reserved_memory
    if budget is not None and budget < MIN_WORKER_MEMORY:
        raise ProfileLimitError(
            f"{p} has {gib(limits.memory)} of memory and {gib(reserved_memory)} of it is kept "
            f"for the server, the kernels and Ray's own processes: too little is left for "
            f"Ray workers; start your server with a larger profile"
        )
    if request.memory is not None:
        memory = int(request.memory)
    elif budget is not None:
        memory = budget * cpus // limits.cpus  # the CPU share: room to scale up to the limit
    else:
        memory = 2 * GiB
    if memory < MIN_WORKER_MEMORY:
        raise ProfileLimitError(
            f"each worker needs at least {gib(MIN_WORKER_MEMORY)} of memory, "
            f"asked for {gib(memory)}"
            + (f" (the {cpus}-CPU share of {gib(budget)})" if request.memory is None else "")
        )
    if budget is not None and w * memory > budget:
        each = f" ({w} workers × {gib(memory)})" if w > 1 else ""
        raise ProfileLimitError(
            f"asked for {gib(w * memory)} of memory{each}, {p} allows {gib(budget)} for Ray "
            f"workers ({gib(limits.memory)} limit minus {gib(reserved_memory)} kept for the "
            f"server, the kernels and Ray's own processes)"
        )
    store = max(MIN_OBJECT_STORE, int(memory * object_store_fraction))
    nodes = tuple(
        NodePlan(
            cpus=cpus,
            gpus=gpus,
            gpu_ids=tuple(limits.gpus[i * gpus : (i + 1) * gpus]),
            memory=memory - store,
            object_store_memory=store,
        )
        for i in range(w)
    )
    return ClusterPlan(
        nodes=nodes, request=replace(request, cpus=cpus, gpus=gpus, memory=memory), limits=limits
    )


def dashboard_login_url(port: int | None, prefix: str | None = None) -> str:
    """desilab's one-click login to the dashboard (see :mod:`.ray_server`)."""
    url = proxied_dashboard_url(port, prefix)
    return url[: -len(f"proxy/{port}/")] + f"desilab/ray/dashboard/{port}" if url else ""


def proxied_dashboard_url(port: int | None, prefix: str | None = None) -> str:
    """The dashboard through jupyter-server-proxy under the user's prefix.

    ``{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/``; outside the hub, ``/proxy/{port}/``
    (a plain Jupyter server with jupyter-server-proxy).
    """
    if not port:
        return ""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/") if prefix is None else prefix
    if not prefix.endswith("/"):
        prefix += "/"
    return f"{prefix}proxy/{port}/"


@dataclass
class ClusterInfo:
    """A cluster as its backend records it (not live Ray state)."""

    id: str
    name: str
    backend: str
    status: str
    message: str = ""
    workers: int = 0
    address: str = ""
    dashboard_port: int | None = None
    dashboard_url: str = ""
    #: Sets the dashboard's token cookie, then redirects to ``dashboard_url``.
    dashboard_login_url: str = ""
    owner: str = ""
    created: float = field(default_factory=time.time)
    ready_at: float | None = None
    idle_timeout: float | None = None
    node: NodePlan | None = None
    log: str = ""
    token_path: str = ""

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    def connect_snippet(self) -> str:
        """Code that connects a notebook (any of the user's) to this cluster."""
        if not self.address:
            return ""
        lines = ["import ray"]
        if self.token_path:
            lines = [
                "import os",
                "",
                "import ray",
                "",
                'os.environ["RAY_AUTH_MODE"] = "token"',
                f'os.environ["RAY_AUTH_TOKEN_PATH"] = "{self.token_path}"',
            ]
        lines.append(f'ray.init(address="{self.address}")')
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NodeStatus:
    node_id: str
    alive: bool
    is_head: bool
    cpus: float
    cpus_used: float
    gpus: float
    gpus_used: float
    memory: float
    object_store_memory: float


@dataclass
class ClusterStatus:
    """Live state of a running cluster."""

    nodes: list[NodeStatus]
    running_tasks: int
    pending_tasks: int
    cpus_used: float = 0.0
    gpus_used: float = 0.0
    fetched_at: float = field(default_factory=time.time)

    @property
    def alive_nodes(self) -> list[NodeStatus]:
        return [n for n in self.nodes if n.alive]

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.alive_nodes)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.alive_nodes)

    @property
    def memory(self) -> float:
        return sum(n.memory + n.object_store_memory for n in self.alive_nodes)

    @property
    def busy(self) -> bool:
        """Tasks running or waiting, or resources held (e.g. by actors)."""
        return bool(self.running_tasks or self.pending_tasks or self.cpus_used or self.gpus_used)

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("Nodes", str(len(self.alive_nodes))),
            ("CPUs", f"{self.cpus_used:g} of {self.cpus:g} in use"),
            ("GPUs", f"{self.gpus_used:g} of {self.gpus:g} in use"),
            ("Memory", gib(self.memory)),
            ("Running tasks", str(self.running_tasks)),
            ("Pending tasks", str(self.pending_tasks)),
        ]


def read_token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return open(path).read().strip() or None
    except OSError:
        return None


def _get_json(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


_RUNNING = {"RUNNING", "RUNNING_IN_RAY_GET", "RUNNING_IN_RAY_WAIT"}
_PENDING = {
    "PENDING_ARGS_AVAIL",
    "PENDING_NODE_ASSIGNMENT",
    "PENDING_OBJ_STORE_MEM_AVAIL",
    "PENDING_ARGS_FETCH",
    "SUBMITTED_TO_WORKER",
    "PENDING_ACTOR_TASK_ARGS_FETCH",
    "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY",
}


def fetch_status(
    dashboard_port: int,
    token: str | None = None,
    *,
    host: str = "127.0.0.1",
    timeout: float = 5.0,
) -> ClusterStatus:
    """Nodes, resources and task counts from the dashboard's state API.

    Resources in use come from the per-node logical resources the autoscaler
    reports; tasks from ``/api/v0/tasks/summarize``. Raises RayLaunchError with
    the reason when the dashboard does not answer.
    """
    base = f"http://{host}:{dashboard_port}"
    try:
        nodes = _get_json(f"{base}/api/v0/nodes?limit=1000&detail=true", token, timeout)
        summary = _get_json(f"{base}/nodes?view=summary", token, timeout)
        tasks = _get_json(f"{base}/api/v0/tasks/summarize?summary_by=func_name", token, timeout)
    except urllib.error.HTTPError as e:
        raise RayLaunchError(
            f"the Ray dashboard on port {dashboard_port} answered "
            f"{e.code}: {e.read().decode(errors='replace')[:200]}"
        ) from e
    except (OSError, ValueError) as e:
        raise RayLaunchError(
            f"the Ray dashboard on port {dashboard_port} does not answer ({e})"
        ) from e
    used = (summary.get("data") or {}).get("nodeLogicalResources") or {}
    result = []
    for n in ((nodes.get("data") or {}).get("result") or {}).get("result") or []:
        res = n.get("resources_total") or {}
        node_used = _parse_usage(used.get(n.get("node_id"), ""))
        result.append(
            NodeStatus(
                node_id=n.get("node_id", ""),
                alive=n.get("state") == "ALIVE",
                is_head=bool(n.get("is_head_node")),
                cpus=float(res.get("CPU", 0)),
                cpus_used=node_used.get("CPU", 0.0),
                gpus=float(res.get("GPU", 0)),
                gpus_used=node_used.get("GPU", 0.0),
                memory=float(res.get("memory", 0)),
                object_store_memory=float(res.get("object_store_memory", 0)),
            )
        )
    running = pending = 0
    result_ = ((tasks.get("data") or {}).get("result") or {}).get("result") or {}
    groups = (result_.get("node_id_to_summary") or {}).get("cluster", {}).get("summary", {})
    for group in groups.values():
        for state, count in (group.get("state_counts") or {}).items():
            if state in _RUNNING:
                running += int(count)
            elif state in _PENDING:
                pending += int(count)
    alive = [n for n in result if n.alive]
    return ClusterStatus(
        nodes=result,
        running_tasks=running,
        pending_tasks=pending,
        cpus_used=sum(n.cpus_used for n in alive),
        gpus_used=sum(n.gpus_used for n in alive),
    )


def _parse_usage(text: str) -> dict[str, float]:
    """``"0.0/2.0 CPU\\n0B/1.5GiB memory"`` → ``{"CPU": 0.0, ...}`` (used amounts)."""
    out: dict[str, float] = {}
    for line in str(text).splitlines():
        parts = line.strip().split()
        if len(parts) != 2 or "/" not in parts[0]:
            continue
        used = parts[0].split("/", 1)[0]
        try:
            out[parts[1]] = float(used)
        except ValueError:
            continue
    return out
