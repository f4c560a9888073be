"""``Catalog(dsn)``: read-only SQL, cone searches, cross-matches and spectra by TARGETID.

Every query runs on one connection with a statement timeout and a row cap;
:meth:`Catalog.cancel` (from any thread) stops the one running on the server.
User SQL runs as one statement (extended protocol) in a READ ONLY transaction,
through a server-side cursor so the row cap also bounds memory. Sky queries
expand to literal ``hpx`` ranges plus an exact haversine test, with automatic
prepared statements disabled so the planner always sees the ranges and uses the
index (DESIGN, "Known pitfalls").

Example
-------
>>> cat = Catalog()                       # $DESILAB_DATABASE_URL
>>> qsos = cat.query("SELECT targetid, z FROM dr1.zpix WHERE spectype = %s AND z > %s",
...                  ("QSO", 2.1), limit=1000)
>>> near = cat.cone(150.1, 2.2, 2 * u.arcmin)
>>> matched = cat.xmatch(my_table, 1 * u.arcsec)      # nearest match per row
>>> spec = cat.spectra(near["targetid"][:5])
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import astropy.units as u
import numpy as np
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from . import sky
from .coadd import CoaddSpectra
from .pgcopy import COPY_HEADER, COPY_TRAILER, CopyColumn, encode_rows
from .qtable import (
    CatalogError,
    QueryError,
    QueryTable,
    parse_timeout,
    query_error,
    register_array_loaders,
    table_of_arrays,
    to_table,
    unit_of_comment,
)
from .schema import TABLES
from .skyquery import (
    XMATCH_TABLE,
    ConePlan,
    SkyTable,
    cone_sql,
    cone_table,
    find_radec,
    positions,
    xmatch_sql,
)
from .spectra import read_spectra

__all__ = ["Catalog"]

_CURSOR = "desilab_query"
_DECLARE = f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR "
_LEADING = re.compile(r"^(\s+|--[^\n]*(\n|$)|/\*.*?\*/)*", re.S)
_WRITE_WORDS = {
    "insert", "update", "delete", "merge", "create", "drop", "alter", "truncate", "grant",
    "revoke", "copy", "call", "do", "set", "reset", "begin", "commit", "rollback", "abort",
    "start", "end", "lock", "vacuum", "analyze", "cluster", "refresh", "reindex", "comment",
    "security", "import", "listen", "notify", "unlisten", "prepare", "execute", "deallocate",
    "discard", "savepoint", "release", "load", "checkpoint", "declare", "fetch", "move", "close",
    "reassign", "show",
}  # fmt: skip


def _first_word(text: str) -> str:
    rest = _LEADING.sub("", text, count=1)
    m = re.match(r"\(|[A-Za-z_]+", rest)
    return m[0].lower() if m else ""


def _nearest_first(row: Sequence | None) -> tuple[list, int]:
    """The arrays of a packed cone row sorted by the last (haversine ``h``), which
    becomes ``dist`` in arcsec (as :func:`desilab.desi.sky.distance_sql` computes it);
    and their length."""
    if row is None or row[-1] is None:  # no rows: array_agg gives NULLs
        return [[] for _ in row or ()], 0
    arrays = list(row)
    h = np.asarray(arrays[-1], dtype=float)
    if len(h) > 1 and not np.all(h[1:] >= h[:-1]):
        order = np.argsort(h, kind="stable")
        arrays = [a[order] if isinstance(a, np.ndarray) else [a[i] for i in order] for a in arrays]
        h = h[order]
    arrays[-1] = sky.haversine_arcsec(h)
    return arrays, len(h)


#: Fewest candidates a cone fetches for its exact test in the client (else 4 x its limit).
_MIN_CAP = 50_000


class Catalog:
    """The DR1 catalog in PostgreSQL.

    Parameters
    ----------
    dsn : str, optional
        libpq connection string; default ``$DESILAB_DATABASE_URL`` (set in every
        user server).
    data_root : str or Path, optional
        DATA_ROOT for :meth:`spectra`; default: where each file was ingested from.
    limit : int
        Default row cap of :meth:`query` and :meth:`cone`.
    timeout : str or float
        Default time limit of a query (``"60s"``, ``"500ms"``, seconds as a number).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        data_root: str | Path | None = None,
        limit: int = 100_000,
        timeout: str | float = "60s",
    ) -> None:
        dsn = dsn or os.environ.get("DESILAB_DATABASE_URL")
        if not dsn:
            raise CatalogError(
                "no database: pass a DSN or set DESILAB_DATABASE_URL (set in every desilab "
                "server; `desilab db add-user NAME` prints one)"
            )
        self.dsn = dsn
        self.data_root = Path(data_root) if data_root else None
        self.limit = limit
        self.timeout = timeout
        self._conn: psycopg.Connection | None = None
        self._packed: psycopg.Cursor | None = None
        self._lock = threading.RLock()
        self._cancelled = False
        self._session_ms: int | None = None
        self._units: dict[tuple[int, int], str | None] | None = None
        self._sky: dict[str, SkyTable] = {}
        self._plans: dict[tuple, ConePlan | None] = {}

    # -- connection --------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    prepare_threshold=None,
                    application_name="desilab-catalog",
                )
            except psycopg.OperationalError as exc:
                raise CatalogError(f"cannot connect to the catalog database: {exc}") from exc
            self._session_ms = None
            self._packed = None
        return self._conn

    def _packed_cursor(self, conn: psycopg.Connection) -> psycopg.Cursor:
        """A cursor of ``conn`` that decodes numeric arrays into NumPy (reused)."""
        if self._packed is None or self._packed.connection is not conn:
            cur = conn.cursor(binary=True)
            register_array_loaders(cur.adapters)
            self._packed = cur
        return self._packed

    def close(self) -> None:
        """Close the connection (a later query opens a new one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cancel(self) -> None:
        """Cancel the query running now (call from another thread); it raises QueryCancelled."""
        conn = self._conn
        self._cancelled = True
        if conn is not None and not conn.closed:
            conn.cancel_safe(timeout=10)

    # -- running -----------------------------------------------------------------------------

    def _ms(self, timeout) -> int:
        return parse_timeout(self.timeout if timeout is None else timeout)

    @staticmethod
    def _reset(conn: psycopg.Connection) -> None:
        if not (conn.closed or conn.broken) and conn.info.transaction_status in (
            TransactionStatus.INTRANS,
            TransactionStatus.INERROR,
        ):
            conn.execute("ROLLBACK")

    def _units_of(self, cur: psycopg.Cursor) -> list[str | None]:
        """Units of the result columns that come straight from a dr1 column (its comment)."""
        res = cur.pgresult
        if res is None:
            return []
        if self._units is None:
            rows = self._connection().execute(
                "SELECT attrelid::bigint, attnum, col_description(attrelid, attnum) "
                "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "WHERE c.relnamespace = to_regnamespace('dr1') AND attnum > 0"
            )
            self._units = {(r[0], r[1]): unit_of_comment(r[2]) for r in rows if r[2]}
        return [self._units.get((res.ftable(i), res.ftablecol(i))) for i in range(res.nfields)]

    def _run(
        self,
        text: str,
        params=None,
        *,
        limit: int,
        timeout,
        server_cursor: bool,
        transaction: bool = True,
        packed: SkyTable | None = None,
        exact: tuple[ConePlan, float, float, float, int] | None = None,
    ) -> QueryTable | None:
        """Run one statement and fetch at most ``limit + 1`` rows.

        With ``transaction`` the statement runs in a READ ONLY transaction whose
        commands are pipelined (one round trip); without, as a single autocommit
        statement under the session's statement_timeout (our own SQL only).
        With ``packed`` (the table of a cone) the statement returns one row of
        arrays, one per column, the last ``dist``; they become the columns. With
        ``exact`` as well (plan, ra, dec, radius, cap), the arrays are a cone's
        candidates, tested by :meth:`ConePlan.within`; None when they exceed the cap.
        """
        with self._lock:
            conn = self._connection()
            ms = self._ms(timeout)
            sent, offset = (_DECLARE + text, len(_DECLARE)) if server_cursor else (text, 0)
            self._cancelled = False
            t0 = time.perf_counter()
            cur = self._packed_cursor(conn) if packed else conn.cursor(binary=True)
            try:
                if transaction:
                    with conn.pipeline():
                        conn.execute("BEGIN READ ONLY")
                        conn.execute(f"SET LOCAL statement_timeout = {ms}")
                        conn.execute("SET LOCAL cursor_tuple_fraction = 1")
                        cur.execute(sent, params, binary=True)
                        converted = getattr(getattr(cur, "_query", None), "query", None)
                        if isinstance(converted, bytes):
                            sent = converted.decode(errors="replace")
                        if server_cursor:
                            cur.execute(f"FETCH FORWARD {int(limit) + 1} FROM {_CURSOR}")
                        conn.execute("COMMIT")
                else:
                    if self._session_ms != ms:
                        conn.execute(f"SET statement_timeout = {ms}")
                        self._session_ms = ms
                    cur.execute(sent, params, binary=True)
                rows = cur.fetchall()
                description = cur.description or []
                units = None if packed else self._units_of(cur)
            except psycopg.Error as exc:
                self._reset(conn)
                raise query_error(exc, sent, offset, cancelled=self._cancelled) from None
            except BaseException:
                self._reset(conn)
                raise
        if exact is not None:
            plan = exact[0]
            got = plan.within(rows[0] if rows else None, *exact[1:])
            if got is None:
                return None
            arrays, n = got
            types = [d.type_code for d in description[: len(plan.names)]]
            table = cone_table(plan, types, [a[:limit] for a in arrays], packed.units)
        elif packed:
            arrays, n = _nearest_first(rows[0] if rows else None)
            units = [packed.units.get(d.name) for d in description]
            table = table_of_arrays(description, [a[:limit] for a in arrays], units)
        else:
            n = len(rows)
            table = to_table(description, rows[:limit], units)
        table.meta.update(
            sql=text, truncated=n > limit, limit=limit, seconds=time.perf_counter() - t0
        )
        return table

    def query(
        self,
        sql_text: str,
        params: Sequence | dict | None = None,
        *,
        limit: int | None = None,
        timeout: str | float | None = None,
    ) -> QueryTable:
        """Run one read-only SQL query.

        Parameters
        ----------
        sql_text : str
            One SELECT (or WITH ... SELECT, VALUES, TABLE, EXPLAIN); values go in
            ``params`` as ``%s`` or ``%(name)s`` placeholders, never into the string
            (a literal ``%`` is then written ``%%``).
        params : sequence or dict, optional
            Values of the placeholders, sent separately from the SQL.
        limit : int, optional
            Row cap (default the catalog's, 100 000); ``table.meta["truncated"]``
            says whether rows were left out.
        timeout : str or float, optional
            Time limit on the server (``"60s"``, ``"500ms"``, or seconds).

        Returns
        -------
        QueryTable
            An astropy Table (``.to_pandas()`` works); units from the column comments.

        Raises
        ------
        QuerySyntaxError
            With the line, column and an excerpt of the SQL.
        QueryTimeout, QueryCancelled, QueryError
        """
        if not isinstance(sql_text, str):
            raise TypeError("sql_text must be a str; pass values in params")
        word = _first_word(sql_text)
        if word in _WRITE_WORDS:
            raise QueryError(
                f"Catalog.query runs one read-only SELECT (or WITH/VALUES/TABLE), not "
                f"{word.upper()}; the catalog is read-only (write to your own schema with "
                "psycopg instead)",
                sql_text,
            )
        limit = self.limit if limit is None else int(limit)
        # EXPLAIN cannot be a cursor; its output is small.
        return self._run(
            sql_text.strip().rstrip(";"),
            params,
            limit=limit,
            timeout=timeout,
            server_cursor=word != "explain",
        )

    def columns(self, table: str) -> QueryTable:
        """Columns of a table or view: name, type and description with unit (schema browser)."""
        schema, name = self._split(table)
        return self.query(
            "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, "
            "col_description(a.attrelid, a.attnum) AS description FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (sql.Identifier(schema, name).as_string(None),),
        )

    def tables(self) -> QueryTable:
        """Tables and views the connection can read, with their descriptions."""
        return self.query(
            "SELECT n.nspname AS schema, c.relname AS name, "
            "CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END AS kind, "
            "c.reltuples::bigint AS approx_rows, obj_description(c.oid, 'pg_class') AS description "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'v', 'p', 'm') AND n.nspname NOT IN "
            "('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%%' "
            "AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1, 2",
            (),
        )

    # -- sky -----------------------------------------------------------------------------------

    @staticmethod
    def _split(table: str) -> tuple[str, str]:
        parts = table.split(".") if isinstance(table, str) else []
        if len(parts) == 1:
            parts = ["dr1", parts[0]]
        if len(parts) != 2 or not all(parts):
            raise CatalogError(f"table {table!r} must be written schema.name (e.g. dr1.zpix)")
        return parts[0], parts[1]

    def _sky_table(self, table: str) -> SkyTable:
        """Quoted names of a table with an ``hpx`` column and RA/Dec columns (cached)."""
        if table in self._sky:
            return self._sky[table]
        schema, name = self._split(table)
        try:
            with self._lock:
                conn = self._connection()
                ident = sql.Identifier(schema, name).as_string(conn)
                found = conn.execute(
                    "SELECT attname, atttypid::int, col_description(attrelid, attnum) "
                    "FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                    "AND attnum > 0 AND NOT attisdropped AND has_column_privilege("
                    "attrelid, attnum, 'SELECT') ORDER BY attnum",
                    (ident,),
                ).fetchall()
                cols = [r[0] for r in found]
                quoted = {c: sql.Identifier(c).as_string(conn) for c in cols}
        except (psycopg.Error, ValueError) as exc:
            raise CatalogError(f"table {table!r} does not exist or you cannot read it") from exc
        if not cols:
            raise CatalogError(f"table {schema}.{name} does not exist or you cannot read it")
        ra, dec = find_radec(cols)
        if "hpx" not in cols or ra is None or dec is None:
            raise CatalogError(
                f"{schema}.{name} is not a sky table: it needs an hpx column (nested HEALPix, "
                f"order {sky.HPX_ORDER}) and RA/Dec columns in degrees (found {ra}, {dec})"
            )
        known = TABLES.get(name) if schema == "dr1" else None
        default = (
            known.default_columns
            if known and known.default_columns
            else tuple(c for c in cols if c not in ("hpx", "file_id"))
        )
        # Units as :meth:`query` gives them: from the comments of dr1 columns.
        units = {r[0]: unit_of_comment(r[2]) for r in found} if schema == "dr1" else {}
        info = SkyTable(
            f"{schema}.{name}", ident, quoted[ra], quoted[dec], quoted, default,
            types={r[0]: r[1] for r in found}, units=units,
        )  # fmt: skip
        self._sky[table] = info
        return info

    def cone(
        self,
        ra: float | u.Quantity,
        dec: float | u.Quantity,
        radius: float | u.Quantity,
        *,
        table: str = "dr1.zpix",
        columns: Sequence[str] | None = None,
        where: str | None = None,
        params: Sequence | dict | None = None,
        limit: int | None = None,
        timeout: str | float | None = None,
    ) -> QueryTable:
        """Rows within ``radius`` of (``ra``, ``dec``), nearest first, with ``dist`` (arcsec).

        Parameters
        ----------
        ra, dec : float or Quantity
            Centre (ICRS); numbers are degrees.
        radius : float or Quantity
            Angular radius; numbers are degrees.
        table : str
            Any table with an ``hpx`` column and RA/Dec columns (dr1.zpix, dr1.fastspec,
            dr1.desivast_maximals, or your own).
        columns : sequence of str, optional
            Columns to return (default: the table's main ones).
        where, params : optional
            An extra SQL condition (values as placeholders in ``params``); it then
            runs in a READ ONLY transaction, as :meth:`query` does.
        limit, timeout
            As in :meth:`query`.
        """
        ra_d, dec_d, r_d = sky.to_degrees(ra), sky.to_degrees(dec), sky.to_degrees(radius)
        info = self._sky_table(table)
        limit = self.limit if limit is None else int(limit)
        run = dict(limit=limit, timeout=timeout, server_cursor=False, transaction=bool(where))
        # The exact distance test in NumPy on the candidates (see ConePlan), unless
        # there are too many to fetch or a column is not a scalar: then in SQL, below.
        cap = max(_MIN_CAP, 4 * (limit + 1))
        key = (table, None if columns is None else tuple(columns))
        if key not in self._plans:
            self._plans[key] = ConePlan.of(info, columns)
        plan = self._plans[key]
        if plan is not None:
            text, n_ranges = plan.sql(ra_d, dec_d, r_d, where, cap)
            out = self._run(
                text, params if where else None, packed=info,
                exact=(plan, ra_d, dec_d, r_d, cap), **run,
            )  # fmt: skip
            if out is not None:
                out.meta.update(ra=ra_d, dec=dec_d, radius_deg=r_d, ranges=n_ranges)
                return out
        text, n_ranges, packed = cone_sql(info, ra_d, dec_d, r_d, columns, where, limit)
        out = self._run(text, params if where else None, packed=info if packed else None, **run)
        if packed and out.meta["truncated"]:
            # More matches than the cap: ask again for the nearest ``limit`` (sorted there).
            text = cone_sql(info, ra_d, dec_d, r_d, columns, where, limit, ordered=True)[0]
            out = self._run(text, params if where else None, packed=info, **run)
        out["dist"].unit = u.arcsec
        out.meta.update(ra=ra_d, dec=dec_d, radius_deg=r_d, ranges=n_ranges)
        return out

    def xmatch(
        self,
        positions_,
        radius: float | u.Quantity,
        *,
        table: str = "dr1.zpix",
        columns: Sequence[str] | None = None,
        ra: str | None = None,
        dec: str | None = None,
        timeout: str | float | None = None,
    ) -> QueryTable:
        """Nearest catalog row within ``radius`` of each position.

        Parameters
        ----------
        positions_ : Table, SkyCoord or (ra, dec) arrays
            Positions in degrees (ICRS); a Table's RA/Dec columns are found by name
            (ra/dec, target_ra/target_dec...) unless ``ra``/``dec`` name them.
        radius : float or Quantity
            Match radius; numbers are degrees (at most ~1.4 deg).
        table, columns, timeout
            As in :meth:`cone`.

        Returns
        -------
        QueryTable
            One row per matched position: ``input_index`` (row in ``positions_``),
            the catalog columns and ``dist`` (arcsec), ordered by ``input_index``.
        """
        ra_in, dec_in = positions(positions_, ra, dec)
        r_d = sky.to_degrees(radius)
        idx, lo, hi = sky.match_ranges(ra_in, dec_in, r_d, coarsen=4)
        order = np.argsort(lo, kind="stable")  # probes in index order: cache friendly
        idx, lo, hi = idx[order], lo[order], hi[order]
        text = xmatch_sql(self._sky_table(table), r_d, columns)
        data = encode_rows(
            [
                CopyColumn(idx.astype(np.int32), "integer"),
                CopyColumn(ra_in[idx], "double precision"),
                CopyColumn(dec_in[idx], "double precision"),
                CopyColumn(lo, "bigint"),
                CopyColumn(hi, "bigint"),
            ]
        )
        t0 = time.perf_counter()
        with self._lock:
            conn = self._connection()
            self._cancelled = False
            cur = conn.cursor(binary=True)
            try:
                conn.execute(
                    f"BEGIN; SET LOCAL statement_timeout = {self._ms(timeout)}; "
                    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; "
                    f"SET LOCAL work_mem = '256MB'; {XMATCH_TABLE}"
                )
                with cur.copy("COPY desilab_xmatch FROM STDIN (FORMAT BINARY)") as cp:
                    cp.write(COPY_HEADER)
                    cp.write(data)
                    cp.write(COPY_TRAILER)
                with conn.pipeline():
                    cur.execute(text, binary=True)
                    conn.execute("COMMIT")
                rows = cur.fetchall()
                description, units = cur.description, self._units_of(cur)
            except psycopg.Error as exc:
                self._reset(conn)
                raise query_error(exc, text, cancelled=self._cancelled) from None
            except BaseException:
                self._reset(conn)
                raise
        out = to_table(description, rows, units)
        out["dist"].unit = u.arcsec
        out.meta.update(
            sql=text,
            radius_deg=r_d,
            n_input=len(ra_in),
            ranges=len(lo),
            truncated=False,
            seconds=time.perf_counter() - t0,
        )
        return out

    def spectra(
        self,
        targetids: Sequence[int] | np.ndarray,
        *,
        arms: str = "BRZ",
        resolution: bool = False,
        missing: str = "raise",
    ) -> CoaddSpectra:
        """Coadded spectra of TARGETIDs, read from the coadd files found through dr1.spectra.

        For a TARGETID observed in several surveys/programs, the spectrum of its
        ZCAT_PRIMARY row is returned.

        Parameters
        ----------
        targetids : sequence of int
            Wanted TARGETIDs; the result has their order.
        arms : str
            Arms to read, any of ``"BRZ"``.
        resolution : bool
            Also read the resolution matrices (11 x nwave per spectrum and arm).
        missing : {"raise", "skip"}
            What to do with TARGETIDs that have no spectrum in the catalog.

        Returns
        -------
        CoaddSpectra
            One entry per TARGETID found, FIBERMAP/EXP_FIBERMAP/SCORES rows included;
            ``meta["files"]`` lists the files read, ``meta["missing"]`` the TARGETIDs
            without a spectrum.
        """
        return read_spectra(self.query, targetids, self.data_root, arms, resolution, missing)
