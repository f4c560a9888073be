"""Scoring a feature store, shard by shard, with Ray or local processes; explaining one object.

:func:`score_store` maps :func:`score_shard` over the shards with
:func:`~desilab.projects.run_units`: on a Ray cluster when one is reachable,
in local processes otherwise. Every shard is scored by the same code with the
same number of torch threads, so both ways give identical numbers.

:func:`explain` is what an explorer widget needs for a handful of TARGETIDs:
spectrum, reconstruction, residuals, latent coordinates and scores, in the rest
frame and in observed units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import Table, hstack, vstack
from desilab.projects.runner import run_units
from threadpoolctl import threadpool_limits

from .baselines import PCABaseline
from .detector import AnomalyModel
from .model import effective_weight, set_threads
from .store import FeatureStore

__all__ = [
    "Explanation",
    "explain",
    "load_detector",
    "project_latents",
    "score_shard",
    "score_store",
]

FLUX_UNIT = u.Unit("1e-17 erg / (s cm2 Angstrom)")


def load_detector(folder: str | Path, *, device: str = "cpu") -> AnomalyModel | PCABaseline:
    """The VAE detector (``model.json``) or the baselines (``baseline.json``) in a folder."""
    folder = Path(folder)
    if (folder / "model.json").is_file():
        return AnomalyModel.load(folder, device=device)
    if (folder / "baseline.json").is_file():
        return PCABaseline.load(folder)
    raise FileNotFoundError(f"no model.json or baseline.json in {folder}: train a model first")


def _columns(detector: AnomalyModel | PCABaseline, scores: dict[str, np.ndarray]) -> dict:
    if isinstance(detector, AnomalyModel):
        return {
            "SCORE": scores["score"],
            "SCORE_RECON": scores["recon"],
            "SCORE_DENSITY": scores["density"],
            "CHI2": scores["chi2"],
            "AMPLITUDE": scores["amplitude"],
            "LATENT": scores["latent"].astype(np.float32),
            "MODEL_VERSION": np.full(len(scores["score"]), detector.version),
        }
    return {
        "SCORE_PCA": scores["pca"],
        "SCORE_PCA_CHI2": scores["pca_chi2"],
        "SCORE_IFOREST": scores["iforest"],
        "CHI2_PCA": scores["chi2"],
        "BASELINE_VERSION": np.full(len(scores["pca"]), detector.version),
    }


def score_shard(
    index: int, *, store: str, model: str, device: str = "cpu", threads: int = 1
) -> dict[str, np.ndarray]:
    """Score shard ``index`` of a store with the detector in folder ``model``.

    A unit for :func:`~desilab.projects.run_units` (module level, picklable
    arguments). Returns plain arrays: TARGETID, Z and the detector's columns.
    """
    set_threads(threads)
    st = FeatureStore(store)
    detector = load_detector(model, device=device)
    flux, weight, meta = st.load_shard(index)
    # A unit owns ``threads`` cores: NumPy's BLAS (mixture densities, PCA solves) must not
    # start one thread per core of the node next to its siblings' (5x slower when loaded).
    with threadpool_limits(threads):
        if isinstance(detector, AnomalyModel):
            z = np.asarray(meta["Z"], dtype=np.float64)
            scores = detector.score_arrays(np.asarray(flux), np.asarray(weight), z=z)
        else:
            scores = detector.score_arrays(np.asarray(flux), np.asarray(weight))
    return {"TARGETID": np.asarray(meta["TARGETID"]), "Z": np.asarray(meta["Z"])} | _columns(
        detector, scores
    )


def score_store(
    store: FeatureStore | str | Path,
    model: str | Path,
    *,
    baseline: str | Path | None = None,
    use_ray: bool | None = None,
    workers: int | None = None,
    device: str = "cpu",
    threads: int = 1,
    progress: bool = True,
) -> Table:
    """Score every spectrum of a store; rows in store order.

    Parameters
    ----------
    store : FeatureStore or path
    model : path
        Folder of a trained detector (VAE or baselines).
    baseline : path, optional
        Also score with the baselines in this folder and add their columns.
    use_ray, workers
        See :func:`~desilab.projects.run_units`.
    device, threads
        Per-unit torch device and threads (keep ``threads`` fixed for identical
        results across runs).
    progress : bool
        Progress bar over shards.

    Returns
    -------
    astropy.table.Table
        TARGETID, Z, SCORE, SCORE_RECON, SCORE_DENSITY, CHI2, AMPLITUDE, LATENT,
        MODEL_VERSION (and SCORE_PCA, SCORE_PCA_CHI2, SCORE_IFOREST, CHI2_PCA,
        BASELINE_VERSION).
    """
    path = str(store.path if isinstance(store, FeatureStore) else store)
    n_shards = len(FeatureStore(path).shards)
    tables = []
    for folder, desc in ((model, "score shards"), (baseline, "baseline shards")):
        if folder is None:
            continue
        parts = run_units(
            score_shard,
            range(n_shards),
            workers=workers,
            use_ray=use_ray,
            desc=desc,
            progress=progress,
            store=path,
            model=str(folder),
            device=device,
            threads=threads,
        )
        tables.append(vstack([Table(p) for p in parts]) if parts else Table())
    if len(tables) == 2:
        if not np.array_equal(tables[0]["TARGETID"], tables[1]["TARGETID"]):
            raise RuntimeError("model and baseline scores are not in the same row order")
        tables[1].remove_columns(["TARGETID", "Z"])
        return hstack(tables, join_type="exact")
    return tables[0]


@dataclass
class Explanation:
    """Spectra, reconstructions and scores of some objects, for display.

    Attributes
    ----------
    targetid : ndarray (n,)
    z : ndarray (n,)
    wave_rest : Quantity (n_bins,)
        Rest-frame bin centres.
    flux, weight, model : ndarray (n, n_bins)
        Normalised flux, its inverse variance (0 = no data), the VAE reconstruction.
    residual : ndarray (n, n_bins)
        ``(flux - model) * sqrt(w_eff)``: signed chi per bin, 0 where no data.
    norm : Quantity (n,)
        The observed flux that ``flux == 1`` stands for.
    scores : dict of ndarray
        ``score``, ``recon``, ``density``, ``chi2``, ``latent`` (and ``pca``,
        ``iforest``, ``pca_model`` with a baseline).
    meta : Table
        The store's meta rows (SURVEY, PROGRAM, HEALPIX, SNR, ...).
    """

    targetid: np.ndarray
    z: np.ndarray
    wave_rest: u.Quantity
    flux: np.ndarray
    weight: np.ndarray
    model: np.ndarray
    residual: np.ndarray
    norm: u.Quantity
    scores: dict[str, np.ndarray]
    meta: Table

    def observed(self, i: int) -> dict[str, u.Quantity]:
        """Object ``i`` in the observed frame and flux units (to overlay on its coadd)."""
        wave = self.wave_rest * (1 + self.z[i])
        good = self.weight[i] > 0
        return {
            "wave": wave,
            "flux": np.where(good, self.flux[i], np.nan) * self.norm[i],
            "model": self.model[i] * self.norm[i],
        }


def explain(
    targetids: Any,
    store: FeatureStore | str | Path,
    model: AnomalyModel | str | Path,
    *,
    baseline: PCABaseline | str | Path | None = None,
) -> Explanation:
    """Everything an explorer shows about some TARGETIDs (in the order given).

    Raises
    ------
    KeyError
        A TARGETID that is not in the store.
    """
    st = store if isinstance(store, FeatureStore) else FeatureStore(store)
    det = model if isinstance(model, AnomalyModel) else AnomalyModel.load(model)
    flux, weight, meta = st.get(targetids)
    s = det.score_arrays(flux, weight, z=np.asarray(meta["Z"], np.float64), keep_model=True)
    floor = det.vae.floor.cpu().numpy()
    residual = np.where(
        weight > 0, (flux - s["model"]) * np.sqrt(effective_weight(weight, floor)), 0
    )
    scores = {k: s[k] for k in ("score", "recon", "density", "chi2", "latent", "amplitude")}
    if baseline is not None:
        base = baseline if isinstance(baseline, PCABaseline) else PCABaseline.load(baseline)
        b = base.score_arrays(flux, weight, keep_model=True)
        scores |= {"pca": b["pca"], "iforest": b["iforest"], "pca_model": b["model"]}
    return Explanation(
        targetid=np.asarray(meta["TARGETID"]),
        z=np.asarray(meta["Z"]),
        wave_rest=det.grid.centers,
        flux=flux,
        weight=weight,
        model=s["model"],
        residual=residual.astype(np.float32),
        norm=np.asarray(meta["NORM"]) * FLUX_UNIT,
        scores=scores,
        meta=meta,
    )


def project_latents(latents: np.ndarray) -> np.ndarray:
    """2-D view of latent coordinates: their first two principal components.

    Deterministic (the sign of each axis is fixed by its largest loading), so a
    plot keeps its orientation when the same latents are projected again.

    Parameters
    ----------
    latents : ndarray (n, latent)

    Returns
    -------
    ndarray (n, 2)
    """
    x = np.asarray(latents, dtype=np.float64)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:2]
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    out = x @ axes.T
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
