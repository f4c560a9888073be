"""Visual inspection: flags and comments on targets, stored in ``vi.inspections``.

Every user may add inspections and read everyone's; nobody can write in
another's name: the inspector is the database session's role, enforced by a
row-level security policy, not a value the client sends.
"""

from __future__ import annotations

import psycopg
from astropy.table import Table

FLAGS = ("good", "bad", "interesting", "artifact", "wrong-z", "unsure")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS vi.inspections (
    id          bigserial PRIMARY KEY,
    targetid    bigint NOT NULL,
    inspector   text NOT NULL DEFAULT session_user,
    flag        text NOT NULL CHECK (flag IN ({", ".join(f"'{f}'" for f in FLAGS)})),
    comment     text NOT NULL DEFAULT '',
    z_vi        double precision,
    source      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS inspections_targetid ON vi.inspections (targetid);
COMMENT ON TABLE vi.inspections IS 'Visual inspections: one row per decision, newest wins';
COMMENT ON COLUMN vi.inspections.inspector IS 'database role of the person who inspected';
COMMENT ON COLUMN vi.inspections.z_vi IS 'redshift proposed by the inspector, if any';
ALTER TABLE vi.inspections ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS read_all ON vi.inspections;
CREATE POLICY read_all ON vi.inspections FOR SELECT TO desi_reader USING (true);
DROP POLICY IF EXISTS insert_own ON vi.inspections;
CREATE POLICY insert_own ON vi.inspections FOR INSERT TO desi_reader
    WITH CHECK (inspector = session_user);
GRANT SELECT, INSERT ON vi.inspections TO desi_reader;
GRANT USAGE ON SEQUENCE vi.inspections_id_seq TO desi_reader;
"""


def ensure_vi_schema(admin_dsn: str) -> None:
    """Create ``vi.inspections`` (owned by desi_owner) and its policies; idempotent."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SET ROLE desi_owner")
        conn.execute(SCHEMA)


def save_inspection(
    dsn: str,
    targetid: int,
    flag: str,
    comment: str = "",
    z_vi: float | None = None,
    source: str = "",
) -> int:
    """Store one inspection as the connecting user; return its id."""
    if flag not in FLAGS:
        raise ValueError(f"unknown flag {flag!r}; use one of: {', '.join(FLAGS)}")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "INSERT INTO vi.inspections (targetid, flag, comment, z_vi, source) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (int(targetid), flag, comment, z_vi, source),
        ).fetchone()
    return int(row[0])


def inspections(dsn: str, targetids: list[int] | None = None) -> Table:
    """Inspections, newest first, optionally for some targets only."""
    query = (
        "SELECT id, targetid, inspector, flag, comment, z_vi, source, created_at "
        "FROM vi.inspections"
    )
    params: tuple = ()
    if targetids is not None:
        query += " WHERE targetid = ANY(%s)"
        params = ([int(t) for t in targetids],)
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(query + " ORDER BY created_at DESC, id DESC", params)
        names = [d.name for d in cur.description]
        rows = cur.fetchall()
    return Table(rows=rows, names=names) if rows else Table(names=names)
