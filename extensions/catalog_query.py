"""CatalogQuery logic: run SQL on the catalog off the kernel's thread, page, plot, remember.

The view (:mod:`desilab.extensions.catalog_widget`) is a thin shell over
:class:`CatalogQueryModel`, which is tested without a browser. Queries run with
the user's own read-only role, a row cap and a statement timeout; Cancel stops
the query on the server, not only in the notebook.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

EXAMPLES: dict[str, str] = {
    "QSOs by redshift": (
        "SELECT targetid, target_ra, target_dec, z, zerr, deltachi2\n"
        "FROM dr1.zpix\n"
        "WHERE spectype = 'QSO' AND zwarn = 0 AND deltachi2 > 25 AND z BETWEEN 2.0 AND 2.5\n"
        "ORDER BY z"
    ),
    "Cone search (1 degree around RA 150, Dec 2)": (
        "SELECT targetid, target_ra, target_dec, z, spectype\n"
        "FROM dr1.zpix\n"
        "WHERE q3c_radial_query(target_ra, target_dec, 150.0, 2.0, 1.0)"
    ),
    "Void members (wall vs void galaxies)": (
        "SELECT m.targetid, m.vflag, f.logmstar, f.sfr\n"
        "FROM results.void_membership m JOIN dr1.fastspec f USING (targetid)\n"
        "WHERE m.vflag = 1"
    ),
    "Redshift histogram by spectral type": (
        "SELECT spectype, count(*) AS n, avg(z) AS mean_z FROM dr1.zpix GROUP BY spectype"
    ),
}

SCHEMA_SQL = """
SELECT c.table_schema, c.table_name, c.column_name, c.data_type,
       col_description(format('%I.%I', c.table_schema, c.table_name)::regclass, c.ordinal_position)
FROM information_schema.columns c
WHERE c.table_schema IN ('dr1', 'results', 'vi') OR c.table_schema = current_user
   OR c.table_schema = replace(current_user, 'desi_', '')
ORDER BY c.table_schema, c.table_name, c.ordinal_position
"""


@dataclass
class QueryError:
    """A failed query, in plain words, with where in the SQL it went wrong."""

    message: str
    line: int | None = None
    column: int | None = None
    context: str = ""

    def __str__(self) -> str:
        return self.message + (f"\n{self.context}" if self.context else "")


def explain_error(exc: BaseException, sql: str) -> QueryError:
    """Turn a database exception into a message a person can act on.

    The catalog's own errors (:class:`desilab.desi.QueryError`) already say what is
    wrong and where; a raw psycopg error is explained from its diagnostics.
    """
    if getattr(exc, "sqlstate", None) is not None or hasattr(exc, "position"):
        position = getattr(exc, "position", None)
        line = column = None
        if position:
            line = sql.count("\n", 0, position - 1) + 1
            column = position - (sql.rfind("\n", 0, position - 1) + 1)
        return QueryError(str(exc), line, column)
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc).splitlines()[0]
    sqlstate = getattr(diag, "sqlstate", None) or getattr(exc, "sqlstate", None)
    hint = getattr(diag, "message_hint", None)
    prefix = {
        "42601": "Syntax error",
        "42501": "Permission denied (your role is read-only on dr1, results and vi)",
        "57014": "The query was stopped (timeout or Cancel)",
        "42P01": "Unknown table",
        "42703": "Unknown column",
    }.get(sqlstate or "", "The query failed")
    message = f"{prefix}: {primary}" + (f" Hint: {hint}" if hint else "")
    position = getattr(diag, "statement_position", None)
    if not position:
        return QueryError(message)
    offset = int(position) - 1
    line = sql.count("\n", 0, offset) + 1
    start = sql.rfind("\n", 0, offset) + 1
    column = offset - start + 1
    text = sql.splitlines()[line - 1] if sql.splitlines() else ""
    context = f"line {line}, column {column}:\n{text}\n{' ' * (column - 1)}^"
    return QueryError(message, line, column, context)


class QueryHistory:
    """The user's past queries, one JSON line each, in ``~/.desilab/query-history.jsonl``."""

    def __init__(self, path: Path | None = None, keep: int = 500):
        self.path = Path(path or Path.home() / ".desilab" / "query-history.jsonl")
        self.keep = keep

    def add(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()[-self.keep :]
        return [json.loads(line) for line in reversed(lines) if line.strip()]


class CatalogQueryModel:
    """Run, cancel, page and plot catalog queries.

    Parameters
    ----------
    catalog
        A :class:`desilab.desi.Catalog` (``query(sql, params, limit=, timeout=)``
        and ``cancel()``).
    limit, timeout
        Row cap and statement timeout, shown to the user.
    history
        Where past queries are kept (per user).
    """

    def __init__(
        self,
        catalog: Any,
        limit: int = 100_000,
        timeout: str = "60s",
        history: QueryHistory | None = None,
        page_size: int = 50,
    ):
        self.catalog = catalog
        self.limit = limit
        self.timeout = timeout
        self.history = history or QueryHistory()
        self.page_size = page_size
        self.page = 0
        self.result: Table | None = None
        self.error: QueryError | None = None
        self.seconds: float | None = None
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._running: Future | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._running is not None and not self._running.done()

    def run(
        self,
        sql: str,
        params: Any = None,
        on_done: Callable[[CatalogQueryModel], None] | None = None,
    ) -> Future:
        """Start ``sql`` in the background; ``on_done(model)`` is called when it ends."""
        if self.running:
            raise RuntimeError("a query is already running: wait for it or press Cancel")
        sql = sql.strip().rstrip(";")
        if not sql:
            raise ValueError("write a query first")

        def work() -> None:
            start = time.perf_counter()
            entry: dict[str, Any] = {"sql": sql, "when": datetime.now(UTC).isoformat()}
            try:
                table = self.catalog.query(sql, params, limit=self.limit, timeout=self.timeout)
            except Exception as e:
                with self._lock:
                    self.result, self.error = None, explain_error(e, sql)
                entry["error"] = self.error.message
            else:
                with self._lock:
                    self.result, self.error, self.page = table, None, 0
                entry["rows"] = len(table)
            self.seconds = time.perf_counter() - start
            entry["seconds"] = round(self.seconds, 3)
            self.history.add(entry)
            if on_done is not None:
                on_done(self)

        self._running = self._pool.submit(work)
        return self._running

    def cancel(self) -> None:
        """Stop the running query on the server."""
        if self.running:
            self.catalog.cancel()

    # -- results -----------------------------------------------------------------
    @property
    def truncated(self) -> bool:
        return bool(self.result is not None and self.result.meta.get("truncated"))

    @property
    def pages(self) -> int:
        if self.result is None:
            return 0
        return max(1, -(-len(self.result) // self.page_size))

    def go_page(self, page: int) -> Table:
        if self.result is None:
            raise RuntimeError("no result yet")
        self.page = min(max(page, 0), self.pages - 1)
        return self.current_page()

    def current_page(self) -> Table:
        if self.result is None:
            raise RuntimeError("no result yet")
        start = self.page * self.page_size
        return self.result[start : start + self.page_size]

    def summary(self) -> str:
        if self.error is not None:
            return str(self.error)
        if self.result is None:
            return "No query run yet."
        rows = len(self.result)
        text = f"{rows} row{'s' if rows != 1 else ''} in {self.seconds or 0:.2f} s"
        if self.truncated:
            text += f" (stopped at the row cap of {self.limit}: add a LIMIT or narrow the WHERE)"
        return text

    def numeric_columns(self) -> list[str]:
        if self.result is None:
            return []
        return [
            c
            for c in self.result.colnames
            if self.result[c].ndim == 1 and np.issubdtype(self.result[c].dtype, np.number)
        ]

    def histogram(self, column: str, bins: int = 50):
        """A bokeh histogram of one numeric column of the result."""
        from bokeh.plotting import figure

        values = self._numeric(column)
        counts, edges = np.histogram(values, bins=bins)
        fig = figure(
            height=300, sizing_mode="stretch_width", x_axis_label=column, y_axis_label="count"
        )
        fig.quad(top=counts, bottom=0, left=edges[:-1], right=edges[1:], alpha=0.7)
        return fig

    def scatter(self, x: str, y: str):
        """A bokeh scatter plot of two numeric columns of the result."""
        from bokeh.plotting import figure

        xs, ys = self._numeric(x, drop_nan=False), self._numeric(y, drop_nan=False)
        good = np.isfinite(xs) & np.isfinite(ys)
        fig = figure(height=300, sizing_mode="stretch_width", x_axis_label=x, y_axis_label=y)
        fig.scatter(xs[good], ys[good], size=3, alpha=0.5)
        return fig

    def _numeric(self, column: str, drop_nan: bool = True) -> np.ndarray:
        if column not in self.numeric_columns():
            raise ValueError(f"{column!r} is not a numeric column of the result")
        values = np.asarray(self.result[column], dtype=float)
        return values[np.isfinite(values)] if drop_nan else values

    # -- schema ------------------------------------------------------------------
    def schema(self) -> dict[str, list[tuple[str, str, str]]]:
        """Tables you can read: ``{"dr1.zpix": [(column, type, description), ...]}``."""
        table = self.catalog.query(SCHEMA_SQL, None, limit=20_000, timeout="30s")
        out: dict[str, list[tuple[str, str, str]]] = {}
        for row in table:
            key = f"{row[0]}.{row[1]}"
            out.setdefault(key, []).append((str(row[2]), str(row[3]), str(row[4] or "")))
        return out
