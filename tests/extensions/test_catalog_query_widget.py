"""CatalogQuery: run, cancel, page, errors with positions, history, plots, schema."""

from __future__ import annotations

import time

import psycopg
import pytest
from desilab.desi import Catalog
from desilab.desi.roles import ensure_user_role
from desilab.extensions.catalog_query import CatalogQueryModel, QueryHistory
from desilab.extensions.catalog_widget import CatalogQuery


@pytest.fixture(scope="module")
def user_dsn(catalog_db):
    """A user role with a table of its own to query."""
    dsn = ensure_user_role(catalog_db, "query-user")
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS stars")
        conn.execute("CREATE TABLE stars (targetid bigint PRIMARY KEY, mag real, z real)")
        conn.execute(
            "INSERT INTO stars SELECT g, 15 + (g % 10), g / 1000.0 FROM generate_series(1, 240) g"
        )
    return dsn


def wait(future, timeout=60):
    future.result(timeout)


def test_run_pages_and_remembers(user_dsn, tmp_path):
    model = CatalogQueryModel(Catalog(user_dsn), history=QueryHistory(tmp_path / "h.jsonl"))
    wait(model.run("SELECT targetid, mag, z FROM stars ORDER BY targetid;"))
    assert model.error is None and len(model.result) == 240
    assert model.pages == 5 and len(model.current_page()) == 50
    assert model.go_page(4)["targetid"][0] == 201
    assert model.go_page(99)["targetid"][0] == 201, "clamped to the last page"
    assert model.summary().startswith("240 rows in")
    assert model.numeric_columns() == ["targetid", "mag", "z"]
    assert model.result.to_pandas().shape == (240, 3)
    assert model.histogram("mag").renderers and model.scatter("mag", "z").renderers
    with pytest.raises(ValueError, match="not a numeric column"):
        model.histogram("nope")
    assert model.history.entries()[0]["rows"] == 240


def test_row_cap_is_reported(user_dsn, tmp_path):
    model = CatalogQueryModel(Catalog(user_dsn), limit=100, history=QueryHistory(tmp_path / "h"))
    wait(model.run("SELECT * FROM stars"))
    assert len(model.result) == 100 and model.truncated
    assert "row cap of 100" in model.summary()


def test_errors_name_the_position_in_plain_words(user_dsn, tmp_path):
    model = CatalogQueryModel(Catalog(user_dsn), history=QueryHistory(tmp_path / "h"))
    wait(model.run("SELECT targetid,\n  mag FRM stars"))
    assert model.result is None
    assert model.error.line == 2
    assert "syntax" in str(model.error).lower()
    wait(model.run("SELECT * FROM dr1.nonexistent"))
    assert "nonexistent" in str(model.error)
    assert model.history.entries()[0]["error"]


def test_cancel_stops_the_server_side_query(user_dsn, tmp_path):
    catalog = Catalog(user_dsn)
    model = CatalogQueryModel(catalog, history=QueryHistory(tmp_path / "h"))
    future = model.run("SELECT pg_sleep(30)")
    time.sleep(1.0)
    assert model.running
    with pytest.raises(RuntimeError, match="already running"):
        model.run("SELECT 1")
    start = time.monotonic()
    model.cancel()
    wait(future, timeout=20)
    assert time.monotonic() - start < 10
    assert model.error is not None and "cancel" in str(model.error).lower()
    with psycopg.connect(user_dsn) as conn:
        busy = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%%' "
            "AND state = 'active'"
        ).fetchone()[0]
    assert busy == 0, "nothing still runs on the server"


def test_timeout_is_explained(user_dsn, tmp_path):
    model = CatalogQueryModel(
        Catalog(user_dsn), timeout="300ms", history=QueryHistory(tmp_path / "h")
    )
    wait(model.run("SELECT pg_sleep(5)"))
    assert "time" in str(model.error).lower()


def test_widget_runs_a_query_and_browses_the_schema(user_dsn, tmp_path):
    widget = CatalogQuery(Catalog(user_dsn), history=QueryHistory(tmp_path / "h"))
    assert "query_user.stars" in widget.schema_tables.options
    widget.schema_tables.value = "query_user.stars"
    assert "<code>mag</code>" in widget.schema_columns.value
    future = widget.run("SELECT targetid, mag FROM stars ORDER BY targetid")
    wait(future)
    time.sleep(0.2)
    assert "240 rows" in widget.status.value
    assert "<td>1</td>" in widget.results.value and widget.page_label.value == "page 1 of 5"
    widget.next_page.click()
    assert "<td>51</td>" in widget.results.value
    assert widget.result is widget.model.result
    wait(widget.run("SELEC 1"))
    time.sleep(0.2)
    assert "yntax" in widget.status.value and "Traceback" not in widget.status.value
