"""desilab.desi: the DESI DR1 data layer: file formats, DR1 tree layout, the mock DR1,
and the PostgreSQL catalog (schema, ingest, queries, sky searches)."""

from .catalog import Catalog
from .coadd import ArmSpectra, CoaddFile, CoaddSpectra, read_coadd, write_coadd
from .datamodel import ARMS, NSIDE, wavelength
from .demo import ensure_demo
from .errors import DR1FormatError
from .ingest import IngestError, IngestReport, ingest
from .layout import DR1Layout, HealpixFile
from .mock import MockSummary, generate_mock, read_truth, vollim_mask
from .qtable import (
    CatalogError,
    QueryCancelled,
    QueryError,
    QuerySyntaxError,
    QueryTable,
    QueryTimeout,
)
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
    "Catalog",
    "CatalogError",
    "CoaddFile",
    "CoaddSpectra",
    "DR1FormatError",
    "DR1Layout",
    "FastspecWriter",
    "HealpixFile",
    "IngestError",
    "IngestReport",
    "MockSummary",
    "QueryCancelled",
    "QueryError",
    "QuerySyntaxError",
    "QueryTable",
    "QueryTimeout",
    "ZpixWriter",
    "ensure_demo",
    "find_primary",
    "generate_mock",
    "good_redshift",
    "ingest",
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
