"""Dask bounded by the user's profile, with its dashboard behind the hub.

- :func:`dask_cluster` returns a LocalCluster whose workers and threads fit
  DESILAB_CPU_LIMIT and whose memory fits DESILAB_MEM_LIMIT; asking for more
  raises ProfileLimitError, and so does scaling beyond the profile later.
- :func:`dask_settings` is the Dask configuration desilab uses: dask-labextension's
  cluster factory (so JupyterLab's Dask panel starts the same bounded clusters)
  and ``distributed.dashboard.link`` through jupyter-server-proxy,
  ``{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status``.
- Enabled as a jupyter-server extension (``desilab.extensions.dask_config`` in the
  shipped server config), it applies those settings to the server, where the Dask
  panel makes clusters, and exports the dashboard link to the kernels' environment.

Dask and distributed are imported only when a cluster is made.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .ray_cluster import GiB, ProfileLimitError, ProfileLimits, gib, plural

#: dask-labextension's factory: this module's :func:`labextension_cluster`.
FACTORY = {
    "module": "desilab.extensions.dask_config",
    "class": "labextension_cluster",
    "args": [],
    "kwargs": {},
}
DASHBOARD_LINK = "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"
DEFAULT_RESERVED_MEMORY = GiB


def dask_settings(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Dask config keys desilab sets (dotted keys, for ``dask.config.set``)."""
    env = os.environ if env is None else env
    settings: dict[str, Any] = {
        "labextension.factory": dict(FACTORY),
        "labextension.default.workers": None,
    }
    if env.get("JUPYTERHUB_SERVICE_PREFIX"):
        settings["distributed.dashboard.link"] = DASHBOARD_LINK
    return settings


def plan_dask(
    limits: ProfileLimits,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: int | str | None = None,
    processes: bool = True,
    reserved_memory: int = DEFAULT_RESERVED_MEMORY,
) -> dict[str, Any]:
    """Workers, threads and per-worker memory within the profile, or ProfileLimitError."""
    p = f"your profile {limits.profile}"
    threads = threads_per_worker or (1 if processes else limits.cpus)
    workers = n_workers if n_workers is not None else max(1, limits.cpus // threads)
    if workers < 0 or threads < 1:
        raise ProfileLimitError(f"Dask needs 1 or more threads per worker, not {threads}")
    if workers * threads > limits.cpus:
        each = f" ({workers} workers × {threads})" if workers > 1 else ""
        raise ProfileLimitError(
            f"asked for {plural(workers * threads, 'Dask thread')}{each}, {p} allows {limits.cpus}"
        )
    budget = None if limits.memory is None else max(0, limits.memory - reserved_memory)
    if memory_limit is None or memory_limit == "auto":
        per = None if budget is None else budget // max(1, workers)
    else:
        from dask.utils import parse_bytes

        per = parse_bytes(memory_limit) if isinstance(memory_limit, str) else int(memory_limit)
        if budget is not None and per * workers > budget:
            each = f" ({workers} workers × {gib(per)})" if workers > 1 else ""
            raise ProfileLimitError(
                f"asked for {gib(per * workers)} of memory for Dask{each}, {p} allows "
                f"{gib(budget)} ({gib(limits.memory)} limit minus {gib(reserved_memory)} kept "
                f"for the server and the kernels)"
            )
    if per is not None and per < 256 * 1024**2 and workers:
        raise ProfileLimitError(f"{p} leaves {gib(per)} per Dask worker; ask for fewer workers")
    return {
        "n_workers": workers,
        "threads_per_worker": threads,
        "memory_limit": per if per is not None else "auto",
        "max_workers": limits.cpus // threads,
    }


_CLASS: type | None = None


def profile_cluster_class() -> type:
    """``ProfileLocalCluster``: a LocalCluster that refuses to scale past the profile."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from distributed import LocalCluster

    class ProfileLocalCluster(LocalCluster):
        """A LocalCluster bounded by the profile (workers, threads, memory)."""

        def __init__(
            self,
            *args: Any,
            limits: ProfileLimits | None = None,
            reserved_memory: int = DEFAULT_RESERVED_MEMORY,
            **kwargs: Any,
        ):
            limits = limits or ProfileLimits.from_env()
            plan = plan_dask(
                limits,
                kwargs.pop("n_workers", None),
                kwargs.pop("threads_per_worker", None),
                kwargs.pop("memory_limit", None),
                kwargs.get("processes", True) is not False,
                reserved_memory,
            )
            self.profile_limits = limits
            self.max_workers = plan.pop("max_workers")
            kwargs.setdefault("dashboard_address", "127.0.0.1:0")
            if kwargs.get("processes", True) is not False:  # threads: in-process comms
                kwargs.setdefault("host", "127.0.0.1")
            super().__init__(*args, **plan, **kwargs)

        def _refuse(self, n: int) -> None:
            threads = self._threads()
            raise ProfileLimitError(
                f"asked for {plural(n, 'Dask worker')} of {plural(threads, 'thread')}, your "
                f"profile {self.profile_limits.profile} allows {self.max_workers}"
            )

        def _threads(self) -> int:
            spec = self.new_spec.get("options", {}) if isinstance(self.new_spec, dict) else {}
            return int(spec.get("nthreads", 1) or 1)

        def scale(self, n: int = 0, memory: Any = None, cores: Any = None):
            want = n
            if cores is not None:
                want = max(want, math.ceil(cores / self._threads()))
            if memory is not None:
                from dask.utils import parse_bytes

                per = self.new_spec.get("options", {}).get("memory_limit") or 1
                want = max(want, math.ceil(parse_bytes(memory) / max(1, int(per))))
            if want > self.max_workers:
                self._refuse(want)
            return super().scale(n, memory=memory, cores=cores)

        def adapt(self, *args: Any, maximum: Any = None, **kwargs: Any):
            if maximum is None or maximum == math.inf:
                maximum = self.max_workers
            elif maximum > self.max_workers:
                self._refuse(int(maximum))
            return super().adapt(*args, maximum=maximum, **kwargs)

    _CLASS = ProfileLocalCluster
    return _CLASS


def apply_dask_settings(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Set :func:`dask_settings` in this process's Dask config; return them."""
    import dask

    settings = dask_settings(env)
    dask.config.set(settings)
    return settings


def dask_cluster(**kwargs: Any):
    """A LocalCluster bounded by the profile, its dashboard linked through the hub.

    Defaults: one single-threaded worker process per CPU of the profile, memory
    (the profile's limit less 1 GiB for the server and the kernels) shared
    evenly. Pass LocalCluster arguments to change them; anything beyond the
    profile raises ProfileLimitError. Use it with ``Client(cluster)``.
    """
    apply_dask_settings()
    return profile_cluster_class()(**kwargs)


def labextension_cluster(*args: Any, **kwargs: Any):
    """dask-labextension's factory (see :data:`FACTORY`)."""
    return profile_cluster_class()(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "ProfileLocalCluster":
        return profile_cluster_class()
    raise AttributeError(name)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "desilab.extensions.dask_config"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Configure Dask in the server (the Dask panel) and for the kernels it starts."""
    settings = apply_dask_settings()
    link = settings.get("distributed.dashboard.link")
    if link:
        os.environ.setdefault("DASK_DISTRIBUTED__DASHBOARD__LINK", link)
    serverapp.log.info(
        "desilab: Dask clusters bounded by the profile; dashboard link %s", link or "(default)"
    )
