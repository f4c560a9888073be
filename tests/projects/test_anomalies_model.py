"""The VAE: masked likelihood, deterministic training, exact resume, scoring harness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest_anomalies import THREADS, synthetic_spectra, synthetic_store
from desilab.projects.anomalies import (
    VAE,
    AnomalyModel,
    FeatureStore,
    PCABaseline,
    RestGrid,
    TrainConfig,
    VAEConfig,
    fit_baselines,
    plot_history,
    select_device,
    set_threads,
    train,
)
from sklearn.metrics import roc_auc_score

SMALL = {"latent": 4, "hidden": (32, 16)}


def fast_config(**kw) -> TrainConfig:
    return TrainConfig(
        **({"epochs": 3, "batch_size": 32, "threads": THREADS, "device": "cpu"} | kw)
    )


@pytest.fixture(autouse=True)
def _threads():
    set_threads(THREADS)


def test_masked_pixels_do_not_affect_the_loss_or_its_gradient():
    torch.manual_seed(0)
    flux, weight, _ = synthetic_spectra(16, 64, seed=3)
    model = VAE(VAEConfig(n_bins=64, **SMALL))

    def loss_and_grad(f):
        model.zero_grad()
        gen = torch.Generator().manual_seed(5)
        out = model(torch.as_tensor(f), torch.as_tensor(weight), generator=gen)
        loss = (0.5 * out["chi2"] + out["kl"]).mean()
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters()]

    base_loss, base_grad = loss_and_grad(flux)
    masked = weight == 0
    assert masked.any() and (~masked).any()
    for garbage in (1e6, -3.0, np.nan, np.inf):
        f = flux.copy()
        f[masked] = garbage
        loss, grad = loss_and_grad(f)
        assert loss == base_loss, garbage
        assert all(torch.equal(a, b) for a, b in zip(grad, base_grad, strict=True))
    # ... whereas changing one unmasked pixel does change the loss.
    f = flux.copy()
    f[np.nonzero(~masked)[0][0], np.nonzero(~masked)[1][0]] += 1.0
    assert loss_and_grad(f)[0] != base_loss


def test_training_is_deterministic_for_a_seed(tmp_path):
    store = synthetic_store(tmp_path / "store")
    a = train(store, tmp_path / "a", vae=SMALL, config=fast_config(epochs=2), progress=False)
    b = train(store, tmp_path / "b", vae=SMALL, config=fast_config(epochs=2), progress=False)
    c = train(
        store, tmp_path / "c", vae=SMALL, config=fast_config(epochs=2, seed=1), progress=False
    )
    assert a.version == b.version != c.version
    for k, v in a.vae.state_dict().items():
        assert torch.equal(v, b.vae.state_dict()[k])


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    store = synthetic_store(tmp_path / "store")
    full = train(store, tmp_path / "full", vae=SMALL, config=fast_config(epochs=4), progress=False)
    # "Interrupted" after two epochs; the same command with epochs=4 resumes.
    train(store, tmp_path / "resumed", vae=SMALL, config=fast_config(epochs=2), progress=False)
    first = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert len(first) == 2
    resumed = train(
        store, tmp_path / "resumed", vae=SMALL, config=fast_config(epochs=4), progress=False
    )
    for k, v in full.vae.state_dict().items():
        assert torch.equal(v, resumed.vae.state_dict()[k]), k
    assert resumed.version == full.version
    h_full = json.loads((tmp_path / "full" / "history.json").read_text())
    h_res = json.loads((tmp_path / "resumed" / "history.json").read_text())
    for key in ("epoch", "train_loss", "val_loss", "train_kl"):
        assert [h[key] for h in h_full] == [h[key] for h in h_res]
    assert (tmp_path / "full" / "history.csv").read_text().count("\n") == 5
    # The loss went down, and the plot of it is written.
    assert h_full[-1]["train_loss"] < h_full[0]["train_loss"]
    plot_history(tmp_path / "full", tmp_path / "loss.html")
    assert "bokeh" in (tmp_path / "loss.html").read_text().lower()
    # A different configuration in the same folder is refused, not silently mixed.
    with pytest.raises(ValueError, match="another configuration"):
        train(
            store,
            tmp_path / "resumed",
            vae=SMALL,
            config=fast_config(epochs=5, lr=1e-2),
            progress=False,
        )


def test_a_trained_model_reloads_and_scores_what_it_did_not_learn(tmp_path):
    store = synthetic_store(tmp_path / "store", n=400)
    config = fast_config(epochs=20, lr=3e-3)
    model = train(store, tmp_path / "vae", vae=SMALL, config=config, progress=False)
    again = AnomalyModel.load(tmp_path / "vae", device="cpu")
    flux, weight, _ = synthetic_spectra(80, 64, seed=11)
    odd = flux.copy()
    # An absorption trough that no training spectrum has, where it is observed.
    seen = (weight[:, 40:48] > 0).all(axis=1)
    y = np.zeros(80, bool)
    y[:40] = seen[:40]
    odd[y, 40:48] -= 0.8
    assert y.sum() >= 12
    s1 = model.score_arrays(odd, weight)
    s2 = again.score_arrays(odd, weight)
    assert np.array_equal(s1["score"], s2["score"])
    assert s1["latent"].shape == (80, 4)
    assert roc_auc_score(y, s1["recon"]) > 0.9
    assert roc_auc_score(y, s1["score"]) > 0.85
    # The same harness scores the baselines.
    base = fit_baselines(store, tmp_path / "pca", n_components=4, floor=model.config.floor)
    b = PCABaseline.load(tmp_path / "pca").score_arrays(odd, weight)
    assert np.allclose(b["pca"], base.score_arrays(odd, weight)["pca"])
    assert roc_auc_score(y, b["pca"]) > 0.9
    assert np.isfinite(b["iforest"]).all()


def test_the_store_reads_back_what_was_written(tmp_path):
    flux, weight, meta = synthetic_spectra(50, 32, seed=2)
    grid = RestGrid(1300.0, 3000.0, 32)
    from desilab.projects.anomalies import write_feature_store

    store = write_feature_store(tmp_path / "s", flux, weight, meta, grid, shard_size=20)
    assert len(store) == 50 and len(store.shards) == 3
    f, w, m = store.get(meta["TARGETID"][[45, 3, 21]])
    assert np.array_equal(f, flux[[45, 3, 21]]) and np.array_equal(w, weight[[45, 3, 21]])
    assert list(m["TARGETID"]) == list(meta["TARGETID"][[45, 3, 21]])
    with pytest.raises(KeyError, match="not in feature store"):
        store.get([1])
    assert FeatureStore(tmp_path / "s").grid == grid


def test_cuda_is_used_only_where_a_gpu_is_visible():
    if torch.cuda.is_available():
        assert select_device("auto").type == "cuda"
    else:
        assert select_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="no GPU is visible"):
            select_device("cuda")


def test_the_reconstruction_score_is_calibrated_within_snr_bins():
    from desilab.projects.anomalies.detector import calibrate

    rng = np.random.default_rng(3)
    snr = 10 ** rng.uniform(0, 2, 4000)
    # Ordinary spectra: the VAE's systematic residual grows with S/N.
    recon = np.log(snr) + rng.normal(0, 0.2, snr.size)
    density = rng.normal(0, 1, snr.size)
    cal = calibrate(recon, density, snr)
    assert len(cal["recon_snr"]["median"]) == 10
    model = AnomalyModel.__new__(AnomalyModel)
    model.calibration = cal
    score = model.combine(recon, density, snr)
    bright, faint = snr > 50, snr < 2
    # Bright ordinary objects no longer outrank faint ones ...
    assert abs(np.median(score[bright]) - np.median(score[faint])) < 0.3
    # ... and a faint object with a bright object's residual is now an outlier.
    odd = model.combine(np.array([np.log(60.0)]), np.array([0.0]), np.array([1.5]))
    assert odd[0] > np.quantile(score, 0.999)
    # Either term flags an object: the larger standardised term counts.
    both = model.combine(np.array([np.log(5.0)]), np.array([8.0]), np.array([5.0]))
    assert both[0] > 5
    # Models calibrated before keep the old combination (mean of globally scaled terms).
    model.calibration = {"recon": cal["recon"], "density": cal["density"]}
    (mr, sr), (md, sd) = cal["recon"], cal["density"]
    old = model.combine(recon[:5], density[:5], snr[:5])
    assert np.allclose(old, 0.5 * ((recon[:5] - mr) / sr + (density[:5] - md) / sd))


def test_the_latent_density_is_conditioned_on_redshift(tmp_path):
    from desilab.projects.anomalies.detector import ConditionalLatentDensity, load_density

    # Ordinary latents move with z (the rest-frame window does): x0 follows ln(1+z)
    # closely, x1 is free. An object 0.6 off in x0 is ordinary for the population at
    # large, but not among quasars at its own redshift.
    rng = np.random.default_rng(5)
    z = rng.uniform(0.5, 3.5, 3000)
    lat = np.c_[4 * np.log1p(z) + rng.normal(0, 0.1, z.size), rng.normal(0, 1, z.size)]
    density = ConditionalLatentDensity.fit(lat, z, neighbours=300)
    odd = np.array([[4 * np.log1p(2.0) + 0.6, 0.0]])
    d_train = density.distance2(lat, z)
    assert density.distance2(odd, np.array([2.0]))[0] > np.quantile(d_train, 0.999)
    assert np.median(d_train) == pytest.approx(1.39, rel=0.2)  # chi^2, 2 dof
    # A global Gaussian does not see it.
    cov_inv = np.linalg.inv(np.cov(lat.T))
    d_global = np.einsum("ij,jk,ik->i", lat - lat.mean(0), cov_inv, lat - lat.mean(0))
    d_odd = ((odd - lat.mean(0)) @ cov_inv @ (odd - lat.mean(0)).T)[0, 0]
    assert d_odd < np.quantile(d_global, 0.9)
    density.save(tmp_path / "density.npz")
    again = load_density(tmp_path / "density.npz")
    assert np.array_equal(again.distance2(lat, z), d_train)


def test_the_auc_error_matches_sklearn_and_the_bootstrap_spread():
    from desilab.projects.anomalies.evaluate import auc_with_error

    rng = np.random.default_rng(7)
    y = rng.random(4000) < 0.02  # ~80 positives, as per class in the benchmark
    s = rng.normal(size=4000) + 1.5 * y
    s[:200] = np.round(s[:200])  # ties count one half, as in sklearn
    auc, err = auc_with_error(y, s)
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    boot = []
    for _ in range(300):
        i = rng.integers(0, len(y), len(y))
        boot.append(roc_auc_score(y[i], s[i]))
    assert err == pytest.approx(np.std(boot), rel=0.25)
    # Fewer positives, wider error.
    assert auc_with_error(y[:1000], s[:1000])[1] > err
