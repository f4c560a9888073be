"""A trained anomaly detector: the VAE, a density model of its latents, score calibration.

A model folder (written by :func:`~desilab.projects.anomalies.train`) holds

* ``model.json``: version, VAE config, rest grid, score calibration;
* ``model.pt``: the VAE weights;
* ``density.npz``: the Gaussian mixture fitted to the latent means.

Scores of a spectrum (all: larger = more anomalous)

* ``chi2``: reconstruction chi^2 per covered bin, with the model-error floor;
* ``recon``: the reconstruction score, ``log`` of the coherent residual
  (:func:`~desilab.projects.anomalies.model.coherent_residual`: chi^2 of the
  residuals averaged over windows of ``window`` bins). On the mock it separates
  the injected anomalies better than chi^2 per bin (whose excess for a faint
  spectrum is diluted among noise-dominated bins) and is less sensitive to the
  narrow troughs of ordinary BAL quasars;
* ``density``: how unusual the latent mean is *for the spectrum's redshift*. The
  rest-frame window of a spectrum moves with z, so the latents of ordinary quasars
  lie along a z-dependent manifold; a global density (the Gaussian mixture of
  earlier models) spends its variance on that and misses objects that are odd only
  against quasars at their own redshift. :class:`ConditionalLatentDensity` keeps a
  Gaussian (mean, covariance, from the ``neighbours`` training spectra nearest in
  ``ln(1 + z)``, trimmed of their most outlying 5 %) at nodes along z; the term is
  ``ln`` of the squared Mahalanobis distance to the nearest node's Gaussian. On the
  benchmark mock this lifts the density term's AUC on weak-line quasars from 0.66 to
  ~0.85 (the VAE's latents do hold the information: a linear discriminant on them,
  a diagnostic that uses the labels, reaches 0.98). Models without z at scoring
  time, or saved with a mixture (``density.npz`` with ``weights``), use ``-log p(mu)``
  under the mixture;
* ``score``: the combination. Each term is robustly standardised on the training
  spectra ((x - median) / (1.4826 MAD)); the reconstruction term within bins of
  spectrum S/N, because a VAE's systematic residuals grow with S/N: with one global
  scale, the top of the ranking fills with ordinary bright quasars (on the mock,
  the normals among the top 300 had twice the median S/N). The combined score is
  the larger of the two standardised terms (either one flags an object). On the
  benchmark mock this raised the AUC over injected anomalies from 0.79 to ~0.84, and
  the z-conditioned density term to ~0.87. (A rank combination, the smaller of the two
  terms' empirical tail probabilities on the training spectra, ranks the same within
  0.002 AUC: the max of robustly standardised terms is already rank-like.)
  Models calibrated before this (no ``recon_snr`` in their calibration) keep the
  global scale and the mean of the two terms.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from .model import VAE, VAEConfig, coherent_residual, masked_terms, select_device
from .prepare import RestGrid

__all__ = [
    "AnomalyModel",
    "ConditionalLatentDensity",
    "LatentDensity",
    "calibrate",
    "robust_scale",
    "spectrum_snr",
]

SCORE_NAMES = ("chi2", "recon", "density", "score")
#: Default window of the reconstruction score: 40 bins of the default grid, ~17,000 km/s,
#: wider than BAL troughs and emission lines, narrower than an arm.
DEFAULT_WINDOW = 40


def robust_scale(x: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 * MAD (a robust standard deviation) of finite values."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    med = float(np.median(x))
    mad = float(1.4826 * np.median(np.abs(x - med)))
    return med, mad if mad > 0 else 1.0


def spectrum_snr(flux: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Mean S/N per covered bin of prepared spectra (the store's SNR column)."""
    flux, weight = np.asarray(flux), np.asarray(weight)
    good = np.maximum((weight > 0).sum(axis=1), 1)
    return (flux * np.sqrt(weight)).sum(axis=1, dtype=np.float64) / good


def calibrate(
    recon: np.ndarray, density: np.ndarray, snr: np.ndarray, *, per_bin: int = 200
) -> dict:
    """Score calibration from training spectra (see the module docstring).

    ``recon_snr`` holds edges in log S/N (quantiles: about ``per_bin`` spectra a
    bin, at most 10 bins) and the reconstruction score's median and robust scale
    in each.
    """
    recon, snr = np.asarray(recon, np.float64), np.asarray(snr, np.float64)
    logsnr = np.log(np.maximum(snr, 1e-3))
    n_bins = int(np.clip(len(recon) // per_bin, 1, 10))
    edges = np.quantile(logsnr, np.linspace(0, 1, n_bins + 1))
    b = np.clip(np.searchsorted(edges, logsnr, side="right") - 1, 0, n_bins - 1)
    scales = [robust_scale(recon[b == k]) if (b == k).sum() > 1 else robust_scale(recon)
              for k in range(n_bins)]  # fmt: skip
    return {
        "recon": list(robust_scale(recon)),
        "density": list(robust_scale(density)),
        "recon_snr": {
            "edges": edges[1:-1].tolist(),
            "median": [m for m, _ in scales],
            "scale": [d for _, d in scales],
        },
        "combine": "max",
    }


@dataclass
class LatentDensity:
    """A Gaussian mixture on latent space, stored as plain arrays (no pickle)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray

    @classmethod
    def fit(cls, latents: np.ndarray, n_components: int, seed: int) -> LatentDensity:
        """Fit a full-covariance mixture (deterministic for a seed)."""
        n_components = max(1, min(n_components, len(latents) // 10))
        gmm = GaussianMixture(
            n_components, covariance_type="full", random_state=seed, reg_covar=1e-4
        ).fit(np.asarray(latents, dtype=np.float64))
        return cls(gmm.weights_, gmm.means_, gmm.covariances_, gmm.precisions_cholesky_)

    def _gmm(self) -> GaussianMixture:
        gmm = GaussianMixture(len(self.weights), covariance_type="full")
        gmm.weights_, gmm.means_, gmm.covariances_ = self.weights, self.means, self.covariances
        gmm.precisions_cholesky_ = self.precisions_cholesky
        return gmm

    def log_density(self, latents: np.ndarray) -> np.ndarray:
        """log p(z) for each row."""
        if len(latents) == 0:
            return np.zeros(0)
        return self._gmm().score_samples(np.asarray(latents, dtype=np.float64))

    def save(self, path: Path) -> None:
        """Write ``density.npz``."""
        np.savez(
            path,
            weights=self.weights,
            means=self.means,
            covariances=self.covariances,
            precisions_cholesky=self.precisions_cholesky,
        )

    @classmethod
    def load(cls, path: Path) -> LatentDensity:
        """Read ``density.npz``."""
        with np.load(path) as d:
            return cls(d["weights"], d["means"], d["covariances"], d["precisions_cholesky"])


@dataclass
class ConditionalLatentDensity:
    """Gaussians of the latent means at nodes along redshift (see the module docstring).

    Attributes
    ----------
    nodes : ndarray, shape (k,)
        ``ln(1 + z)`` of the nodes, increasing.
    means : ndarray, shape (k, latent)
    precisions : ndarray, shape (k, latent, latent)
        Inverse covariances.
    """

    nodes: np.ndarray
    means: np.ndarray
    precisions: np.ndarray

    @classmethod
    def fit(
        cls,
        latents: np.ndarray,
        z: np.ndarray,
        *,
        neighbours: int = 300,
        max_nodes: int = 60,
        trim: float = 0.05,
        reg: float = 1e-4,
    ) -> ConditionalLatentDensity:
        """Fit from training latents and redshifts (deterministic: no sampling).

        Parameters
        ----------
        latents : ndarray, shape (n, latent)
        z : ndarray, shape (n,)
        neighbours : int
            Training spectra (nearest in ``ln(1 + z)``) behind each node's Gaussian.
        max_nodes : int
            At most this many nodes (quantiles of z; about one per 100 spectra).
        trim : float
            Fraction of a node's neighbours with the largest distance dropped before
            the final estimate, so that the anomalies among the training spectra do
            not inflate the covariance.
        reg : float
            Added to the covariance diagonal.
        """
        x = np.asarray(latents, dtype=np.float64)
        lz = np.log1p(np.asarray(z, dtype=np.float64))
        n, dim = x.shape
        if n < 2:
            raise ValueError("need at least 2 training spectra to fit the latent density")
        order = np.argsort(lz, kind="stable")
        lz_s, x_s = lz[order], x[order]
        k = int(min(max(neighbours, 2), n))
        nodes = np.quantile(lz, np.linspace(0, 1, int(np.clip(n // 100, 1, max_nodes))))
        means, precisions = [], []
        for node in nodes:
            lo = int(np.clip(np.searchsorted(lz_s, node) - k // 2, 0, n - k))
            block = x_s[lo : lo + k]
            keep = np.ones(len(block), dtype=bool)
            for _ in range(2 if trim > 0 else 1):
                mean = block[keep].mean(axis=0)
                cov = np.atleast_2d(np.cov(block[keep].T)) + reg * np.eye(dim)
                prec = np.linalg.inv(cov)
                d = block - mean
                dist = np.einsum("ij,jk,ik->i", d, prec, d)
                keep = dist <= np.quantile(dist, 1.0 - trim)
            means.append(mean)
            precisions.append(prec)
        return cls(nodes, np.array(means), np.array(precisions))

    def distance2(self, latents: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each latent to its nearest node's Gaussian."""
        x = np.asarray(latents, dtype=np.float64)
        if len(x) == 0:
            return np.zeros(0)
        lz = np.log1p(np.asarray(z, dtype=np.float64))
        i = np.clip(np.searchsorted(self.nodes, lz), 1, max(len(self.nodes) - 1, 1))
        if len(self.nodes) > 1:
            i = np.where(np.abs(lz - self.nodes[i - 1]) <= np.abs(self.nodes[i] - lz), i - 1, i)
        else:
            i = np.zeros(len(x), dtype=np.int64)
        d = x - self.means[i]
        return np.einsum("ij,ijk,ik->i", d, self.precisions[i], d)

    def score(self, latents: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The density term: ``ln`` of :meth:`distance2` (larger = more unusual)."""
        return np.log(np.maximum(self.distance2(latents, z), 1e-12))

    def save(self, path: Path) -> None:
        """Write ``density.npz``."""
        np.savez(path, nodes=self.nodes, means=self.means, precisions=self.precisions)


def load_density(path: Path) -> LatentDensity | ConditionalLatentDensity:
    """Read ``density.npz`` of either kind (a mixture has ``weights``)."""
    with np.load(path) as d:
        if "nodes" in d:
            return ConditionalLatentDensity(d["nodes"], d["means"], d["precisions"])
    return LatentDensity.load(path)


class AnomalyModel:
    """A trained detector, ready to encode, reconstruct and score spectra.

    Parameters
    ----------
    vae : VAE
    grid : RestGrid
    density : ConditionalLatentDensity or LatentDensity, optional
    calibration : dict, optional
        ``{"recon": [median, scale], "density": [median, scale]}``.
    version : str
        Model version written with every score.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    window : int
        Bins per window of the reconstruction score (1 = chi^2 per bin).
    """

    def __init__(
        self,
        vae: VAE,
        grid: RestGrid,
        *,
        density: ConditionalLatentDensity | LatentDensity | None = None,
        calibration: dict | None = None,
        version: str = "",
        device: str = "auto",
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.device = select_device(device)
        self.window = int(window)
        self.vae = vae.to(self.device).eval()
        self.grid = grid
        self.density = density
        self.calibration = calibration or {}
        self.version = version

    @property
    def config(self) -> VAEConfig:
        """The VAE's configuration."""
        return self.vae.config

    @classmethod
    def load(cls, folder: str | Path, *, device: str = "auto") -> AnomalyModel:
        """Load a model folder written by training."""
        folder = Path(folder)
        path = folder / "model.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: train a model first (`desilab anomalies train`)"
            )
        info = json.loads(path.read_text())
        vae = VAE(VAEConfig.from_dict(info["vae"]))
        vae.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
        density_path = folder / "density.npz"
        density = load_density(density_path) if density_path.exists() else None
        return cls(
            vae,
            RestGrid(**info["grid"]),
            density=density,
            calibration=info.get("calibration"),
            version=info["version"],
            device=device,
            window=info.get("window", DEFAULT_WINDOW),
        )

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        """Write ``model.pt``, ``density.npz`` and ``model.json`` (version from the weights)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.vae.state_dict().items()}
        torch.save(state, folder / "model.pt")
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].numpy().tobytes())
        if self.density is not None:
            self.density.save(folder / "density.npz")
            h.update(self.density.means.tobytes())
        h.update(f"window={self.window}".encode())
        self.version = f"vae-l{self.config.latent}-{h.hexdigest()[:12]}"
        info = {
            "version": self.version,
            "vae": self.config.to_dict(),
            "grid": self.grid.to_dict(),
            "calibration": self.calibration,
            "window": self.window,
        } | (extra or {})
        (folder / "model.json").write_text(json.dumps(info, indent=1) + "\n")

    @torch.no_grad()
    def _run(self, flux: np.ndarray, weight: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {k: [] for k in ("mu", "chi2", "n", "model", "amp")}
        for start in range(0, len(flux), batch_size):
            # Copies: the store's arrays are read-only memory maps, which torch refuses to wrap.
            f = torch.tensor(np.asarray(flux[start : start + batch_size]), device=self.device)
            w = torch.tensor(np.asarray(weight[start : start + batch_size]), device=self.device)
            mu, _ = self.vae.encode(f, w)
            terms = masked_terms(f, w, self.vae.decode(mu), self.config, self.vae.floor)
            out["mu"].append(mu.cpu().numpy())
            out["chi2"].append(terms["chi2"].cpu().numpy())
            out["n"].append(terms["n"].cpu().numpy())
            out["model"].append(terms["model"].cpu().numpy())
            out["amp"].append(terms["amplitude"].cpu().numpy())
        nb, lat = self.grid.n_bins, self.config.latent
        empty = {"mu": (0, lat), "chi2": (0,), "n": (0,), "model": (0, nb), "amp": (0,)}
        return {
            k: np.concatenate(v) if v else np.zeros(empty[k], np.float32) for k, v in out.items()
        }

    def encode(self, flux: np.ndarray, weight: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Latent means, shape (n, latent)."""
        return self._run(flux, weight, batch_size)["mu"]

    def reconstruct(
        self, flux: np.ndarray, weight: np.ndarray, batch_size: int = 1024
    ) -> np.ndarray:
        """Reconstructions (with their fitted amplitude) on the rest grid, shape (n, n_bins)."""
        return self._run(flux, weight, batch_size)["model"]

    def score_arrays(
        self,
        flux: np.ndarray,
        weight: np.ndarray,
        *,
        z: np.ndarray | None = None,
        batch_size: int = 1024,
        keep_model: bool = False,
    ) -> dict[str, np.ndarray]:
        """Scores (see the module docstring) and latents of prepared spectra.

        ``z`` (the spectra's redshifts) is needed by a redshift-conditioned latent
        density; without it the density term is NaN and the score is the
        reconstruction term alone.

        Returns
        -------
        dict
            ``chi2``, ``recon``, ``density``, ``score`` (n,), ``latent`` (n, latent),
            ``amplitude`` (n,), and ``model`` (n, n_bins) when ``keep_model``.
        """
        run = self._run(flux, weight, batch_size)
        chi2 = run["chi2"].astype(np.float64) / np.maximum(run["n"], 1)
        floor = self.vae.floor.cpu().numpy()
        coherent = coherent_residual(flux, weight, run["model"], floor, self.window)
        recon = np.log(np.maximum(np.where(np.isfinite(coherent), coherent, chi2), 1e-12))
        density = self.density_term(run["mu"], z)
        out = {
            "chi2": chi2,
            "recon": recon,
            "density": density,
            "latent": run["mu"],
            "amplitude": run["amp"],
        }
        out["score"] = self.combine(recon, density, spectrum_snr(flux, weight))
        if keep_model:
            out["model"] = run["model"]
        return out

    def density_term(self, latents: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        """The latent-density term (NaN where it cannot be computed)."""
        if isinstance(self.density, ConditionalLatentDensity):
            if z is None:
                return np.full(len(latents), np.nan)
            return self.density.score(latents, z)
        if self.density is not None:
            return -self.density.log_density(latents)
        return np.full(len(latents), np.nan)

    def combine(
        self, recon: np.ndarray, density: np.ndarray, snr: np.ndarray | None = None
    ) -> np.ndarray:
        """Combined score from the calibration (reconstruction only if uncalibrated)."""
        if not self.calibration:
            return np.asarray(recon, dtype=np.float64)
        recon = np.asarray(recon, dtype=np.float64)
        (mr, sr), (md, sd) = self.calibration["recon"], self.calibration["density"]
        by_snr = self.calibration.get("recon_snr")
        if by_snr is not None and snr is not None:
            logsnr = np.log(np.maximum(np.asarray(snr, np.float64), 1e-3))
            b = np.searchsorted(np.asarray(by_snr["edges"]), logsnr, side="right")
            r = (recon - np.asarray(by_snr["median"])[b]) / np.asarray(by_snr["scale"])[b]
        else:
            r = (recon - mr) / sr
        d = (np.asarray(density, dtype=np.float64) - md) / sd
        if self.calibration.get("combine") == "max":
            return np.where(np.isfinite(d), np.maximum(r, d), r)
        return 0.5 * (r + d)
