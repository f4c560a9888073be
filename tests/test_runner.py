"""The batch runner gives the same ordered results locally, in processes and on Ray."""

from __future__ import annotations

import posixpath

import pytest
from desilab.projects import run_units


def square_plus(x: int, offset: int = 0) -> int:
    return x * x + offset


def test_local_and_process_runs_agree_and_keep_order():
    units = list(range(20))
    expected = [x * x + 3 for x in units]
    assert (
        run_units(square_plus, units, workers=1, use_ray=False, offset=3, progress=False)
        == expected
    )
    assert (
        run_units(square_plus, units, workers=2, use_ray=False, offset=3, progress=False)
        == expected
    )


PATHS = [f"/data/pix{i}/file{i}.fits" for i in range(10)]


@pytest.mark.slow
def test_ray_run_equals_local_run():
    ray = pytest.importorskip("ray")
    try:
        ray.init(
            num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False
        )
    except Exception as e:  # Ray's own start-up, not the runner, failed (seen on overloaded hosts)
        pytest.skip(f"a local Ray could not start here: {e}")
    # Ray workers import functions by module name, so use one they can import
    try:
        got = run_units(posixpath.basename, PATHS, use_ray=True, progress=False)
    finally:
        ray.shutdown()
    assert got == run_units(posixpath.basename, PATHS, workers=2, use_ray=False, progress=False)
    assert got == [f"file{i}.fits" for i in range(10)]
