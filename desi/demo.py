"""The demo dataset of ``desilab up --demo``: a mock DR1 generated once and ingested once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psycopg

from .ingest import IngestReport, ingest
from .mock import generate_mock

__all__ = ["DEMO", "catalog_rows", "ensure_demo"]

#: Size and seed of the demo mock.
DEMO = {"n_qso": 5000, "n_galaxy": 50000, "n_star": 5000, "seed": 20250101}

_log = logging.getLogger(__name__)


def catalog_rows(dsn: str) -> int:
    """Rows in ``dr1.zpix`` (0 when the table does not exist yet)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('dr1.zpix')").fetchone()[0] is None:
            return 0
        return conn.execute("SELECT count(*) FROM dr1.zpix").fetchone()[0]


def ensure_demo(
    dsn: str, workdir: str | Path, log: logging.Logger | None = None, *, progress: bool = True
) -> IngestReport | None:
    """Generate the demo mock into ``workdir`` (once) and ingest it when dr1.zpix is empty.

    Idempotent: a catalog with rows is left alone; a mock already generated in
    ``workdir`` (its ``truth/mock.json`` is written last) is reused; an ingest
    cut short is resumed by the next call.

    Parameters
    ----------
    dsn : str
        Admin DSN of the catalog database.
    workdir : str or Path
        Where the mock lives (``workdir/dr1`` is its DATA_ROOT).
    log : logging.Logger, optional
        Where progress goes (the hub's log); tqdm bars go to stderr.
    progress : bool
        Show progress bars.

    Returns
    -------
    IngestReport or None
        None when the catalog already had rows.
    """
    logger = log or _log
    rows = catalog_rows(dsn)
    if rows:
        logger.info("demo: the catalog already holds %d zpix rows; nothing to load", rows)
        return None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # user servers read spectra from here
    if not (workdir / "truth" / "mock.json").is_file():
        logger.info(
            "demo: generating a mock DR1 (%(n_qso)d QSOs, %(n_galaxy)d galaxies, %(n_star)d "
            "stars, seed %(seed)d) in %(dir)s; this takes a few minutes",
            {**DEMO, "dir": workdir},
        )
        summary = generate_mock(workdir, progress=progress, overwrite=True, **DEMO)
        logger.info(
            "demo: mock written: %d spectra in %d coadd files, %.0f s",
            summary.n_spectra,
            summary.n_coadd_files,
            summary.timings.get("total", 0),
        )
    logger.info("demo: ingesting %s into the catalog", workdir / "dr1")
    report = ingest(workdir / "dr1", dsn, progress=progress, logger=logger)
    if report.skipped:
        logger.warning("demo: %d files could not be ingested (see above)", len(report.skipped))
    return report
