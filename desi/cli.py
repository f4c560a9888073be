"""DR1 subcommands: ``desilab mock``, ``desilab ingest``, ``desilab query``, ``desilab db``."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from desilab.hub.cli import DesilabCommand
from traitlets import Bool, Enum, Float, Int, List, Unicode

__all__ = ["DbAddUserApp", "DbApp", "IngestApp", "MockApp", "QueryApp"]


class MockApp(DesilabCommand):
    """Generate a deterministic mock of DESI DR1 under OUTDIR/dr1 with truth in OUTDIR/truth."""

    name = "desilab-mock"
    description = """Write a realistic mock DESI DR1: healpix coadds and redrock files, zpix
    catalogs, the FastSpecFit and DESIVAST VoidFinder VACs, in the DR1 formats and directory
    layout under OUTDIR/dr1, and what was injected (QSO BAL/outflow/anomaly labels, galaxy
    environment) under OUTDIR/truth. Usage: desilab mock OUTDIR --n-qso N --n-galaxy N
    --n-star N --seed S"""

    n_qso = Int(5000, help="Number of quasars (dark program).").tag(config=True)
    n_galaxy = Int(50000, help="Number of BGS-like galaxies (bright program).").tag(config=True)
    n_star = Int(5000, help="Number of stars (70% MWS in bright, 30% in dark).").tag(config=True)
    seed = Int(1, help="Random seed; the same seed gives byte-identical data.").tag(config=True)
    qso_spectra_fraction = Float(
        0.4,
        help="""Fraction of unlabelled QSOs whose coadd spectra are written; QSOs with a BAL,
        an [O III] outflow or an anomaly always get spectra.""",
    ).tag(config=True)
    galaxy_spectra_fraction = Float(
        0.02,
        help="""Fraction of galaxies whose coadd spectra are written (every galaxy is in zpix
        and FastSpecFit). A spectrum costs ~0.45 MB on disk.""",
    ).tag(config=True)
    star_spectra_fraction = Float(0.1, help="Fraction of stars whose spectra are written.").tag(
        config=True
    )
    duplicate_fraction = Float(
        0.03, help="Fraction of targets re-observed in SV3 (gives ZCAT_NSPEC > 1)."
    ).tag(config=True)
    area = Float(
        0.0,
        help="""Footprint area in square degrees; 0 means what the BGS selection needs for
        n_galaxy galaxies.""",
    ).tag(config=True)
    workers = Int(0, help="Worker processes; 0 chooses from the size and the CPUs.").tag(
        config=True
    )
    overwrite = Bool(False, help="Replace OUTDIR/dr1 and OUTDIR/truth if they exist.").tag(
        config=True
    )
    progress = Bool(True, help="Show a progress bar.").tag(config=True)

    aliases = {
        **DesilabCommand.aliases,
        "n-qso": "MockApp.n_qso",
        "n-galaxy": "MockApp.n_galaxy",
        "n-star": "MockApp.n_star",
        "seed": "MockApp.seed",
        "qso-spectra-fraction": "MockApp.qso_spectra_fraction",
        "galaxy-spectra-fraction": "MockApp.galaxy_spectra_fraction",
        "star-spectra-fraction": "MockApp.star_spectra_fraction",
        "duplicate-fraction": "MockApp.duplicate_fraction",
        "area": "MockApp.area",
        "workers": "MockApp.workers",
    }
    flags = {
        "overwrite": ({"MockApp": {"overwrite": True}}, "Replace an existing mock in OUTDIR."),
        "no-progress": ({"MockApp": {"progress": False}}, "Do not show a progress bar."),
    }

    def start(self) -> None:
        """Run the generator on the OUTDIR given on the command line."""
        from .mock import generate_mock

        if len(self.extra_args) != 1:
            self.log.critical("give exactly one OUTDIR, e.g. `desilab mock ./mock-dr1`")
            self.exit(2)
        summary = generate_mock(
            self.extra_args[0],
            self.n_qso,
            self.n_galaxy,
            self.n_star,
            self.seed,
            progress=self.progress,
            qso_spectra_fraction=self.qso_spectra_fraction,
            galaxy_spectra_fraction=self.galaxy_spectra_fraction,
            star_spectra_fraction=self.star_spectra_fraction,
            duplicate_fraction=self.duplicate_fraction,
            area_deg2=self.area or None,
            workers=self.workers or None,
            overwrite=self.overwrite,
        )
        print(json.dumps(asdict(summary), indent=2, default=float))


class _DatabaseCommand(DesilabCommand):
    """A subcommand that talks to the catalog database."""

    db_url = Unicode(
        "",
        help="""Admin DSN of the catalog database (libpq connection string or URL). Default:
        the embedded PostgreSQL of the running `desilab up` in --home.""",
    ).tag(config=True)

    aliases = {**DesilabCommand.aliases, "db-url": "_DatabaseCommand.db_url"}

    def admin_dsn(self) -> str:
        """--db-url, else the superuser DSN of the running embedded server."""
        if self.db_url:
            return self.db_url
        from desilab.hub.database import running_dsn

        dsn = running_dsn(Path(self.home))
        if dsn is None:
            self.log.critical(
                "no --db-url given and no running `desilab up` found in %s (start it, or pass "
                "--home or --db-url)",
                self.home,
            )
            self.exit(2)
        return dsn

    def one_argument(self, what: str) -> str:
        """The single positional argument, or exit with a usage message."""
        if len(self.extra_args) != 1:
            self.log.critical("give exactly one %s (see --help)", what)
            self.exit(2)
        return self.extra_args[0]


class IngestApp(_DatabaseCommand):
    """Load a DR1 tree (or a mock of it) into the catalog."""

    name = "desilab-ingest"
    description = """Load the DR1 files under DATA_ROOT (zpix catalogs, FastSpecFit and
    DESIVAST VACs, the spectra index of the healpix coadds) into the dr1 schema of the catalog,
    one transaction per file. Running it again loads only what is missing; a corrupt file is
    skipped with the reason. Usage: desilab ingest DATA_ROOT [--db-url URL]"""

    replace = Bool(
        False, help="Reload files that changed since they were ingested (replacing their rows)."
    ).tag(config=True)
    cluster = Bool(
        False, help="Finish with CLUSTER of the changed sky tables (exact hpx order; locks them)."
    ).tag(config=True)
    checksum = Bool(True, help="Record a BLAKE2b checksum of each new file.").tag(config=True)
    progress = Bool(True, help="Show a progress bar.").tag(config=True)
    workers = Int(
        2, help="Files loaded at the same time, each in its own transaction and connection."
    ).tag(config=True)
    kinds = List(
        Unicode(), help="Only these kinds of files: zpix, fastspec, desivast, coadd (default all)."
    ).tag(config=True)

    aliases = {
        **_DatabaseCommand.aliases,
        "kinds": "IngestApp.kinds",
        "workers": "IngestApp.workers",
    }
    flags = {
        "replace": ({"IngestApp": {"replace": True}}, "Reload changed files."),
        "cluster": ({"IngestApp": {"cluster": True}}, "CLUSTER the changed sky tables."),
        "no-checksum": ({"IngestApp": {"checksum": False}}, "Do not checksum new files."),
        "no-progress": ({"IngestApp": {"progress": False}}, "Do not show a progress bar."),
    }

    def start(self) -> None:
        """Ingest DATA_ROOT; exit status 1 when some files were skipped."""
        from .ingest import IngestError, ingest

        root = self.one_argument("DATA_ROOT")
        try:
            report = ingest(
                root,
                self.admin_dsn(),
                replace=self.replace,
                cluster=self.cluster,
                progress=self.progress,
                kinds=tuple(self.kinds) or None,
                verify_checksum=self.checksum,
                workers=self.workers,
                logger=self.log,
            )
        except IngestError as exc:
            self.log.critical("%s", exc)
            self.exit(2)
        print(report.summary())
        if report.skipped:
            self.exit(1)


class QueryApp(_DatabaseCommand):
    """Run one read-only SQL query on the catalog and print the result."""

    name = "desilab-query"
    description = """Run one read-only SQL query on the catalog and print the rows. Usage:
    desilab query "SELECT targetid, z FROM dr1.zpix WHERE spectype = 'QSO' LIMIT 5" """

    limit = Int(100, help="Print at most this many rows.").tag(config=True)
    timeout = Unicode("60s", help="Time limit of the query on the server.").tag(config=True)
    role = Unicode(
        "desi_reader",
        help="""Database role the query runs as (SET ROLE at connect), so an admin DSN reads
        only what users can; empty: the DSN's own role.""",
    ).tag(config=True)
    format = Enum(["table", "csv", "ecsv", "json"], "table", help="Output format.").tag(config=True)

    aliases = {
        **_DatabaseCommand.aliases,
        "limit": "QueryApp.limit",
        "timeout": "QueryApp.timeout",
        "role": "QueryApp.role",
        "format": "QueryApp.format",
    }

    def start(self) -> None:
        """Print the result; exit status 1 with the server's message on error."""
        from psycopg.conninfo import make_conninfo

        from .catalog import Catalog
        from .qtable import CatalogError

        text = self.one_argument('SQL query (quote it: "SELECT ...")')
        dsn = self.admin_dsn()
        if self.role:
            dsn = make_conninfo(dsn, options=f"-c role={self.role}")
        try:
            with Catalog(dsn, limit=self.limit, timeout=self.timeout) as cat:
                table = cat.query(text)
        except CatalogError as exc:
            print(f"error: {exc}", file=sys.stderr)
            self.exit(1)
        if self.format == "table":
            table.pprint_all()
            if table.meta.get("truncated"):
                print(f"(first {self.limit} rows; use --limit for more)", file=sys.stderr)
        elif self.format == "json":
            print(table.to_pandas().to_json(orient="records", lines=True))
        else:
            table.write(sys.stdout, format=f"ascii.{self.format}")


class DbAddUserApp(_DatabaseCommand):
    """Create (or refresh) a user's catalog role and print its DSN."""

    name = "desilab-db-add-user"
    description = """Create or refresh the catalog login role of NAME (member of desi_reader,
    own schema, statement timeout, connection limit) with a new password, and print its DSN.
    Usage: desilab db add-user NAME"""

    statement_timeout = Unicode("10min", help="statement_timeout of the role.").tag(config=True)
    connection_limit = Int(20, help="Connection limit of the role.").tag(config=True)

    aliases = {
        **_DatabaseCommand.aliases,
        "statement-timeout": "DbAddUserApp.statement_timeout",
        "connection-limit": "DbAddUserApp.connection_limit",
    }

    def start(self) -> None:
        """Print the new DSN (it holds the password: keep it private)."""
        from .roles import ensure_user_role, prepare_catalog

        user = self.one_argument("user NAME")
        admin = self.admin_dsn()
        prepare_catalog(admin)
        print(
            ensure_user_role(
                admin,
                user,
                statement_timeout=self.statement_timeout,
                connection_limit=self.connection_limit,
            )
        )


class DbApp(DesilabCommand):
    """``desilab db``: catalog database administration."""

    name = "desilab-db"
    description = "Catalog database administration: desilab db add-user NAME"
    subcommands = {
        "add-user": (
            "desilab.desi.cli.DbAddUserApp",
            "Create or refresh a user's catalog role and print its DSN.",
        )
    }

    def start(self) -> None:
        """Run the subcommand."""
        if self.subapp is None:
            self.print_subcommands()
            self.exit(1)
        self.subapp.start()
