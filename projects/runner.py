"""Batch execution shared by the projects: Ray when a cluster is reachable, else processes.

Every project splits its work into independent units (a healpix file, a shard of
spectra, a chunk of the void-finding grid) and maps a pure, picklable function
over them. :func:`run_units` gives the same, ordered results whichever way it
runs, so a notebook on a laptop and a batch job on a Ray cluster agree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def ray_address() -> str | None:
    """The Ray cluster to use: RAY_ADDRESS, else one this process already joined."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return address
    try:
        import ray
    except ImportError:
        return None
    return "auto" if ray.is_initialized() else None


def default_workers() -> int:
    """Processes for local runs: the profile's CPU limit, else the usable cores."""
    limit = os.environ.get("DESILAB_CPU_LIMIT")
    return max(1, int(limit) if limit else len(os.sched_getaffinity(0)))


def run_units(
    func: Callable[..., T],
    units: Iterable[Any],
    *,
    workers: int | None = None,
    use_ray: bool | None = None,
    desc: str = "units",
    progress: bool = True,
    **kwargs: Any,
) -> list[T]:
    """Apply ``func(unit, **kwargs)`` to every unit; results in the order of ``units``.

    Parameters
    ----------
    func
        A module-level (picklable) function.
    units
        The work items.
    workers
        Local processes (default: the profile's CPU limit); 1 runs in this process.
    use_ray
        True: require Ray; False: never use it; None: use it when a cluster is
        reachable (:func:`ray_address`).
    desc, progress
        The progress bar.
    """
    units = list(units)
    if use_ray is None:
        use_ray = ray_address() is not None
    bar = tqdm(total=len(units), desc=desc, disable=not progress)
    try:
        if use_ray:
            return _run_ray(func, units, bar, kwargs)
        workers = workers or default_workers()
        if workers == 1 or len(units) <= 1:
            results = []
            for unit in units:
                results.append(func(unit, **kwargs))
                bar.update()
            return results
        return _run_processes(func, units, workers, bar, kwargs)
    finally:
        bar.close()


def _run_processes(func, units: Sequence, workers: int, bar, kwargs: dict) -> list:
    results: list = [None] * len(units)
    with ProcessPoolExecutor(max_workers=min(workers, len(units))) as pool:
        futures = {pool.submit(func, unit, **kwargs): i for i, unit in enumerate(units)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update()
    return results


def _run_ray(func, units: Sequence, bar, kwargs: dict) -> list:
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address() or "auto", ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(func)
    refs = [remote.remote(unit, **kwargs) for unit in units]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            results[index[ref]] = ray.get(ref)
            bar.update()
    return results
