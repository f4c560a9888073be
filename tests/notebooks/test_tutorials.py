"""The tutorials run top to bottom (nbval) in a server-like environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.hub import REPO, embedded_dsn

from desilab.desi.roles import ensure_user_role
from desilab.extensions import publish_templates, server_env
from desilab.kernels import kernel_env

pytestmark = pytest.mark.slow

TUTORIALS = REPO / "notebooks" / "tutorials"


def server_like_env(home: Path, database_url: str) -> dict[str, str]:
    """The environment ProfileSpawner gives a cpu-small server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DESILAB_", "JUPYTER"))}
    env.update(kernel_env(gpu=False, inherited=""))
    env.update(server_env(inherited=""))
    env.update(
        HOME=str(home),
        DESILAB_PROFILE="cpu-small",
        DESILAB_CPU_LIMIT="1",
        DESILAB_CPUS="0",
        DESILAB_MEM_LIMIT=str(2 * 1024**3),
        DESILAB_DATABASE_URL=database_url,
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    return env


def run_nbval(notebook: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", str(notebook)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    )


def test_getting_started(gpu_hub, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    publish_templates(home)
    url = ensure_user_role(embedded_dsn(gpu_hub.home), "tutorial")
    result = run_nbval(TUTORIALS / "00-getting-started.ipynb", server_like_env(home, url), home)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
