"""``desilab mock OUTDIR``: generate a mock DR1 tree and its truth tables."""

from __future__ import annotations

import json
from dataclasses import asdict

from desilab.hub.cli import DesilabCommand
from traitlets import Bool, Float, Int

__all__ = ["MockApp"]


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
