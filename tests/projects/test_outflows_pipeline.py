"""AGN outflows end to end on a mock DR1: selection, batch fits against the truth,
results and review decisions in a real PostgreSQL, the catalog path and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psycopg
import pytest
from desilab.desi import CoaddFile, DR1Layout, generate_mock, ingest, read_truth
from desilab.desi.roles import OWNER, ensure_user_role, prepare_catalog
from desilab.hub.database import EmbeddedPostgres
from desilab.projects.outflows import (
    MODEL_VERSION,
    Assumptions,
    ReviewSession,
    create_tables,
    decisions,
    fit_unit,
    make_units,
    read_results,
    run_batch,
    select_from_catalog,
    select_from_files,
)
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from support.local_ray import local_ray

MOCK_SEED = 11
DESILAB = str(Path(sys.executable).with_name("desilab"))


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    """A QSO-rich mock DR1: spectra of every labelled QSO and of 12 % of the others."""
    outdir = tmp_path_factory.mktemp("outflows-mock")
    summary = generate_mock(outdir, n_qso=1000, n_galaxy=100, n_star=10, seed=MOCK_SEED,
                            progress=False, qso_spectra_fraction=0.12, galaxy_spectra_fraction=0.0,
                            star_spectra_fraction=0.0, workers=1)  # fmt: skip
    truth = read_truth(outdir, "qso")
    return DR1Layout(summary.data_root), {int(r["TARGETID"]): r for r in truth}


@pytest.fixture(scope="module")
def batch(mock):
    """Every QSO of the mock in the BAL and [O III] ranges, fitted by two processes."""
    layout, _ = mock
    sample = select_from_files(layout)
    return sample, run_batch(sample, layout, workers=2, use_ray=False, progress=False)


@pytest.fixture(scope="module")
def database():
    """A real embedded PostgreSQL with the catalog roles and the outflow tables."""
    root = Path(tempfile.mkdtemp(prefix="desilab-outflows-", dir="/tmp"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "home")
    dsn = server.start()
    try:
        prepare_catalog(dsn)
        create_tables(dsn)
        create_tables(dsn)  # idempotent
        yield dsn
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_sample_from_files_keeps_good_primary_qsos(mock, batch):
    sample, out = batch
    z = np.asarray(sample["Z"])
    assert len(sample) > 200
    assert np.all(((z >= 1.57) & (z <= 5)) | (z < 0.95))
    assert len(set(sample["TARGETID"])) == len(sample)
    # The mock writes spectra of a subset: the rest are reported, not fitted.
    assert len(out["rows"]) + len(out["missing"]) == len(sample)
    assert not out["errors"]


def test_bal_measurements_against_the_mock_truth(mock, batch):
    _, truth = mock
    _, out = batch
    rows = [r for r in out["rows"] if r["BI_CIV"] is not None]
    t = [truth[r["TARGETID"]] for r in rows]
    normal = np.array([str(x["ANOMALY"]).strip() == "NONE" for x in t])
    injected = np.array([bool(x["BAL"]) for x in t])
    bi_true = np.array([float(x["BI_CIV"]) for x in t])
    bi = np.array([r["BI_CIV"] for r in rows])
    big = bi_true > 500
    assert big.sum() >= 25
    assert np.median(np.abs(bi[big] - bi_true[big]) / bi_true[big]) < 0.10
    # Completeness over the injected BI-BALs, purity over all BI > 0 detections,
    # among the QSOs without an injected anomaly (those are the anomaly project's).
    found = bi > 0
    assert (found & (bi_true > 0) & normal).sum() / ((bi_true > 0) & normal).sum() >= 0.90
    assert (found & injected & normal).sum() / (found & normal).sum() >= 0.95
    # Semi-automated: the BALs the flags let through without review are pure even when the
    # anomaly project's injected oddities (blended redshifts, arm jumps) are counted.
    unflagged = found & ~np.array([bool(r["NEEDS_REVIEW"]) for r in rows])
    assert (unflagged & injected).sum() / unflagged.sum() >= 0.95
    # ERR_BI_CIV from the Monte Carlo is a sensible 1-sigma error.
    err = np.array([r["ERR_BI_CIV"] for r in rows])[big]
    assert np.all(err > 0)
    pull = np.abs(bi[big] - bi_true[big]) / err
    assert 0.3 < np.median(pull) < 1.5


def test_outflow_rows_carry_flags_energetics_and_no_nans(batch):
    _, out = batch
    rows = out["rows"]
    assert any(r["ENERGETICS_TRACER"] == "BAL" for r in rows)
    for r in rows:
        for k, v in r.items():
            assert not (isinstance(v, float) and not np.isfinite(v)), (k, r["TARGETID"])
        if r["ENERGETICS_TRACER"]:
            assert r["LOG_EDOT_LO"] <= r["LOG_EDOT"] <= r["LOG_EDOT_HI"]
            assert r["LOG_COUPLING"] == pytest.approx(r["LOG_EDOT"] - r["LOG_LBOL"], abs=1e-9)
    assert any(r["NEEDS_REVIEW"] for r in rows) and not all(r["NEEDS_REVIEW"] for r in rows)


def test_units_give_the_same_rows_in_one_process_and_in_two(mock):
    layout, _ = mock
    units = make_units(select_from_files(layout, limit=40), layout)[:2]
    one = [fit_unit(u)["rows"] for u in units]
    two = run_batch(select_from_files(layout, limit=40), layout, workers=2, use_ray=False,
                    progress=False)["rows"]  # fmt: skip
    flat = [r for rows in one for r in rows]
    assert [r["TARGETID"] for r in two[: len(flat)]] == [r["TARGETID"] for r in flat]
    assert [r["BI_CIV"] for r in two[: len(flat)]] == [r["BI_CIV"] for r in flat]


def test_results_and_review_decisions_persist_across_sessions(mock, database):
    layout, _ = mock
    dsn = database
    sample = select_from_files(layout, limit=60)
    first = run_batch(sample, layout, dsn=dsn, workers=1, use_ray=False, progress=False,
                      run_id="test-run")  # fmt: skip
    again = run_batch(sample, layout, dsn=dsn, workers=1, use_ray=False, progress=False)
    assert len(again["rows"]) == 0 and len(again["skipped"]) == len(first["rows"])
    stored = read_results(dsn)
    assert len(stored) == len(first["rows"])
    assert set(stored["model_version"]) == {MODEL_VERSION}
    assert stored["assumptions"].iloc[0]["n_e"] == [500.0, "1 / cm3"]
    with psycopg.connect(dsn) as conn:
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'results' "
            "AND tablename = 'qso_outflows'"
        ).fetchone()[0]
    assert owner == OWNER

    # A researcher (per-user login role) reviews through their own connection.
    alice = ensure_user_role(dsn, "alice")
    session = ReviewSession(alice, layout, reviewer="alice", mode="all")
    assert len(session) == len(stored)
    first_item = session.current()
    view = session.view()
    assert view.targetid == first_item.targetid
    # Redone alone, the fit gives what the batch stored (errors included).
    for name in ("BI_CIV", "ERR_BI_CIV", "OIII_FLUX", "OIII_FLUX_ERR", "FLAGS"):
        if first_item.row[name] is not None:
            assert view.row[name] == pytest.approx(first_item.row[name], rel=1e-5), name
    session.accept("continuum fine")
    rejected = session.current().id
    session.reject("sky residual")
    refit = session.refit("narrower window", oiii_window=(4800.0, 5080.0), bal_smooth_kms=600.0)
    assert refit.row["kind"] == "refit" and refit.row["parent_id"] is not None
    assert refit.row["config"]["bal_smooth_kms"] == 600.0
    assert refit.row["created_by"] == "alice" and refit.row["review_status"] == "accepted"
    del session

    # A new session (reconnect) reads the decisions back and skips decided fits.
    later = ReviewSession(alice, layout, reviewer="alice", mode="all")
    assert len(later) == len(stored) - 3
    back = read_results(dsn, ids=[first_item.id, rejected])
    assert list(back["review_status"]) == ["accepted", "rejected"]
    assert list(back["reviewed_by"]) == ["alice", "alice"]
    assert back["reviewed_at"].notna().all()
    history = decisions(dsn, targetid=first_item.targetid)
    assert history[-1]["decision"] == "accepted" and history[-1]["note"] == "continuum fine"
    assert history[-1]["db_user"] == "desi_alice"
    latest = read_results(dsn, latest=True)
    assert rejected not in set(latest["id"])
    assert refit.id in set(latest["id"])
    # Researchers cannot rewrite the measurements or add automatic fits.
    with psycopg.connect(alice) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE results.qso_outflows SET bi_civ = 0")
    with psycopg.connect(alice) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "INSERT INTO results.qso_outflows (targetid, model_version, assumptions, "
            "assumptions_hash, config) VALUES (1, 'x', '{}', 'x', '{}')"
        )


def test_flagged_and_random_review_queues(mock, database):
    layout, _ = mock
    flagged = ReviewSession(database, layout, mode="flagged", include_reviewed=True)
    stored = read_results(database, kind="auto")
    assert len(flagged) == int(stored["NEEDS_REVIEW"].sum())
    r1 = ReviewSession(database, mode="random", seed=3, include_reviewed=True)
    r2 = ReviewSession(database, mode="random", seed=3, include_reviewed=True)
    assert r1.queue == r2.queue and sorted(r1.queue) != r1.queue
    with pytest.raises(ValueError, match="mode"):
        ReviewSession(database, mode="worst")


def test_sample_chosen_by_sql_on_the_catalog(mock, database, tmp_path):
    layout, _ = mock
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE DATABASE outflows_catalog")
    dsn = make_conninfo(**{**conninfo_to_dict(database), "dbname": "outflows_catalog"})
    prepare_catalog(dsn)
    ingest(layout.root, dsn, progress=False, kinds=("zpix", "coadd"))
    picked = select_from_catalog(
        dsn,
        "SELECT targetid FROM dr1.zpix WHERE spectype = 'QSO' AND zwarn = 0 "
        "AND deltachi2 > 25 AND z BETWEEN %s AND %s",
        (1.57, 5.0),
    )
    from_files = select_from_files(layout, zranges=[(1.57, 5.0)])
    with_spectra = set()
    for unit in make_units(from_files, layout):
        if Path(unit.coadd).exists():
            with CoaddFile(unit.coadd) as f:
                with_spectra |= set(f.targetids.tolist()) & set(unit.targetid)
    assert len(picked) > 50
    assert sorted(picked["TARGETID"]) == sorted(with_spectra)
    with pytest.raises(ValueError, match="targetid"):
        select_from_catalog(dsn, "SELECT z FROM dr1.zpix LIMIT 3")


def run_cli(argv: list[str]) -> None:
    """``desilab ARGV`` in this process (a fresh application each time)."""
    from desilab.hub.cli import DesilabApp
    from desilab.projects.outflows.cli import OutflowsApp, OutflowsFitApp, OutflowsReportApp

    for cls in (DesilabApp, OutflowsApp, OutflowsFitApp, OutflowsReportApp):
        cls.clear_instance()
    app = DesilabApp.instance()
    app.initialize(argv)
    app.start()


def test_cli_fit_and_report(mock, tmp_path, capsys, monkeypatch):
    layout, _ = mock
    monkeypatch.setenv("DESILAB_HOME", str(tmp_path))
    monkeypatch.delenv("DESILAB_DATABASE_URL", raising=False)
    out = tmp_path / "fits.fits"
    run_cli(["outflows", "fit", f"--data-root={layout.root}", f"--output={out}", "--limit=30",
             "--workers=1", "--ray=no", "--n-e=800", "--geometry=shell", "--no-oiii"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["fitted"] > 0 and out.exists()
    html = tmp_path / "report.html"
    run_cli(["outflows", "report", f"--input={out}", f"--html={html}"])
    assert json.loads(capsys.readouterr().out)["n_fits"] == summary["fitted"]
    assert "BI distribution" in html.read_text()
    with pytest.raises(SystemExit) as exc:
        run_cli(["outflows", "fit", f"--data-root={layout.root}", "--geometry=sphere"])
    assert exc.value.code != 0
    with pytest.raises(SystemExit) as exc:
        run_cli(["outflows", "fit", f"--data-root={layout.root}"])  # nowhere to write
    assert exc.value.code == 2


def test_console_script_lists_the_outflows_commands():
    done = subprocess.run([DESILAB, "outflows", "--help"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and "fit" in done.stdout and "report" in done.stdout


@pytest.mark.slow
def test_ray_batch_equals_process_batch(mock):
    layout, _ = mock
    sample = select_from_files(layout, limit=30)
    local = run_batch(sample, layout, workers=2, use_ray=False, progress=False)
    with local_ray(num_cpus=2):
        remote = run_batch(sample, layout, use_ray=True, progress=False)
    assert [r["TARGETID"] for r in remote["rows"]] == [r["TARGETID"] for r in local["rows"]]
    assert [r["BI_CIV"] for r in remote["rows"]] == [r["BI_CIV"] for r in local["rows"]]
    assert Assumptions().digest()
