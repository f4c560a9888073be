"""Query results as astropy tables, and the errors of :class:`~desilab.desi.catalog.Catalog`."""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Sequence

import astropy.units as u
import numpy as np
import psycopg
from astropy.table import Column, MaskedColumn, Table
from psycopg.adapt import AdaptersMap, Loader
from psycopg.pq import Format

__all__ = [
    "CatalogError",
    "QueryCancelled",
    "QueryError",
    "QuerySyntaxError",
    "QueryTable",
    "QueryTimeout",
    "parse_timeout",
    "query_error",
    "register_array_loaders",
    "table_of_arrays",
    "to_table",
]


class CatalogError(Exception):
    """Base class of catalog errors: the message says what went wrong and what to do."""


class QueryError(CatalogError):
    """The server refused or stopped a query.

    Attributes
    ----------
    sql : str
        The query as sent (placeholders as ``$n``).
    position : int or None
        1-based character position of the problem in ``sql``, when the server gave one.
    sqlstate : str or None
        PostgreSQL error code.
    """

    def __init__(
        self, message: str, sql: str = "", position: int | None = None, sqlstate: str | None = None
    ) -> None:
        super().__init__(message)
        self.sql = sql
        self.position = position
        self.sqlstate = sqlstate


class QuerySyntaxError(QueryError):
    """The SQL does not parse, or names a table or column that does not exist."""


class QueryTimeout(QueryError):
    """The query ran longer than its ``timeout`` (statement_timeout)."""


class QueryCancelled(QueryError):
    """The query was cancelled with :meth:`Catalog.cancel`."""


class QueryTable(Table):
    """An astropy Table of query results; ``meta`` holds ``sql``, ``truncated``, ``limit``...

    :meth:`to_pandas` also works with array columns (e.g. ``coeff``), which
    become object columns holding one NumPy array per row.
    """

    def to_pandas(self, index=None, use_nullable_int=True):  # noqa: D102 - astropy's doc
        multidim = [n for n in self.colnames if self[n].ndim > 1]
        if not multidim:
            return super().to_pandas(index=index, use_nullable_int=use_nullable_int)
        flat = Table(self, copy=False)
        for name in multidim:
            cells = np.empty(len(flat), dtype=object)
            cells[:] = list(np.asarray(flat[name]))
            flat.replace_column(name, Column(cells, name=name))
        return flat.to_pandas(index=index, use_nullable_int=use_nullable_int)


_TIMEOUT_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|sec|min|h)?\s*$", re.I)
_SCALE = {"ms": 1, "s": 1000, "sec": 1000, "min": 60_000, "h": 3_600_000}


def parse_timeout(timeout: str | float | int | None) -> int:
    """Milliseconds of a timeout given as seconds or as ``"500ms"``, ``"60s"``, ``"2min"``.

    0 or None means no limit.
    """
    if timeout is None:
        return 0
    if isinstance(timeout, int | float):
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds, not {timeout}")
        return int(round(timeout * 1000))
    m = _TIMEOUT_RE.match(str(timeout))
    if not m:
        raise ValueError(f"timeout {timeout!r} is not a duration like '500ms', '60s' or '2min'")
    return int(round(float(m[1]) * _SCALE[(m[2] or "s").lower()]))


# PostgreSQL type OIDs -> NumPy dtypes
_NUMERIC = {16: "?", 20: "i8", 21: "i2", 23: "i4", 26: "i8", 700: "f4", 701: "f8", 1700: "f8"}
_ARRAYS = {1000: "?", 1005: "i2", 1007: "i4", 1016: "i8", 1021: "f4", 1022: "f8", 1231: "f8"}
_TEXT = {18, 19, 25, 1042, 1043}
_UNIT_RE = re.compile(r"\[([^\[\]]+)\]\s*$")


def unit_of_comment(comment: str | None) -> str | None:
    """The unit at the end of a column comment (``"Redshift [deg]"`` -> ``"deg"``)."""
    m = _UNIT_RE.search(comment or "")
    return m[1] if m else None


#: Element type OID of each array type OID that :func:`table_of_arrays` knows.
_ELEMENT = {
    1000: 16, 1005: 21, 1007: 23, 1016: 20, 1028: 26, 1021: 700, 1022: 701, 1231: 1700,
    1002: 18, 1003: 19, 1009: 25, 1014: 1042, 1015: 1043,
}  # fmt: skip
#: Binary array types decoded straight into NumPy (fixed-width elements), big-endian.
_BINARY_ELEMENT = {1000: "u1", 1005: ">i2", 1007: ">i4", 1016: ">i8", 1021: ">f4", 1022: ">f8"}


class _NumpyArrayLoader(Loader):
    """Binary one-dimensional arrays of fixed-width numbers -> NumPy arrays, vectorised.

    psycopg builds one Python object per element; a cone of thousands of rows
    fetched as one row of arrays (``array_agg``) is then decoded by one
    ``np.frombuffer`` per column. Arrays with NULLs come back as lists (``None``
    for NULL), as psycopg would give them.
    """

    format = Format.BINARY
    element = ">i8"

    def load(self, data) -> np.ndarray | list:
        ndim, has_null = struct.unpack_from(">ii", data, 0)
        dtype = np.dtype(self.element)
        if ndim == 0:
            return np.zeros(0, dtype=dtype.newbyteorder("="))
        if ndim != 1:
            raise psycopg.DataError(f"expected a one-dimensional array, got {ndim} dimensions")
        (n,) = struct.unpack_from(">i", data, 12)
        if not has_null:
            rec = np.dtype([("len", ">i4"), ("value", dtype)])
            values = np.frombuffer(data, dtype=rec, count=n, offset=20)["value"]
            return values.astype(dtype.newbyteorder("="))
        out: list = []
        pos = 20
        for _ in range(n):
            (length,) = struct.unpack_from(">i", data, pos)
            pos += 4
            if length < 0:
                out.append(None)
            else:
                out.append(np.frombuffer(data, dtype=dtype, count=1, offset=pos)[0].item())
                pos += length
        return out


_ARRAY_LOADERS = {
    oid: type(f"NumpyArrayLoader{oid}", (_NumpyArrayLoader,), {"element": element})
    for oid, element in _BINARY_ELEMENT.items()
}


def register_array_loaders(adapters: AdaptersMap) -> None:
    """Make ``adapters`` (a cursor's) decode binary numeric arrays into NumPy arrays."""
    for oid, loader in _ARRAY_LOADERS.items():
        adapters.register_loader(oid, loader)


def _column(name: str, values: Sequence, oid: int) -> Column:
    n = len(values)
    has_null = None in values  # a C-level scan; the mask only when needed
    nulls = np.fromiter((v is None for v in values), dtype=bool, count=n) if has_null else None
    if oid in _NUMERIC:
        dtype = np.dtype(_NUMERIC[oid])
        if has_null:
            fill = dtype.type(0)
            data = np.fromiter((fill if v is None else v for v in values), dtype=dtype, count=n)
        else:
            data = np.fromiter(values, dtype=dtype, count=n)
    elif oid in _TEXT:
        if not n:
            data = np.zeros(0, dtype="U1")
        elif has_null:
            data = np.array(["" if v is None else v for v in values], dtype=str)
        else:
            data = np.array(values, dtype=str)
    elif oid in _ARRAYS and n and not has_null:
        lengths = {len(v) for v in values}
        if len(lengths) == 1 and all(x is not None for v in values for x in v):
            data = np.array(values, dtype=_ARRAYS[oid])
        else:
            data = np.empty(n, dtype=object)
            data[:] = [np.asarray(v) for v in values]
    else:
        data = np.empty(n, dtype=object)
        data[:] = list(values)
    if has_null:
        mask = (
            nulls
            if data.ndim == 1
            else np.broadcast_to(nulls.reshape((n,) + (1,) * (data.ndim - 1)), data.shape)
        )
        return MaskedColumn(data, name=name, mask=mask)
    return Column(data, name=name)


_UNITS: dict[str, u.UnitBase] = {}


def _unit(text: str) -> u.UnitBase:
    """Parsed unit, cached (DR1 TUNITs such as ``nanomaggy^-2`` parse once, leniently)."""
    if text not in _UNITS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _UNITS[text] = u.Unit(text, parse_strict="silent")
    return _UNITS[text]


def to_table(
    description: Sequence, rows: Sequence[tuple], units: Sequence[str | None] | None = None
) -> QueryTable:
    """Rows of a result (as psycopg returns them) -> :class:`QueryTable`.

    Numbers become NumPy columns, NULLs masked entries, fixed-length arrays 2-D
    columns; duplicate column names get a ``_1``, ``_2``... suffix.
    """
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(description)
    seen: dict[str, int] = {}
    cols: dict[str, Column] = {}
    for d, values in zip(description, columns, strict=True):
        name = d.name
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 0
        cols[name] = _column(name, values, d.type_code)
    out = QueryTable(cols, copy=False) if cols else QueryTable()
    for name, unit in zip(cols, units or (), strict=False):
        if unit:
            out[name].unit = _unit(unit)
    return out


def table_of_arrays(
    description: Sequence, row: Sequence | None, units: Sequence[str | None] | None = None
) -> QueryTable:
    """One result row of arrays (``SELECT array_agg(a), array_agg(b) ...``) -> QueryTable.

    Each array becomes a column of the element type, as :func:`to_table` makes
    it from rows; NULL arrays (no rows were aggregated) give empty columns.
    """
    columns, names, seen = {}, [], {}
    for i, d in enumerate(description):
        name = d.name
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 0
        values = row[i] if row is not None and row[i] is not None else []
        oid = _ELEMENT.get(d.type_code, 0)
        if oid in _NUMERIC and (isinstance(values, np.ndarray) or not len(values)):
            # A plain array: astropy then makes the Column once (a third of the time).
            columns[name] = np.asarray(values, dtype=_NUMERIC[oid])
        else:
            columns[name] = _column(name, values, oid)
        names.append(name)
    out = QueryTable(columns, copy=False) if columns else QueryTable()
    for name, unit in zip(names, units or (), strict=False):
        if unit:
            out[name].unit = _unit(unit)
    return out


def _excerpt(text: str, position: int) -> tuple[int, int, str]:
    """Line, column and a two-line excerpt with a caret at 1-based ``position``."""
    before = text[: max(0, position - 1)]
    line = before.count("\n") + 1
    col = len(before) - (before.rfind("\n") + 1) + 1
    src = text.splitlines()[line - 1] if text.splitlines() else ""
    return line, col, f"    {src}\n    {' ' * (col - 1)}^"


def query_error(
    exc: psycopg.Error, sent: str, offset: int = 0, *, cancelled: bool = False
) -> QueryError:
    """A :class:`QueryError` with the server's message and the place in the SQL.

    Parameters
    ----------
    exc : psycopg.Error
        What the server answered.
    sent : str
        The query text as sent.
    offset : int
        Characters the library put before the user's SQL (``DECLARE ... FOR ``).
    cancelled : bool
        Whether :meth:`Catalog.cancel` was called.
    """
    diag = exc.diag
    message = diag.message_primary or str(exc).strip()
    user_sql = sent[offset:]
    if isinstance(exc, psycopg.errors.QueryCanceled):
        if cancelled:
            return QueryCancelled(
                "the query was cancelled (Catalog.cancel)", user_sql, None, diag.sqlstate
            )
        if "statement timeout" in message:
            return QueryTimeout(
                "the query was stopped by its time limit (statement_timeout); narrow it (a "
                "cone, a WHERE on an indexed column such as hpx, z or targetid, a LIMIT) or "
                "give a larger timeout=",
                user_sql,
                None,
                diag.sqlstate,
            )
    position = None
    text = f"the catalog refused the query: {message}"
    if "multiple commands" in message:
        text = (
            "a catalog query is exactly one SQL statement: remove the ';' and what follows "
            "(and pass values as params, never inside the SQL text)"
        )
    if diag.statement_position:
        position = int(diag.statement_position) - offset
        if position >= 1:
            line, col, excerpt = _excerpt(user_sql, position)
            text = (
                f"SQL error at line {line}, column {col} (character {position}): "
                f"{message}\n{excerpt}"
            )
    if diag.message_detail:
        text += f"\nDetail: {diag.message_detail}"
    if diag.message_hint:
        text += f"\nHint: {diag.message_hint}"
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        text += "\nCatalog queries are read-only; write to your own schema with psycopg instead."
    elif isinstance(exc, psycopg.errors.InsufficientPrivilege):
        text += "\nYour database role may read the schemas dr1, results, vi and your own."
    cls = (
        QuerySyntaxError
        if isinstance(
            exc,
            psycopg.errors.SyntaxError
            | psycopg.errors.UndefinedTable
            | psycopg.errors.UndefinedColumn
            | psycopg.errors.UndefinedFunction,
        )
        else QueryError
    )
    return cls(text, user_sql, position, diag.sqlstate)
