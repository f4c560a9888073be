"""``desilab ingest DATA_ROOT``: load a DR1 tree into the ``dr1`` schema.

How
---
* Runs as the owner role (``SET ROLE desi_owner`` from the admin DSN), so the
  default privileges give ``desi_reader`` SELECT on everything it creates.
* One transaction per file: its bookkeeping row in ``dr1.ingest_files`` (path,
  size, mtime, BLAKE2b checksum, rows) and all its rows commit together or not
  at all. A killed ingest leaves no partial file; running it again loads what is
  missing (resumable) and a second run adds nothing (idempotent).
* Rows go in by binary COPY (:mod:`desilab.desi.pgcopy`), read and encoded in a
  background thread while the server consumes the previous chunk, two files at a
  time by default; sky tables are written sorted by ``hpx``.
* Loading into an empty table drops its indexes, primary key included, and builds
  them afterwards, two at a time (much faster than maintaining them row by row).
  Keys repeated across files then show up when the primary key is built: the
  later file of each clash (the higher ``file_id``) is removed again, as a
  whole, and reported as skipped. Every run ends by creating any missing index
  (so a killed bulk load is repaired), marking the ``hpx`` index as the CLUSTER
  index, and ANALYZE (autovacuum then sets the visibility map, which lets cone
  searches on zpix be index-only scans of its covering ``hpx`` index).
* A bad file (corrupt, truncated, not DR1) is skipped with the reader's message
  naming file, HDU and column; rows that clash with rows already stored (same
  key) skip the file with the server's detail. Nothing stored is ever deleted,
  except the rows of a changed file with ``replace=True`` and those of a file
  whose keys clash after a bulk load (above).
* Only one ingest runs at a time per database (an advisory lock).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from tqdm.auto import tqdm

from .errors import DR1FormatError
from .layout import DR1Layout
from .loader import IngestError, build_indexes, copy_batches, owner_connection
from .schema import TABLES, TableDef, create_schema, drop_indexes
from .sources import KINDS, Batch, SourceFile, checksum, discover, read_batches

__all__ = ["IngestError", "IngestReport", "ingest"]

log = logging.getLogger(__name__)
#: pg_advisory_lock key held while an ingest runs.
ADVISORY_KEY = 0x6465_7369_6C61
_LOCK_WAIT = "30s"


@dataclass
class IngestReport:
    """What an ingest did."""

    data_root: str
    files_found: int = 0
    loaded: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    indexes_built: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        """Rows added, all tables together."""
        return sum(self.rows.values())

    def summary(self) -> str:
        """A plain-text report: files, rows per table, skipped files with reasons."""
        lines = [
            f"Ingest of {self.data_root}: {self.files_found} DR1 files found, "
            f"{len(self.loaded)} loaded ({len(self.replaced)} replacing an older version), "
            f"{self.unchanged} already in the catalog, {len(self.skipped)} skipped; "
            f"{self.total_rows} rows added in {self.seconds:.1f} s."
        ]
        for name, n in sorted(self.rows.items()):
            lines.append(f"  dr1.{name}: +{n} rows")
        if self.indexes_built:
            lines.append(f"  indexes built: {', '.join(self.indexes_built)}")
        if self.skipped:
            lines.append("Skipped files (nothing of them was stored):")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        for kind, cols in sorted(self.ignored_columns.items()):
            shown = ", ".join(cols[:12]) + (f" and {len(cols) - 12} more" if len(cols) > 12 else "")
            lines.append(f"  {kind} columns the catalog does not keep: {shown}")
        return "\n".join(lines)


def _db_reason(exc: psycopg.Error, src: SourceFile) -> str:
    diag = exc.diag
    where = f"table dr1.{diag.table_name}" if diag.table_name else "the catalog"
    text = f"the database refused its rows for {where}: {diag.message_primary or exc}"
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    if isinstance(exc, psycopg.errors.UniqueViolation):
        text += (
            ". Those keys are already stored from another file: a TARGETID can be "
            "ZCAT_PRIMARY only once, and once per survey/program; is a second DR1 tree or "
            "mock being ingested into the same catalog?"
        )
    return text


def _load(
    conn: psycopg.Connection,
    src: SourceFile,
    stat: tuple[int, float],
    digest: str,
    root: str,
    old: tuple | None,
    chunk_rows: int,
    sort_rows: int,
    ignored: dict[str, list[str]],
) -> dict[str, int]:
    t0 = time.perf_counter()
    with conn.transaction():
        if old is not None:
            for t in src.tables:
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE file_id = %s").format(t.ident), (old[0],)
                )
            conn.execute("DELETE FROM dr1.ingest_files WHERE file_id = %s", (old[0],))
        file_id = conn.execute(
            "INSERT INTO dr1.ingest_files (path, data_root, kind, size, mtime, checksum) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING file_id",
            (src.relpath, root, src.kind, stat[0], stat[1], digest),
        ).fetchone()[0]

        def batches() -> Iterator[Batch]:
            for b in read_batches(src, file_id, chunk_rows=chunk_rows, sort_rows=sort_rows):
                if b.ignored:
                    known = ignored.setdefault(src.kind, [])
                    known.extend(c for c in b.ignored if c not in known)
                yield b

        counts = copy_batches(conn, batches())
        conn.execute(
            "UPDATE dr1.ingest_files SET nrows = %s, seconds = %s WHERE file_id = %s",
            (sum(counts.values()), time.perf_counter() - t0, file_id),
        )
    return counts


def _remove_duplicates(
    conn: psycopg.Connection, t: TableDef, report: IngestReport, logger: logging.Logger
) -> bool:
    """Keys repeat in ``t`` after a bulk load: skip the files that brought them (the later
    of each pair by path), each as a whole, so every file stays either fully in or out."""
    key = sql.SQL(", ").join(map(sql.Identifier, t.primary_key))
    groups = conn.execute(
        sql.SQL(
            "SELECT array_agg(file_id ORDER BY file_id), min(ROW({k})::text) FROM {t} "
            "GROUP BY {k} HAVING count(*) > 1 LIMIT 10000"
        ).format(k=key, t=t.ident)
    ).fetchall()
    if not groups:
        return False
    paths = dict(conn.execute("SELECT file_id, path FROM dr1.ingest_files").fetchall())
    offenders: dict[int, tuple[int, str]] = {}
    for files, example in groups:
        # "Later" is by path, the order files are found in, not by file_id: files load
        # side by side, so ids follow whichever transaction started first.
        files = sorted(files, key=lambda f: (paths.get(f, ""), f))
        offenders.setdefault(files[-1], (files[0], example))
    kinds = dict(conn.execute("SELECT file_id, kind FROM dr1.ingest_files").fetchall())
    for file_id, (first, example) in offenders.items():
        path = paths.get(file_id, f"file #{file_id}")
        with conn.transaction():
            for table in KINDS.get(kinds.get(file_id, ""), (t,)):
                n = conn.execute(
                    sql.SQL(
                        "WITH d AS (DELETE FROM {} WHERE file_id = %s RETURNING 1) "
                        "SELECT count(*) FROM d"
                    ).format(table.ident),
                    (file_id,),
                ).fetchone()[0]
                if table.name in report.rows:
                    report.rows[table.name] -= n
            conn.execute("DELETE FROM dr1.ingest_files WHERE file_id = %s", (file_id,))
        other = "the same file" if first == file_id else paths.get(first, f"file #{first}")
        reason = (
            f"its rows repeat the key ({', '.join(t.primary_key)}) = {example} of dr1.{t.name}, "
            f"already stored from {other}; nothing of this file was kept"
        )
        if path in report.loaded:
            report.loaded.remove(path)
        report.skipped.append((path, reason))
        logger.warning("ingest: removed %s again: %s", path, reason)
    return True


def _empty(conn: psycopg.Connection, t: TableDef) -> bool:
    return conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(t.ident)).fetchone()[
        0
    ]


def ingest(
    data_root: str | Path,
    dsn: str,
    *,
    replace: bool = False,
    cluster: bool = False,
    progress: bool = True,
    kinds: tuple[str, ...] | None = None,
    verify_checksum: bool = True,
    chunk_rows: int = 100_000,
    sort_rows: int = 1_000_000,
    workers: int = 2,
    index_workers: int = 2,
    logger: logging.Logger | None = None,
) -> IngestReport:
    """Load the DR1 files under ``data_root`` into the catalog.

    Parameters
    ----------
    data_root : str or Path
        DATA_ROOT, holding ``spectro/redux/iron`` and ``vac/dr1``.
    dsn : str
        Admin (superuser) DSN, or one of a member of ``desi_owner``.
    replace : bool
        Reload files whose content changed since they were ingested (their old
        rows are deleted in the same transaction). Without it they are skipped.
    cluster : bool
        Finish with CLUSTER of the sky tables that changed (rewrites them in
        exact ``hpx`` order; locks them meanwhile).
    progress : bool
        Show a tqdm progress bar.
    kinds : tuple of str, optional
        Only these kinds of files (``zpix``, ``fastspec``, ``desivast``, ``coadd``).
    verify_checksum : bool
        Compute each new file's checksum (reads it once more).
    chunk_rows, sort_rows : int
        Rows per COPY chunk and per hpx-sorted window.
    workers : int
        Files loaded at the same time (each its own transaction and connection).
    index_workers : int
        Indexes built at the same time at the end.
    logger : logging.Logger, optional
        Where to log progress (default: this module's logger).

    Returns
    -------
    IngestReport

    Raises
    ------
    IngestError
        When nothing can be done: no database, no DR1 files, another ingest running.
    """
    t_start = time.perf_counter()
    logger = logger or log
    layout = DR1Layout(Path(data_root).expanduser().resolve())
    root = str(layout.root)
    if not layout.root.is_dir():
        raise IngestError(f"DATA_ROOT {root} is not a folder")
    sources = discover(layout, kinds)
    if not sources:
        raise IngestError(
            f"no DR1 files under {root}: expected spectro/redux/iron/zcatalog/v1/zpix-*.fits, "
            "healpix coadds or vac/dr1/... (is DATA_ROOT the folder holding spectro/ and vac/?)"
        )
    report = IngestReport(root, files_found=len(sources))
    conn = owner_connection(dsn)
    try:
        conn.execute(f"SET lock_timeout = '{_LOCK_WAIT}'")
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))
        except psycopg.errors.LockNotAvailable as exc:
            raise IngestError(
                f"another `desilab ingest` has held this catalog for {_LOCK_WAIT}; "
                "wait for it to finish (or stop it) and run this one again"
            ) from exc
        conn.execute("RESET lock_timeout")
        with conn.transaction():
            create_schema(conn)
        known = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT path, file_id, size, mtime, checksum, nrows, ingested_at "
                "FROM dr1.ingest_files"
            )
        }
        pending: list[tuple[SourceFile, tuple[int, float], tuple | None]] = []
        for src in sources:
            st = src.path.stat()
            stat = (st.st_size, st.st_mtime)
            old = known.get(src.relpath)
            if old is not None and (old[1], old[2]) == stat:
                report.unchanged += 1
            else:
                pending.append((src, stat, old))
        logger.info(
            "ingest %s: %d DR1 files, %d to load, %d already in the catalog",
            root,
            len(sources),
            len(pending),
            report.unchanged,
        )
        for t in {t for src, _, _ in pending for t in src.tables}:
            if _empty(conn, t):
                drop_indexes(conn, t)  # bulk load: indexes are built at the end
        t_load = time.perf_counter()
        _load_all(
            dsn, pending, root, replace, verify_checksum, chunk_rows, sort_rows, report,
            logger, progress, workers,
        )  # fmt: skip
        t_index = time.perf_counter()
        report.timings["load"] = t_index - t_load
        report.indexes_built = build_indexes(
            lambda: owner_connection(dsn),
            index_workers,
            lambda c, t: _remove_duplicates(c, t, report, logger),
        )
        t_analyze = time.perf_counter()
        report.timings["indexes"] = t_analyze - t_index
        changed = [TABLES[name] for name, n in report.rows.items() if n]
        if cluster:
            for t in changed:
                if t.cluster_index:
                    logger.info("ingest: CLUSTER %s", t.qualified)
                    conn.execute(sql.SQL("CLUSTER {}").format(t.ident))
        built = set(report.indexes_built)
        for t in TABLES.values():
            # Not VACUUM: it would set the visibility map that index-only cone searches
            # need, but costs ~8 s on 10M rows (4% of the ingest); autovacuum does it
            # within a minute of a bulk load (the insert threshold is long passed).
            if t in changed or any(ix.name in built for ix in t.index_defs):
                conn.execute(sql.SQL("ANALYZE {}").format(t.ident))
        if report.loaded:
            conn.execute("ANALYZE dr1.ingest_files")
        report.timings["analyze"] = time.perf_counter() - t_analyze
    finally:
        conn.close()
    report.seconds = time.perf_counter() - t_start
    logger.info("%s", report.summary())
    return report


def _load_all(
    dsn: str,
    pending: list,
    root: str,
    replace: bool,
    verify_checksum: bool,
    chunk_rows: int,
    sort_rows: int,
    report: IngestReport,
    logger: logging.Logger,
    progress: bool,
    workers: int,
) -> None:
    """Load the pending files, ``workers`` at a time, each on its own connection."""
    lock = threading.Lock()
    conns: queue.Queue = queue.Queue()
    for _ in range(max(1, min(workers, len(pending)))):
        c = owner_connection(dsn)
        # A crash can only lose whole file transactions (their bookkeeping row with them),
        # which the next run loads again: no need to wait for each commit's WAL flush.
        c.execute("SET synchronous_commit = off")
        conns.put(c)
    bar = tqdm(total=len(pending), desc="ingest", unit="file", disable=not progress)

    def task(item: tuple) -> None:
        src, stat, old = item
        conn = conns.get()
        try:
            reason = _one(
                conn, src, stat, old, root, replace, verify_checksum, chunk_rows, sort_rows,
                report, lock,
            )  # fmt: skip
        finally:
            if conn.broken:
                conn = owner_connection(dsn)
            conns.put(conn)
        if reason:
            with lock:
                report.skipped.append((src.relpath, reason))
            logger.warning("ingest: skipped %s: %s", src.relpath, reason)
        bar.set_postfix_str(src.path.name, refresh=False)
        bar.update(1)

    try:
        with ThreadPoolExecutor(max_workers=conns.qsize()) as pool:
            for future in [pool.submit(task, item) for item in pending]:
                future.result()
    finally:
        bar.close()
        while not conns.empty():
            conns.get().close()


def _one(
    conn: psycopg.Connection,
    src: SourceFile,
    stat: tuple[int, float],
    old: tuple | None,
    root: str,
    replace: bool,
    verify_checksum: bool,
    chunk_rows: int,
    sort_rows: int,
    report: IngestReport,
    lock: threading.Lock,
) -> str | None:
    """Load one file; return why it was skipped, or None (``lock`` guards ``report``)."""
    try:
        digest = checksum(src.path) if (verify_checksum or old is not None) else ""
    except OSError as exc:
        return f"cannot read the file ({exc})"
    if old is not None:
        if digest == old[3]:
            conn.execute(
                "UPDATE dr1.ingest_files SET size = %s, mtime = %s WHERE file_id = %s",
                (stat[0], stat[1], old[0]),
            )
            with lock:
                report.unchanged += 1
            return None
        if not replace:
            return (
                f"the file changed since it was ingested on {old[5]:%Y-%m-%d %H:%M} (size "
                f"{old[1]} -> {stat[0]} bytes, different checksum); its {old[4]} rows are kept. "
                "Run `desilab ingest --replace` to load the new version instead"
            )
    try:
        counts = _load(
            conn,
            src,
            stat,
            digest,
            root,
            old if replace else None,
            chunk_rows,
            sort_rows,
            report.ignored_columns,
        )
    except DR1FormatError as exc:
        return str(exc)
    except psycopg.Error as exc:
        if conn.closed or conn.broken:
            raise IngestError(f"lost the database connection while loading {src.relpath}") from exc
        return _db_reason(exc, src)
    except OSError as exc:
        return f"cannot read the file ({exc})"
    with lock:
        for name, n in counts.items():
            report.rows[name] = report.rows.get(name, 0) + n
        report.loaded.append(src.relpath)
        if old is not None:
            report.replaced.append(src.relpath)
    return None
