"""The result table ``results.qso_anomaly``: one row per (model version, TARGETID).

Written by the owner role (``desi_owner``, via ``SET ROLE`` from an admin DSN),
readable by every researcher through ``desi_reader``'s default privileges.
Rows are upserted: scoring again with the same model version replaces its rows,
another version adds rows next to them, so versions can be compared in SQL.

Each chunk of rows is one transaction: binary COPY into a temporary staging
table, then ``INSERT ... ON CONFLICT DO UPDATE`` into the result table. A
failure loses nothing already committed, and rerunning is idempotent.
"""

from __future__ import annotations

import numpy as np
import psycopg
from astropy.table import Table
from desilab.desi.roles import OWNER
from psycopg import sql

__all__ = ["RESULT_COLUMNS", "TABLE", "create_results_table", "read_results", "write_results"]

SCHEMA, NAME = "results", "qso_anomaly"
TABLE = f"{SCHEMA}.{NAME}"

#: Column -> (PostgreSQL type, score-table column or None, description).
RESULT_COLUMNS: dict[str, tuple[str, str | None, str]] = {
    "targetid": ("bigint", "TARGETID", "DESI TARGETID"),
    "model_version": ("text", "MODEL_VERSION", "VAE model version (weights hash)"),
    "z": ("double precision", "Z", "redshift used for the rest frame"),
    "score": ("real", "SCORE", "combined anomaly score (larger = more anomalous)"),
    "score_recon": ("real", "SCORE_RECON", "log reconstruction chi2 per bin"),
    "score_density": ("real", "SCORE_DENSITY", "-log latent density"),
    "chi2": ("real", "CHI2", "reconstruction chi2 per covered bin"),
    "latent": ("real[]", "LATENT", "latent coordinates (encoder mean)"),
    "score_pca": ("real", "SCORE_PCA", "baseline: log PCA reconstruction chi2 per bin"),
    "score_iforest": ("real", "SCORE_IFOREST", "baseline: Isolation Forest on PCA coefficients"),
    "baseline_version": ("text", "BASELINE_VERSION", "baseline version"),
}
_KEY = ("model_version", "targetid")


def create_results_table(admin_dsn: str) -> None:
    """Create ``results.qso_anomaly`` and its indexes as the owner role (idempotent).

    Parameters
    ----------
    admin_dsn : str
        A DSN whose role may ``SET ROLE desi_owner`` (the catalog's admin).
        The schemas and roles must exist (``desilab.desi.roles.prepare_catalog``).
    """
    cols = [
        sql.SQL("{} {}{}").format(
            sql.Identifier(name),
            sql.SQL(pgtype),
            sql.SQL(" NOT NULL") if name in (*_KEY, "score", "latent") else sql.SQL(""),
        )
        for name, (pgtype, _, _) in RESULT_COLUMNS.items()
    ]
    cols.append(sql.SQL("created timestamptz NOT NULL DEFAULT now()"))
    cols.append(sql.SQL("PRIMARY KEY (model_version, targetid)"))
    table = sql.Identifier(SCHEMA, NAME)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(OWNER)))
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                    table, sql.SQL(", ").join(cols)
                )
            )
            # Top-N per model (explorer) and look-up by object (spectrum viewer).
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (model_version, score DESC)").format(
                    sql.Identifier(f"{NAME}_score"), table
                )
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (targetid)").format(
                    sql.Identifier(f"{NAME}_targetid"), table
                )
            )
            conn.execute(
                sql.SQL("COMMENT ON TABLE {} IS {}").format(
                    table,
                    sql.Literal(
                        "Anomalous quasars (desilab project 1): VAE and baseline scores per "
                        "model version"
                    ),
                )
            )
            for name, (_, _, text) in RESULT_COLUMNS.items():
                conn.execute(
                    sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                        table, sql.Identifier(name), sql.Literal(text)
                    )
                )


def _row_values(scores: Table, present: list[str]) -> list[list]:
    """Columns as Python lists (COPY's row writer wants Python objects)."""
    out = []
    for name in present:
        col = RESULT_COLUMNS[name][1]
        values = np.asarray(scores[col])
        if name == "latent":
            out.append(values.astype(np.float32).tolist())
        elif values.dtype.kind in "US":
            out.append(values.astype(str).tolist())
        else:
            # NaN (e.g. no density model) is stored as NULL, not as a NaN score.
            as_obj = values.astype(object)
            if values.dtype.kind == "f":
                as_obj[~np.isfinite(values)] = None
            out.append(as_obj.tolist())
    return [list(r) for r in zip(*out, strict=True)]


def write_results(admin_dsn: str, scores: Table, *, chunk: int = 50_000) -> int:
    """Upsert scores (from :func:`~desilab.projects.anomalies.score_store`) as the owner.

    Parameters
    ----------
    admin_dsn : str
        As for :func:`create_results_table` (the table is created if missing).
    scores : Table
        TARGETID, MODEL_VERSION, Z, SCORE, ..., LATENT; baseline columns optional.
    chunk : int
        Rows per transaction.

    Returns
    -------
    int
        Rows written.
    """
    present = [n for n, (_, col, _) in RESULT_COLUMNS.items() if col in scores.colnames]
    missing = [RESULT_COLUMNS[n][1] for n in (*_KEY, "score", "latent") if n not in present]
    if missing:
        raise ValueError(f"scores lack column(s) {missing}; score with a VAE model first")
    create_results_table(admin_dsn)
    ident = [sql.Identifier(n) for n in present]
    updates = sql.SQL(", ").join(
        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
        for n in [*present, "created"]
        if n not in _KEY
    )
    stage = sql.Identifier("qso_anomaly_stage")
    types = [RESULT_COLUMNS[n][0] for n in present]
    written = 0
    with psycopg.connect(admin_dsn) as conn:
        for start in range(0, len(scores), chunk):
            rows = _row_values(scores[start : start + chunk], present)
            with conn.transaction():
                # The owner has no TEMPORARY privilege on the database (prepare_catalog gives
                # it to readers only): stage as the session's role, let the owner read it.
                conn.execute(
                    sql.SQL(
                        "CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP"
                    ).format(stage, sql.Identifier(SCHEMA, NAME))
                )
                with conn.cursor().copy(
                    sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                        stage, sql.SQL(", ").join(ident)
                    )
                ) as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row(row)
                conn.execute(
                    sql.SQL("GRANT SELECT ON {} TO {}").format(stage, sql.Identifier(OWNER))
                )
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER)))
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} ({cols}, created) SELECT {cols}, now() FROM {} "
                        "ON CONFLICT (model_version, targetid) DO UPDATE SET {}"
                    ).format(
                        sql.Identifier(SCHEMA, NAME),
                        stage,
                        updates,
                        cols=sql.SQL(", ").join(ident),
                    )
                )
            written += len(rows)
    return written


def read_results(
    dsn: str,
    *,
    model_version: str | None = None,
    targetids: np.ndarray | list[int] | None = None,
    top: int | None = None,
) -> Table:
    """Read result rows (any role with ``desi_reader``), highest score first.

    Parameters
    ----------
    dsn : str
    model_version : str, optional
        Only this version.
    targetids : sequence of int, optional
        Only these objects.
    top : int, optional
        At most this many rows.
    """
    names = list(RESULT_COLUMNS)
    where, params = [], []
    if model_version is not None:
        where.append(sql.SQL("model_version = %s"))
        params.append(model_version)
    if targetids is not None:
        where.append(sql.SQL("targetid = ANY(%s)"))
        params.append([int(t) for t in np.atleast_1d(targetids)])
    query = sql.SQL("SELECT {} FROM {}{} ORDER BY score DESC, targetid{}").format(
        sql.SQL(", ").join(sql.Identifier(n) for n in names),
        sql.Identifier(SCHEMA, NAME),
        sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        sql.SQL(" LIMIT {}").format(sql.Literal(int(top))) if top is not None else sql.SQL(""),
    )
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(query, params).fetchall()
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    table = Table()
    for name, values in zip(names, cols, strict=True):
        col, pgtype = RESULT_COLUMNS[name][1], RESULT_COLUMNS[name][0]
        if name == "latent":
            table[col] = np.array(values, dtype=np.float32).reshape(len(rows), -1)
        elif pgtype == "text":
            table[col] = np.array(["" if v is None else v for v in values], dtype=str)
        elif pgtype == "bigint":
            table[col] = np.array(values, dtype=np.int64)
        else:
            table[col] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return table
