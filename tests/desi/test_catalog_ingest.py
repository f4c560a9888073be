"""`desilab ingest` against a real PostgreSQL: counts, idempotence, resume after a kill,
bad files, replaced files, roles."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psycopg
import pytest
from astropy.io import fits
from desilab.desi import Catalog, DR1Layout, ingest, read_fastspec, read_zpix
from desilab.desi.coadd import CoaddFile
from desilab.desi.roles import ensure_user_role
from desilab.desi.schema import TABLES

DATA_TABLES = sorted(TABLES)


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        out = {t: conn.execute(f"SELECT count(*) FROM dr1.{t}").fetchone()[0] for t in DATA_TABLES}
        out["ingest_files"] = conn.execute("SELECT count(*) FROM dr1.ingest_files").fetchone()[0]
    return out


def expected_counts(layout: DR1Layout) -> dict[str, int]:
    primary = secondary = 0
    for path in layout.zpix_files():
        flag = np.asarray(read_zpix(path, columns=["ZCAT_PRIMARY"])["ZCAT_PRIMARY"])
        primary += int(flag.sum())
        secondary += int((~flag).sum())
    spectra = 0
    for f in layout.iter_healpix():
        with CoaddFile(f.coadd) as c:
            spectra += c.nspec
    return {"zpix": primary, "zpix_secondary": secondary, "spectra": spectra}


def assert_consistent(dsn: str) -> None:
    """Every bookkept file has exactly its rows; no row without its file; no duplicates."""
    with psycopg.connect(dsn) as conn:
        per_file = " + ".join(
            f"(SELECT count(*) FROM dr1.{t} WHERE file_id = f.file_id)" for t in DATA_TABLES
        )
        bad = conn.execute(
            f"SELECT path, nrows, {per_file} FROM dr1.ingest_files f WHERE nrows <> {per_file}"
        ).fetchall()
        assert bad == []
        for t in DATA_TABLES:
            orphans = conn.execute(
                f"SELECT count(*) FROM dr1.{t} WHERE file_id NOT IN "
                "(SELECT file_id FROM dr1.ingest_files)"
            ).fetchone()[0]
            assert orphans == 0, t
        dup = conn.execute(
            "SELECT count(*) - count(DISTINCT (targetid, survey, program)) FROM dr1.zpix_all"
        ).fetchone()[0]
        assert dup == 0
        missing = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'dr1'"
        ).fetchone()[0]
        wanted = sum(len(t.indexes) + 1 for t in TABLES.values()) + 2  # + ingest_files keys
        assert missing == wanted


def test_ingest_loads_every_file_and_a_second_run_adds_nothing(ingested):
    dsn, report, layout = ingested
    assert report.skipped == []
    assert len(report.loaded) == report.files_found > 10
    first = counts(dsn)
    want = expected_counts(layout)
    for table, n in want.items():
        assert first[table] == n, table
    assert first["fastspec"] == len(read_fastspec(layout, columns=["TARGETID"]))
    assert first["ingest_files"] == report.files_found
    again = ingest(layout.root, dsn, progress=False)
    assert again.loaded == [] and again.skipped == [] and again.total_rows == 0
    assert again.unchanged == report.files_found
    assert counts(dsn) == first
    assert_consistent(dsn)
    assert "0 skipped" in again.summary()


def test_rows_equal_the_fits_files(ingested):
    dsn, _, layout = ingested
    zpix = read_zpix(layout.zpix("main", "dark"))
    rows = zpix[np.asarray(zpix["ZCAT_PRIMARY"])][:50]
    cat = Catalog(dsn)
    got = cat.query(
        "SELECT targetid, z, zwarn, spectype, coeff, target_ra, desi_target, zcat_primary, hpx "
        "FROM dr1.zpix WHERE targetid = ANY(%s) ORDER BY targetid",
        (list(map(int, rows["TARGETID"])),),
    )
    rows.sort("TARGETID")
    assert list(got["targetid"]) == list(rows["TARGETID"])
    np.testing.assert_array_equal(got["z"], rows["Z"])
    np.testing.assert_array_equal(got["coeff"], rows["COEFF"])
    np.testing.assert_array_equal(got["target_ra"], rows["TARGET_RA"])
    np.testing.assert_array_equal(got["desi_target"], rows["DESI_TARGET"])
    assert list(got["spectype"]) == [s.strip() for s in rows["SPECTYPE"]]
    assert got["target_ra"].unit == "deg"
    assert all(got["zcat_primary"])
    # the table is physically ordered by hpx within each file (CLUSTER ON the hpx index)
    with psycopg.connect(dsn) as conn:
        corr = conn.execute(
            "SELECT correlation FROM pg_stats WHERE schemaname = 'dr1' AND tablename = 'zpix' "
            "AND attname = 'hpx'"
        ).fetchone()[0]
        clustered = conn.execute(
            "SELECT indisclustered FROM pg_index WHERE indexrelid = 'dr1.zpix_hpx_idx'::regclass"
        ).fetchone()[0]
    assert clustered and corr > 0.2


def test_spectra_by_targetid_equal_the_coadd_files(ingested):
    dsn, _, layout = ingested
    f = next(layout.iter_healpix("main", "dark"))
    with CoaddFile(f.coadd) as c:
        tids = c.targetids[[2, 0, 1]]
        direct = c.read(tids)
    cat = Catalog(dsn)
    spec = cat.spectra(tids)
    assert list(spec.targetid) == list(tids)
    for arm in "BRZ":
        np.testing.assert_array_equal(spec.arms[arm].flux, direct.arms[arm].flux)
        np.testing.assert_array_equal(spec.arms[arm].ivar, direct.arms[arm].ivar)
    with pytest.raises(KeyError, match="no spectrum"):
        cat.spectra([int(tids[0]), 12345])
    assert len(cat.spectra([int(tids[0]), 12345], missing="skip")) == 1


@pytest.mark.slow
def test_killed_ingest_resumes_with_exact_counts(ingested, new_database):
    ref_dsn, _, layout = ingested
    dsn = new_database("killed")
    cmd = [sys.executable, "-c", "from desilab.hub.cli import main; main()", "ingest",
           str(layout.root), f"--db-url={dsn}", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline and proc.poll() is None:
            if conn.execute("SELECT to_regclass('dr1.ingest_files')").fetchone()[0]:
                done = conn.execute("SELECT count(*) FROM dr1.ingest_files").fetchone()[0]
                if done >= 1:
                    break
            time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert done >= 1, proc.stderr.read().decode()[-2000:]
    partial = counts(dsn)
    assert partial["ingest_files"] < counts(ref_dsn)["ingest_files"], "killed too late"
    report = ingest(layout.root, dsn, progress=False)
    assert report.skipped == []
    assert report.unchanged == partial["ingest_files"]
    assert counts(dsn) == counts(ref_dsn)
    assert_consistent(dsn)


def _damage(root, layout):
    """A DATA_ROOT with one corrupt and one truncated coadd and a truncated zpix file."""
    for src in layout.root.rglob("*.fits"):
        dst = root / src.relative_to(layout.root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)
    coadds = [f.coadd.relative_to(layout.root) for f in layout.iter_healpix("main", "dark")]
    corrupt, truncated = root / coadds[0], root / coadds[1]
    zpix = root / layout.zpix("sv3", "dark").relative_to(layout.root)
    with fits.open(corrupt) as hdul:
        header_at = hdul["B_FLUX"].fileinfo()["hdrLoc"]
    for path in (corrupt, truncated, zpix):
        data = path.read_bytes()
        path.unlink()  # break the hard link: the session mock stays intact
        if path == corrupt:  # garbage over the B_FLUX header
            data = data[:header_at] + b"\x00garbage!" * 80 + data[header_at + 800 :]
        else:
            data = data[: len(data) // 2 + 123]
        path.write_bytes(data)
    return corrupt, truncated, zpix


def test_corrupt_and_truncated_files_are_reported_while_the_others_go_in(
    ingested, new_database, tmp_path
):
    ref_dsn, _, layout = ingested
    root = tmp_path / "dr1"
    bad = _damage(root, layout)
    dsn = new_database("damaged")
    report = ingest(root, dsn, progress=False)
    skipped = dict(report.skipped)
    assert sorted(skipped) == sorted(str(p.relative_to(root)) for p in bad)
    for path in bad:
        reason = skipped[str(path.relative_to(root))]
        assert str(path) in reason and "HDU" in reason
    assert "truncated" in skipped[str(bad[1].relative_to(root))]
    assert "truncated" in skipped[str(bad[2].relative_to(root))]
    assert len(report.loaded) == report.files_found - 3
    assert "3 skipped" in report.summary() and str(bad[0]) in report.summary()
    assert_consistent(dsn)
    ref, got = counts(ref_dsn), counts(dsn)
    assert got["ingest_files"] == ref["ingest_files"] - 3
    assert 0 < got["spectra"] < ref["spectra"] and got["fastspec"] == ref["fastspec"]

    # A file whose content changed is kept as it was, unless --replace; a replacement
    # whose rows clash with rows of another file is refused as a whole.
    before = counts(dsn)
    target = root / layout.zpix("sv3", "bright").relative_to(layout.root)
    target.unlink()
    shutil.copy(layout.zpix("main", "dark"), target)
    again = ingest(root, dsn, progress=False)
    reason = dict(again.skipped)[str(target.relative_to(root))]
    assert "changed since it was ingested" in reason and "--replace" in reason
    assert counts(dsn) == before
    replaced = ingest(root, dsn, progress=False, replace=True)
    reason = dict(replaced.skipped)[str(target.relative_to(root))]
    assert "dr1.zpix" in reason and "already" in reason
    assert counts(dsn) == before
    assert_consistent(dsn)


def test_repeated_keys_in_a_bulk_load_skip_the_later_file_whole(ingested, new_database, tmp_path):
    _, _, layout = ingested
    folder = tmp_path / "dr1" / layout.zpix("main", "dark").relative_to(layout.root).parent
    folder.mkdir(parents=True)
    shutil.copy(layout.zpix("main", "dark"), folder / "zpix-main-dark.fits")
    shutil.copy(layout.zpix("main", "dark"), folder / "zpix-main-dark2.fits")
    dsn = new_database("repeated")
    report = ingest(tmp_path / "dr1", dsn, progress=False)
    assert report.loaded == [str((folder / "zpix-main-dark.fits").relative_to(tmp_path / "dr1"))]
    [(path, reason)] = report.skipped
    assert path.endswith("zpix-main-dark2.fits") and "repeat the key (targetid)" in reason
    assert "zpix-main-dark.fits" in reason
    primary = int(np.sum(read_zpix(layout.zpix("main", "dark"))["ZCAT_PRIMARY"]))
    assert counts(dsn)["zpix"] == primary == report.rows["zpix"]
    assert counts(dsn)["ingest_files"] == 1
    assert_consistent(dsn)


def test_reader_roles_cannot_write_or_change_dr1(ingested):
    dsn, _, _ = ingested
    user_dsn = ensure_user_role(dsn, "Reader One", statement_timeout="5s")
    statements = [
        "INSERT INTO dr1.zpix (targetid, hpx, file_id) VALUES (1, 1, 1)",
        "UPDATE dr1.zpix SET z = 0",
        "DELETE FROM dr1.zpix",
        "TRUNCATE dr1.zpix_secondary",
        "CREATE TABLE dr1.mine (x int)",
        "CREATE INDEX ON dr1.zpix (zerr)",
        "DROP TABLE dr1.fastspec",
        "ALTER TABLE dr1.zpix ADD COLUMN x int",
        "COMMENT ON TABLE dr1.zpix IS 'x'",
        "CLUSTER dr1.zpix",
        "REINDEX TABLE dr1.zpix",
        "CREATE VIEW dr1.v AS SELECT 1",
    ]
    with psycopg.connect(user_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM dr1.zpix").fetchone()[0] > 0
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "5s"
        for stmt in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
        conn.execute("CREATE TABLE reader_one.mine AS SELECT targetid FROM dr1.zpix LIMIT 3")
        assert conn.execute("SELECT count(*) FROM mine").fetchone()[0] == 3
    with Catalog(user_dsn) as cat:
        assert len(cat.query("SELECT targetid FROM dr1.zpix", limit=5)) == 5
    assert counts(dsn)["zpix"] == expected_counts(ingested[2])["zpix"]


@pytest.mark.slow
def test_cli_query_and_add_user(ingested):
    dsn, _, _ = ingested
    run = [sys.executable, "-c", "from desilab.hub.cli import main; main()"]
    out = subprocess.run(
        [*run, "query", "SELECT targetid, spectype FROM dr1.zpix ORDER BY targetid",
         "--limit=3", f"--db-url={dsn}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "targetid" in out.stdout and len(out.stdout.strip().splitlines()) == 5
    bad = subprocess.run(
        [*run, "query", "SELECT nope FROM dr1.zpix", f"--db-url={dsn}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and 'column "nope" does not exist' in bad.stderr
    added = subprocess.run(
        [*run, "db", "add-user", "carol", f"--db-url={dsn}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    with psycopg.connect(added.stdout.strip()) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "desi_carol"


@pytest.mark.slow
def test_ensure_demo_generates_once_and_ingests_once(new_database, tmp_path, monkeypatch, caplog):
    from desilab.desi import demo

    for key, value in (("n_qso", 40), ("n_galaxy", 300), ("n_star", 30)):
        monkeypatch.setitem(demo.DEMO, key, value)  # the real demo is 60k objects
    dsn = new_database("demo")
    caplog.set_level("INFO")
    report = demo.ensure_demo(dsn, tmp_path / "demo", progress=False)
    assert report is not None and report.skipped == [] and report.rows["zpix"] > 300
    marker = tmp_path / "demo" / "truth" / "mock.json"
    stamp = marker.stat().st_mtime_ns
    assert demo.ensure_demo(dsn, tmp_path / "demo", progress=False) is None  # catalog has rows
    again = new_database("demo2")  # an empty catalog reuses the generated mock
    report2 = demo.ensure_demo(again, tmp_path / "demo", progress=False)
    assert marker.stat().st_mtime_ns == stamp and report2.rows == report.rows
    assert "demo: generating" in caplog.text and "nothing to load" in caplog.text
