"""AnomalyExplorer on the shared demo catalog: latent map, top-N, spectrum + reconstruction, VI."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from conftest_anomalies import THREADS
from desilab.desi.vi import inspections
from desilab.projects.anomalies import (
    AnomalyExplorer,
    AnomalyExplorerModel,
    TrainConfig,
    build_feature_store,
    score_store,
    select_qsos,
    train,
    write_results,
)

pytestmark = pytest.mark.slow


def role_of(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT session_user").fetchone()[0]


@pytest.fixture(scope="module")
def scored(demo_catalog, tmp_path_factory):
    """A small store from the demo catalog, a VAE trained briefly, scores in the results table."""
    work = tmp_path_factory.mktemp("anomaly-explorer")
    user = demo_catalog.user_dsn("explorer_user")
    selection = select_qsos(user, limit=240)
    store = build_feature_store(
        selection, demo_catalog.data_root, work / "store", shard_size=120, workers=1,
        use_ray=False, progress=False,
    )  # fmt: skip
    config = TrainConfig(epochs=3, batch_size=32, threads=THREADS, device="cpu", gmm_components=2)
    model = train(store, work / "vae", vae={"latent": 6}, config=config, progress=False)
    scores = score_store(store, work / "vae", workers=1, use_ray=False, progress=False)
    write_results(demo_catalog.admin_dsn, scores)
    return user, store, model, scores


def test_the_explorer_ranks_maps_and_opens_the_coadd_with_its_reconstruction(scored):
    user, store, model, scores = scored
    ex = AnomalyExplorerModel.connect(store, model, dsn=user, top_n=10)
    # The scores come back from results.qso_anomaly, most anomalous first.
    assert len(ex) == len(scores)
    top = ex.top()
    assert len(top) == 10 and list(top["RANK"]) == list(range(1, 11))
    assert np.all(np.diff(np.asarray(top["SCORE"])) <= 0)
    assert top["TARGETID"][0] == scores["TARGETID"][np.argmax(scores["SCORE"])]
    pts = ex.points()
    assert pts["x"].shape == pts["y"].shape == (len(scores),) and np.all(np.isfinite(pts["x"]))
    assert np.allclose(pts["score"][:10], top["SCORE"]) and pts["targetid"][0] == top["TARGETID"][0]
    hist = ex.histogram(bins=12)
    assert hist["counts"].sum() == len(scores) and len(hist["left"]) == 12

    tid = int(top["TARGETID"][0])
    spectrum = ex.select(tid)
    spec = spectrum.current
    assert spec.targetid == tid and set(spec.arms) == {"B", "R", "Z"}
    assert spec.info["ANOMALY_RANK"] == 1 and spec.info["MODEL_VERSION"] == model.version
    # The reconstruction is drawn on the coadd's own wavelengths, in its flux units: where
    # the model covers the arm, it follows the smoothed spectrum's level.
    drawn = spectrum.arm_data()
    covered = 0
    for name, arm in spec.arms.items():
        overlay = drawn[name]["model"]
        inside = np.isfinite(overlay)
        covered += inside.sum()
        good = inside & ~arm.bad()
        if good.sum() > 200:
            ratio = np.median(overlay[good]) / np.median(arm.flux[good])
            assert 0.5 < ratio < 2.0, (name, ratio)
    assert covered > 1000
    with pytest.raises(KeyError, match="not among"):
        ex.select(12345)


def test_flags_are_stored_as_the_connected_user(scored, demo_catalog):
    user, store, model, _ = scored
    ex = AnomalyExplorerModel.connect(store, model, dsn=user)
    with pytest.raises(RuntimeError, match="select an object"):
        ex.flag("interesting")
    ex.select_rank(2)
    tid = ex.selected
    with pytest.raises(ValueError, match="interesting, artifact"):
        ex.flag("good")
    first = ex.flag("interesting", "  odd C IV  ")
    second = ex.flag("artifact")
    rows = inspections(user, [tid])
    assert [int(i) for i in rows["id"]] == [second, first]
    assert list(rows["flag"]) == ["artifact", "interesting"]
    assert set(rows["inspector"]) == {role_of(user)}
    assert set(rows["source"]) == {"anomaly-explorer"}
    assert rows["comment"][1] == "odd C IV"
    # Another user reads them, and writes under their own name only.
    other = demo_catalog.user_dsn("explorer_other")
    ex2 = AnomalyExplorerModel.connect(store, model, dsn=other)
    ex2.select(tid)
    ex2.flag("interesting")
    assert set(inspections(other, [tid])["inspector"]) == {role_of(user), role_of(other)}


def test_the_view_opens_a_tapped_point_and_reports_errors_inline(scored):
    _, store, model, scores = scored
    # Without a catalog: the store's spectrum in observed units, and no VI connection.
    view = AnomalyExplorer(AnomalyExplorerModel(scores, store, model, top_n=5))
    assert len(view.top_list.options) == 5
    index = 3
    tid = int(view.model.points()["targetid"][index])
    assert view.source.data["targetid"][index] == str(tid)  # exact, as text for the browser
    view.source.selected.indices = [index]  # what a tap on the map does
    view._pool.submit(lambda: None).result()  # the load runs in the view's worker thread
    view._pool.shutdown(wait=True)
    assert view.model.selected == tid
    assert f"TARGETID {tid}" in view.selection.value
    (spectrum_view,) = view.spectrum_box.children
    assert spectrum_view.model.targetid == tid
    overlay = np.array(spectrum_view.sources["spectrum"].data["model"], dtype=float)
    assert np.isfinite(overlay).sum() > 100, "the reconstruction is drawn"
    view.flag("interesting")
    assert "not connected to a database" in view.status.value
