"""From DR1 files to voids, environments and comparisons: sample, VoidStudy and the CLI."""

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
from astropy.cosmology import Planck18
from astropy.table import Table
from desilab.desi import DR1Layout, FastspecWriter, read_fastspec, vollim_mask
from desilab.desi.mock import VOLLIM_MR, VOLLIM_Z
from desilab.desi.roles import OWNER, ensure_user_role, prepare_catalog
from desilab.hub.database import EmbeddedPostgres
from desilab.projects.voids import (
    VFLAG_VOID,
    Membership,
    SampleCuts,
    SlicePlane,
    VoidCatalog,
    VoidStudy,
    build_sample,
    cap_mask,
    comoving_mpch,
    ensure_tables,
    list_runs,
    load_galaxies,
    plant_voids,
    poisson_catalog,
    radec_to_xyz,
    read_desivast_voids,
    read_membership,
    read_voids,
    write_membership,
    write_run,
    write_voids,
    xyz_to_radec,
)
from desilab.projects.voids.cli import ClassifyApp, CompareApp, FindApp, VoidsApp

CUTS = SampleCuts(zmax=0.12)
#: Where the NGC cap's planted void sits (Mpc/h) and its radius.
VOID_CENTRE = radec_to_xyz(np.array([185.0]), np.array([30.0]), np.array([250.0]))[0]
VOID_RADIUS = 18.0


def _write_tree(root: Path, rng: np.random.Generator) -> tuple[DR1Layout, np.ndarray]:
    """A FastSpecFit main-bright VAC with uniform galaxies in two caps and one planted void."""
    rmax = comoving_mpch(np.array([0.14]))[0]
    parts = []
    for ra0, dec0, area in ((185.0, 30.0, 250.0), (20.0, 5.0, 150.0)):
        mask = cap_mask(ra0, dec0, area, 5.0, rmax)
        parts.append(poisson_catalog(mask, 0.008, rng))
    xyz = plant_voids(np.vstack(parts), VOID_CENTRE[None], [VOID_RADIUS])
    n = len(xyz)
    ra, dec, dist = xyz_to_radec(xyz)
    zgrid = np.linspace(0, 0.3, 3001)
    z = np.interp(dist, comoving_mpch(zgrid), zgrid)
    layout = DR1Layout(root)
    writer = FastspecWriter(layout.fastspec_path("v2.1"))
    fs = np.zeros(n, dtype=FastspecWriter.fastspec_dtype)
    md = np.zeros(n, dtype=FastspecWriter.metadata_dtype)
    fs["TARGETID"] = md["TARGETID"] = 39627000000000 + np.arange(n)
    fs["Z"] = md["Z"] = md["Z_RR"] = z
    md["RA"], md["DEC"] = ra, dec
    md["ZWARN"] = np.where(rng.random(n) < 0.03, 4, 0)
    md["DELTACHI2"] = np.where(rng.random(n) < 0.03, 10.0, 400.0)
    # Most galaxies pass the volume limit, so the uniform field is the void finder's input.
    fs["ABSMAG01_SDSS_R"] = rng.uniform(-22.5, -19.5, n)
    fs["ABSMAG01_SDSS_G"] = fs["ABSMAG01_SDSS_R"] + rng.normal(0.7, 0.1, n)
    fs["LOGMSTAR"] = rng.normal(10.5, 0.4, n)
    fs["SFR"] = 10 ** (fs["LOGMSTAR"] - 10.2 + rng.normal(0, 0.3, n))
    fs["DN4000"] = rng.normal(1.5, 0.2, n)
    fs["HALPHA_EW"] = rng.lognormal(2.5, 0.6, n)
    for col in ("SURVEY", "PROGRAM"):
        fs[col] = md[col] = {"SURVEY": b"main", "PROGRAM": b"bright"}[col]
    writer.append(fs, md)
    writer.close()
    return layout, fs["TARGETID"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("dr1")
    layout, _ = _write_tree(root, np.random.default_rng(17))
    return layout


@pytest.fixture(scope="module")
def study(tree):
    return VoidStudy.run(tree, cap="NGC", cuts=CUTS, workers=1)


def test_volume_limited_sample_matches_the_dr1_selection(tree):
    galaxies = load_galaxies(tree)
    assert {"G_R", "LOG_SSFR"} <= set(galaxies.colnames)
    fs = read_fastspec(tree)
    default = SampleCuts()
    assert (default.mag_limit, (default.zmin, default.zmax)) == (VOLLIM_MR, VOLLIM_Z)
    n = sum(int(build_sample(None, cap=c, galaxies=galaxies).vollim.sum()) for c in ("NGC", "SGC"))
    assert n == int(vollim_mask(fs).sum())
    ngc = build_sample(tree, CUTS, cap="NGC", galaxies=galaxies)
    t = ngc.table
    assert np.all((t["Z"] > 0.01) & (t["Z"] < 0.12))
    assert np.all(t["ZWARN"] == 0) and np.all(t["DELTACHI2"] > 25)
    assert np.all(np.asarray(t["DEC"]) > 0)  # the SGC cap is elsewhere
    np.testing.assert_allclose(
        t["DIST"], Planck18.comoving_distance(np.asarray(t["Z"])).value * Planck18.h, rtol=1e-6
    )
    np.testing.assert_allclose(np.linalg.norm(ngc.xyz, axis=1), t["DIST"])
    assert ngc.mask.contains(ngc.xyz).all()
    rmin, rmax = CUTS.distance_limits()
    assert (ngc.mask.rmin, ngc.mask.rmax) == (rmin, rmax)
    assert ngc.header()["ZLIMU"][0] == 0.12 and ngc.header()["CAP"][0] == "NGC"


def test_study_finds_the_planted_void_and_its_members(study):
    voids = study.void_table()
    c = np.column_stack([voids["X"], voids["Y"], voids["Z"]])
    d = np.linalg.norm(c - VOID_CENTRE, axis=1)
    j = int(np.argmin(d))
    assert d[j] < 2.0 and abs(voids["RADIUS"][j] / VOID_RADIUS - 1) < 0.1
    vid = int(voids["VOID"][j])
    info = study.void_info(vid)
    assert info["N_GAL"] == len(study.members(vid)) and 0.08 < info["REDSHIFT"] < 0.09
    members = study.members(vid)
    assert np.all(np.diff(members["DIST_TO_CENTRE"]) >= 0)
    assert members["DIST_TO_CENTRE"].max() < voids["RADIUS"][j] + 20
    assert len(study.holes(vid)) == info["N_HOLES"] >= 1
    with pytest.raises(KeyError):
        study.void_info(10_000)
    env = study.environments()
    assert set(env["ENV"]) <= {"wall", "void", "edge", "outside"}
    assert np.all((env["VFLAG"] == VFLAG_VOID) == (env["VOID"] >= 0))


def test_slice_through_the_void_shows_its_cross_section(study):
    ra, dec, _ = xyz_to_radec(VOID_CENTRE[None])
    view = study.slice(SlicePlane.through_observer(ra[0], dec[0], thickness=6.0))
    circles = view.circles
    assert len(circles) and np.all(circles["RADIUS"] > 0)
    biggest = circles[np.argmax(circles["RADIUS"])]
    assert biggest["U"] == pytest.approx(250.0, abs=2.0) and abs(biggest["V"]) < 2.0
    assert biggest["RADIUS"] == pytest.approx(VOID_RADIUS, rel=0.1)
    g = view.galaxies
    plane = SlicePlane.through_observer(ra[0], dec[0], thickness=6.0)
    assert len(g) and np.all(np.abs(plane.distance(study.sample.xyz[g["INDEX"]])) <= 3.0)
    inside = np.hypot(g["U"] - 250.0, g["V"]) < 0.8 * VOID_RADIUS
    assert not np.any(inside)  # the planted void is empty


def test_summary_and_comparisons_are_complete(study):
    s = study.summary(n_points=20_000)
    assert s["n_voids"] == len(study.catalog) > 0
    assert 0 < s["volume_filling_fraction"].value < 1
    assert 0 <= s["galaxy_void_fraction"].value < 1
    assert s["size_function"].counts.sum() <= s["n_voids"]
    results = study.compare(n_boot=400, confidence=0.995)
    assert [c.property for c in results] == ["G_R", "LOGMSTAR", "LOG_SSFR", "DN4000", "HALPHA_EW"]
    # No environmental effect was put in: the intervals include zero (0.5 % each, 5 tests).
    for c in results:
        assert c.ci[0] < 0 < c.ci[1], c.row()


def _run(app_cls, argv):
    for cls in (VoidsApp, FindApp, ClassifyApp, CompareApp):
        cls.clear_instance()
    app = app_cls()
    app.initialize(argv)
    app.start()


def test_cli_find_classify_compare(tree, tmp_path, capsys):
    common = [
        f"--data-root={tree.root}",
        f"--output-dir={tmp_path}",
        f"--home={tmp_path / 'home'}",
        "--zmax=0.12",
        "--workers=1",
        "--no-db",
        "--no-progress",
    ]
    _run(FindApp, common)
    found = json.loads(capsys.readouterr().out)
    assert set(found["caps"]) == {"NGC", "SGC"}
    catalog = VoidCatalog.read(tmp_path / "VoidFinder_NGC.fits")
    assert len(catalog) == found["caps"]["NGC"]["voids"] > 0
    assert catalog.header["ZLIMU"] == 0.12 and catalog.header["CAP"] == "NGC"
    _run(ClassifyApp, common)
    classified = json.loads(capsys.readouterr().out)
    member = Table.read(tmp_path / "void_membership_NGC.fits")
    counts = classified["caps"]["NGC"]
    assert len(member) == counts["galaxies"]
    for name, flag in (("wall", 0), ("void", 1), ("edge", 2), ("outside", 9)):
        assert int(np.sum(member["VFLAG"] == flag)) == counts[name]
    assert counts["void"] > 0 and counts["edge"] > 0
    np.testing.assert_array_equal(member["VOID"] >= 0, member["VFLAG"] == 1)
    _run(CompareApp, [*common, "--n-boot=50"])
    report = json.loads((tmp_path / "compare.json").read_text())
    assert [r["property"] for r in report["comparisons"]][0] == "G_R"
    n_void = sum(c["void"] for c in classified["caps"].values())
    assert 0 < report["comparisons"][0]["n_void"] <= n_void
    assert report["model_version"] == found["model_version"] == classified["model_version"]


def test_cli_is_registered():
    from desilab.hub.cli import SUBCOMMANDS
    from traitlets.utils.importstring import import_item

    assert import_item(SUBCOMMANDS["voids"][0]) is VoidsApp
    assert set(VoidsApp.subcommands) == {"find", "classify", "compare"}


@pytest.mark.slow
def test_desilab_voids_runs_as_a_command():
    desilab = Path(sys.executable).parent / "desilab"
    out = subprocess.run(
        [str(desilab), "voids", "find", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--data-root" in out.stdout and "VoidFinder" in out.stdout


# -- PostgreSQL: result tables, the catalog as galaxy source, the CLI writing results ---------


@pytest.fixture(scope="module")
def pg():
    """A real embedded PostgreSQL with the catalog roles and schemas; stopped at the end.

    Its folder is under /tmp with mode 0755: the server runs as the ``pgserver`` system
    user, which cannot enter pytest's private tmp_path.
    """
    root = Path(tempfile.mkdtemp(prefix="desilab-voids-", dir="/tmp"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "home")
    dsn = server.start()
    try:
        prepare_catalog(dsn)
        ensure_tables(dsn)
        yield dsn
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _owner_of(dsn: str, table: str) -> str:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'results' AND tablename = %s",
            (table,),
        ).fetchone()[0]


@pytest.mark.slow
def test_results_round_trip_and_permissions(pg, study):
    ensure_tables(pg)  # idempotent
    for table in ("void_runs", "voids", "void_holes", "void_membership"):
        assert _owner_of(pg, table) == OWNER
    version = "test-version"
    write_run(pg, version, {"axes": {"NGC": study.catalog.axes.tolist()}, "note": "test"})
    assert write_voids(pg, version, "NGC", study.catalog) == len(study.catalog)
    m = study.membership
    assert write_membership(pg, version, "NGC", m, void_catalog="test") == len(m)
    back = read_membership(pg, version, cap="NGC")
    order = np.argsort(m.targetid)
    np.testing.assert_array_equal(back["TARGETID"], m.targetid[order])
    np.testing.assert_array_equal(back["VFLAG"], m.vflag[order])
    np.testing.assert_array_equal(back["VOID"], np.where(m.vflag == 1, m.void, -1)[order])
    vid = int(study.catalog.maximals["VOID"][0])
    one = read_membership(pg, version, void_id=vid)
    assert len(one) == len(study.members(vid))
    voids = read_voids(pg, version, "NGC")
    for name in ("X", "RADIUS", "EDGE", "R_EFF"):
        np.testing.assert_allclose(voids.maximals[name], study.catalog.maximals[name])
    assert len(voids.holes) == len(study.catalog.holes)
    np.testing.assert_allclose(voids.axes, study.catalog.axes)
    assert [r["model_version"] for r in list_runs(pg)] == [version]
    # A rerun replaces the unit; a failing write leaves the previous rows.
    write_membership(pg, version, "NGC", m, void_catalog="test")
    assert len(read_membership(pg, version)) == len(m)
    bad = Membership(np.full(len(m), 5, np.int8), m.void, m.targetid)
    with pytest.raises(psycopg.errors.CheckViolation):
        write_membership(pg, version, "NGC", bad, void_catalog="test")
    np.testing.assert_array_equal(read_membership(pg, version)["VFLAG"], m.vflag[order])
    # Users read results but cannot write them.
    user_dsn = ensure_user_role(pg, "voidtester")
    assert len(read_membership(user_dsn, version, cap="NGC")) == len(m)
    with psycopg.connect(user_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM results.void_membership")


@pytest.mark.slow
def test_catalog_source_gives_the_same_sample(pg, tree):
    pytest.importorskip("desilab.desi.catalog")
    from desilab.desi import ingest
    from desilab.desi.catalog import Catalog

    ingest(tree.root, pg, progress=False, kinds=("fastspec",), verify_checksum=False)
    files = load_galaxies(tree)
    for source in (pg, Catalog(ensure_user_role(pg, "voidreader"))):
        db = load_galaxies(source)
        assert len(db) == len(files)
        np.testing.assert_array_equal(np.sort(db["TARGETID"]), np.sort(files["TARGETID"]))
        a = db[np.argsort(db["TARGETID"])]
        b = files[np.argsort(files["TARGETID"])]
        for col in ("RA", "DEC", "Z", "ZWARN", "ABSMAG01_SDSS_R", "LOGMSTAR", "G_R", "LOG_SSFR"):
            np.testing.assert_allclose(a[col], b[col], rtol=1e-6, atol=1e-5, equal_nan=True)
    s_db = build_sample(pg, CUTS, cap="NGC")
    s_files = build_sample(tree, CUTS, cap="NGC")
    assert s_db.vollim.sum() == s_files.vollim.sum()
    np.testing.assert_array_equal(s_db.mask.pixels, s_files.mask.pixels)


@pytest.mark.slow
def test_cli_writes_results_to_the_database(pg, tree, tmp_path, capsys):
    common = [
        f"--data-root={tree.root}",
        f"--db-url={pg}",
        f"--output-dir={tmp_path}",
        f"--home={tmp_path / 'home'}",
        "--zmax=0.12",
        "--caps=NGC",
        "--workers=1",
        "--no-progress",
    ]
    _run(FindApp, common)
    version = json.loads(capsys.readouterr().out)["model_version"]
    _run(ClassifyApp, common)
    capsys.readouterr()
    in_file = VoidCatalog.read(tmp_path / "VoidFinder_NGC.fits")
    in_db = read_voids(pg, version, "NGC")
    np.testing.assert_allclose(in_db.maximals["RADIUS"], in_file.maximals["RADIUS"])
    member = Table.read(tmp_path / "void_membership_NGC.fits")
    rows = read_membership(pg, version, cap="NGC")
    assert len(rows) == len(member)
    run = next(r for r in list_runs(pg) if r["model_version"] == version)
    assert run["assumptions"]["sample"]["zmax"] == 0.12
    assert run["assumptions"]["voidfinder"]["grid_edge"] == 5.0


@pytest.mark.slow
def test_study_from_the_database_and_desivast_from_the_catalog(pg, tree, study, tmp_path, capsys):
    pytest.importorskip("desilab.desi.catalog")
    from desilab.desi import ingest

    # DESIVAST in the catalog: a VAC file ingested, read back as a void catalog.
    study.catalog.write(tree.desivast_voidfinder("NGC"))
    ingest(tree.root, pg, progress=False, kinds=("fastspec", "desivast"), verify_checksum=False)
    desivast = read_desivast_voids(pg, "NGC")
    np.testing.assert_allclose(desivast.maximals["RADIUS"], study.catalog.maximals["RADIUS"])
    np.testing.assert_array_equal(desivast.holes["VOID"], study.catalog.holes["VOID"])
    # A stored run gives the same study as the files, with no file read.
    args = [
        f"--db-url={pg}",
        f"--output-dir={tmp_path}",
        f"--home={tmp_path / 'home'}",
        "--zmax=0.12",
        "--caps=NGC",
        "--workers=1",
        "--no-progress",
    ]
    _run(FindApp, [f"--data-root={tree.root}", *args])
    version = json.loads(capsys.readouterr().out)["model_version"]
    _run(ClassifyApp, args)  # galaxies from the catalog this time
    capsys.readouterr()
    reader = ensure_user_role(pg, "voidviewer")
    again = VoidStudy.from_database(reader, version, "NGC")
    assert len(again.catalog) == len(study.catalog)
    np.testing.assert_array_equal(np.sort(again.sample.targetid), np.sort(study.sample.targetid))
    order_a, order_b = np.argsort(again.sample.targetid), np.argsort(study.sample.targetid)
    np.testing.assert_array_equal(again.membership.vflag[order_a], study.membership.vflag[order_b])
    vid = int(study.catalog.maximals["VOID"][0])
    assert len(again.members(vid)) == len(study.members(vid))
    with pytest.raises(KeyError):
        VoidStudy.from_database(reader, "no-such-run", "NGC")
