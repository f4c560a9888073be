"""Load a target's spectrum and catalog row for the SpectrumExplorer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .spectra import Spectrum, spectra_from_coadd


def catalog_loader(catalog: Any) -> Callable[[int], Spectrum]:
    """``load(targetid) -> Spectrum`` reading the coadd through the catalog's spectra index.

    The information panel shows the target's ``dr1.zpix`` row (its primary
    redshift), with DR1's upper-case column names.
    """

    def load(targetid: int) -> Spectrum:
        coadd = catalog.spectra([int(targetid)])
        row = catalog.query("SELECT * FROM dr1.zpix WHERE targetid = %s", (int(targetid),), limit=1)
        for name in row.colnames:
            row.rename_column(name, name.upper())
        return spectra_from_coadd(coadd, row if len(row) else None)[0]

    return load
