"""A QSO continuum for BAL measurements that absorption troughs cannot drag down.

DESI's baltools fits five PCA eigenspectra over 1261-2399 Angstrom (rest) and
re-fits after masking the troughs it finds, until the mask settles. Here the
unabsorbed spectrum over the same window is a small physical model instead:

* a power law f_lambda ~ lambda^-1.5 times a quadratic in log(lambda), which
  absorbs the spread of slopes and mild intrinsic reddening;
* one Gaussian per emission line (Ly-alpha, N V, O I, C II, Si IV, C IV, He II,
  Al III, C III]) with non-negative amplitudes, sharing one width and one
  velocity offset, chosen on a grid: the shared width lets the red side of
  C IV and the unabsorbed lines pin down the blue wing a trough has eaten,
  and the offset absorbs redshift errors of a few hundred km/s.

The spectrum is first rebinned onto a logarithmic rest-frame grid (150 km/s
bins by default), so the basis is computed once for all spectra, and the fit
itself runs on bins three times coarser. Spectra are fitted in batches, in
lockstep: every step is a handful of stacked NumPy operations over the batch,
which is what makes the fit fast (see benchmarks/outflows.py). Absorption is
removed by iterative clipping: bins whose smoothed residual is significantly negative, or that lie
below 0.9 times the model, are masked (grown by two bins) and the fit repeated;
after the third pass the mask may only grow, which guarantees convergence. The
cores of C IV, Si IV and C III] are never masked, so a model that overshoots a
peak cannot run away. Coefficient covariances give the model uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.ndimage import uniform_filter1d

from .lmfit import nonneg_lstsq, solve_batched

__all__ = [
    "BAL_WINDOW",
    "C_KMS",
    "CONTINUUM_LINES",
    "ContinuumFit",
    "RestGrid",
    "fit_continuum",
    "fit_continuum_batch",
    "rebin_rest",
]

C_KMS = 299792.458
#: Rest window of the baltools PCA fit (Angstrom).
BAL_WINDOW = (1261.0, 2399.0)
#: Emission lines of the continuum model: name -> rest vacuum wavelength (Angstrom).
CONTINUUM_LINES = {
    "LYA": 1215.67,
    "NV": 1240.81,
    "OI": 1304.35,
    "CII": 1335.30,
    "SIIV": 1399.80,
    "CIV": 1549.06,
    "HEII": 1640.42,
    "ALIII": 1857.40,
    "CIII": 1908.73,
}
#: Gaussian sigma grid of the emission lines (km/s) and velocity offsets (in bins).
WIDTHS_KMS = tuple(np.round(np.geomspace(700.0, 4500.0, 12), 1))
SHIFT_BINS = tuple(range(-6, 7))
NPOLY = 3
COARSEN = 3
# Rest-frame ranges (Angstrom) never masked: emission-line cores where BAL troughs
# cannot sit (troughs are blueshifted), so clipping cannot eat the peaks.
_PROTECTED = ((1549.06, -1000.0, 3000.0), (1399.80, -1000.0, 2000.0), (1908.73, -4000.0, 4000.0))


@dataclass(frozen=True)
class RestGrid:
    """A logarithmic rest-frame wavelength grid.

    Parameters
    ----------
    lo, hi : float
        Wavelength range, Angstrom.
    dv : float
        Bin width, km/s.
    """

    lo: float = BAL_WINDOW[0]
    hi: float = BAL_WINDOW[1]
    dv: float = 150.0

    @property
    def edges(self) -> np.ndarray:
        """Bin edges (Angstrom)."""
        return _edges(self.lo, self.hi, self.dv)

    @property
    def centers(self) -> np.ndarray:
        """Geometric bin centres (Angstrom)."""
        e = self.edges
        return np.sqrt(e[1:] * e[:-1])


@lru_cache(maxsize=8)
def _edges(lo: float, hi: float, dv: float) -> np.ndarray:
    step = np.log1p(dv / C_KMS)
    return np.exp(np.arange(np.log(lo), np.log(hi) + step, step))


def rebin_rest(
    wave_obs: np.ndarray, flux: np.ndarray, ivar: np.ndarray, z: float, grid: RestGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance weighted rebinning onto a rest-frame grid.

    Parameters
    ----------
    wave_obs, flux, ivar : ndarray (nwave,)
        Observed-frame spectrum; ivar = 0 marks missing pixels.
    z : float
        Redshift.
    grid : RestGrid

    Returns
    -------
    flux, ivar : ndarray (nbin,)
        Rebinned flux and its inverse variance (0 where no pixel fell).
    """
    edges = grid.edges
    nbin = len(edges) - 1
    idx = np.searchsorted(edges, wave_obs / (1.0 + z)) - 1
    ok = (idx >= 0) & (idx < nbin) & (ivar > 0) & np.isfinite(flux) & np.isfinite(ivar)
    wsum = np.bincount(idx[ok], ivar[ok], minlength=nbin)
    fsum = np.bincount(idx[ok], flux[ok] * ivar[ok], minlength=nbin)
    out = np.divide(fsum, wsum, out=np.zeros(nbin), where=wsum > 0)
    return out, wsum


def _poly(centers: np.ndarray, grid: RestGrid) -> np.ndarray:
    x = np.log(centers / 1700.0) / np.log(grid.hi / grid.lo)
    pl = (centers / 1700.0) ** -1.5
    return np.stack([pl * x**k for k in range(NPOLY)], axis=1)


def _lines(centers: np.ndarray, width: float, shift_kms: float) -> np.ndarray:
    lam = np.array(list(CONTINUUM_LINES.values())) * (1.0 + shift_kms / C_KMS)
    sig = lam * width / C_KMS
    return np.exp(-0.5 * ((centers[:, None] - lam[None, :]) / sig[None, :]) ** 2)


def basis(centers: np.ndarray, grid: RestGrid, width: float, shift_kms: float) -> np.ndarray:
    """Design matrix (nbin, NPOLY + nlines) of the continuum model at ``centers``."""
    return np.concatenate([_poly(centers, grid), _lines(centers, width, shift_kms)], axis=1)


@lru_cache(maxsize=4)
def _stacks(grid: RestGrid) -> tuple[tuple, np.ndarray, list[tuple[int, int]]]:
    """Bases of every (width, shift) pair on the fitting (coarse) grid and the full grid.

    The coarse stack comes with its transpose, (K, nrow, p) and (K, p, nrow), both
    contiguous, so the normal equations are plain contiguous matrix products.
    (Ranking the candidates on a twice coarser grid was tried: it picked worse
    widths for a few BALs and added false troughs.)
    """
    cen = grid.centers
    n = len(cen) // COARSEN * COARSEN
    keys = [(i, j) for i in range(len(WIDTHS_KMS)) for j in range(len(SHIFT_BINS))]
    fine = np.stack([basis(cen, grid, WIDTHS_KMS[i], SHIFT_BINS[j] * grid.dv) for i, j in keys])
    coarse = fine[:, :n].reshape(len(keys), n // COARSEN, COARSEN, -1).mean(axis=2)
    coarse_t = np.ascontiguousarray(np.swapaxes(coarse, 1, 2))
    for arr in (fine, coarse, coarse_t):
        arr.flags.writeable = False
    return (coarse, coarse_t), fine, keys


@lru_cache(maxsize=4)
def _protected(grid: RestGrid) -> np.ndarray:
    cen = grid.centers
    out = np.zeros(len(cen), dtype=bool)
    for lam, vlo, vhi in _PROTECTED:
        v = C_KMS * (cen - lam) / lam
        out |= (v > vlo) & (v < vhi)
    return out


def _coarsen(flux: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance means over COARSEN adjacent bins, along the last axis."""
    n = flux.shape[-1] // COARSEN * COARSEN
    shape = (*flux.shape[:-1], n // COARSEN, COARSEN)
    w = weight[..., :n].reshape(shape).sum(axis=-1)
    f = (flux[..., :n] * weight[..., :n]).reshape(shape).sum(axis=-1)
    return np.divide(f, w, out=np.zeros_like(f), where=w > 0), w


def _normal(
    coarse: tuple[np.ndarray, np.ndarray], keys: np.ndarray, f: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normal equations of weighted least squares, batched over the shape of ``keys``.

    ``keys`` (B,) or (B, J) index the coarse stack; ``f`` and ``w`` are (B, nrow) or
    broadcast against it; returns ``m`` (..., p, p) and ``b`` (..., p).
    """
    a, a_t = coarse[0][keys], coarse[1][keys]
    if keys.ndim == 2:
        f, w = f[:, None, :], w[:, None, :]
    atw = a_t * w[..., None, :]
    m = np.matmul(atw, a)
    b = np.matmul(atw, f[..., None])[..., 0]
    # A tiny ridge keeps columns without data solvable.
    ridge = 1e-9 * np.trace(m, axis1=-2, axis2=-1) / m.shape[-1]
    return m + ridge[..., None, None] * np.eye(m.shape[-1]), b


def _search(fc: np.ndarray, wc: np.ndarray, coarse: tuple, cand: np.ndarray) -> np.ndarray:
    """Best candidate key (lowest unconstrained chi^2) of each spectrum.

    ``cand`` (B, J) holds key indices; returns (B,) key indices. Spectra sharing a
    candidate are solved together: their normal matrices come from one matrix
    product with that candidate's basis, rather than from copies of the basis
    gathered per spectrum (which made this the slowest step).
    """
    a, a_t = coarse
    nb, nj = cand.shape
    nrow, p = a.shape[1:]
    chi2 = np.full((nb, nj), np.inf)
    ridge = np.eye(p)
    for key in np.unique(cand):
        rows, cols = np.nonzero(cand == key)
        basis_k = a[key]
        # (R, p, nrow) stays contiguous, so the product is a single matrix multiply.
        weighted = wc[rows][:, None, :] * a_t[key][None]
        m = (weighted.reshape(-1, nrow) @ basis_k).reshape(len(rows), p, p)
        m += 1e-9 * (np.trace(m, axis1=1, axis2=2) / p)[:, None, None] * ridge
        b = (wc[rows] * fc[rows]) @ basis_k
        coef = solve_batched(m, b)
        chi2[rows, cols] = -np.einsum("rp,rp->r", coef, b)
    return cand[np.arange(nb), np.argmin(chi2, axis=1)]


def _clip_mask(
    flux: np.ndarray, ivar: np.ndarray, model: np.ndarray, good: np.ndarray, protect: np.ndarray
) -> np.ndarray:
    """Bins that do not look absorbed (batched along axis 0).

    Absorbed: a significant deficit of the 5-bin mean residual, or below 0.9 times
    the model by more than 2 sigma; each clipped run is grown by two bins.
    """
    k = 5
    den = np.maximum(uniform_filter1d(good.astype(float), k, axis=-1), 1e-3)
    resid = uniform_filter1d(np.where(good, flux - model, 0.0), k, axis=-1) / den
    var = uniform_filter1d(np.where(good, 1.0 / np.maximum(ivar, 1e-300), 0.0), k, axis=-1)
    err = np.sqrt(np.clip(var, 0.0, None) / k) / den
    sigma = 1.0 / np.sqrt(np.maximum(ivar, 1e-300))
    low = good & ((resid < -2.0 * err) | (flux < 0.9 * model - 2.0 * sigma)) & ~protect
    grown = uniform_filter1d(low.astype(float), 5, axis=-1) > 0.1
    return good & ~grown


@dataclass
class ContinuumFit:
    """The unabsorbed-spectrum model of one QSO on a rest grid.

    Attributes
    ----------
    grid : RestGrid
    flux, ivar : ndarray (nbin,)
        Rebinned data.
    model, model_err : ndarray (nbin,)
        Continuum (with emission lines) and its 1-sigma uncertainty.
    mask : ndarray of bool (nbin,)
        Bins used in the final fit (data present and not clipped as absorption).
    coef, cov : ndarray
        Coefficients (polynomial, then lines) and their covariance (zero rows for
        lines dropped by the non-negativity constraint).
    width_kms, shift_kms : float
        Shared emission-line sigma and velocity offset.
    chi2, dof : float, int
        Of the final fit over the unmasked bins (at the fitting resolution).
    n_iter : int
        Clipping iterations.
    converged : bool
        Whether the mask settled before the iteration limit.
    ok : bool
        False when there were too few data to fit (the model is then NaN).
    key : tuple of int
        (width, shift) indices on the search grid.
    """

    grid: RestGrid
    flux: np.ndarray
    ivar: np.ndarray
    model: np.ndarray
    model_err: np.ndarray
    mask: np.ndarray
    coef: np.ndarray = field(repr=False)
    cov: np.ndarray = field(repr=False)
    width_kms: float = np.nan
    shift_kms: float = np.nan
    chi2: float = np.nan
    dof: int = 0
    n_iter: int = 0
    converged: bool = False
    ok: bool = True
    key: tuple[int, int] = (0, 0)

    @property
    def wave(self) -> np.ndarray:
        """Rest-frame bin centres (Angstrom)."""
        return self.grid.centers

    @property
    def rchi2(self) -> float:
        """Reduced chi^2 of the final fit."""
        return self.chi2 / self.dof if self.dof > 0 else np.nan

    def draws(self, n: int, rng: np.random.Generator, bins: slice = slice(None)) -> np.ndarray:
        """``n`` continuum realisations from the coefficient covariance, (n, nbin).

        ``bins`` restricts them to part of the grid.
        """
        if not self.ok:
            return np.repeat(self.model[None, bins], n, axis=0)
        _, fine, keys = _stacks(self.grid)
        a = fine[keys.index(self.key)][bins]
        idx = np.flatnonzero(np.diag(self.cov) > 0)
        sub = self.cov[np.ix_(idx, idx)]
        try:
            chol = np.linalg.cholesky(sub + 1e-12 * np.trace(sub) * np.eye(len(idx)))
        except np.linalg.LinAlgError:
            chol = np.diag(np.sqrt(np.clip(np.diag(sub), 0, None)))
        coef = self.coef[idx][None, :] + rng.standard_normal((n, len(idx))) @ chol.T
        return coef @ a[:, idx].T


def fit_continuum(
    flux: np.ndarray,
    ivar: np.ndarray,
    grid: RestGrid | None = None,
    *,
    max_iter: int = 15,
    min_bins: int = 60,
) -> ContinuumFit:
    """Fit the unabsorbed spectrum of one rebinned QSO spectrum.

    Parameters
    ----------
    flux, ivar : ndarray (nbin,)
        Spectrum on ``grid`` (see :func:`rebin_rest`).
    grid : RestGrid, optional
        Default: 1261-2399 Angstrom at 150 km/s.
    max_iter : int
        Clipping iterations at most.
    min_bins : int
        Fewer usable bins than this gives ``ok=False`` (and a NaN model).

    Returns
    -------
    ContinuumFit
    """
    return fit_continuum_batch(
        np.asarray(flux)[None], np.asarray(ivar)[None], grid, max_iter=max_iter, min_bins=min_bins
    )[0]


def fit_continuum_batch(
    flux: np.ndarray,
    ivar: np.ndarray,
    grid: RestGrid | None = None,
    *,
    max_iter: int = 15,
    min_bins: int = 60,
    chunk: int = 32,
) -> list[ContinuumFit]:
    """Fit many rebinned spectra at once; same result as :func:`fit_continuum` on each.

    Parameters
    ----------
    flux, ivar : ndarray (nspec, nbin)
        Spectra on ``grid``.
    grid, max_iter, min_bins
        As in :func:`fit_continuum`.
    chunk : int
        Spectra per lockstep batch (bounds the memory of the grid search).

    Returns
    -------
    list of ContinuumFit
    """
    grid = grid or RestGrid()
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    out: list[ContinuumFit] = []
    for start in range(0, len(flux), chunk):
        out += _fit_chunk(flux[start : start + chunk], ivar[start : start + chunk], grid,
                          max_iter, min_bins)  # fmt: skip
    return out


def _fit_chunk(flux, ivar, grid, max_iter, min_bins) -> list[ContinuumFit]:
    coarse, fine, keys = _stacks(grid)
    where = {k: i for i, k in enumerate(keys)}
    nw, ns = len(WIDTHS_KMS), len(SHIFT_BINS)
    protect = _protected(grid)
    bad = ~(np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0))
    flux = np.where(bad, 0.0, flux)
    ivar = np.where(bad, 0.0, ivar)
    good = ~bad
    nspec = len(flux)
    ok = good.sum(axis=1) >= min_bins
    mask = good.copy()
    key = np.zeros(nspec, dtype=int)
    done = ~ok
    converged = np.zeros(nspec, dtype=bool)
    n_iter = np.zeros(nspec, dtype=int)
    for it in range(1, max_iter + 1):
        todo = np.flatnonzero(~done)
        if len(todo) == 0:
            break
        fc, wc = _coarsen(flux[todo], ivar[todo] * mask[todo])
        if it == 1:
            # Separable search: the width at zero offset, then the offset at that width.
            zero = SHIFT_BINS.index(0)
            cand = np.broadcast_to([where[(i, zero)] for i in range(nw)], (len(todo), nw))
            wi = np.array([keys[k][0] for k in _search(fc, wc, coarse, cand)])
            cand = np.array([[where[(w, j)] for j in range(ns)] for w in wi])
            key[todo] = _search(fc, wc, coarse, cand)
        elif it in (3, 6):
            # As troughs leave the fit, look again around the current choice.
            cand = np.array([_neighbours(keys[k], where, nw, ns) for k in key[todo]])
            key[todo] = _search(fc, wc, coarse, cand)
        m, b = _normal(coarse, key[todo], fc, wc)
        coef, _ = nonneg_lstsq(m, b, NPOLY)
        model = np.einsum("bfp,bp->bf", fine[key[todo]], coef)
        new = _clip_mask(flux[todo], ivar[todo], model, good[todo], protect)
        if it >= 3:
            new &= mask[todo]
        starved = new.sum(axis=1) < min_bins // 2
        changed = np.count_nonzero(new != mask[todo], axis=1)
        keep = todo[~starved]
        mask[keep] = new[~starved]
        n_iter[todo] = it
        # A bin or two flipping at a trough edge does not move the continuum.
        settled = ~starved & (changed <= 2) & (it >= 3)
        converged[todo[settled]] = True
        done[todo[settled | starved]] = True
    return _final(flux, ivar, mask, key, ok, converged, n_iter, grid, coarse, fine, keys)


def _neighbours(k: tuple[int, int], where: dict, nw: int, ns: int) -> list[int]:
    """The 3 x 3 block of keys around ``k``, clamped at the grid edges (may repeat)."""
    wi, sj = k
    return [
        where[(min(max(a, 0), nw - 1), min(max(b, 0), ns - 1))]
        for a in (wi - 1, wi, wi + 1)
        for b in (sj - 1, sj, sj + 1)
    ]


def _final(flux, ivar, mask, key, ok, converged, n_iter, grid, coarse, fine, keys):
    """Last fit with covariances; one ContinuumFit per spectrum."""
    nbin = flux.shape[1]
    fc, wc = _coarsen(flux, ivar * mask)
    m, b = _normal(coarse, key, fc, wc)
    coef, active = nonneg_lstsq(m, b, NPOLY)
    p = m.shape[-1]
    both = active[:, :, None] & active[:, None, :]
    mm = np.where(both, m, 0.0) + np.where(np.eye(p, dtype=bool) & ~active[:, None, :], 1.0, 0.0)
    cov = np.where(both, np.linalg.pinv(mm), 0.0)
    resid = fc - np.einsum("brp,bp->br", coarse[0][key], coef)
    chi2 = np.sum(wc * resid**2, axis=1)
    dof = np.sum(wc > 0, axis=1) - active.sum(axis=1)
    rchi2 = np.divide(chi2, dof, out=np.ones_like(chi2), where=dof > 0)
    # An imperfect model (reduced chi^2 > 1) widens the uncertainty accordingly.
    cov = cov * np.maximum(rchi2, 1.0)[:, None, None]
    a = fine[key]
    model = np.einsum("bfp,bp->bf", a, coef)
    model_err = np.sqrt(np.clip(np.einsum("bfp,bpq,bfq->bf", a, cov, a), 0.0, None))
    out = []
    nan = np.full(nbin, np.nan)
    for i in range(len(flux)):
        wi, sj = keys[key[i]]
        good_fit = bool(ok[i]) and bool(np.all(np.isfinite(model[i])))
        out.append(
            ContinuumFit(
                grid,
                flux[i],
                ivar[i],
                model[i] if good_fit else nan,
                model_err[i] if good_fit else nan,
                mask[i],
                coef[i],
                cov[i],
                width_kms=float(WIDTHS_KMS[wi]),
                shift_kms=float(SHIFT_BINS[sj] * grid.dv),
                chi2=float(chi2[i]),
                dof=int(dof[i]),
                n_iter=int(n_iter[i]),
                converged=bool(converged[i]),
                ok=good_fit,
                key=(wi, sj),
            )  # fmt: skip
        )
    return out
