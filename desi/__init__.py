"""desilab.desi: the DESI DR1 data layer: file formats, DR1 tree layout and the mock DR1."""

from .coadd import ArmSpectra, CoaddFile, CoaddSpectra, read_coadd, write_coadd
from .datamodel import ARMS, NSIDE, wavelength
from .errors import DR1FormatError
from .layout import DR1Layout, HealpixFile
from .mock import MockSummary, generate_mock, read_truth, vollim_mask
from .redrock import read_redrock, write_redrock
from .vac import FastspecWriter, read_fastspec, read_voidfinder, write_voidfinder
from .zcatalog import (
    ZpixWriter,
    find_primary,
    good_redshift,
    iter_zpix,
    read_zpix,
    zcat_primary,
)

__all__ = [
    "ARMS",
    "NSIDE",
    "ArmSpectra",
    "CoaddFile",
    "CoaddSpectra",
    "DR1FormatError",
    "DR1Layout",
    "FastspecWriter",
    "HealpixFile",
    "MockSummary",
    "ZpixWriter",
    "find_primary",
    "generate_mock",
    "good_redshift",
    "iter_zpix",
    "read_coadd",
    "read_fastspec",
    "read_redrock",
    "read_truth",
    "read_voidfinder",
    "read_zpix",
    "vollim_mask",
    "wavelength",
    "write_coadd",
    "write_redrock",
    "write_voidfinder",
    "zcat_primary",
]
