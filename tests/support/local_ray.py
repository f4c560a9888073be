"""A local Ray for tests that compare a Ray run with a local run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def local_ray(num_cpus: int, object_store_mib: int = 80) -> Iterator[None]:
    """``ray.init`` for the duration of the block; skip the test, saying why, when Ray's
    own start-up fails twice (its raylet has a fixed 30 s window that an overloaded
    2-core machine can miss): that is not the code under test failing."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    kw = {
        "num_cpus": num_cpus,
        "object_store_memory": object_store_mib * 2**20,
        "include_dashboard": False,
        "log_to_driver": False,
    }
    for attempt in (1, 2):
        try:
            ray.init(**kw)
            break
        except Exception as exc:
            ray.shutdown()
            if attempt == 2:
                pytest.skip(f"a local Ray could not start here: {exc}")
    try:
        yield
    finally:
        ray.shutdown()
