"""Baselines in the same harness as the VAE: masked PCA and an Isolation Forest.

Both see exactly what the VAE sees (the feature store's normalised flux and
weights) and are scored with the same likelihood: chi^2 per covered bin with
the same model-error floor and a free amplitude.

* PCA: components fitted on the training spectra with missing bins filled in
  (first with the mean spectrum, then twice with the PCA's own reconstruction,
  the EM approach to PCA with gaps). A spectrum is fitted by weighted least
  squares, ``f ~ a * mean + sum_k c_k V_k``, on its covered bins only; its
  score is the VAE's reconstruction score (the log coherent residual, same
  window), and ``log(chi^2 / n_bins)`` is reported too.
* Isolation Forest on the PCA coefficients divided by the amplitude ``c / a``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

from .detector import DEFAULT_WINDOW
from .model import VAEConfig, coherent_residual, effective_weight, floor_vector
from .prepare import RestGrid
from .store import FeatureStore
from .train import forest_bins, validation_mask

__all__ = ["PCABaseline", "fit_baselines"]


class PCABaseline:
    """Masked PCA reconstruction and an Isolation Forest on its coefficients.

    Parameters
    ----------
    mean : ndarray (n_bins,)
    components : ndarray (k, n_bins)
    grid : RestGrid
    floor : float or ndarray (n_bins,)
        Model-error floor per bin (as the VAE's, see :func:`~.model.floor_vector`).
    forest : IsolationForest, optional
    """

    version_prefix = "pca"

    def __init__(
        self,
        mean: np.ndarray,
        components: np.ndarray,
        grid: RestGrid,
        floor: float | np.ndarray = 0.05,
        forest: IsolationForest | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.grid = grid
        self.floor = np.broadcast_to(np.asarray(floor, dtype=np.float64), self.mean.shape).copy()
        self.forest = forest
        self.window = int(window)
        self.version = f"pca-k{len(self.components)}"

    @classmethod
    def fit(
        cls,
        flux: np.ndarray,
        weight: np.ndarray,
        grid: RestGrid,
        *,
        n_components: int = 10,
        floor: float | np.ndarray = 0.05,
        em_iterations: int = 2,
        seed: int = 0,
        forest_trees: int = 200,
    ) -> PCABaseline:
        """Fit the components (EM for the gaps) and the Isolation Forest."""
        good = weight > 0
        cover = good.sum(axis=0)
        mean = np.where(cover > 0, np.where(good, flux, 0).sum(axis=0) / np.maximum(cover, 1), 0)
        filled = np.where(good, flux, mean[None, :])
        pca = PCA(n_components, random_state=seed, svd_solver="full")
        model = cls(mean, np.zeros((0, len(mean))), grid, floor)
        for it in range(em_iterations + 1):
            pca.fit(filled - model.mean)
            model.components = pca.components_
            if it < em_iterations:
                recon = model._fit(flux, weight)[0]
                filled = np.where(good, flux, recon)
        model.version = f"pca-k{n_components}"
        coeffs = model._fit(flux, weight)[2]
        model.forest = IsolationForest(n_estimators=forest_trees, random_state=seed).fit(coeffs)
        return model

    def _fit(self, flux: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, ...]:
        """Weighted least-squares fit: reconstruction, chi^2, coefficients / amplitude."""
        basis = np.vstack([self.mean[None, :], self.components])  # (k+1, nb)
        nk = len(basis)
        recon = np.zeros(np.shape(flux))
        chi2 = np.zeros(len(flux))
        coeffs = np.zeros((len(flux), nk))
        # Blocks of rows bound the (rows, k+1, n_bins) temporary to ~50 MB.
        step = max(1, 6_000_000 // (nk * max(basis.shape[1], 1)))
        for s in range(0, len(flux), step):
            wraw = np.asarray(weight[s : s + step], dtype=np.float64)
            w = effective_weight(wraw, self.floor)
            f = np.where(wraw > 0, np.asarray(flux[s : s + step], dtype=np.float64), 0.0)
            bw = basis[None, :, :] * w[:, None, :]
            a = bw @ basis.T
            b = (bw @ f[:, :, None])[..., 0]
            # A tiny ridge keeps spectra covering few bins solvable.
            a += 1e-6 * np.trace(a, axis1=1, axis2=2)[:, None, None] / nk * np.eye(nk)
            c = np.linalg.solve(a, b[..., None])[..., 0]
            recon[s : s + step] = c @ basis
            chi2[s : s + step] = (w * (f - recon[s : s + step]) ** 2).sum(axis=1)
            coeffs[s : s + step] = c
        amp = np.where(np.abs(coeffs[:, 0]) > 1e-6, coeffs[:, 0], 1e-6)
        return recon, chi2, coeffs[:, 1:] / amp[:, None]

    def score_arrays(
        self,
        flux: np.ndarray,
        weight: np.ndarray,
        *,
        batch_size: int = 2048,
        keep_model: bool = False,
    ) -> dict[str, np.ndarray]:
        """Scores of prepared spectra (larger = more anomalous).

        Returns
        -------
        dict
            ``pca`` (log coherent residual, as the VAE's ``recon``), ``pca_chi2``
            (log chi^2 per bin), ``chi2``, ``iforest``, ``coefficients`` (n, k), and
            ``model`` (n, n_bins) when ``keep_model``.
        """
        parts: dict[str, list[np.ndarray]] = {"chi2": [], "coherent": [], "coeffs": [], "model": []}
        for s in range(0, len(flux), batch_size):
            f, w = np.asarray(flux[s : s + batch_size]), np.asarray(weight[s : s + batch_size])
            recon, chi2, coeffs = self._fit(f, w)
            n = np.maximum((w > 0).sum(axis=1), 1)
            parts["chi2"].append(chi2 / n)
            parts["coherent"].append(coherent_residual(f, w, recon, self.floor, self.window))
            parts["coeffs"].append(coeffs)
            parts["model"].append(recon.astype(np.float32))
        k, nb = len(self.components), len(self.mean)
        empty = {"chi2": (0,), "coherent": (0,), "coeffs": (0, k), "model": (0, nb)}
        cat = {key: np.concatenate(v) if v else np.zeros(empty[key]) for key, v in parts.items()}
        chi2 = cat["chi2"]
        coherent = np.where(np.isfinite(cat["coherent"]), cat["coherent"], chi2)
        out = {
            "chi2": chi2,
            "pca": np.log(np.maximum(coherent, 1e-12)),
            "pca_chi2": np.log(np.maximum(chi2, 1e-12)),
            "coefficients": cat["coeffs"],
            "iforest": -self.forest.score_samples(cat["coeffs"])
            if self.forest is not None and len(chi2)
            else np.full(len(chi2), np.nan),
        }
        if keep_model:
            out["model"] = cat["model"]
        return out

    def save(self, folder: str | Path) -> None:
        """Write ``pca.npz``, ``iforest.pkl`` and ``baseline.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "pca.npz", mean=self.mean, components=self.components, floor=self.floor)
        if self.forest is not None:
            with open(folder / "iforest.pkl", "wb") as fh:
                pickle.dump(self.forest, fh)
        info = {"version": self.version, "grid": self.grid.to_dict(), "window": self.window}
        (folder / "baseline.json").write_text(json.dumps(info, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> PCABaseline:
        """Read a folder written by :meth:`save` (the pickle is one this code wrote)."""
        folder = Path(folder)
        info = json.loads((folder / "baseline.json").read_text())
        with np.load(folder / "pca.npz") as d:
            mean, components, floor = d["mean"], d["components"], d["floor"]
        forest = None
        if (folder / "iforest.pkl").exists():
            with open(folder / "iforest.pkl", "rb") as fh:
                forest = pickle.load(fh)  # noqa: S301 - written by save()
        model = cls(
            mean, components, RestGrid(**info["grid"]), floor, forest, info.get("window", 40)
        )
        model.version = info["version"]
        return model


def fit_baselines(
    store: FeatureStore | str | Path,
    outdir: str | Path,
    *,
    n_components: int = 10,
    floor: float = 0.05,
    forest_floor: float = 0.3,
    seed: int = 0,
    val_fraction: float = 0.1,
    max_spectra: int = 100_000,
) -> PCABaseline:
    """Fit the baselines on the same training rows as the VAE and save them in ``outdir``.

    ``floor`` and ``forest_floor`` should be the VAE's (see :class:`~.model.VAEConfig`), so
    that all detectors are scored with the same likelihood.
    """
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    fl, wl = [], []
    for i in range(len(store.shards)):
        f, w, meta = store.load_shard(i)
        keep = np.flatnonzero(~validation_mask(meta["TARGETID"], val_fraction, seed))
        fl.append(np.asarray(f[keep]))
        wl.append(np.asarray(w[keep]))
    flux, weight = np.concatenate(fl), np.concatenate(wl)
    if len(flux) > max_spectra:
        pick = np.sort(np.random.default_rng(seed).choice(len(flux), max_spectra, replace=False))
        flux, weight = flux[pick], weight[pick]
    floors = floor_vector(
        VAEConfig(
            n_bins=store.grid.n_bins,
            floor=floor,
            forest_floor=forest_floor,
            forest_bins=forest_bins(store.grid),
        )
    )
    model = PCABaseline.fit(
        flux, weight, store.grid, n_components=n_components, floor=floors, seed=seed
    )
    model.save(outdir)
    return model
