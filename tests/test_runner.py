"""The batch runner gives the same ordered results locally, in processes and on Ray."""

from __future__ import annotations

import posixpath

import pytest
from desilab.projects import run_units
from support.local_ray import local_ray


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
    # Ray workers import functions by module name, so use one they can import
    with local_ray(num_cpus=2):
        got = run_units(posixpath.basename, PATHS, use_ray=True, progress=False)
    assert got == run_units(posixpath.basename, PATHS, workers=2, use_ray=False, progress=False)
    assert got == [f"file{i}.fits" for i in range(10)]
