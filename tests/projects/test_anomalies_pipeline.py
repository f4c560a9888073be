"""The anomaly pipeline on a small mock DR1: selection, store, Ray vs local, end to end."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import psycopg
import pytest
from astropy.table import vstack
from conftest_anomalies import THREADS
from desilab.desi import DR1Layout, generate_mock, read_truth, read_zpix
from desilab.desi.roles import ensure_user_role, prepare_catalog
from desilab.hub.database import EmbeddedPostgres
from desilab.projects.anomalies import (
    FeatureStore,
    TrainConfig,
    build_feature_store,
    evaluate,
    explain,
    fit_baselines,
    project_latents,
    read_results,
    score_store,
    select_qsos,
    train,
    write_results,
)
from desilab.projects.anomalies.cli import (
    EvaluateApp,
    PrepareApp,
    ScoreApp,
    TrainApp,
    read_scores,
)
from support.local_ray import local_ray

MOCK_SEED = 5150
#: VAE AUC over all injected anomalies that the end-to-end mini run must beat. The mini
#: run has ~300 spectra and ~30 anomalies and trains for a minute on one core, so it
#: is far from the full-size result (see docs/benchmarks.md): this guards against a
#: pipeline that ranks at random (0.5) or upside down.
MINI_RUN_MIN_AUC = 0.65


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    """~1000 QSOs, half with spectra (labelled ones always), few other targets."""
    outdir = tmp_path_factory.mktemp("anomaly-mock")
    generate_mock(
        outdir,
        n_qso=900,
        n_galaxy=150,
        n_star=40,
        seed=MOCK_SEED,
        progress=False,
        qso_spectra_fraction=0.35,
        galaxy_spectra_fraction=0.0,
        star_spectra_fraction=0.0,
        workers=1,
    )
    return outdir, DR1Layout(outdir / "dr1")


@pytest.fixture(scope="module")
def store(mock, tmp_path_factory):
    _, layout = mock
    selection = select_qsos(layout)
    path = tmp_path_factory.mktemp("anomaly-store") / "store"
    return build_feature_store(
        selection, layout, path, shard_size=96, workers=1, use_ray=False, progress=False
    )


def test_selection_applies_the_quality_cuts(mock):
    _, layout = mock
    selection = select_qsos(layout, zmin=0.3)
    zpix = vstack([read_zpix(p) for p in layout.zpix_files()], metadata_conflicts="silent")
    spectype = np.char.strip(np.asarray(zpix["SPECTYPE"]).astype(str))
    good = (
        (spectype == "QSO")
        & (np.asarray(zpix["ZWARN"]) == 0)
        & (np.asarray(zpix["DELTACHI2"]) > 25)
        & np.asarray(zpix["ZCAT_PRIMARY"]).astype(bool)
        & (np.asarray(zpix["Z"]) >= 0.3)
    )
    assert sorted(selection["TARGETID"]) == sorted(np.asarray(zpix["TARGETID"])[good])
    assert len(np.unique(selection["TARGETID"])) == len(selection) > 100
    # Some QSOs fail the cuts (bad redshifts, stars): the cut is not vacuous.
    assert (spectype == "QSO").sum() > len(selection)
    keys = list(zip(selection["SURVEY"], selection["PROGRAM"], selection["HEALPIX"], strict=True))
    assert keys == sorted(keys), "sorted by coadd file"


def test_the_store_holds_every_selected_spectrum_and_resumes(store, tmp_path):
    m = store.manifest
    assert m["complete"] and len(store) == m["n_spectra"] > 150
    # The mock writes spectra for a subset of targets: the rest is counted, not lost.
    assert m["n_selected"] == m["n_spectra"] + m["n_missing"] + m["n_rejected"]
    meta = store.meta()
    assert len(np.unique(meta["TARGETID"])) == len(meta)
    f, w, _ = store.load_shard(0)
    assert f.dtype == np.float32 and f.shape[1] == store.grid.n_bins
    good = w > 0
    assert np.allclose(np.where(good, f, 0).sum(1) / good.sum(1), 1.0, rtol=1e-4)
    # An interrupted build: one shard lost, rebuilt alone, identical.
    copy = tmp_path / "store"
    shutil.copytree(store.path, copy)
    (copy / "shard-00001.done.json").unlink()
    (copy / "shard-00001.flux.npy").unlink()
    manifest = json.loads((copy / "store.json").read_text())
    again = build_feature_store(
        select_qsos(DR1Layout(manifest["data_root"])),
        manifest["data_root"],
        copy,
        shard_size=96,
        workers=1,
        use_ray=False,
        progress=False,
    )
    assert again.manifest["shards_resumed"] == len(store.shards) - 1
    assert np.array_equal(np.load(copy / "shard-00001.flux.npy"), store.load_shard(1)[0])


def test_the_preparation_reader_reads_what_the_coadd_reader_reads(mock, tmp_path):
    from desilab.desi import CoaddFile, DR1FormatError
    from desilab.desi.coadd_rows import read_selected_arms

    _, layout = mock
    sel = select_qsos(layout)
    keys = zip(sel["SURVEY"], sel["PROGRAM"], sel["HEALPIX"], strict=True)
    files = sorted({(str(s), str(p), int(h)) for s, p, h in keys})
    path = next(layout.coadd(*f) for f in files if layout.coadd(*f).exists())
    with CoaddFile(path) as c:
        tid = c.targetids
        ref = c.read(resolution=False)
    # Every other target, backwards, plus one that is not in the file.
    want = np.r_[tid[::-2], 1]
    present, order, arms = read_selected_arms(path, want)
    assert present.tolist() == [True] * (len(want) - 1) + [False]
    rows = np.array([np.flatnonzero(tid == t)[0] for t in want[present][order]])
    assert np.all(np.diff(rows) > 0), "rows come in file order"
    for arm in "BRZ":
        assert arms[arm].mask is None, "MASK is not read: ivar = 0 marks masked pixels"
        assert np.array_equal(arms[arm].wave, ref.arms[arm].wave)
        assert np.array_equal(arms[arm].flux, ref.arms[arm].flux[rows])
        assert np.array_equal(arms[arm].ivar, ref.arms[arm].ivar[rows])
        # The contract the reader relies on: every masked pixel has ivar = 0.
        assert np.all(ref.arms[arm].ivar[ref.arms[arm].mask != 0] == 0)
    # A file without an HDU the reader needs: a clear error naming the file and the HDU.
    from astropy.io import fits

    broken = tmp_path / path.name
    with fits.open(path) as hdul:
        fits.HDUList([h for h in hdul if h.name != "Z_IVAR"]).writeto(broken)
    with pytest.raises(DR1FormatError, match="Z_IVAR") as err:
        read_selected_arms(broken, want)
    assert broken.name in str(err.value)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("anomaly-model")
    config = TrainConfig(
        epochs=25, batch_size=32, lr=3e-3, threads=THREADS, device="cpu", gmm_components=3
    )
    model = train(store, out / "vae", vae={"latent": 8}, config=config, progress=False)
    fit_baselines(store, out / "pca", n_components=6)
    return model, out


@pytest.mark.slow
def test_ray_scoring_equals_local_scoring(store, trained):
    _, out = trained
    # In this process (workers=1) against a Ray worker process: same numbers, same order.
    local = score_store(store, out / "vae", workers=1, use_ray=False, progress=False)
    # One worker: a second only adds start-up time on the 2-core test machine.
    with local_ray(num_cpus=1):
        remote = score_store(store, out / "vae", use_ray=True, progress=False)
    assert remote.colnames == local.colnames
    for name in local.colnames:
        assert np.array_equal(np.asarray(remote[name]), np.asarray(local[name])), name
    assert len(local) == len(store)


@pytest.mark.slow
def test_end_to_end_mini_run_finds_the_injected_anomalies(mock, store, trained, tmp_path):
    outdir, _ = mock
    model, out = trained
    scores = score_store(store, out / "vae", baseline=out / "pca", workers=1, progress=False)
    result = evaluate(scores, read_truth(outdir, "qso"))
    auc = result.auc("all", "VAE")
    print(result.markdown())
    assert auc > MINI_RUN_MIN_AUC, result.markdown()
    assert {"PCA", "IsolationForest"} <= set(result.table["DETECTOR"])
    result.plot(tmp_path / "roc.html")
    assert (tmp_path / "roc.html").stat().st_size > 10_000
    # What a widget shows for the top object: rest and observed frames, reconstruction.
    top = scores["TARGETID"][np.argmax(scores["SCORE"])]
    ex = explain([top], store, model, baseline=out / "pca")
    assert ex.scores["score"][0] == pytest.approx(np.max(scores["SCORE"]))
    obs = ex.observed(0)
    assert obs["wave"].unit == "Angstrom" and obs["model"].unit.is_equivalent("erg/(s cm2 AA)")
    assert np.nanmin(obs["wave"].value) == pytest.approx(
        ex.wave_rest.value[0] * (1 + ex.z[0]), rel=1e-9
    )
    xy = project_latents(scores["LATENT"])
    assert xy.shape == (len(scores), 2) and np.array_equal(xy, project_latents(scores["LATENT"]))
    assert isinstance(FeatureStore(store.path), FeatureStore)


@pytest.fixture(scope="module")
def database():
    """A real embedded PostgreSQL with the catalog roles and schemas; admin DSN.

    Under /tmp with mode 0755 (not pytest's private tmp): the server runs as the
    ``pgserver`` system user, which must reach its data folder.
    """
    home = Path(tempfile.mkdtemp(prefix="desilab-anomalies-pg-", dir="/tmp"))
    os.chmod(home, 0o755)
    server = EmbeddedPostgres(home)
    dsn = server.start()
    try:
        prepare_catalog(dsn)
        yield dsn
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_scores_are_upserted_into_the_results_table(database, store, trained):
    _, out = trained
    scores = score_store(store, out / "vae", baseline=out / "pca", workers=1, progress=False)
    version = str(scores["MODEL_VERSION"][0])
    assert write_results(database, scores, chunk=100) == len(scores)
    # Idempotent: the same rows again replace themselves.
    write_results(database, scores)
    reader = ensure_user_role(database, "anomaly_reader")
    back = read_results(reader, model_version=version)
    assert len(back) == len(scores)
    order = np.argsort(-np.asarray(scores["SCORE"]), kind="stable")
    assert list(back["TARGETID"][:20]) == list(scores["TARGETID"][order][:20])
    got = {int(t): i for i, t in enumerate(back["TARGETID"])}
    rows = [got[int(t)] for t in scores["TARGETID"]]
    assert np.allclose(back["SCORE"][rows], scores["SCORE"], rtol=1e-6)
    assert np.array_equal(back["LATENT"][rows], np.asarray(scores["LATENT"], np.float32))
    assert np.allclose(back["SCORE_PCA"][rows], scores["SCORE_PCA"], rtol=1e-6)
    # Another model version lives next to this one; a rescore updates in place.
    other = scores.copy()
    other["MODEL_VERSION"] = "vae-other"
    other["SCORE"] = np.asarray(other["SCORE"]) + 1.0
    write_results(database, other)
    other["SCORE"] = np.asarray(other["SCORE"]) + 1.0
    write_results(database, other)
    assert len(read_results(reader)) == 2 * len(scores)
    top = read_results(reader, model_version="vae-other", targetids=scores["TARGETID"][:3])
    pairs = zip(scores["TARGETID"], scores["SCORE"], strict=True)
    expect = {int(t): float(v) + 2.0 for t, v in pairs}
    assert len(top) == 3
    for t, v in zip(top["TARGETID"], top["SCORE"], strict=True):
        assert np.isclose(v, expect[int(t)], rtol=1e-6)
    with psycopg.connect(database) as conn:
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'results' "
            "AND tablename = 'qso_anomaly'"
        ).fetchone()
    assert owner == ("desi_owner",)
    # Researchers read the results; they cannot change them.
    with psycopg.connect(reader) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM results.qso_anomaly")


@pytest.mark.slow
def test_selection_from_the_catalog_equals_the_selection_from_the_files(database, mock):
    catalog = pytest.importorskip("desilab.desi.catalog")
    ingest = pytest.importorskip("desilab.desi.ingest")
    _, layout = mock
    ingest.ingest(layout.root, database, kinds=("zpix",), progress=False)
    from_db = select_qsos(catalog.Catalog(database), zmin=0.2)
    from_files = select_qsos(layout, zmin=0.2)
    assert len(from_db) == len(from_files) > 100
    for name in ("TARGETID", "SURVEY", "PROGRAM", "HEALPIX"):
        assert list(from_db[name]) == list(from_files[name]), name
    assert np.allclose(from_db["Z"], from_files["Z"], rtol=0, atol=1e-12)


@pytest.mark.slow
def test_the_cli_runs_the_pipeline(mock, tmp_path, capsys):
    outdir, layout = mock
    work = tmp_path / "work"

    def run(app_class, *args):
        app = app_class()
        app.initialize([f"--home={tmp_path}", "--no-progress", "--ray=no", *args])
        app.start()

    common = [f"--store={work}/store", "--workers=1"]
    run(PrepareApp, *common, f"--data-root={layout.root}", "--limit=120", "--shard-size=64")
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] and summary["n_selected"] == 120
    run(
        TrainApp,
        *common,
        f"--model={work}/vae",
        f"--baseline={work}/pca",
        "--epochs=2",
        "--latent=8",
        "--threads=1",
        "--device=cpu",
    )
    assert (work / "vae" / "history.csv").exists() and (work / "vae" / "history.html").exists()
    capsys.readouterr()
    run(
        ScoreApp,
        *common,
        f"--model={work}/vae",
        f"--baseline={work}/pca",
        f"--output={work}/scores.parquet",
    )
    scores = read_scores(work / "scores.parquet")
    assert len(scores) == json.loads(capsys.readouterr().out)["scored"] > 0
    assert scores["LATENT"].shape == (len(scores), 8)
    run(EvaluateApp, f"--scores={work}/scores.parquet", f"--truth={outdir}", f"--output={work}/ev")
    assert "| all |" in (work / "ev" / "evaluation.md").read_text()
    assert (work / "ev" / "roc.html").exists()
