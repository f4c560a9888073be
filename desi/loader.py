"""Loading rows into the catalog as its owner: binary COPY with read-ahead, and index builds.

Used by :func:`desilab.desi.ingest.ingest` and by the benchmarks.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg import sql

from .pgcopy import COPY_HEADER, COPY_TRAILER, encode_rows
from .roles import OWNER, prepare_catalog
from .schema import TABLES, IndexDef, TableDef, finish_table, index_sql, missing_indexes
from .sources import Batch

__all__ = ["IngestError", "build_indexes", "copy_batches", "owner_connection"]


class IngestError(RuntimeError):
    """The ingest cannot run at all (database unreachable, locked, no DR1 files...)."""


def owner_connection(dsn: str) -> psycopg.Connection:
    """An autocommit connection acting as ``desi_owner`` (roles and schemas prepared first)."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
    except psycopg.OperationalError as exc:
        raise IngestError(f"cannot connect to the catalog database: {exc}") from exc
    try:
        ready = conn.execute(
            "SELECT to_regnamespace('dr1') IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)",
            (OWNER,),
        ).fetchone()[0]
        if not ready:
            prepare_catalog(dsn)
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(OWNER)))
    except psycopg.Error as exc:
        conn.close()
        raise IngestError(
            f"the database user of the DSN cannot prepare the catalog or act as {OWNER} "
            f"({exc.diag.message_primary or exc}); use the admin DSN (the default when "
            "`desilab up` runs) or GRANT desi_owner to that user"
        ) from exc
    return conn


def _prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Run ``items`` (reading and encoding) in a thread, ``depth`` results ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():  # the consumer may have given up: never block on it
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((None, exc))

    thread = threading.Thread(target=work, name="desilab-ingest-read", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        thread.join(timeout=30)


def copy_batches(conn: psycopg.Connection, batches: Iterable[Batch]) -> dict[str, int]:
    """COPY batches (binary), one COPY per run of batches for the same table and columns.

    Returns rows copied per table name. Must run inside a transaction to be atomic.
    """
    counts: dict[str, int] = {}

    def encoded() -> Iterator[tuple[tuple, Batch, memoryview]]:
        for b in batches:
            yield (b.table.name, tuple(b.names)), b, encode_rows(b.columns)

    with contextlib.ExitStack() as stack:
        key, cp = None, None
        for bkey, batch, data in _prefetch(encoded()):
            if bkey != key:
                if cp is not None:
                    cp.write(COPY_TRAILER)
                    stack.close()
                stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    batch.table.ident, sql.SQL(", ").join(map(sql.Identifier, batch.names))
                )
                cp = stack.enter_context(conn.cursor().copy(stmt))
                cp.write(COPY_HEADER)
                key = bkey
            cp.write(data)
            counts[batch.table.name] = counts.get(batch.table.name, 0) + len(batch)
        if cp is not None:
            cp.write(COPY_TRAILER)
    return counts


def build_indexes(
    connect: Callable[[], psycopg.Connection],
    workers: int = 2,
    on_duplicates: Callable[[psycopg.Connection, TableDef], bool] | None = None,
) -> list[str]:
    """Create every missing index of the ``dr1`` tables, ``workers`` at a time.

    Primary keys are built as unique indexes (so they build alongside the others)
    and then attached as the constraint; the ``hpx`` index is marked for CLUSTER.

    Parameters
    ----------
    connect : callable
        Returns a new owner connection (see :func:`owner_connection`).
    workers : int
        Indexes built at the same time.
    on_duplicates : callable, optional
        Called with a connection and the table when its unique index fails on
        repeated keys; it removes the offending rows and returns True to retry.

    Returns
    -------
    list of str
        Names of the indexes built.
    """
    with connect() as conn:
        jobs = [(t, ix) for t in TABLES.values() for ix in missing_indexes(conn, t)]
    # Biggest tables first, so the workers finish together.
    jobs.sort(key=lambda j: j[0].name not in ("zpix", "zpix_secondary"))

    def build(job: tuple[TableDef, IndexDef]) -> tuple[TableDef, IndexDef, bool]:
        t, ix = job
        with connect() as c:
            # ``workers`` builds side by side, each sorting in memory in one process:
            # parallel workers would split maintenance_work_mem and spill to disk.
            c.execute("SET max_parallel_maintenance_workers = 0; SET maintenance_work_mem = '1GB'")
            try:
                c.execute(index_sql(t, ix))
            except psycopg.errors.UniqueViolation:
                return t, ix, False
        return t, ix, True

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(build, jobs))
    for t, ix, ok in results:
        if not ok:  # removing files for another table may have fixed this one too
            ok = build((t, ix))[2]
        while not ok:
            with connect() as c:
                if on_duplicates is None or not on_duplicates(c, t):
                    raise IngestError(
                        f"dr1.{t.name} holds repeated keys ({', '.join(ix.columns)}); its "
                        "primary key cannot be built"
                    )
            ok = build((t, ix))[2]
    with connect() as conn:
        for t in TABLES.values():
            finish_table(conn, t)
    return [ix.name for _, ix, _ in results]
