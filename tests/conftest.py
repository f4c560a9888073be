"""Shared fixtures: real hubs with real PostgreSQL on loopback."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.hub import processes_mentioning, start_hub

FAST_POLL = """
c.Spawner.poll_interval = 1
c.JupyterHub.last_activity_interval = 5
"""


@pytest.fixture(scope="session")
def homes_root():
    """Where hub homes live: not under pytest's private tmp (0700, and reset to 0700
    by every pytest start), because per-user accounts must traverse to their homes."""
    root = Path(tempfile.mkdtemp(prefix="desilab-tests-", dir="/tmp"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


_counter = itertools.count()


@pytest.fixture
def hub_home(homes_root, request):
    """A fresh, empty DESILAB_HOME for one test."""
    home = homes_root / f"{request.node.name[:40]}-{next(_counter)}"
    home.mkdir()
    return home


@pytest.fixture(scope="session")
def gpu_hub(homes_root):
    """One hub for the spawn tests: two simulated GPUs, fast polling."""
    home = homes_root / "gpu-hub"
    hub = start_hub(home, env={"DESILAB_GPUS": "0,1"}, config=FAST_POLL)
    yield hub
    assert hub.stop() == 0, hub.log()[-3000:]
    assert processes_mentioning(home) == []


@pytest.fixture(scope="session")
def catalog_db(homes_root):
    """A real embedded PostgreSQL 16 with desilab's schemas and roles; yields the admin DSN."""
    from desilab.desi.roles import prepare_catalog
    from desilab.desi.vi import ensure_vi_schema
    from desilab.hub.database import EmbeddedPostgres

    home = homes_root / "catalog-db"
    home.mkdir()
    server = EmbeddedPostgres(home)
    dsn = server.start()
    try:
        prepare_catalog(dsn)
        ensure_vi_schema(dsn)
        yield dsn
    finally:
        server.stop()


@dataclass(frozen=True)
class DemoCatalog:
    """A small mock DR1 ingested into :func:`catalog_db` (shared by tutorials and widgets).

    Attributes
    ----------
    admin_dsn : str
        Owner DSN of the catalog database.
    data_root : Path
        The mock's DATA_ROOT (the DR1 tree).
    truth : Path
        The mock's truth folder (outside the DR1 tree).
    """

    admin_dsn: str
    data_root: Path
    truth: Path

    def user_dsn(self, name: str) -> str:
        """DSN of a per-user role, as a spawned server gets in DESILAB_DATABASE_URL."""
        from desilab.desi.roles import ensure_user_role

        return ensure_user_role(self.admin_dsn, name)


#: Size of the shared mock: enough QSOs for a small VAE and BAL sample, enough galaxies
#: for voids in a volume-limited sample, and still under a minute to build and ingest.
DEMO_MOCK = {"n_qso": 1500, "n_galaxy": 20000, "n_star": 300, "seed": 20261129}


@pytest.fixture(scope="session")
def demo_catalog(homes_root, catalog_db):
    """The shared mock DR1 (:data:`DEMO_MOCK`), generated and ingested once per session."""
    from desilab.desi.ingest import ingest
    from desilab.desi.mock import generate_mock

    outdir = homes_root / "demo-mock"
    summary = generate_mock(outdir, progress=False, workers=1, **DEMO_MOCK)
    report = ingest(summary.data_root, catalog_db, progress=False)
    assert not report.skipped, report.summary()
    return DemoCatalog(catalog_db, Path(summary.data_root), outdir / "truth")
