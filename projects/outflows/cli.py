"""``desilab outflows fit|report``: batch outflow fits and their summary plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import astropy.units as u
from desilab.hub.cli import DesilabCommand
from traitlets import Bool, Enum, Float, Int, Unicode

__all__ = ["OutflowsApp", "OutflowsFitApp", "OutflowsReportApp"]


def _env_dsn() -> str:
    return os.environ.get("DESILAB_DATABASE_URL", "")


class OutflowsFitApp(DesilabCommand):
    """Fit BALs and [O III] outflows of a QSO sample; store or write the results."""

    name = "desilab-outflows-fit"
    description = """Measure BAL troughs (BI/AI with DESI's definitions) and [O III] outflows of
    a QSO sample, with quality flags and energetics under the assumptions given here. The
    sample comes from an SQL query (--sql, needs --db-url) or from the zpix catalogs under
    --data-root. Results go to results.qso_outflows (--db-url) and/or a FITS/ECSV file
    (--output). Runs on Ray when a cluster is reachable, else in local processes."""

    data_root = Unicode(
        "", help="DATA_ROOT of the DR1 tree (holds spectro/); spectra are read from there."
    ).tag(config=True)
    db_url = Unicode(
        help="""PostgreSQL DSN for the sample query and the results table. Default:
        $DESILAB_DATABASE_URL. Storing automatic fits needs a role that may SET ROLE
        desi_owner (the admin DSN)."""
    ).tag(config=True)
    sql = Unicode(
        "",
        help="""SQL returning a targetid column that chooses the sample, e.g. "SELECT targetid
        FROM dr1.zpix WHERE spectype = 'QSO' AND z > 1.57". Without it the sample is every
        good-redshift primary QSO of the zpix files in the fitted redshift ranges.""",
    ).tag(config=True)
    limit = Int(0, help="Fit at most this many QSOs (0: all).").tag(config=True)
    bal = Bool(True, help="Measure BALs (1.57 <= z <= 5).").tag(config=True)
    oiii = Bool(True, help="Fit [O III] (z < 0.95).").tag(config=True)
    workers = Int(0, help="Local worker processes (0: the profile's CPU limit).").tag(config=True)
    ray = Enum(
        ["auto", "yes", "no"], "auto",
        help="Use Ray: when a cluster is reachable (auto), always (yes) or never (no).",
    ).tag(config=True)  # fmt: skip
    output = Unicode("", help="Also write the rows to this .fits or .ecsv file.").tag(config=True)
    run_id = Unicode("", help="Label stored with the rows (default: a timestamp).").tag(config=True)
    resume = Bool(
        True, help="Skip QSOs already stored with the same model version and assumptions."
    ).tag(config=True)
    create_tables = Bool(
        True, help="Create results.qso_outflows if missing (needs the admin DSN)."
    ).tag(config=True)
    n_e = Float(500.0, help="Electron density of the ionised outflow, cm^-3.").tag(config=True)
    radius_kpc = Float(1.0, help="Outflow radius, kpc.").tag(config=True)
    geometry = Enum(
        ["filled_cone", "shell"], "filled_cone",
        help="[O III] outflow geometry: Mdot = 3 M v / R (filled cone) or M v / R (shell).",
    ).tag(config=True)  # fmt: skip
    velocity = Enum(
        ["vmax", "w80", "vshift"], "vmax",
        help="[O III] outflow velocity: |dv| + 2 sigma_wing, W80 / 1.3, or |dv|.",
    ).tag(config=True)  # fmt: skip
    metallicity = Float(0.0, help="[O/H] relative to solar (dex).").tag(config=True)
    n_h = Float(1e20, help="Column density of BAL outflows, cm^-2.").tag(config=True)
    bal_radius_kpc = Float(1.0, help="Distance of BAL absorbers, kpc.").tag(config=True)
    covering = Float(0.2, help="Global covering fraction of BAL outflows.").tag(config=True)

    aliases = {
        **DesilabCommand.aliases,
        "data-root": "OutflowsFitApp.data_root",
        "db-url": "OutflowsFitApp.db_url",
        "sql": "OutflowsFitApp.sql",
        "limit": "OutflowsFitApp.limit",
        "workers": "OutflowsFitApp.workers",
        "ray": "OutflowsFitApp.ray",
        "output": "OutflowsFitApp.output",
        "run-id": "OutflowsFitApp.run_id",
        "n-e": "OutflowsFitApp.n_e",
        "radius-kpc": "OutflowsFitApp.radius_kpc",
        "geometry": "OutflowsFitApp.geometry",
        "velocity": "OutflowsFitApp.velocity",
        "metallicity": "OutflowsFitApp.metallicity",
        "n-h": "OutflowsFitApp.n_h",
        "bal-radius-kpc": "OutflowsFitApp.bal_radius_kpc",
        "covering": "OutflowsFitApp.covering",
    }
    flags = {
        "no-bal": ({"OutflowsFitApp": {"bal": False}}, "Do not measure BALs."),
        "no-oiii": ({"OutflowsFitApp": {"oiii": False}}, "Do not fit [O III]."),
        "no-resume": ({"OutflowsFitApp": {"resume": False}}, "Refit QSOs already stored."),
    }

    def _dsn(self) -> str:
        return self.db_url or _env_dsn()

    def assumptions(self):
        """The Assumptions these options describe."""
        from .energetics import Assumptions

        return Assumptions(
            n_e=self.n_e * u.cm**-3, radius=self.radius_kpc * u.kpc, geometry=self.geometry,
            velocity=self.velocity, metallicity=self.metallicity, n_h=self.n_h * u.cm**-2,
            bal_radius=self.bal_radius_kpc * u.kpc, covering=self.covering,
        )  # fmt: skip

    def start(self) -> None:
        """Select, fit, store."""
        from desilab.desi import DR1Layout

        from . import results
        from .batch import FitConfig, run_batch
        from .sample import select_from_catalog, select_from_files, write_table

        if not self.data_root:
            self.log.critical("give --data-root (the DR1 tree holding spectro/)")
            self.exit(2)
        dsn = self._dsn()
        if self.sql and not dsn:
            self.log.critical("--sql needs a database: give --db-url or set DESILAB_DATABASE_URL")
            self.exit(2)
        if not dsn and not self.output:
            self.log.critical("nowhere to put results: give --db-url and/or --output")
            self.exit(2)
        layout = DR1Layout(self.data_root)
        config = FitConfig(bal=self.bal, oiii=self.oiii)
        limit = self.limit or None
        if self.sql:
            sample = select_from_catalog(dsn, self.sql, limit=limit)
        else:
            sample = select_from_files(layout, config=config, limit=limit)
        if dsn and self.create_tables:
            results.create_tables(dsn)
        use_ray = {"auto": None, "yes": True, "no": False}[self.ray]
        out = run_batch(
            sample, layout, config=config, assumptions=self.assumptions(),
            dsn=dsn or None, run_id=self.run_id or None, resume=self.resume,
            workers=self.workers or None, use_ray=use_ray,
        )  # fmt: skip
        if self.output:
            write_table(out["rows"], self.output)
        flagged = sum(bool(r["NEEDS_REVIEW"]) for r in out["rows"])
        print(json.dumps({
            "sample": len(sample), "fitted": len(out["rows"]), "skipped": len(out["skipped"]),
            "missing_spectra": len(out["missing"]), "errors": out["errors"],
            "needs_review": flagged, "units": out["n_units"], "seconds": round(out["seconds"], 2),
            "run_id": out["run_id"], "model_version": out["model_version"],
            "output": self.output or None,
        }, indent=2))  # fmt: skip


class OutflowsReportApp(DesilabCommand):
    """Summary plots (HTML) of stored or written outflow results."""

    name = "desilab-outflows-report"
    description = """Write the summary plots of the outflow results - BI distribution, BAL
    fraction against redshift, v_max against L[O III], kinetic power against L_bol with the
    0.5% and 5% coupling lines - to one HTML page, and print the counts as JSON. Reads
    results.qso_outflows (--db-url, the latest accepted or unreviewed fit of each QSO) or a
    file written by `desilab outflows fit --output`."""

    db_url = Unicode(help="PostgreSQL DSN; default $DESILAB_DATABASE_URL.").tag(config=True)
    input = Unicode("", help="Read results from this .fits/.ecsv file instead.").tag(config=True)
    html = Unicode("outflows-report.html", help="Where to write the HTML page.").tag(config=True)
    title = Unicode("AGN outflows (DESI DR1)", help="Title of the page.").tag(config=True)

    aliases = {
        **DesilabCommand.aliases,
        "db-url": "OutflowsReportApp.db_url",
        "input": "OutflowsReportApp.input",
        "html": "OutflowsReportApp.html",
        "title": "OutflowsReportApp.title",
    }

    def start(self) -> None:
        """Load the results, write the page."""
        from .plots import summary, write_report

        if self.input:
            from astropy.table import Table

            table = Table.read(self.input)
            multi = [n for n in table.colnames if table[n].ndim > 1]
            results = table[[n for n in table.colnames if n not in multi]].to_pandas()
        else:
            from .results import read_results

            dsn = self.db_url or _env_dsn()
            if not dsn:
                self.log.critical("give --input FILE or --db-url (or set DESILAB_DATABASE_URL)")
                self.exit(2)
            results = read_results(dsn, latest=True)
        path = write_report(results, self.html, title=self.title)
        print(json.dumps({**summary(results), "html": str(Path(path).resolve())}, indent=2))


class OutflowsApp(DesilabCommand):
    """``desilab outflows``: the AGN outflow project's commands."""

    name = "desilab-outflows"
    description = "AGN outflow energetics: batch BAL and [O III] fits, and their summary plots."
    subcommands = {
        "fit": ("desilab.projects.outflows.cli.OutflowsFitApp", OutflowsFitApp.description),
        "report": ("desilab.projects.outflows.cli.OutflowsReportApp", "Summary plots (HTML)."),
    }

    def start(self) -> None:
        if self.subapp is None:
            self.print_subcommands()
            print("Run `desilab outflows fit --help` or `desilab outflows report --help`.")
            self.exit(1)
        self.subapp.start()
