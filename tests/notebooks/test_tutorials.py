"""The tutorials run top to bottom (nbval) in a server-like environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from desilab.desi.roles import ensure_user_role
from desilab.extensions import publish_templates, server_env
from desilab.kernels import kernel_env
from support.hub import REPO, embedded_dsn

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
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "-q",
            str(notebook),
        ],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    )


def run_tutorial(name: str, home: Path, database_url: str) -> None:
    """Run one tutorial with nbval in ``home`` as a cpu-small server would; fail with its output."""
    home.mkdir(exist_ok=True)
    result = run_nbval(TUTORIALS / name, server_like_env(home, database_url), home)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout


def test_getting_started(gpu_hub, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    publish_templates(home)
    url = ensure_user_role(embedded_dsn(gpu_hub.home), "tutorial")
    run_tutorial("00-getting-started.ipynb", home, url)


def test_voids_tutorial(demo_catalog, tmp_path):
    home = tmp_path / "home"
    url = demo_catalog.user_dsn("voidtutorial")
    run_tutorial("04-voids.ipynb", home, url)
    # It writes to the user's home (published tutorials are read-only) and keeps its
    # classification in the user's own schema.
    assert (home / "VoidFinder_NGC_tutorial.fits").is_file()
    assert not list(TUTORIALS.glob("*.fits"))
    import psycopg

    with psycopg.connect(url) as conn:
        (n,) = conn.execute("SELECT count(*) FROM my_void_membership").fetchone()
    assert n > 0


def test_anomalies_tutorial(demo_catalog, tmp_path):
    home = tmp_path / "home"
    url = demo_catalog.user_dsn("anomalytutorial")
    run_tutorial("02-anomalies.ipynb", home, url)
    # It built a store and a model in the user's home and flagged the top object as the user.
    assert (home / "anomalies-tutorial" / "vae" / "model.json").is_file()
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT flag, source FROM vi.inspections WHERE inspector = session_user"
        ).fetchall()
    assert ("interesting", "anomaly-explorer") in rows


@pytest.fixture(scope="module")
def outflow_fits(demo_catalog):
    """The lab's batch, as `desilab outflows fit` stores it (owner role): every [O III]-range
    QSO of the demo catalog and the first 100 in the BAL range."""
    from astropy.table import vstack
    from desilab.desi import DR1Layout
    from desilab.projects.outflows import create_tables, run_batch, select_from_catalog

    admin = demo_catalog.admin_dsn
    create_tables(admin)
    good = "SELECT targetid FROM dr1.zpix WHERE spectype = 'QSO' AND zwarn = 0 AND deltachi2 > 25"
    sample = vstack(
        [
            select_from_catalog(admin, good + " AND z < 0.95"),
            select_from_catalog(admin, good + " AND z BETWEEN 1.57 AND 5", limit=100),
        ]
    )
    out = run_batch(
        sample,
        DR1Layout(demo_catalog.data_root),
        dsn=admin,
        workers=2,
        use_ray=False,
        progress=False,
        run_id="lab-batch",
    )
    assert not out["errors"]
    return admin


def test_outflows_tutorial(outflow_fits, demo_catalog, tmp_path):
    home = tmp_path / "home"
    url = demo_catalog.user_dsn("outflowtutor")
    run_tutorial("03-outflows.ipynb", home, url)


def test_widgets(demo_catalog, tmp_path):
    """Catalog queries, spectra and VI on the demo catalog.

    The tutorial's Ray cells (start, connect, list, stop) are marked NBVAL_SKIP: a Ray
    head and worker pinned to the tutorial's one core miss Ray's fixed start-up windows
    on a loaded 2-core machine. They run for real in tests/extensions/test_ray_local.py
    (the connect snippet included) and in the browser test.
    """
    home = tmp_path / "home"
    url = demo_catalog.user_dsn("tutorial-widgets")
    run_tutorial("01-widgets.ipynb", home, url)
