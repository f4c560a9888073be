"""Result tables of the voids project in PostgreSQL (schema ``results``).

* ``results.void_runs``: one row per model version: the VoidFinder parameters and
  sample cuts (the assumptions) behind every other row with that version.
* ``results.voids`` and ``results.void_holes``: the void catalog (MAXIMALS, HOLES).
* ``results.void_membership``: TARGETID, VAST vflag and void id of each galaxy.

Tables are created and written by the owner role (``SET ROLE desi_owner`` on an
admin connection), so ``desi_reader`` and the users' roles can read them and nobody
else writes. Each write replaces one (model version, cap) unit in one transaction,
with ``COPY``: a failed write leaves the previous rows, and a rerun is safe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import psycopg
from astropy.table import Table
from desilab.desi.datamodel import HOLES, MAXIMALS, dtype_of
from desilab.desi.roles import OWNER
from psycopg import sql

from .classify import VFLAG_VOID, Membership
from .sample import SampleCuts
from .voidfinder import VoidCatalog, VoidFinderConfig

__all__ = [
    "assumptions",
    "ensure_tables",
    "model_version",
    "list_runs",
    "read_desivast_voids",
    "read_membership",
    "read_voids",
    "save_membership",
    "write_membership",
    "write_run",
    "write_voids",
]

_DDL = [
    """CREATE TABLE IF NOT EXISTS results.void_runs (
        model_version text PRIMARY KEY,
        assumptions jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS results.voids (
        model_version text NOT NULL,
        cap text NOT NULL,
        void_id integer NOT NULL,
        x double precision NOT NULL, y double precision NOT NULL, z double precision NOT NULL,
        radius double precision NOT NULL,
        r double precision, ra double precision, dec double precision,
        edge smallint NOT NULL,
        r_eff double precision, r_eff_uncert double precision,
        PRIMARY KEY (model_version, cap, void_id))""",
    """CREATE TABLE IF NOT EXISTS results.void_holes (
        model_version text NOT NULL,
        cap text NOT NULL,
        void_id integer NOT NULL,
        x double precision NOT NULL, y double precision NOT NULL, z double precision NOT NULL,
        radius double precision NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS void_holes_void
        ON results.void_holes (model_version, cap, void_id)""",
    """CREATE TABLE IF NOT EXISTS results.void_membership (
        targetid bigint NOT NULL,
        cap text NOT NULL,
        vflag smallint NOT NULL CHECK (vflag IN (0, 1, 2, 9)),
        void_id integer CHECK ((vflag = 1) = (void_id IS NOT NULL)),
        void_catalog text NOT NULL,
        model_version text NOT NULL,
        PRIMARY KEY (model_version, targetid))""",
    """CREATE INDEX IF NOT EXISTS void_membership_targetid
        ON results.void_membership (targetid)""",
    """CREATE INDEX IF NOT EXISTS void_membership_void
        ON results.void_membership (model_version, cap, void_id)""",
]


def _sample_assumptions(cuts: SampleCuts, nside: int) -> dict:
    return {
        "mag_limit": cuts.mag_limit,
        "zmin": cuts.zmin,
        "zmax": cuts.zmax,
        "min_deltachi2": cuts.min_deltachi2,
        "cosmology": cuts.cosmology.name or repr(cuts.cosmology),
        "footprint_nside": nside,
    }


def model_version(config: VoidFinderConfig, cuts: SampleCuts, nside: int) -> str:
    """Version string of a void run: the algorithm, its parameters and the sample cuts."""
    sample = json.dumps(_sample_assumptions(cuts, nside), sort_keys=True).encode()
    return f"{config.version}.sample-{hashlib.sha1(sample).hexdigest()[:8]}"


def assumptions(
    config: VoidFinderConfig, cuts: SampleCuts, nside: int, axes: dict | None = None
) -> dict:
    """Everything a model version stands for, as stored in ``results.void_runs``."""
    return {
        "voidfinder": asdict(config),
        "sample": _sample_assumptions(cuts, nside),
        "axes": axes or {},
    }


def _owner_connection(admin_dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(admin_dsn)
    # Rows and tables belong to the owner role, whoever the admin login is.
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(OWNER)))
    return conn


def ensure_tables(admin_dsn: str) -> None:
    """Create the result tables as ``desi_owner`` (idempotent).

    Requires the catalog roles and schemas (:func:`desilab.desi.roles.prepare_catalog`).
    """
    with _owner_connection(admin_dsn) as conn:
        for statement in _DDL:
            conn.execute(statement)


def write_run(admin_dsn: str, model_version: str, assumptions: dict) -> None:
    """Record (or update) what a model version assumed: parameters, cuts, cosmology."""
    with _owner_connection(admin_dsn) as conn:
        conn.execute(
            "INSERT INTO results.void_runs (model_version, assumptions) VALUES (%s, %s) "
            "ON CONFLICT (model_version) DO UPDATE SET assumptions = EXCLUDED.assumptions",
            (model_version, json.dumps(assumptions, default=str)),
        )


def _copy(cur, table: str, columns: list[str], types: list[str], rows) -> int:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.SQL(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    n = 0
    with cur.copy(stmt) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def write_voids(admin_dsn: str, model_version: str, cap: str, catalog: VoidCatalog) -> int:
    """Replace the voids and holes of (model version, cap); returns the number of voids."""
    m, h = catalog.maximals, catalog.holes
    with _owner_connection(admin_dsn) as conn, conn.cursor() as cur:
        for table in ("results.voids", "results.void_holes"):
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE model_version = %s AND cap = %s").format(
                    sql.SQL(table)
                ),
                (model_version, cap),
            )
        cols = ["x", "y", "z", "radius", "r", "ra", "dec", "r_eff", "r_eff_uncert"]
        rows = zip(
            [model_version] * len(m),
            [cap] * len(m),
            m["VOID"].astype(int).tolist(),
            *[m[c.upper()].astype(float).tolist() for c in cols],
            m["EDGE"].astype(int).tolist(),
            strict=True,
        )
        n = _copy(
            cur,
            "results.voids",
            ["model_version", "cap", "void_id", *cols, "edge"],
            ["text", "text", "int4"] + ["float8"] * len(cols) + ["int2"],
            rows,
        )
        hole_rows = zip(
            [model_version] * len(h),
            [cap] * len(h),
            h["VOID"].astype(int).tolist(),
            *[h[c].astype(float).tolist() for c in ("X", "Y", "Z", "RADIUS")],
            strict=True,
        )
        _copy(
            cur,
            "results.void_holes",
            ["model_version", "cap", "void_id", "x", "y", "z", "radius"],
            ["text", "text", "int4", "float8", "float8", "float8", "float8"],
            hole_rows,
        )
    return n


def write_membership(
    admin_dsn: str,
    model_version: str,
    cap: str,
    membership: Membership,
    *,
    void_catalog: str,
) -> int:
    """Replace the galaxy environments of (model version, cap); returns rows written.

    Parameters
    ----------
    admin_dsn : str
        A login that may ``SET ROLE desi_owner``.
    model_version : str
        Version of the classification (void finder, cuts and catalog used).
    cap : str
        'NGC', 'SGC' or 'ALL'.
    membership : Membership
        Must carry TARGETIDs.
    void_catalog : str
        Which void catalog classified the galaxies (our version, or the DESIVAST file).
    """
    if membership.targetid is None:
        raise ValueError("membership has no TARGETIDs to store")
    void = np.where(membership.vflag == VFLAG_VOID, membership.void, -1)
    rows = zip(
        membership.targetid.tolist(),
        [cap] * len(membership),
        membership.vflag.astype(int).tolist(),
        [None if v < 0 else int(v) for v in void.tolist()],
        [void_catalog] * len(membership),
        [model_version] * len(membership),
        strict=True,
    )
    with _owner_connection(admin_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "DELETE FROM results.void_membership WHERE model_version = %s AND cap = %s",
            (model_version, cap),
        )
        return _copy(
            cur,
            "results.void_membership",
            ["targetid", "cap", "vflag", "void_id", "void_catalog", "model_version"],
            ["int8", "text", "int2", "int4", "text", "text"],
            rows,
        )


def save_membership(
    dsn: str,
    membership: Membership,
    *,
    cap: str,
    table: str = "my_void_membership",
    void_catalog: str = "",
) -> int:
    """Keep galaxy environments in a table of your own schema (any user role may).

    The table (created if needed, in the first schema of the search path: a user's own)
    has the columns of ``results.void_membership``; the rows of ``cap`` are replaced in
    one transaction. Returns the rows written.

    Parameters
    ----------
    dsn : str
        Your role's DSN (DESILAB_DATABASE_URL).
    membership : Membership
        Must carry TARGETIDs.
    cap : str
    table : str
        Table name (unqualified).
    void_catalog : str
        Which voids classified the galaxies (a note kept with every row).
    """
    if membership.targetid is None:
        raise ValueError("membership has no TARGETIDs to store")
    name = sql.Identifier(table)
    void = np.where(membership.vflag == VFLAG_VOID, membership.void, -1)
    rows = zip(
        membership.targetid.tolist(),
        [cap] * len(membership),
        membership.vflag.astype(int).tolist(),
        [None if v < 0 else int(v) for v in void.tolist()],
        [void_catalog] * len(membership),
        strict=True,
    )
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (targetid bigint NOT NULL, cap text NOT NULL, "
                "vflag smallint NOT NULL, void_id integer, void_catalog text, "
                "PRIMARY KEY (cap, targetid))"
            ).format(name)
        )
        cur.execute(sql.SQL("DELETE FROM {} WHERE cap = %s").format(name), (cap,))
        return _copy(
            cur,
            sql.Identifier(table).as_string(conn),
            ["targetid", "cap", "vflag", "void_id", "void_catalog"],
            ["int8", "text", "int2", "int4", "text"],
            rows,
        )


def list_runs(dsn: str) -> list[dict]:
    """Model versions with their assumptions, newest first."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT model_version, assumptions, created_at FROM results.void_runs "
            "ORDER BY created_at DESC"
        ).fetchall()
    return [{"model_version": v, "assumptions": a, "created_at": t} for v, a, t in rows]


def read_membership(
    dsn: str,
    model_version: str,
    *,
    cap: str | None = None,
    void_id: int | None = None,
) -> Table:
    """Galaxy environments of a model version (optionally one cap or one void)."""
    query = (
        "SELECT targetid, cap, vflag, void_id FROM results.void_membership WHERE model_version = %s"
    )
    params: list = [model_version]
    if cap is not None:
        query += " AND cap = %s"
        params.append(cap)
    if void_id is not None:
        query += " AND void_id = %s"
        params.append(int(void_id))
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(query + " ORDER BY targetid", params).fetchall()
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    return Table(
        {
            "TARGETID": np.asarray(cols[0], dtype=np.int64),
            "CAP": np.asarray(cols[1], dtype=str),
            "VFLAG": np.asarray(cols[2], dtype=np.int8),
            "VOID": np.asarray([-1 if v is None else v for v in cols[3]], dtype=np.int64),
        }
    )


def read_voids(dsn: str, model_version: str, cap: str) -> VoidCatalog:
    """The void catalog of (model version, cap) as a :class:`VoidCatalog`."""
    with psycopg.connect(dsn) as conn:
        vrows = conn.execute(
            "SELECT x, y, z, radius, r, ra, dec, void_id, edge, r_eff, r_eff_uncert "
            "FROM results.voids WHERE model_version = %s AND cap = %s ORDER BY void_id",
            (model_version, cap),
        ).fetchall()
        hrows = conn.execute(
            "SELECT x, y, z, radius, void_id FROM results.void_holes "
            "WHERE model_version = %s AND cap = %s ORDER BY void_id, radius DESC",
            (model_version, cap),
        ).fetchall()
        run = conn.execute(
            "SELECT assumptions FROM results.void_runs WHERE model_version = %s", (model_version,)
        ).fetchone()
    maximals = np.array([tuple(r) for r in vrows], dtype=dtype_of(MAXIMALS))
    holes = np.array([tuple(r) for r in hrows], dtype=dtype_of(HOLES))
    # The grid frame decides the edge tests; runs record it per cap.
    axes = np.asarray(((run or [{}])[0] or {}).get("axes", {}).get(cap, np.eye(3)), dtype=float)
    return VoidCatalog(maximals, holes, {"VFVERS": model_version, "CAP": cap}, axes)


def read_desivast_voids(dsn: str, cap: str) -> VoidCatalog:
    """The DESIVAST VoidFinder catalog of a cap as ingested (``dr1.desivast_*`` tables)."""
    names = [n for n, _, _ in MAXIMALS]
    with psycopg.connect(dsn) as conn:
        vrows = conn.execute(
            sql.SQL("SELECT {} FROM dr1.desivast_maximals WHERE cap = %s ORDER BY void").format(
                sql.SQL(", ").join(sql.Identifier(n.lower()) for n in names)
            ),
            (cap,),
        ).fetchall()
        hrows = conn.execute(
            "SELECT x, y, z, radius, void FROM dr1.desivast_holes WHERE cap = %s ORDER BY hole",
            (cap,),
        ).fetchall()
    maximals = np.array([tuple(r) for r in vrows], dtype=dtype_of(MAXIMALS))
    holes = np.array([tuple(r) for r in hrows], dtype=dtype_of(HOLES))
    return VoidCatalog(maximals, holes, {"CAP": cap, "VOIDCAT": "DESIVAST"})
