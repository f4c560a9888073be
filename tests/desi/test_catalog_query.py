"""Catalog.query against a real PostgreSQL: row cap, errors with positions, timeouts,
cancel, read-only, SQL injection through parameters."""

from __future__ import annotations

import threading
import time

import numpy as np
import psycopg
import pytest
from desilab.desi import (
    Catalog,
    CatalogError,
    QueryCancelled,
    QueryError,
    QuerySyntaxError,
    QueryTimeout,
)

PAYLOADS = [
    "'; DROP TABLE dr1.zpix; --",
    "' OR '1'='1",
    "' OR 1=1 --",
    "QSO'; DELETE FROM dr1.zpix WHERE '1'='1",
    "1; TRUNCATE dr1.zpix_secondary",
    "'); DROP SCHEMA dr1 CASCADE; --",
    "$$; DROP TABLE dr1.fastspec; $$",
    "\\'; UPDATE dr1.zpix SET z = 0; --",
    "QSO' UNION SELECT rolname FROM pg_roles --",
    "' UNION SELECT usename || ':' || passwd FROM pg_shadow --",
    "%s",
    "%(x)s",
    "%%s'; DROP TABLE dr1.zpix; --",
    "{0}; DROP TABLE dr1.zpix",
    "*/ DROP TABLE dr1.zpix; /*",
    "-- ",
    "E'\\x27; DROP TABLE dr1.zpix; --'",
    "QSO\\",
    "'; COMMIT; DROP TABLE dr1.zpix; BEGIN; --",
    "'; SET ROLE postgres; DROP TABLE dr1.zpix; --",
    "'; COPY dr1.zpix TO '/tmp/x'; --",
    "'; CREATE ROLE evil SUPERUSER LOGIN PASSWORD 'x'; --",
    "'; ALTER ROLE desi_reader SUPERUSER; --",
    "'; SELECT pg_sleep(30); --",
    "'; GRANT ALL ON dr1.zpix TO PUBLIC; --",
    "QSO' AND (SELECT count(*) FROM pg_authid) > 0 --",
    "'||(SELECT current_setting('is_superuser'))||'",
    "\u2019; DROP TABLE dr1.zpix; --",
    "QSO\u0000'; DROP TABLE dr1.zpix; --",
    "'" * 1000,
    "x" * 100_000,
    "\n;\nDROP TABLE dr1.zpix;\n",
    "' ; EXECUTE 'DROP TABLE dr1.zpix'; --",
    "'; DO $$BEGIN EXECUTE 'DROP TABLE dr1.zpix'; END$$; --",
]


@pytest.fixture(scope="module")
def cat(ingested):
    dsn, _, _ = ingested
    with Catalog(dsn) as c:
        yield c


def fingerprint(dsn: str) -> tuple:
    with psycopg.connect(dsn) as conn:
        return (
            conn.execute(
                "SELECT count(*), md5(string_agg(targetid::text || ':' || z::text || spectype, "
                "',' ORDER BY targetid)) FROM dr1.zpix"
            ).fetchone(),
            conn.execute("SELECT count(*) FROM dr1.zpix_secondary").fetchone(),
            conn.execute("SELECT count(*) FROM dr1.fastspec").fetchone(),
            tuple(
                conn.execute(
                    "SELECT relname FROM pg_class WHERE relnamespace = 'dr1'::regnamespace "
                    "ORDER BY relname"
                ).fetchall()
            ),
            tuple(conn.execute("SELECT rolname, rolsuper FROM pg_roles ORDER BY 1").fetchall()),
        )


def test_query_returns_a_table_with_units_and_pandas(cat):
    t = cat.query(
        "SELECT targetid, z, target_ra, coeff, spectype, sv3_desi_target FROM dr1.zpix "
        "WHERE spectype = %s AND z > %s ORDER BY z DESC",
        ("QSO", 1.0),
    )
    assert len(t) > 10 and t.meta["truncated"] is False
    assert np.all(np.diff(t["z"]) <= 0) and set(t["spectype"]) == {"QSO"}
    assert t["coeff"].shape == (len(t), 10) and t["target_ra"].unit == "deg"
    assert hasattr(t["sv3_desi_target"], "mask")  # NULL in main-survey rows
    df = t.to_pandas()
    assert len(df) == len(t) and len(df["coeff"].iloc[0]) == 10


def test_row_cap_flags_truncation(cat):
    t = cat.query("SELECT x FROM generate_series(1, 1000) AS x", limit=10)
    assert list(t["x"]) == list(range(1, 11)) and t.meta["truncated"] is True
    t = cat.query("SELECT x FROM generate_series(1, 10) AS x", limit=10)
    assert len(t) == 10 and t.meta["truncated"] is False


def test_syntax_errors_name_the_position(cat):
    with pytest.raises(QuerySyntaxError) as err:
        cat.query("SELECT targetid, z\nFROM dr1.zpix\nWHERE z >> AND spectype = 'QSO'")
    assert err.value.position == len("SELECT targetid, z\nFROM dr1.zpix\nWHERE z >> ") + 1
    assert "line 3, column 12" in str(err.value) and '"AND"' in str(err.value)
    assert "WHERE z >> AND spectype = 'QSO'\n" + " " * 15 + "^" in str(err.value)
    with pytest.raises(QuerySyntaxError, match=r'column "redshift" does not exist'):
        cat.query("SELECT redshift FROM dr1.zpix")
    with pytest.raises(QuerySyntaxError, match="line 1, column 15"):
        cat.query("SELECT 1 FROM dr1.nothing_here")


def test_queries_are_read_only_and_single_statement(cat, ingested):
    before = fingerprint(ingested[0])
    for bad in ("DELETE FROM dr1.zpix", "  -- c\n/* x */ DROP TABLE dr1.zpix", "COMMIT"):
        with pytest.raises(QueryError, match="read-only"):
            cat.query(bad)
    with pytest.raises(QueryError, match="exactly one SQL statement"):
        cat.query("SELECT 1; DROP TABLE dr1.zpix")
    with pytest.raises(QueryError, match="data-modifying"):
        cat.query("WITH d AS (DELETE FROM dr1.zpix RETURNING *) SELECT count(*) FROM d")
    with pytest.raises(QueryError, match="read-only transaction"):
        cat.query("SELECT * FROM dr1.zpix FOR UPDATE")
    assert fingerprint(ingested[0]) == before


def test_statement_timeout_stops_a_long_query(cat):
    t0 = time.monotonic()
    with pytest.raises(QueryTimeout, match="time limit") as err:
        cat.query("SELECT count(*) FROM generate_series(1, 10000000000)", timeout="300ms")
    assert time.monotonic() - t0 < 10
    assert err.value.sqlstate == "57014"
    assert len(cat.query("SELECT 1 AS one")) == 1  # still usable


def test_cancel_stops_the_server_side_query(cat, ingested):
    errors = []

    def run():
        try:
            cat.query("SELECT pg_sleep(60)")
        except QueryError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    t0 = time.monotonic()
    thread.start()
    with psycopg.connect(ingested[0], autocommit=True) as admin:
        for _ in range(500):
            if admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND application_name = 'desilab-catalog'"
            ).fetchone()[0]:
                break
            time.sleep(0.01)
        cat.cancel()
        thread.join(timeout=20)
        assert not thread.is_alive() and time.monotonic() - t0 < 20
        assert isinstance(errors[0], QueryCancelled)
        still = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND application_name = 'desilab-catalog'"
        ).fetchone()[0]
        assert still == 0
    assert cat.query("SELECT 2 AS two")["two"][0] == 2


def test_injection_payloads_as_parameters_do_no_harm(cat, ingested):
    dsn = ingested[0]
    assert len(PAYLOADS) >= 30
    before = fingerprint(dsn)
    ra, dec = cat.query("SELECT target_ra, target_dec FROM dr1.zpix LIMIT 1")[0]
    for payload in PAYLOADS:
        try:
            t = cat.query("SELECT targetid FROM dr1.zpix WHERE spectype = %s", (payload,))
            assert len(t) == 0
            t = cat.query(
                "SELECT %(p)s AS echo, count(*) AS n FROM dr1.zpix WHERE subtype = %(p)s",
                {"p": payload},
            )
            assert t["echo"][0] == payload and t["n"][0] == 0
            c = cat.cone(ra, dec, 0.1, where="spectype = %s", params=(payload,))
            assert len(c) == 0
        except QueryError as exc:  # e.g. NUL bytes are refused: an error, never harm
            assert "cannot contain NUL" in str(exc) or "NUL" in str(exc)
        except ValueError as exc:  # psycopg refuses NUL before sending
            assert "NUL" in str(exc)
        for bad_name in (payload[:60], f"dr1.{payload[:60]}"):
            with pytest.raises(CatalogError):
                cat.cone(ra, dec, 0.1, table=bad_name)
        with pytest.raises(CatalogError):
            cat.cone(ra, dec, 0.1, columns=["targetid", payload[:60]])
    assert fingerprint(dsn) == before
    assert len(cat.query("SELECT targetid FROM dr1.zpix WHERE spectype = %s", ("QSO",))) > 0


def test_schema_browser_helpers(cat):
    cols = cat.columns("dr1.zpix")
    row = cols[list(cols["name"]).index("target_ra")]
    assert row["type"] == "double precision" and row["description"].endswith("[deg]")
    names = {(s, n) for s, n in zip(cat.tables()["schema"], cat.tables()["name"], strict=True)}
    assert {("dr1", "zpix"), ("dr1", "zpix_all"), ("dr1", "spectra_index")} <= names
    plan = cat.query("EXPLAIN SELECT * FROM dr1.zpix WHERE targetid = %s", (1,))
    assert "zpix_pkey" in "\n".join(plan["QUERY PLAN"])
