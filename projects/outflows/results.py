"""``results.qso_outflows``: fits, their assumptions and the human decisions on them.

Two tables, owned by ``desi_owner`` (DESIGN: "Catalog contract"):

* ``results.qso_outflows`` - one row per fit: the automatic batch fit
  (``kind = 'auto'``, unique per TARGETID, model version and assumptions) and
  every refit a reviewer makes (``kind = 'refit'``, ``parent_id`` pointing at
  the fit it replaces). Each row stores the model version, the assumptions
  (JSON and their hash), the fit settings, who made it and when, the
  measurements under DESI BAL catalog names (lower-cased by PostgreSQL), the
  quality flags, and the latest review decision with who and when.
* ``results.qso_outflow_reviews`` - the history of every decision.

Researchers (``desi_reader`` members) may insert refits (row-level security
refuses other kinds), record decisions and update the review columns, nothing
else; batch writes run as the owner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psycopg
from desilab.desi.roles import OWNER, READER
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .bal import BAL_COLUMNS
from .batch import ENERGETICS_COLUMNS, FitConfig
from .energetics import MODEL_VERSION, Assumptions
from .oiii import OIII_COLUMNS

__all__ = [
    "DECISIONS",
    "TABLE",
    "create_tables",
    "decisions",
    "read_results",
    "record_decision",
    "stored_targetids",
    "write_results",
]

TABLE = "results.qso_outflows"
REVIEWS = "results.qso_outflow_reviews"
DECISIONS = ("accepted", "rejected", "refit")
_PG = {"f4": "real", "i2": "smallint"}


def _measurement_columns() -> list[tuple[str, str]]:
    cols = [(n, (_PG[t] + "[]") if size > 1 else _PG[t]) for n, t, size in BAL_COLUMNS]
    cols += [(n, "boolean" if n == "OIII_WING" else "double precision") for n, _ in OIII_COLUMNS]
    cols += [("CONT_RCHI2", "real"), ("LOG_L1350", "double precision")]
    cols += [("ENERGETICS_TRACER", "text"), ("LBOL_METHOD", "text")]
    cols += [(n, "double precision") for n in ENERGETICS_COLUMNS]
    return cols


#: (column, PostgreSQL type) of the measurements, in table order.
MEASUREMENTS = _measurement_columns()
_IDENTITY = ["TARGETID", "SURVEY", "PROGRAM", "HEALPIX", "Z", "EBV", "FLAGS", "NEEDS_REVIEW"]
_REVIEW_COLUMNS = ("review_status", "reviewed_by", "reviewed_at", "review_note")


def _ddl() -> list[sql.Composable]:
    meas = sql.SQL(",\n").join(
        sql.SQL("{} {}").format(sql.Identifier(n.lower()), sql.SQL(t)) for n, t in MEASUREMENTS
    )
    table = sql.SQL("""
        CREATE TABLE IF NOT EXISTS results.qso_outflows (
            id bigserial PRIMARY KEY,
            targetid bigint NOT NULL,
            survey text, program text, healpix integer,
            z double precision, ebv real,
            kind text NOT NULL DEFAULT 'auto' CHECK (kind IN ('auto', 'refit')),
            parent_id bigint REFERENCES results.qso_outflows (id),
            model_version text NOT NULL,
            assumptions jsonb NOT NULL,
            assumptions_hash text NOT NULL,
            config jsonb NOT NULL,
            run_id text,
            created_by text NOT NULL DEFAULT session_user,
            created_at timestamptz NOT NULL DEFAULT now(),
            flags integer NOT NULL DEFAULT 0,
            needs_review boolean NOT NULL DEFAULT false,
            {meas},
            review_status text NOT NULL DEFAULT 'pending'
                CHECK (review_status IN ('pending', 'accepted', 'rejected', 'refit')),
            reviewed_by text,
            reviewed_at timestamptz,
            review_note text
        )""").format(meas=meas)
    return [
        table,
        sql.SQL("""CREATE UNIQUE INDEX IF NOT EXISTS qso_outflows_auto_key
            ON results.qso_outflows (targetid, model_version, assumptions_hash)
            WHERE kind = 'auto'"""),
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS qso_outflows_targetid ON results.qso_outflows (targetid)"
        ),
        sql.SQL("""CREATE TABLE IF NOT EXISTS results.qso_outflow_reviews (
            id bigserial PRIMARY KEY,
            result_id bigint NOT NULL REFERENCES results.qso_outflows (id),
            targetid bigint NOT NULL,
            decision text NOT NULL CHECK (decision IN ('accepted', 'rejected', 'refit')),
            reviewer text NOT NULL,
            db_user text NOT NULL DEFAULT session_user,
            decided_at timestamptz NOT NULL DEFAULT now(),
            note text,
            refit_id bigint REFERENCES results.qso_outflows (id)
        )"""),
        sql.SQL("""CREATE INDEX IF NOT EXISTS qso_outflow_reviews_result
            ON results.qso_outflow_reviews (result_id)"""),
    ]


def create_tables(admin_dsn: str, *, reviewers: Sequence[str] = (READER,)) -> None:
    """Create both tables as ``desi_owner`` (idempotent) and grant review rights.

    Parameters
    ----------
    admin_dsn : str
        A DSN whose role may ``SET ROLE desi_owner`` (the admin); the catalog must
        have been prepared (:func:`desilab.desi.roles.prepare_catalog`).
    reviewers : sequence of str
        Roles allowed to add refits and decisions (default: every researcher).
    """
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(OWNER)))
        with conn.transaction():
            for stmt in _ddl():
                conn.execute(stmt)
            review_cols = sql.SQL(", ").join(sql.Identifier(c) for c in _REVIEW_COLUMNS)
            for role in reviewers:
                r = sql.Identifier(role)
                for stmt in (
                    "GRANT SELECT, INSERT ON results.qso_outflows TO {r}",
                    "GRANT SELECT, INSERT ON results.qso_outflow_reviews TO {r}",
                    "GRANT USAGE ON SEQUENCE results.qso_outflows_id_seq TO {r}",
                    "GRANT USAGE ON SEQUENCE results.qso_outflow_reviews_id_seq TO {r}",
                ):
                    conn.execute(sql.SQL(stmt).format(r=r))
                conn.execute(
                    sql.SQL("GRANT UPDATE ({}) ON results.qso_outflows TO {}").format(
                        review_cols, r
                    )
                )
            # Researchers add refits only; automatic fits come from the owner's batch.
            # (The owner and superusers are not subject to these policies.)
            conn.execute("ALTER TABLE results.qso_outflows ENABLE ROW LEVEL SECURITY")
            policies = {
                "qso_outflows_read": "FOR SELECT USING (true)",
                "qso_outflows_refit": "FOR INSERT WITH CHECK (kind = 'refit')",
                "qso_outflows_review": "FOR UPDATE USING (true) WITH CHECK (true)",
            }
            for name, rule in policies.items():
                conn.execute(
                    sql.SQL("DROP POLICY IF EXISTS {} ON results.qso_outflows").format(
                        sql.Identifier(name)
                    )
                )
                conn.execute(
                    sql.SQL("CREATE POLICY {} ON results.qso_outflows " + rule).format(
                        sql.Identifier(name)
                    )
                )


def _connect(dsn: str, as_owner: bool) -> psycopg.Connection:
    conn = psycopg.connect(dsn)
    if as_owner:
        member = conn.execute(
            "SELECT pg_has_role(current_user, %s, 'MEMBER')", (OWNER,)
        ).fetchone()[0]
        # Researchers write refits as themselves; the batch (admin) writes as the owner.
        if member:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(OWNER)))
    return conn


def _insert(kind: str, on_conflict: bool) -> sql.Composable:
    names = [*(c.lower() for c in _IDENTITY), *(n.lower() for n, _ in MEASUREMENTS)]
    names += ["kind", "parent_id", "model_version", "assumptions", "assumptions_hash", "config",
              "run_id", "created_by"]  # fmt: skip
    stmt = sql.SQL("INSERT INTO results.qso_outflows ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    if on_conflict:
        update = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n))
            for n in names
            if n not in ("targetid", "model_version", "assumptions_hash", "kind", "created_by")
        )
        stmt += sql.SQL(
            " ON CONFLICT (targetid, model_version, assumptions_hash) WHERE kind = 'auto'"
            " DO UPDATE SET {}"
        ).format(update)
    return stmt + sql.SQL(" RETURNING id")


def _values(row: dict, kind, parent, assumptions: Assumptions, config: FitConfig, run_id, who):
    vals = [row.get(c) for c in _IDENTITY]
    vals += [row.get(n) for n, _ in MEASUREMENTS]
    vals += [kind, parent, MODEL_VERSION, Jsonb(assumptions.to_dict()), assumptions.digest(),
             Jsonb(config.to_dict()), run_id, who]  # fmt: skip
    return vals


def write_results(
    dsn: str,
    rows: Iterable[dict],
    *,
    assumptions: Assumptions,
    config: FitConfig,
    run_id: str | None = None,
    kind: str = "auto",
    parent_id: int | None = None,
    who: str | None = None,
) -> list[int]:
    """Store result rows in one transaction; return their ids.

    Automatic rows replace an earlier automatic row of the same TARGETID, model
    version and assumptions (its review decision is kept); refits are always new.

    Parameters
    ----------
    dsn : str
    rows : iterable of dict
        From :func:`desilab.projects.outflows.batch.fit_unit` / ``fit_spectra``.
    assumptions, config
        Stored with every row.
    run_id : str, optional
    kind : {'auto', 'refit'}
    parent_id : int, optional
        The fit a refit replaces.
    who : str, optional
        Recorded as ``created_by`` (default: the database user).
    """
    rows = list(rows)
    if not rows:
        return []
    with _connect(dsn, as_owner=(kind == "auto")) as conn, conn.transaction():
        user = who or conn.execute("SELECT session_user").fetchone()[0]
        stmt = _insert(kind, on_conflict=(kind == "auto"))
        ids = []
        with conn.cursor() as cur:
            for row in rows:
                cur.execute(stmt, _values(row, kind, parent_id, assumptions, config, run_id, user))
                ids.append(int(cur.fetchone()[0]))
    return ids


def stored_targetids(dsn: str, assumptions: Assumptions) -> set[int]:
    """TARGETIDs with an automatic row for these assumptions and this model version."""
    try:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT targetid FROM results.qso_outflows WHERE kind = 'auto' "
                "AND model_version = %s AND assumptions_hash = %s",
                (MODEL_VERSION, assumptions.digest()),
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return set()
    return {int(r[0]) for r in rows}


def read_results(
    dsn: str,
    *,
    ids: Sequence[int] | None = None,
    kind: str | None = None,
    model_version: str | None = None,
    assumptions_hash: str | None = None,
    latest: bool = False,
):
    """Result rows as a pandas DataFrame with upper-case measurement columns.

    Parameters
    ----------
    dsn : str
    ids : sequence of int, optional
        Only these rows.
    kind : {'auto', 'refit'}, optional
    model_version, assumptions_hash : str, optional
    latest : bool
        One row per TARGETID: the newest refit if any, else the automatic fit;
        rejected fits are left out.
    """
    import pandas as pd

    cond, params = [sql.SQL("TRUE")], []
    for col, val in (("kind", kind), ("model_version", model_version),
                     ("assumptions_hash", assumptions_hash)):  # fmt: skip
        if val is not None:
            cond.append(sql.SQL("{} = %s").format(sql.Identifier(col)))
            params.append(val)
    if ids is not None:
        cond.append(sql.SQL("id = ANY(%s)"))
        params.append(list(ids))
    query = sql.SQL("SELECT * FROM results.qso_outflows WHERE {} ORDER BY id").format(
        sql.SQL(" AND ").join(cond)
    )
    if latest:
        query = sql.SQL(
            "SELECT DISTINCT ON (targetid) * FROM ({}) AS r WHERE review_status <> 'rejected' "
            "ORDER BY targetid, (kind = 'refit') DESC, id DESC"
        ).format(query)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        names = [d.name for d in cur.description]
        data = cur.fetchall()
    upper = {n.lower(): n for n in [*_IDENTITY, *(m for m, _ in MEASUREMENTS)]}
    frame = pd.DataFrame(data, columns=[upper.get(n, n) for n in names])
    return frame


def record_decision(
    dsn: str,
    result_id: int,
    decision: str,
    *,
    who: str | None = None,
    note: str | None = None,
    refit_id: int | None = None,
) -> dict:
    """Record a review decision on a fit (history row + the fit's review columns).

    Returns
    -------
    dict
        The history row: id, result_id, targetid, decision, reviewer, db_user,
        decided_at, note, refit_id.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}")
    with psycopg.connect(dsn) as conn, conn.transaction():
        found = conn.execute(
            "SELECT targetid FROM results.qso_outflows WHERE id = %s", (result_id,)
        ).fetchone()
        if found is None:
            raise KeyError(f"no fit with id {result_id} in {TABLE}")
        reviewer = who or conn.execute("SELECT session_user").fetchone()[0]
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "INSERT INTO results.qso_outflow_reviews "
                "(result_id, targetid, decision, reviewer, note, refit_id) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
                (result_id, found[0], decision, reviewer, note, refit_id),
            )
            history = cur.fetchone()
        conn.execute(
            "UPDATE results.qso_outflows SET review_status = %s, reviewed_by = %s, "
            "reviewed_at = %s, review_note = %s WHERE id = %s",
            (decision, reviewer, history["decided_at"], note, result_id),
        )
    return dict(history)


def decisions(dsn: str, *, targetid: int | None = None, result_id: int | None = None) -> list[dict]:
    """Decision history (oldest first), for one QSO, one fit, or all."""
    cond, params = "TRUE", []
    if targetid is not None:
        cond, params = "targetid = %s", [targetid]
    if result_id is not None:
        cond, params = "result_id = %s", [result_id]
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT * FROM results.qso_outflow_reviews WHERE {cond} ORDER BY id", params)
        return [dict(r) for r in cur.fetchall()]
