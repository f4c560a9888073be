"""``desilab voids find|classify|compare``: the voids project in batch.

``find`` builds the volume-limited sample of each Galactic cap, runs VoidFinder (in
processes, or on Ray when a cluster is reachable) and writes DESIVAST-format files
(and, with a database, ``results.voids``/``results.void_holes``). ``classify`` gives
every good-redshift galaxy its VAST vflag and void, with our voids or DESIVAST's,
into ``results.void_membership`` and FITS tables. ``compare`` tests void against wall
galaxies matched in stellar mass and redshift, and writes the results as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from desilab.hub.cli import DesilabCommand
from traitlets import Bool, Enum, Float, Int, List, Unicode

__all__ = ["ClassifyApp", "CompareApp", "FindApp", "VoidsApp"]


class VoidsCommand(DesilabCommand):
    """Options shared by the voids subcommands (configure them as ``c.VoidsCommand.x``)."""

    data_root = Unicode(
        "",
        help="""DATA_ROOT of a DR1 tree (or mock) to read galaxies from (FastSpecFit main-bright
        VAC). Empty: query the catalog database (dr1.fastspec) instead.""",
    ).tag(config=True)
    db_url = Unicode(
        "",
        help="""Admin DSN of the catalog database: galaxies come from it when no data_root is
        given, and results are written to its `results` schema as desi_owner. Default: the
        embedded PostgreSQL of a running `desilab up` in --home, if any.""",
    ).tag(config=True)
    write_db = Bool(True, help="Write results to the database when one is available.").tag(
        config=True
    )
    output_dir = Unicode(
        "",
        help="""Folder for output files; default {home}/voids/{model version}.""",
    ).tag(config=True)
    caps = List(
        Unicode(), default_value=["NGC", "SGC"], help="Galactic caps to process (NGC, SGC, ALL)."
    ).tag(config=True)
    mag_limit = Float(-20.0, help="Volume limit: keep ABSMAG01_SDSS_R (h = 1) below this.").tag(
        config=True
    )
    zmin = Float(0.01, help="Lowest redshift of the sample (and of the void search).").tag(
        config=True
    )
    zmax = Float(0.24, help="Highest redshift of the sample (and of the void search).").tag(
        config=True
    )
    min_deltachi2 = Float(25.0, help="Good redshift: ZWARN == 0 and DELTACHI2 above this.").tag(
        config=True
    )
    nside = Int(64, help="HEALPix nside of the footprint mask built from the galaxies.").tag(
        config=True
    )
    grid_edge = Float(5.0, help="VoidFinder grid cell, Mpc/h.").tag(config=True)
    min_maximal_radius = Float(10.0, help="Smallest maximal sphere (void), Mpc/h.").tag(config=True)
    frame = Enum(
        ["principal", "vast"],
        default_value="principal",
        help="""Grid frame: 'principal' (principal axes of the galaxies: results independent of
        the coordinate system) or 'vast' (survey axes, as VAST).""",
    ).tag(config=True)
    workers = Int(0, help="Processes for void finding; 0: the profile's CPU limit.").tag(
        config=True
    )
    ray = Enum(
        ["auto", "yes", "no"],
        default_value="auto",
        help="Use Ray for void finding: auto (when a cluster is reachable), yes or no.",
    ).tag(config=True)
    progress = Bool(True, help="Show progress bars.").tag(config=True)

    aliases = {
        **DesilabCommand.aliases,
        "data-root": "VoidsCommand.data_root",
        "db-url": "VoidsCommand.db_url",
        "output-dir": "VoidsCommand.output_dir",
        "caps": "VoidsCommand.caps",
        "mag-limit": "VoidsCommand.mag_limit",
        "zmin": "VoidsCommand.zmin",
        "zmax": "VoidsCommand.zmax",
        "nside": "VoidsCommand.nside",
        "grid-edge": "VoidsCommand.grid_edge",
        "min-maximal-radius": "VoidsCommand.min_maximal_radius",
        "frame": "VoidsCommand.frame",
        "workers": "VoidsCommand.workers",
        "ray": "VoidsCommand.ray",
    }
    flags = {
        "no-db": ({"VoidsCommand": {"write_db": False}}, "Do not write to the database."),
        "no-progress": ({"VoidsCommand": {"progress": False}}, "Do not show progress bars."),
    }

    # -- shared helpers ------------------------------------------------------------------

    def cuts(self):
        """The sample cuts from the options."""
        from .sample import SampleCuts

        return SampleCuts(self.mag_limit, self.zmin, self.zmax, self.min_deltachi2)

    def finder_config(self):
        """The VoidFinder parameters from the options."""
        from .voidfinder import VoidFinderConfig

        return VoidFinderConfig(
            grid_edge=self.grid_edge, min_maximal_radius=self.min_maximal_radius, frame=self.frame
        )

    def admin_dsn(self, required: bool = False) -> str | None:
        """--db-url, else the running embedded server's superuser DSN, else None."""
        if self.db_url:
            return self.db_url
        from desilab.hub.database import running_dsn

        dsn = running_dsn(Path(self.home))
        if dsn is None and required:
            self.log.critical(
                "no --data-root and no database: pass --data-root DATA_ROOT or --db-url DSN "
                "(or start `desilab up` in --home %s)",
                self.home,
            )
            self.exit(2)
        return dsn

    def source(self):
        """Where galaxies come from: the DR1 tree or the database."""
        if self.data_root:
            from desilab.desi import DR1Layout

            return DR1Layout(Path(self.data_root).expanduser())
        return self.admin_dsn(required=True)

    def model_version(self) -> str:
        """Version of the voids found with these options."""
        from .results import model_version

        return model_version(self.finder_config(), self.cuts(), self.nside)

    def out_dir(self, version: str) -> Path:
        """The output folder (created)."""
        path = Path(self.output_dir or Path(self.home) / "voids" / version).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def galaxies(self):
        """All galaxies in the redshift range, loaded once for every cap."""
        from .sample import load_galaxies

        self.log.info("Loading galaxies from %s", self.data_root or "the catalog database")
        return load_galaxies(self.source())

    def db_for_writing(self) -> str | None:
        """The admin DSN when results should go to the database, with tables ensured."""
        if not self.write_db:
            return None
        dsn = self.admin_dsn()
        if dsn is None:
            self.log.warning("no database: results go to files only")
            return None
        from .results import ensure_tables

        ensure_tables(dsn)
        return dsn

    def use_ray(self) -> bool | None:
        """The --ray option as run_units' use_ray."""
        return {"auto": None, "yes": True, "no": False}[self.ray]


class FindApp(VoidsCommand):
    """Find voids in the volume-limited sample of each cap."""

    name = "desilab-voids-find"
    description = """Find voids (VoidFinder, as VAST) in the volume-limited BGS sample of each
    Galactic cap; write DESIVAST-format files VoidFinder_{cap}.fits and the
    results.voids / results.void_holes tables. Usage: desilab voids find --data-root DATA_ROOT"""

    def start(self) -> None:
        """Run the void finder on every cap."""
        from .results import assumptions, write_run, write_voids
        from .sample import build_sample
        from .voidfinder import find_voids

        cuts, cfg = self.cuts(), self.finder_config()
        version = self.model_version()
        out = self.out_dir(version)
        db = self.db_for_writing()
        galaxies = self.galaxies()
        summary, axes = {"model_version": version, "output_dir": str(out), "caps": {}}, {}
        for cap in self.caps:
            sample = build_sample(None, cuts, cap=cap, nside=self.nside, galaxies=galaxies)
            n = int(sample.vollim.sum())
            if n < 50:
                self.log.warning("%s: only %d volume-limited galaxies; skipped", cap, n)
                continue
            catalog = find_voids(
                sample.xyz[sample.vollim],
                sample.mask,
                cfg,
                workers=self.workers or None,
                use_ray=self.use_ray(),
                progress=self.progress,
                header=sample.header(),
            )
            path = catalog.write(out / f"VoidFinder_{cap}.fits")
            axes[cap] = catalog.axes.tolist()
            if db:
                write_voids(db, version, cap, catalog)
            summary["caps"][cap] = {
                "galaxies": n,
                "voids": len(catalog),
                "edge_voids": int(np.sum(catalog.maximals["EDGE"] > 0)),
                "file": str(path),
                "seconds": catalog.info["times"]["total"],
            }
            self.log.info("%s: %d voids from %d galaxies -> %s", cap, len(catalog), n, path)
        if db:
            write_run(db, version, assumptions(cfg, cuts, self.nside, axes))
        print(json.dumps(summary, indent=2))


class ClassifyApp(VoidsCommand):
    """Classify galaxies as wall, void, edge or outside."""

    name = "desilab-voids-classify"
    description = """Give every good-redshift galaxy in the distance range its VAST vflag (0 wall,
    1 void, 2 edge, 9 outside) and void id, with the voids of `desilab voids find` (same options)
    or DESIVAST's (--voids desivast); write void_membership_{cap}.fits and
    results.void_membership. Usage: desilab voids classify --data-root DATA_ROOT"""

    voids = Enum(
        ["desilab", "desivast"],
        default_value="desilab",
        help="""Void catalog: 'desilab' (the files of `desilab voids find` with the same options)
        or 'desivast' (the DR1 DESIVAST VoidFinder VAC under data_root).""",
    ).tag(config=True)
    aliases = {**VoidsCommand.aliases, "voids": "ClassifyApp.voids"}

    def catalog_path(self, cap: str, version: str) -> Path:
        """The void catalog file of a cap."""
        if self.voids == "desivast":
            from desilab.desi import DR1Layout

            if not self.data_root:
                self.log.critical("--voids desivast needs --data-root (the DR1 tree)")
                self.exit(2)
            return DR1Layout(Path(self.data_root).expanduser()).desivast_voidfinder(cap)
        return self.out_dir(version) / f"VoidFinder_{cap}.fits"

    def start(self) -> None:
        """Classify the galaxies of every cap."""
        from astropy.table import Table

        from .classify import classify_galaxies
        from .results import write_membership
        from .sample import build_sample
        from .voidfinder import VoidCatalog

        version = self.model_version()
        label = version if self.voids == "desilab" else "DESIVAST-VoidFinder-v1.0"
        member_version = label if self.voids == "desilab" else f"desivast.{version}"
        out = self.out_dir(member_version)
        db = self.db_for_writing()
        galaxies = self.galaxies()
        summary = {"model_version": member_version, "void_catalog": label, "caps": {}}
        for cap in self.caps:
            path = self.catalog_path(cap, version)
            if not path.is_file():
                self.log.critical("%s: no void catalog %s (run `desilab voids find`)", cap, path)
                self.exit(2)
            catalog = VoidCatalog.read(path)
            sample = build_sample(None, self.cuts(), cap=cap, nside=self.nside, galaxies=galaxies)
            m = classify_galaxies(sample.xyz, catalog, sample.mask, targetid=sample.targetid)
            # FITS has no signed byte type (astropy would write int8 as logical): use int16.
            table = Table(
                {"TARGETID": m.targetid, "VFLAG": m.vflag.astype(np.int16), "VOID": m.void}
            )
            table.meta.update({"CAP": cap, "VERSION": member_version, "VOIDCAT": label})
            table.write(out / f"void_membership_{cap}.fits", overwrite=True)
            if db:
                write_membership(db, member_version, cap, m, void_catalog=label)
            summary["caps"][cap] = {"galaxies": len(m), **m.counts()}
        print(json.dumps(summary, indent=2))


class CompareApp(VoidsCommand):
    """Compare void and wall galaxies matched in stellar mass and redshift."""

    name = "desilab-voids-compare"
    description = """Compare void and wall galaxies (g-r, LOGMSTAR, sSFR, Dn4000, H-alpha EW)
    with controls matched in stellar mass and redshift: KS, Mann-Whitney and Anderson-Darling
    tests, bootstrap intervals, effect sizes. Reads the void_membership files of `desilab voids
    classify` (same options); writes compare.json. Usage: desilab voids compare --data-root ..."""

    voids = Enum(
        ["desilab", "desivast"],
        default_value="desilab",
        help="Which classification to use (as given to `desilab voids classify`).",
    ).tag(config=True)
    n_boot = Int(1000, help="Bootstrap resamples for the confidence intervals.").tag(config=True)
    n_controls = Int(3, help="Wall controls per void galaxy.").tag(config=True)
    aliases = {
        **VoidsCommand.aliases,
        "voids": "CompareApp.voids",
        "n-boot": "CompareApp.n_boot",
    }

    def start(self) -> None:
        """Run the comparisons over all caps together."""
        from astropy.table import Table, vstack

        from .sample import build_sample
        from .stats import compare_environments, galaxy_void_fraction

        version = self.model_version()
        member_version = version if self.voids == "desilab" else f"desivast.{version}"
        out = self.out_dir(member_version)
        galaxies = self.galaxies()
        tables, flags = [], []
        for cap in self.caps:
            path = out / f"void_membership_{cap}.fits"
            if not path.is_file():
                self.log.critical("%s: no %s (run `desilab voids classify`)", cap, path)
                self.exit(2)
            member = Table.read(path)
            sample = build_sample(None, self.cuts(), cap=cap, nside=self.nside, galaxies=galaxies)
            order = np.argsort(member["TARGETID"])
            pos = np.searchsorted(np.asarray(member["TARGETID"])[order], sample.targetid)
            pos = np.clip(pos, 0, len(order) - 1)
            found = np.asarray(member["TARGETID"])[order][pos] == sample.targetid
            vflag = np.where(found, np.asarray(member["VFLAG"])[order][pos], -1)
            tables.append(sample.table)
            flags.append(vflag)
        table, vflag = vstack(tables), np.concatenate(flags)
        results = compare_environments(table, vflag, n_boot=self.n_boot, n_controls=self.n_controls)
        frac = galaxy_void_fraction(vflag)
        rows = [c.row() for c in results]
        report = {
            "model_version": member_version,
            "galaxy_void_fraction": [frac.value, frac.low, frac.high],
            "comparisons": rows,
        }
        (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
        for r in rows:
            print(
                f"{r['property']:10s} void {r['n_void']:6d}  delta {r['delta']:+.4f} "
                f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]  KS p {r['ks_p']:.2g}  "
                f"MW p {r['mw_p']:.2g}  AD p {r['ad_p']:.2g}  d {r['cohens_d']:+.2f}"
            )
        print(f"wrote {out / 'compare.json'}")


class VoidsApp(DesilabCommand):
    """``desilab voids``: dispatch to find, classify or compare."""

    name = "desilab-voids"
    description = "Cosmic voids (project 3): find voids, classify galaxies, compare environments."
    subcommands = {
        "find": ("desilab.projects.voids.cli.FindApp", "Find voids (VoidFinder, DESIVAST format)."),
        "classify": (
            "desilab.projects.voids.cli.ClassifyApp",
            "Classify galaxies as wall/void/edge/outside (VAST vflag).",
        ),
        "compare": (
            "desilab.projects.voids.cli.CompareApp",
            "Compare void and matched wall galaxies.",
        ),
    }

    def start(self) -> None:
        if self.subapp is None:
            self.print_subcommands()
            print("Run `desilab voids SUBCOMMAND --help` for its options.")
            self.exit(1)
        self.subapp.start()
