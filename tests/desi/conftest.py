"""Shared fixtures of the DR1 data-layer tests: one small mock DR1 and one real PostgreSQL
per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from desilab.desi import DR1Layout, generate_mock, ingest
from desilab.desi.roles import prepare_catalog
from desilab.hub.database import EmbeddedPostgres
from psycopg import sql

MOCK_SEED = 20240611


@pytest.fixture(scope="session")
def mock_dr1(tmp_path_factory):
    """A small mock DR1 (about 10 healpix pixels) with spectra for many targets."""
    outdir = tmp_path_factory.mktemp("mock")
    summary = generate_mock(
        outdir,
        n_qso=400,
        n_galaxy=2500,
        n_star=150,
        seed=MOCK_SEED,
        progress=False,
        qso_spectra_fraction=0.5,
        galaxy_spectra_fraction=0.05,
        star_spectra_fraction=0.3,
        workers=1,
    )
    return summary, DR1Layout(summary.data_root)


@pytest.fixture(scope="session")
def catalog_server():
    """A real embedded PostgreSQL 16 for the catalog tests, stopped at the end.

    Its folder is made with mkdtemp under /tmp (0755): the server runs as the
    ``pgserver`` system user, which cannot enter pytest's private tmp_path.
    """
    root = Path(tempfile.mkdtemp(prefix="desilab-catalog-", dir="/tmp"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "home")
    dsn = server.start()
    try:
        yield server, dsn
    finally:
        # The data is thrown away: skip the shutdown checkpoint (seconds with big buffers).
        server._run("pg_ctl", "-w", "-m", "immediate", "-D", str(server.pgdata), "stop")
        server.server = None
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def new_database(catalog_server):
    """Factory: a fresh database with the catalog roles and schemas; returns its admin DSN."""
    server, _ = catalog_server

    def make(name: str) -> str:
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        dsn = server.dsn(name)
        prepare_catalog(dsn)
        return dsn

    return make


@pytest.fixture(scope="session")
def ingested(mock_dr1, new_database):
    """The session mock ingested once: (admin DSN, IngestReport, DR1Layout)."""
    _, layout = mock_dr1
    dsn = new_database("ingested")
    report = ingest(layout.root, dsn, progress=False)
    return dsn, report, layout
