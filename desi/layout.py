"""Where DR1 files live under DATA_ROOT (the public ``dr1/`` tree)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .datamodel import SPECPROD, ZCATVER
from .errors import DR1FormatError

__all__ = ["DR1Layout", "HealpixFile"]

_COADD_RE = re.compile(r"^coadd-(?P<survey>[a-z0-9]+)-(?P<program>[a-z]+)-(?P<pix>\d+)\.fits$")
_VERSION_RE = re.compile(r"^v(\d+)\.(\d+)$")


@dataclass(frozen=True)
class HealpixFile:
    """One healpix coadd present on disk, with its redrock companion."""

    survey: str
    program: str
    healpix: int
    coadd: Path
    redrock: Path


@dataclass(frozen=True)
class DR1Layout:
    """Paths of the DR1 tree under ``root`` (DATA_ROOT).

    Parameters
    ----------
    root : str or Path
        DATA_ROOT: the folder holding ``spectro/`` and ``vac/``, as in
        ``https://data.desi.lbl.gov/public/dr1/``.
    specprod : str
        Spectroscopic production; DR1 is ``iron``.
    """

    root: Path
    specprod: str = SPECPROD

    def __init__(self, root: str | Path, specprod: str = SPECPROD) -> None:
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(self, "specprod", specprod)

    @property
    def redux(self) -> Path:
        """``spectro/redux/{specprod}``."""
        return self.root / "spectro" / "redux" / self.specprod

    def healpix_dir(self, survey: str, program: str, healpix: int) -> Path:
        """``healpix/{survey}/{program}/{pix//100}/{pix}``."""
        return self.redux / "healpix" / survey / program / str(healpix // 100) / str(healpix)

    def coadd(self, survey: str, program: str, healpix: int) -> Path:
        """Path of ``coadd-{survey}-{program}-{pix}.fits``."""
        name = f"coadd-{survey}-{program}-{healpix}.fits"
        return self.healpix_dir(survey, program, healpix) / name

    def redrock(self, survey: str, program: str, healpix: int) -> Path:
        """Path of ``redrock-{survey}-{program}-{pix}.fits``."""
        name = f"redrock-{survey}-{program}-{healpix}.fits"
        return self.healpix_dir(survey, program, healpix) / name

    def zpix(self, survey: str, program: str, zcatver: str = ZCATVER) -> Path:
        """Path of ``zcatalog/{zcatver}/zpix-{survey}-{program}.fits``."""
        return self.redux / "zcatalog" / zcatver / f"zpix-{survey}-{program}.fits"

    def zpix_files(self, zcatver: str = ZCATVER) -> list[Path]:
        """All zpix files present, sorted."""
        return sorted((self.redux / "zcatalog" / zcatver).glob("zpix-*-*.fits"))

    def iter_healpix(
        self, survey: str | None = None, program: str | None = None
    ) -> Iterator[HealpixFile]:
        """Healpix coadd files present on disk, sorted by survey, program, pixel.

        Parameters
        ----------
        survey, program : str, optional
            Restrict to one survey / program.
        """
        base = self.redux / "healpix"
        surveys = [survey] if survey else sorted(p.name for p in base.glob("*") if p.is_dir())
        for sv in surveys:
            progs = (
                [program]
                if program
                else sorted(p.name for p in (base / sv).glob("*") if p.is_dir())
            )
            for prog in progs:
                found = []
                for path in (base / sv / prog).glob("*/*/coadd-*.fits"):
                    m = _COADD_RE.match(path.name)
                    if m and m["survey"] == sv and m["program"] == prog:
                        pix = int(m["pix"])
                        found.append(HealpixFile(sv, prog, pix, path, self.redrock(sv, prog, pix)))
                yield from sorted(found, key=lambda f: f.healpix)

    # -- value-added catalogs ---------------------------------------------------------------

    @property
    def fastspecfit_dir(self) -> Path:
        """``vac/dr1/fastspecfit/{specprod}``."""
        return self.root / "vac" / "dr1" / "fastspecfit" / self.specprod

    def fastspec_version(self) -> str:
        """Newest FastSpecFit VAC version folder present (``vX.Y``), found by glob.

        Raises
        ------
        DR1FormatError
            If no version folder with a ``catalogs/fastspec-*main-bright*`` file exists.
        """
        versions = []
        for path in self.fastspecfit_dir.glob("v*/catalogs"):
            m = _VERSION_RE.match(path.parent.name)
            if m and any(path.glob(f"fastspec-{self.specprod}-main-bright*.fits")):
                versions.append(((int(m[1]), int(m[2])), path.parent.name))
        if not versions:
            raise DR1FormatError(
                self.fastspecfit_dir,
                "no FastSpecFit VAC version folder with a main-bright catalog",
                hint="Mirror vac/dr1/fastspecfit/iron/<version>/catalogs/ or regenerate the mock.",
            )
        return max(versions)[1]

    def fastspec_dir(self, version: str) -> Path:
        """``vac/dr1/fastspecfit/{specprod}/{version}/catalogs``."""
        return self.fastspecfit_dir / version / "catalogs"

    def fastspec(self, version: str | None = None) -> list[Path]:
        """FastSpecFit main-bright catalog file(s).

        v2.x ships one ``fastspec-iron-main-bright.fits``; v3.0 splits it into
        ``fastspec-iron-main-bright-nside1-hpNN.fits``. Both are returned as a list.
        """
        version = version or self.fastspec_version()
        folder = self.fastspec_dir(version)
        single = folder / f"fastspec-{self.specprod}-main-bright.fits"
        if single.is_file():
            return [single]
        return sorted(folder.glob(f"fastspec-{self.specprod}-main-bright-nside1-hp*.fits"))

    def fastspec_path(self, version: str) -> Path:
        """Path the (single-file, v2.x) main-bright catalog has in ``version``."""
        return self.fastspec_dir(version) / f"fastspec-{self.specprod}-main-bright.fits"

    @property
    def desivast_dir(self) -> Path:
        """``vac/dr1/desivast/v1.0``."""
        return self.root / "vac" / "dr1" / "desivast" / "v1.0"

    def desivast_voidfinder(self, cap: str) -> Path:
        """``DESIVAST_BGS_VOLLIM_VoidFinder_{NGC,SGC}.fits``."""
        cap = cap.upper()
        if cap not in ("NGC", "SGC"):
            raise ValueError(f"cap must be NGC or SGC, not {cap!r}")
        return self.desivast_dir / f"DESIVAST_BGS_VOLLIM_VoidFinder_{cap}.fits"
