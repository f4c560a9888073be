"""Tables of the ``dr1`` schema: columns, keys, indexes, comments (DESIGN "Catalog contract").

Keys
----
``dr1.zpix``
    One row per TARGETID: the ZCAT_PRIMARY row (its best spectrum) of every
    zpix file, so ``targetid`` is the primary key, as most analyses want.
``dr1.zpix_secondary``
    The other rows (ZCAT_PRIMARY false: repeat observations of a TARGETID in
    another survey/program), keyed by ``(targetid, survey, program)`` as in DR1,
    where a TARGETID appears at most once per zpix file.
``dr1.zpix_all``
    A view: both tables, every spectrum.
``dr1.fastspec``, ``dr1.spectra``
    ``(targetid, survey, program)``; ``spectra`` maps each coadded spectrum to
    its coadd file (``file_id`` -> ``dr1.ingest_files.path``, relative to
    DATA_ROOT) and row; the view ``dr1.spectra_index`` shows the path.
``dr1.desivast_maximals``, ``dr1.desivast_holes``
    ``(cap, void)`` and ``(cap, hole)``: VoidFinder numbers voids per cap (NGC/SGC).
``dr1.ingest_files``
    Bookkeeping: one row per ingested file (size, mtime, checksum, rows), written
    in the transaction that loads the file.

Indexes
-------
Sky tables carry ``hpx``, the nested HEALPix index at order 16 (nside 65536,
3.2 arcsec pixels; see :mod:`desilab.desi.sky` for why), btree-indexed, with the
table marked CLUSTER ON that index and written in ``hpx`` order by the ingest.
The zpix tables also index ``z`` and ``spectype`` (a btree on the few SPECTYPE
values is small with deduplication, and ANDs with the ``z`` index by bitmap).
Every column comment ends with its unit in brackets (``... [deg]``).

Column names are the DR1 names in lower case; ``file_id`` records which file a
row came from. Text columns use the "C" collation (byte order: fast indexes).
Array columns (COEFF) get no planner statistics (their element statistics cost
half of an ANALYZE and nobody filters on template coefficients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from psycopg import sql

from .coldocs import describe
from .datamodel import FASTSPEC, HOLES, MAXIMALS, METADATA, SUBARRAYS, ZCATALOG
from .sky import HPX_ORDER

__all__ = [
    "SCHEMA",
    "TABLES",
    "Column",
    "IndexDef",
    "TableDef",
    "comment_text",
    "create_schema",
    "drop_indexes",
    "finish_table",
    "index_sql",
    "missing_indexes",
    "table",
]

SCHEMA = "dr1"

_PGTYPE = {
    "i1": "smallint",
    "u1": "smallint",
    "i2": "smallint",
    "i4": "integer",
    "i8": "bigint",
    "f4": "real",
    "f8": "double precision",
    "?": "boolean",
}


@dataclass(frozen=True)
class Column:
    """A catalog column.

    Attributes
    ----------
    name : str
        SQL name (the DR1 name in lower case).
    pgtype : str
        PostgreSQL type (a key of :data:`desilab.desi.pgcopy.PG_TYPES`).
    unit : str
        Unit as in the FITS TUNIT ("" when dimensionless).
    doc : str
        Description.
    source : str
        Upper-case FITS column it is read from; "" for computed columns.
    """

    name: str
    pgtype: str
    unit: str = ""
    doc: str = ""
    source: str = ""

    def ddl(self, not_null: bool = False) -> sql.Composable:
        collate = ' COLLATE "C"' if self.pgtype == "text" else ""
        null = " NOT NULL" if not_null else ""
        return sql.SQL("{} {}").format(
            sql.Identifier(self.name), sql.SQL(self.pgtype + collate + null)
        )


@dataclass(frozen=True)
class IndexDef:
    """An index of a catalog table; the primary key is built as a unique index first."""

    name: str
    columns: tuple[str, ...]
    primary: bool = False
    include: tuple[str, ...] = ()  # stored in the leaves only (index-only scans)


@dataclass(frozen=True)
class TableDef:
    """A table of the ``dr1`` schema."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()
    ra: str | None = None
    dec: str | None = None
    default_columns: tuple[str, ...] = ()
    #: Columns the ``hpx`` index also stores, so cone searches returning only them
    #: read no table pages (index-only scans; the ingest leaves the table vacuumed).
    hpx_include: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        """``dr1.name``."""
        return f"{SCHEMA}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(SCHEMA, self.name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.qualified} has no column {name!r}")

    def index_name(self, columns: tuple[str, ...]) -> str:
        return f"{self.name}_{'_'.join(columns)}_idx"

    @property
    def index_defs(self) -> list[IndexDef]:
        """The primary key's index, then the secondary indexes."""
        return [IndexDef(f"{self.name}_pkey", self.primary_key, primary=True)] + [
            IndexDef(
                self.index_name(cols), cols, include=self.hpx_include if cols == ("hpx",) else ()
            )
            for cols in self.indexes
        ]

    @property
    def cluster_index(self) -> str | None:
        return self.index_name(("hpx",)) if ("hpx",) in self.indexes else None


def _from_datamodel(cols, skip=()) -> list[Column]:
    out = []
    for name, dt, unit in cols:
        if name in skip:
            continue
        if name in SUBARRAYS:
            pgtype = "double precision[]" if dt == "f8" else "real[]"
        elif dt.startswith("S"):
            pgtype = "text"
        else:
            pgtype = _PGTYPE[dt]
        out.append(Column(name.lower(), pgtype, unit, describe(name), name))
    return out


_HPX = Column(
    "hpx",
    "bigint",
    "",
    f"Nested HEALPix index (nside 2**{HPX_ORDER}) of the position; "
    "for cone searches and cross-matches (dr1 Catalog.cone / xmatch)",
)
_FILE = Column("file_id", "integer", "", "The file this row was ingested from (dr1.ingest_files)")
# Targeting masks of the other DR1 surveys, absent from the mock (kept if present).
_EXTRA_TARGETS = [
    (f"{sv}_{kind}_TARGET", "i8", "")
    for sv in ("SV1", "SV2")
    for kind in ("DESI", "BGS", "MWS", "SCND")
] + [("CMX_TARGET", "i8", "")]
_ZPIX_COLUMNS = tuple(_from_datamodel(list(ZCATALOG) + _EXTRA_TARGETS) + [_HPX, _FILE])
_ZPIX_INDEXES = (("hpx",), ("z",), ("spectype",))
#: What a cone on zpix usually returns (Catalog.cone's SQL needs RA/Dec for its test):
#: 32 bytes more per index entry, a 2 deg cone reads ~40 index pages instead of ~300
#: table pages (10M rows: 11 ms -> 6 ms of server time).
_ZPIX_HPX_INCLUDE = ("target_ra", "target_dec", "targetid", "z")
_ZPIX_DEFAULT = (
    "targetid",
    "survey",
    "program",
    "target_ra",
    "target_dec",
    "z",
    "zerr",
    "zwarn",
    "spectype",
    "deltachi2",
)

ZPIX = TableDef(
    "zpix",
    "DR1 redshift catalog (zpix files), one row per TARGETID: its ZCAT_PRIMARY spectrum",
    _ZPIX_COLUMNS,
    ("targetid",),
    _ZPIX_INDEXES,
    "target_ra",
    "target_dec",
    _ZPIX_DEFAULT,
    _ZPIX_HPX_INCLUDE,
)
ZPIX_SECONDARY = TableDef(
    "zpix_secondary",
    "DR1 zpix rows that are not ZCAT_PRIMARY (other spectra of a TARGETID)",
    _ZPIX_COLUMNS,
    ("targetid", "survey", "program"),
    _ZPIX_INDEXES,
    "target_ra",
    "target_dec",
    _ZPIX_DEFAULT,
    _ZPIX_HPX_INCLUDE,
)
_META = _from_datamodel(METADATA)
_FAST = _from_datamodel(FASTSPEC, skip={c.source for c in _META})
FASTSPEC_TABLE = TableDef(
    "fastspec",
    "FastSpecFit VAC (main/bright): METADATA and FASTSPEC columns, one row per spectrum",
    tuple(_META + _FAST + [_HPX, _FILE]),
    ("targetid", "survey", "program"),
    (("hpx",), ("z",)),
    "ra",
    "dec",
    ("targetid", "survey", "program", "ra", "dec", "z", "logmstar", "sfr", "absmag01_sdss_r"),
)
SPECTRA = TableDef(
    "spectra",
    "Where each coadded spectrum is: coadd file (dr1.ingest_files) and row in its HDUs",
    (
        Column("targetid", "bigint", "", describe("TARGETID"), "TARGETID"),
        Column("survey", "text", "", describe("SURVEY")),
        Column("program", "text", "", describe("PROGRAM")),
        Column("healpix", "integer", "", describe("HEALPIX")),
        Column("coadd_row", "integer", "", "Row of the spectrum in the coadd file's HDUs (from 0)"),
        _FILE,
    ),
    ("targetid", "survey", "program"),
    (("file_id",),),
)
_CAP = Column("cap", "text", "", "Galactic cap of the VoidFinder catalog: NGC or SGC")
MAXIMALS_TABLE = TableDef(
    "desivast_maximals",
    "DESIVAST VoidFinder voids (BGS volume-limited): the largest sphere of each void",
    tuple([_CAP] + _from_datamodel(MAXIMALS) + [_HPX, _FILE]),
    ("cap", "void"),
    (("hpx",),),
    "ra",
    "dec",
)
HOLES_TABLE = TableDef(
    "desivast_holes",
    "DESIVAST VoidFinder holes: every sphere of every void",
    tuple(
        [_CAP, Column("hole", "integer", "", "Row of the sphere in the HOLES HDU (from 0)")]
        + _from_datamodel(HOLES)
        + [_FILE]
    ),
    ("cap", "hole"),
    (("cap", "void"),),
)

#: Every data table, by name.
TABLES: dict[str, TableDef] = {
    t.name: t for t in (ZPIX, ZPIX_SECONDARY, FASTSPEC_TABLE, SPECTRA, MAXIMALS_TABLE, HOLES_TABLE)
}

_INGEST_FILES = """
CREATE TABLE IF NOT EXISTS dr1.ingest_files (
    file_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path text COLLATE "C" NOT NULL UNIQUE,
    data_root text NOT NULL,
    kind text NOT NULL,
    size bigint NOT NULL,
    mtime double precision NOT NULL,
    checksum text NOT NULL,
    nrows bigint NOT NULL DEFAULT 0,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    seconds real
)"""
_INGEST_COMMENTS = {
    "": "Files loaded by `desilab ingest`, each in the transaction that loaded its rows",
    "path": "Path relative to DATA_ROOT",
    "data_root": "DATA_ROOT the file was read from",
    "kind": "zpix, fastspec, desivast or coadd",
    "size": "File size [byte]",
    "mtime": "Modification time of the file (Unix time) [s]",
    "checksum": "BLAKE2b-128 checksum of the file content",
    "nrows": "Rows loaded from the file, all tables together",
    "ingested_at": "When the file was committed",
    "seconds": "Time spent loading the file [s]",
}
_VIEWS = {
    "zpix_all": (
        "SELECT * FROM dr1.zpix UNION ALL SELECT * FROM dr1.zpix_secondary",
        "Every zpix row (ZCAT_PRIMARY or not): dr1.zpix and dr1.zpix_secondary",
    ),
    "spectra_index": (
        "SELECT s.targetid, s.survey, s.program, s.healpix, f.path, s.coadd_row, f.data_root "
        "FROM dr1.spectra s JOIN dr1.ingest_files f USING (file_id)",
        "Coadd file (relative to DATA_ROOT) and row of every spectrum, by TARGETID",
    ),
}


def comment_text(doc: str, unit: str = "") -> str:
    """``doc [unit]``: the form of every column comment (units parsed back by Catalog)."""
    return f"{doc} [{unit}]" if unit else doc


def table(name: str) -> TableDef:
    """The :class:`TableDef` of ``name`` or ``dr1.name``."""
    key = name.split(".", 1)[1] if name.startswith(f"{SCHEMA}.") else name
    return TABLES[key]


def _create_table(conn, t: TableDef) -> None:
    cols = [c.ddl(not_null=c.name in t.primary_key) for c in t.columns]
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(t.ident, sql.SQL(", ").join(cols)))
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(t.ident, sql.Literal(t.doc)))
    for c in t.columns:
        if c.pgtype.endswith("[]"):  # element statistics of arrays cost half of ANALYZE
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS 0").format(
                    t.ident, sql.Identifier(c.name)
                )
            )
        conn.execute(
            sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                t.ident, sql.Identifier(c.name), sql.Literal(comment_text(c.doc, c.unit))
            )
        )


def index_sql(t: TableDef, ix: IndexDef) -> sql.Composable:
    """``CREATE [UNIQUE] INDEX IF NOT EXISTS`` of one index."""
    return sql.SQL("CREATE {}INDEX IF NOT EXISTS {} ON {} ({}){}").format(
        sql.SQL("UNIQUE " if ix.primary else ""),
        sql.Identifier(ix.name),
        t.ident,
        sql.SQL(", ").join(map(sql.Identifier, ix.columns)),
        sql.SQL(" INCLUDE ({})").format(sql.SQL(", ").join(map(sql.Identifier, ix.include)))
        if ix.include
        else sql.SQL(""),
    )


def missing_indexes(conn, t: TableDef) -> list[IndexDef]:
    """Indexes of ``t`` that do not exist (the primary key counts as its index)."""
    return [
        ix
        for ix in t.index_defs
        if conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{ix.name}",)).fetchone()[0] is None
    ]


def has_primary_key(conn, t: TableDef) -> bool:
    return bool(
        conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) "
            "AND contype = 'p')",
            (t.qualified,),
        ).fetchone()[0]
    )


def drop_indexes(conn, t: TableDef) -> list[str]:
    """Drop every index of ``t``, primary key included (before a bulk load into it)."""
    dropped = []
    if has_primary_key(conn, t):
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                t.ident, sql.Identifier(f"{t.name}_pkey")
            )
        )
        dropped.append(f"{t.name}_pkey")
    for ix in t.index_defs:
        if conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{ix.name}",)).fetchone()[0]:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(SCHEMA, ix.name)))
            dropped.append(ix.name)
    return dropped


def finish_table(conn, t: TableDef) -> None:
    """Turn the unique index into the primary key and mark the CLUSTER index."""
    if not has_primary_key(conn, t):
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
                t.ident, sql.Identifier(f"{t.name}_pkey"), sql.Identifier(f"{t.name}_pkey")
            )
        )
    if t.cluster_index:
        conn.execute(
            sql.SQL("ALTER TABLE {} CLUSTER ON {}").format(t.ident, sql.Identifier(t.cluster_index))
        )


def create_schema(conn) -> None:
    """Create the missing ``dr1`` tables, indexes, comments and views (idempotent).

    Run as the owner role (``SET ROLE desi_owner``) inside a transaction.
    """
    conn.execute(_INGEST_FILES)
    for col, text in _INGEST_COMMENTS.items():
        target = "TABLE dr1.ingest_files" if not col else f"COLUMN dr1.ingest_files.{col}"
        conn.execute(sql.SQL(f"COMMENT ON {target} IS {{}}").format(sql.Literal(text)))
    for t in TABLES.values():
        if conn.execute("SELECT to_regclass(%s)", (t.qualified,)).fetchone()[0] is None:
            _create_table(conn, t)
            for ix in t.index_defs:
                conn.execute(index_sql(t, ix))
            finish_table(conn, t)
    for name, (query, doc) in _VIEWS.items():
        ident = sql.Identifier(SCHEMA, name)
        if conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{name}",)).fetchone()[0] is None:
            conn.execute(sql.SQL("CREATE VIEW {} AS ").format(ident) + sql.SQL(query))
            conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(ident, sql.Literal(doc)))


def numpy_type(pgtype: str) -> np.dtype:
    """Native NumPy dtype that holds values of a catalog column type."""
    return np.dtype(
        {
            "smallint": "i2",
            "integer": "i4",
            "bigint": "i8",
            "real": "f4",
            "double precision": "f8",
            "boolean": "?",
            "double precision[]": "f8",
            "real[]": "f4",
        }.get(pgtype, "O")
    )
