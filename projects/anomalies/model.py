"""The VAE: an MLP encoder/decoder on rest-frame spectra with a masked likelihood.

Likelihood. Each bin has a measured flux ``f``, a weight ``w`` (inverse
variance; 0 = no data) and the decoder's reconstruction ``r``. The negative
log-likelihood is ``0.5 * sum(w_eff * (f - a r)^2)`` with

* ``w_eff = w / (1 + w * floor^2)``: the noise plus a model-error floor, so the
  few very bright spectra (S/N > 100 per bin) do not dominate the fit with
  residuals no smooth model can remove. Blueward of Lyman alpha the floor is
  much larger (``forest_floor``): the forest's absorption is a different random
  field in every spectrum (~30 % rms in a bin), which no model of the quasar can
  reconstruct and which would otherwise make every bright z > 2 quasar look
  anomalous;
* ``a``: the best-fitting amplitude of ``r`` for each spectrum (analytic least
  squares), because the normalisation (mean flux over the covered range) depends
  on the redshift's coverage, and the latent space should not spend a dimension
  on that.

Bins with ``w == 0`` contribute exactly nothing: the encoder sees 0 in their
place plus a coverage mask, and the loss multiplies by ``w_eff == 0`` after
replacing their flux (which may be NaN) by 0.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "VAE",
    "VAEConfig",
    "coherent_residual",
    "effective_weight",
    "floor_vector",
    "masked_terms",
    "select_device",
    "set_threads",
]


@dataclass
class VAEConfig:
    """Architecture and likelihood of the VAE.

    Attributes
    ----------
    n_bins : int
        Input size (bins of the store's rest grid).
    latent : int
        Latent dimensions (8-16 works well for QSO spectra).
    hidden : tuple of int
        Hidden layer sizes of the encoder; the decoder mirrors them.
    floor : float
        Model-error floor, as a fraction of the normalised flux (1 = mean flux).
    forest_floor : float
        The floor in the first ``forest_bins`` bins (the Lyman-alpha forest).
    forest_bins : int
        Bins of the rest grid blueward of Lyman alpha (set from the grid).
    fit_amplitude : bool
        Fit a free amplitude per spectrum (see the module docstring).
    beta : float
        Weight of the KL term.
    """

    n_bins: int
    latent: int = 12
    hidden: tuple[int, ...] = (256, 128)
    floor: float = 0.05
    forest_floor: float = 0.3
    forest_bins: int = 0
    fit_amplitude: bool = True
    beta: float = 1.0

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**(d | {"hidden": tuple(d["hidden"])}))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def floor_vector(config: VAEConfig) -> np.ndarray:
    """Model-error floor of every bin (``forest_floor`` in the forest, else ``floor``)."""
    floor = np.full(config.n_bins, config.floor, dtype=np.float32)
    floor[: config.forest_bins] = config.forest_floor
    return floor


def effective_weight(weight, floor):
    """``w / (1 + w floor^2)``: inverse of (noise variance + floor^2); 0 stays 0.

    Works on NumPy arrays and torch tensors; ``floor`` is a scalar or one value per bin.
    """
    return weight / (1.0 + weight * floor**2)


class VAE(nn.Module):
    """Variational auto-encoder for normalised rest-frame spectra.

    Parameters
    ----------
    config : VAEConfig
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        h = list(config.hidden)
        self.encoder = _mlp([2 * config.n_bins, *h])
        self.act = nn.SiLU()
        self.to_mu = nn.Linear(h[-1], config.latent)
        self.to_logvar = nn.Linear(h[-1], config.latent)
        self.decoder = _mlp([config.latent, *reversed(h), config.n_bins])
        self.register_buffer("floor", torch.from_numpy(floor_vector(config)), persistent=False)

    @staticmethod
    def inputs(flux: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flux with no-data bins set to 0 (NaN-safe), and the coverage mask."""
        good = weight > 0
        return torch.where(good, flux, torch.zeros_like(flux)), good.to(flux.dtype)

    def encode(self, flux: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | spectrum)."""
        f, m = self.inputs(flux, weight)
        # Scaled by sqrt(w_eff) the input would be S/N, noisier to learn from; the
        # bounded flux keeps rare spikes from saturating the first layer.
        hidden = self.act(self.encoder(torch.cat([f.clamp(-10.0, 10.0), m], dim=1)))
        return self.to_mu(hidden), self.to_logvar(hidden).clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction (normalised flux on the rest grid) of latent points."""
        return self.decoder(z)

    def forward(
        self, flux: torch.Tensor, weight: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Sample z ~ q(z|x) (noise from ``generator``) and return the loss terms."""
        mu, logvar = self.encode(flux, weight)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        terms = masked_terms(flux, weight, self.decode(z), self.config, self.floor)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
        return terms | {"kl": kl, "mu": mu, "logvar": logvar}


def masked_terms(
    flux: torch.Tensor,
    weight: torch.Tensor,
    recon: torch.Tensor,
    config: VAEConfig,
    floor: torch.Tensor | float | None = None,
) -> dict[str, torch.Tensor]:
    """Per-spectrum chi^2 of a reconstruction, with its fitted amplitude.

    ``floor`` defaults to ``config.floor`` everywhere; the VAE passes its per-bin floor.

    Returns
    -------
    dict
        ``chi2`` (sum over bins of w_eff (f - a r)^2), ``n`` (bins with data),
        ``amplitude`` (a), ``model`` (a r).
    """
    w = effective_weight(weight, config.floor if floor is None else floor)
    f = torch.where(weight > 0, flux, torch.zeros_like(flux))
    if config.fit_amplitude:
        num = (w * f * recon).sum(dim=1)
        den = (w * recon * recon).sum(dim=1)
        # Where the model is ~0 over the covered bins the amplitude is undefined: use 1.
        amp = torch.where(den > 1e-8, num / den.clamp_min(1e-8), torch.ones_like(den))
        amp = amp.clamp(0.05, 20.0)
    else:
        amp = torch.ones(flux.shape[0], dtype=flux.dtype, device=flux.device)
    model = amp[:, None] * recon
    chi2 = (w * (f - model).pow(2)).sum(dim=1)
    return {"chi2": chi2, "n": (weight > 0).sum(dim=1), "amplitude": amp, "model": model}


def coherent_residual(
    flux: np.ndarray,
    weight: np.ndarray,
    model: np.ndarray,
    floor: np.ndarray | float,
    window: int,
) -> np.ndarray:
    """Mean squared residual after averaging over windows of ``window`` bins (NumPy).

    With normalised residuals ``r = (f - model) sqrt(w_eff)`` and ``S`` their sum
    over the covered bins of a window, ``S^2 / n_covered`` is chi^2 with one degree
    of freedom for pure noise, whatever the window. A residual that keeps its sign
    over many bins (a misplaced continuum, an arm out of scale, a set of weak or
    extra lines) grows with the window, noise does not: at S/N ~ 1 per bin a 30 %
    offset over 40 bins gives 3.6 instead of 1.09 per bin. Windows at least half
    covered count; the result is the mean over them (``window == 1``: chi^2 per bin).

    Returns
    -------
    ndarray (n,)
        1 on average for a spectrum that the model fits to the noise.
    """
    w = np.asarray(weight, dtype=np.float64)
    r = np.where(w > 0, (np.asarray(flux) - model) * np.sqrt(effective_weight(w, floor)), 0.0)
    good = (w > 0).astype(np.float64)
    zero = np.zeros((len(r), 1))
    cr = np.concatenate([zero, np.cumsum(r, axis=1)], axis=1)
    cg = np.concatenate([zero, np.cumsum(good, axis=1)], axis=1)
    k = max(1, min(int(window), r.shape[1]))
    sums, counts = cr[:, k:] - cr[:, :-k], cg[:, k:] - cg[:, :-k]
    use = counts >= max(1.0, k / 2)
    per = np.where(use, sums**2 / np.maximum(counts, 1), 0.0)
    n = use.sum(axis=1)
    return np.where(n > 0, per.sum(axis=1) / np.maximum(n, 1), np.nan)


def select_device(device: str = "auto") -> torch.device:
    """``cuda`` when asked or (``auto``) when a GPU is visible, else ``cpu``.

    ``torch.cuda.is_available()`` honours CUDA_VISIBLE_DEVICES, which the GPU
    profiles set: a CPU profile never sees a GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' requested but no GPU is visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); use a GPU profile or 'cpu'"
        )
    return dev


def set_threads(threads: int | None = None) -> int:
    """Torch CPU threads: ``threads``, else DESILAB_CPU_LIMIT, else the usable cores."""
    if not threads:
        limit = os.environ.get("DESILAB_CPU_LIMIT")
        threads = int(limit) if limit else len(os.sched_getaffinity(0))
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
