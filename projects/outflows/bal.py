"""Broad absorption lines with DESI's definitions (baltools; Filbert et al. 2024).

For C IV (lambda0 = 1549 Angstrom) and Si IV (1398 Angstrom), with velocities
v = c (lambda - lambda0) / lambda0 and the flux normalised by the continuum
(:mod:`.continuum`):

* a trough is a contiguous run with normalised flux below 0.9 (one-bin gaps are
  bridged, as baltools does);
* BI sums (1 - f/0.9) dv over troughs in -25,000 ... -3,000 km/s wider than
  2,000 km/s, counting each from 2,000 km/s past its blue edge;
* AI does the same over -25,000 ... 0 km/s for troughs wider than 450 km/s,
  keeping only troughs whose mean flux plus three standard errors is still
  below 0.9 (baltools' significance test).

Columns follow the DESI BAL catalog: ``BI_CIV, ERR_BI_CIV, NCIV_2000,
VMIN_CIV_2000[5], VMAX_CIV_2000[5], POSMIN_CIV_2000[5], FMIN_CIV_2000[5], AI_CIV,
ERR_AI_CIV, NCIV_450, VMIN_CIV_450[17], ...`` and the same for SIIV, plus
``SNR_CIV``. Velocities there are positive outflow speeds (VMAX is the blue
edge); unused trough slots hold -1. The trough depth is ``1 - FMIN``.

The normalised flux is smoothed with a 450 km/s boxcar before troughs are
sought, because at DESI's typical S/N single noisy bins would otherwise split
wide troughs into pieces narrower than 2,000 km/s. Errors come from Monte
Carlo draws of the flux (from its inverse variance) and of the continuum
(from its covariance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import uniform_filter1d

from .continuum import (
    C_KMS,
    ContinuumFit,
    RestGrid,
    fit_continuum,
    fit_continuum_batch,
    rebin_rest,
)
from .flags import Flag

__all__ = [
    "BAL_COLUMNS",
    "BAL_ZRANGE",
    "BALResult",
    "Trough",
    "balnicity_draws",
    "find_troughs",
    "measure_bal",
    "measure_bal_batch",
]

BAL_ZRANGE = (1.57, 5.0)
ION_LAMBDA = {"CIV": 1549.0, "SIIV": 1398.0}
THRESHOLD = 0.9
VMIN_SEARCH = -25000.0
#: (index, max velocity, min width, slots, column suffix)
KINDS = {"BI": (-3000.0, 2000.0, 5, "2000"), "AI": (0.0, 450.0, 17, "450")}


def _columns() -> list[tuple[str, str, int]]:
    cols = []
    for ion in ION_LAMBDA:
        for kind, (_, _, slots, suffix) in KINDS.items():
            cols += [
                (f"{kind}_{ion}", "f4", 1),
                (f"ERR_{kind}_{ion}", "f4", 1),
                (f"N{ion}_{suffix}", "i2", 1),
            ]
            cols += [
                (f"{p}_{ion}_{suffix}", "f4", slots) for p in ("VMIN", "VMAX", "POSMIN", "FMIN")
            ]
    return cols + [("SNR_CIV", "f4", 1)]


#: (name, dtype, length) of every BAL column, DESI BAL catalog names.
BAL_COLUMNS: list[tuple[str, str, int]] = _columns()


@dataclass
class Trough:
    """One absorption trough (velocities are positive outflow speeds, km/s)."""

    ion: str
    kind: str
    vmin: float
    vmax: float
    posmin: float
    fmin: float

    @property
    def depth(self) -> float:
        """1 - minimum normalised flux."""
        return 1.0 - self.fmin


@dataclass
class BALResult:
    """BAL measurement of one QSO.

    Attributes
    ----------
    values : dict
        DESI BAL catalog columns (NaN where not measurable).
    troughs : list of Trough
    continuum : ContinuumFit or None
    norm_flux : ndarray or None
        Flux / continuum on the continuum's rest grid (NaN where no data).
    flags : Flag
    """

    values: dict
    troughs: list[Trough] = field(default_factory=list)
    continuum: ContinuumFit | None = None
    norm_flux: np.ndarray | None = None
    flags: Flag = Flag(0)

    @property
    def is_bal(self) -> bool:
        """BI_CIV > 0 (the usual BAL definition)."""
        return bool(np.nan_to_num(self.values.get("BI_CIV", 0.0)) > 0)


def _empty_values() -> dict:
    out = {}
    for name, _, n in BAL_COLUMNS:
        out[name] = np.full(n, -1.0) if n > 1 else np.nan
    return out


def _bridge(below: np.ndarray) -> np.ndarray:
    """Bridge single-bin gaps inside troughs (baltools)."""
    out = below.copy()
    out[..., 1:-1] |= below[..., :-2] & below[..., 2:]
    return out


def _troughs_of(v, nf, err, kind, error_scaling, corr):
    """Every trough of every row that counts for ``kind``: (row, start, end) arrays.

    Works on the runs themselves (a handful per row), not on every element, so
    thousands of Monte Carlo rows cost little more than their cumulative sums.
    """
    _, min_width, _, _ = KINDS[kind]
    below = _bridge((1.0 - nf / THRESHOLD) - error_scaling * err > 0)
    pad = np.zeros((len(below), 1), dtype=bool)
    edges = np.diff(np.concatenate([pad, below, pad], axis=1).astype(np.int8), axis=1)
    row, start = np.nonzero(edges[:, :-1] == 1)
    _, end = np.nonzero(edges[:, 1:] == -1)  # same row-major order as the starts
    keep = v[end] - v[start] > min_width
    if kind == "AI" and keep.any():
        # baltools: keep AI troughs whose mean flux + 3 standard errors is below 0.9;
        # the smoothed error is scaled back up by sqrt(corr) (neighbours share noise).
        r, s, e = row[keep], start[keep], end[keep]
        zero = np.zeros((len(nf), 1))
        cf = np.concatenate([zero, np.cumsum(nf, axis=1)], axis=1)
        ce = np.concatenate([zero, np.cumsum(err, axis=1)], axis=1)
        npix = e - s + 1
        mean_f = (cf[r, e + 1] - cf[r, s]) / npix
        mean_e = (ce[r, e + 1] - ce[r, s]) / npix * np.sqrt(corr)
        keep[np.flatnonzero(keep)] = mean_f + 3.0 * mean_e / np.sqrt(npix) < THRESHOLD
    return row[keep], start[keep], end[keep]


def balnicity_draws(
    v: np.ndarray,
    nf: np.ndarray,
    err: np.ndarray,
    kind: str,
    *,
    error_scaling: float = 0.5,
    corr: int = 1,
) -> np.ndarray:
    """BI or AI of many normalised spectra at once.

    Parameters
    ----------
    v : ndarray (n,)
        Velocities (km/s), increasing, already cut to the search window.
    nf : ndarray (m, n)
        Normalised (smoothed) fluxes.
    err : ndarray (n,) or (m, n)
        1-sigma error of ``nf``.
    kind : {'BI', 'AI'}
    error_scaling : float
        baltools' factor on the error in the trough test ``1 - f/0.9 - k*err > 0``.
    corr : int
        Bins over which ``nf`` was smoothed: the AI significance test scales the
        smoothed error back up by sqrt(corr), since neighbouring bins then share noise.

    Returns
    -------
    ndarray (m,)
        The index of each row, km/s.
    """
    _, min_width, _, _ = KINDS[kind]
    nf = np.atleast_2d(nf)
    err = np.broadcast_to(err, nf.shape)
    row, start, end = _troughs_of(v, nf, err, kind, error_scaling, corr)
    # Each trough counts from min_width past its blue edge to its end: a difference
    # of prefix sums of (1 - f/0.9) dv.
    dv = np.diff(v, prepend=v[0])
    g = np.concatenate([np.zeros((len(nf), 1)), np.cumsum((1.0 - nf / THRESHOLD) * dv, axis=1)],
                       axis=1)  # fmt: skip
    first = np.searchsorted(v, v[start] + min_width)
    part = g[row, end + 1] - g[row, np.minimum(first, end + 1)]
    return np.bincount(row, weights=part, minlength=len(nf))


def find_troughs(
    v: np.ndarray,
    nf: np.ndarray,
    err: np.ndarray,
    kind: str,
    *,
    error_scaling: float = 0.5,
    corr: int = 1,
) -> list[list[tuple[int, int]]] | list[tuple[int, int]]:
    """Troughs (start, end indices, inclusive) that count for ``kind``.

    Same arguments as :func:`balnicity_draws`; ``nf`` (n,) gives one list of
    troughs, ``nf`` (m, n) one list per row.
    """
    single = np.ndim(nf) == 1
    nf = np.atleast_2d(nf)
    err = np.broadcast_to(err, nf.shape)
    row, start, end = _troughs_of(v, nf, err, kind, error_scaling, corr)
    out: list[list[tuple[int, int]]] = [[] for _ in range(len(nf))]
    for r, s, e in zip(row.tolist(), start.tolist(), end.tolist(), strict=True):
        out[r].append((s, e))
    return out[0] if single else out


def _smooth(nf: np.ndarray, nbins: int) -> np.ndarray:
    return uniform_filter1d(nf, nbins, axis=-1, mode="nearest") if nbins > 1 else nf


def _fill_gaps(nf: np.ndarray, have: np.ndarray) -> np.ndarray:
    """Interpolate the normalised flux over bins without data."""
    if have.all() or not have.any():
        return nf
    idx = np.arange(len(nf))
    return np.interp(idx, idx[have], nf[have])


@dataclass(eq=False)
class _Prepared:
    """A spectrum ready for the index computation (see :func:`_prepare`)."""

    values: dict
    flags: Flag
    cont: ContinuumFit
    norm_full: np.ndarray
    ok: np.ndarray
    nf: np.ndarray
    sig: np.ndarray
    draws: np.ndarray | None
    troughs: list = field(default_factory=list)


def _window(grid: RestGrid, nbins: int) -> slice:
    """Bins of both ions' search windows plus the smoothing margin (same for every QSO)."""
    centers = grid.centers
    lo = ION_LAMBDA["SIIV"] * (1.0 + VMIN_SEARCH / C_KMS)
    i0 = max(0, int(np.searchsorted(centers, lo)) - nbins)
    i1 = min(len(centers), int(np.searchsorted(centers, ION_LAMBDA["CIV"])) + nbins)
    return slice(i0, i1)


def _prepare(wave_obs, flux, ivar, z, cont, grid, n_mc, nbins, seed) -> _Prepared | BALResult:
    """Normalised, smoothed flux, its error and Monte Carlo draws of one spectrum."""
    values = _empty_values()
    flags = Flag(0)
    if not cont.ok:
        return BALResult(values, continuum=cont, flags=Flag.NO_COVERAGE)
    if not cont.converged:
        flags |= Flag.NOT_CONVERGED
    fb, ivb = cont.flux, cont.ivar
    v_pix = C_KMS * (wave_obs / (1.0 + z) - ION_LAMBDA["CIV"]) / ION_LAMBDA["CIV"]
    in_civ = (v_pix >= VMIN_SEARCH) & (v_pix < 0) & (ivar > 0) & np.isfinite(flux)
    if in_civ.any():
        values["SNR_CIV"] = float(np.median(flux[in_civ] * np.sqrt(ivar[in_civ])))
    model_full = np.where(cont.model > 0, cont.model, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm_full = np.where(ivb > 0, fb / model_full, np.nan)
    sl = _window(grid, nbins)
    fbs, ivs, model, nf_raw = fb[sl], ivb[sl], model_full[sl], norm_full[sl]
    ok = (ivs > 0) & np.isfinite(nf_raw)
    if not ok.any():
        return BALResult(values, continuum=cont, norm_flux=norm_full,
                         flags=flags | Flag.NO_COVERAGE)  # fmt: skip
    filled = _fill_gaps(np.nan_to_num(nf_raw, nan=1.0), ok)
    with np.errstate(divide="ignore", invalid="ignore"):
        sig_raw = np.where(ok, 1.0 / np.sqrt(ivs) / model, np.nan)
    sig = _smooth(_fill_gaps(np.nan_to_num(sig_raw, nan=1.0), ok), nbins) / np.sqrt(nbins)
    draws = None
    if n_mc > 0:
        # Seeded by the spectrum itself: the same QSO gets the same errors in any batch.
        rng = np.random.default_rng([seed, int(np.sum(ok)), int(round(z * 1e6))])
        noise = rng.standard_normal((n_mc, len(fbs))) / np.sqrt(np.where(ok, ivs, np.inf))
        cdraw = cont.draws(n_mc, rng, sl)
        with np.errstate(divide="ignore", invalid="ignore"):
            nfd = np.where(ok, (fbs + noise) / np.where(cdraw > 0, cdraw, np.nan), np.nan)
        # Bins without data cannot be redrawn: they keep the interpolated nominal value.
        draws = _smooth(np.where(np.isfinite(nfd), nfd, filled[None, :]), nbins)
    return _Prepared(values, flags, cont, norm_full, ok, _smooth(filled, nbins), sig, draws)


def _indices(preps: list[_Prepared], grid, nbins, error_scaling, min_coverage) -> None:
    """BI/AI, errors and troughs of prepared spectra, one stacked computation per index."""
    centers = grid.centers[_window(grid, nbins)]
    opts = {"error_scaling": error_scaling, "corr": nbins}
    for ion, lam0 in ION_LAMBDA.items():
        v = C_KMS * (centers - lam0) / lam0
        window = (v >= VMIN_SEARCH) & (v < 0)
        use = []
        for p in preps:
            if window.sum() >= 3 and p.ok[window].mean() >= min_coverage:
                use.append(p)
            else:
                p.flags |= Flag.NO_COVERAGE if ion == "CIV" else Flag.NO_SIIV
        if not use:
            continue
        ndraw = 0 if use[0].draws is None else len(use[0].draws)
        for kind, (vtop, _, slots, suffix) in KINDS.items():
            sel = (v >= VMIN_SEARCH) & (v < vtop)
            nom = np.stack([p.nf[sel] for p in use])
            err = np.stack([p.sig[sel] for p in use])
            rows, errs = nom, err
            if ndraw:
                draws = np.stack([p.draws[:, sel] for p in use])
                rows = np.concatenate([nom[:, None], draws], axis=1).reshape(-1, sel.sum())
                errs = np.repeat(err, ndraw + 1, axis=0)
            index = balnicity_draws(v[sel], rows, errs, kind, **opts).reshape(len(use), -1)
            found = find_troughs(v[sel], nom, err, kind, **opts)
            vv = v[sel]
            for k, p in enumerate(use):
                p.values[f"{kind}_{ion}"] = float(index[k, 0])
                if ndraw:
                    p.values[f"ERR_{kind}_{ion}"] = float(np.std(index[k, 1:]))
                p.values[f"N{ion}_{suffix}"] = len(found[k])
                for slot, (s, e) in enumerate(found[k][:slots]):
                    ff = nom[k]
                    j = s + int(np.argmin(ff[s : e + 1]))
                    t = Trough(ion, kind, -float(vv[e]), -float(vv[s]), -float(vv[j]),
                               float(ff[j]))  # fmt: skip
                    p.troughs.append(t)
                    for col, val in (("VMIN", t.vmin), ("VMAX", t.vmax), ("POSMIN", t.posmin),
                                     ("FMIN", t.fmin)):  # fmt: skip
                        p.values[f"{col}_{ion}_{suffix}"][slot] = val


def _result(p: _Prepared) -> BALResult:
    flags = p.flags
    if p.cont.dof > 0 and p.cont.rchi2 > 3.0:
        flags |= Flag.BAD_CONTINUUM
    snr = p.values["SNR_CIV"]
    if not np.isfinite(snr) or snr < 2.0:
        flags |= Flag.LOW_SNR
    return BALResult(p.values, p.troughs, p.cont, p.norm_full, flags)


def measure_bal(
    wave_obs: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    z: float,
    *,
    grid: RestGrid | None = None,
    n_mc: int = 50,
    smooth_kms: float = 450.0,
    error_scaling: float = 0.5,
    min_coverage: float = 0.6,
    seed: int = 0,
    continuum: ContinuumFit | None = None,
) -> BALResult:
    """Continuum, BI/AI and troughs of C IV and Si IV for one QSO.

    Parameters
    ----------
    wave_obs, flux, ivar : ndarray (nwave,)
        Observed-frame spectrum (vacuum Angstrom, any flux unit).
    z : float
        Redshift; outside 1.57-5 (baltools' range) gives NO_COVERAGE.
    grid : RestGrid, optional
        Rest grid of the continuum fit (default 1261-2399 Angstrom, 150 km/s).
    n_mc : int
        Monte Carlo draws for ERR_BI_* and ERR_AI_* (0: no errors).
    smooth_kms : float
        Boxcar applied to the normalised flux before trough finding.
    error_scaling : float
        baltools' error term in the trough test, ``1 - f/0.9 - k*err > 0``, with
        ``err`` the error of the smoothed normalised flux.
    min_coverage : float
        Fraction of an ion's search window (-25,000 ... 0 km/s) that must have
        data; otherwise NO_COVERAGE (C IV) or NO_SIIV and NaN indices.
    seed : int
        Seed of the Monte Carlo, combined with the spectrum's redshift and pixel count
        so that a QSO gets the same errors alone or in any batch.
    continuum : ContinuumFit, optional
        An existing continuum fit of this spectrum on ``grid``; fitted here when omitted.

    Returns
    -------
    BALResult
    """
    grid = grid or RestGrid()
    if not (np.isfinite(z) and BAL_ZRANGE[0] <= z <= BAL_ZRANGE[1]):
        return BALResult(_empty_values(), flags=Flag.NO_COVERAGE)
    if continuum is None:
        continuum = fit_continuum(*rebin_rest(wave_obs, flux, ivar, z, grid), grid)
    nbins = max(1, int(round(smooth_kms / grid.dv)) | 1)
    prep = _prepare(wave_obs, flux, ivar, z, continuum, grid, n_mc, nbins, seed)
    if isinstance(prep, BALResult):
        return prep
    _indices([prep], grid, nbins, error_scaling, min_coverage)
    return _result(prep)


def measure_bal_batch(
    wave_obs: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    z: np.ndarray,
    *,
    grid: RestGrid | None = None,
    n_mc: int = 50,
    smooth_kms: float = 450.0,
    error_scaling: float = 0.5,
    min_coverage: float = 0.6,
    seed: int = 0,
) -> list[BALResult]:
    """:func:`measure_bal` for many spectra: continua and indices computed as stacks.

    Parameters
    ----------
    wave_obs : ndarray (nwave,)
        Observed wavelengths shared by the spectra.
    flux, ivar : ndarray (n, nwave)
    z : ndarray (n,)
    grid, n_mc, smooth_kms, error_scaling, min_coverage, seed
        As in :func:`measure_bal`.

    Returns
    -------
    list of BALResult
    """
    grid = grid or RestGrid()
    z = np.asarray(z, dtype=float)
    out: list[BALResult | None] = [None] * len(z)
    inside = np.isfinite(z) & (z >= BAL_ZRANGE[0]) & (z <= BAL_ZRANGE[1])
    for i in np.flatnonzero(~inside):
        out[i] = BALResult(_empty_values(), flags=Flag.NO_COVERAGE)
    idx = np.flatnonzero(inside)
    if len(idx) == 0:
        return out
    binned = [rebin_rest(wave_obs, flux[i], ivar[i], z[i], grid) for i in idx]
    fits = fit_continuum_batch(np.array([b[0] for b in binned]), np.array([b[1] for b in binned]),
                               grid)  # fmt: skip
    nbins = max(1, int(round(smooth_kms / grid.dv)) | 1)
    ready: list[tuple[int, _Prepared]] = []
    for i, cont in zip(idx, fits, strict=True):
        prep = _prepare(wave_obs, flux[i], ivar[i], z[i], cont, grid, n_mc, nbins, seed)
        if isinstance(prep, BALResult):
            out[i] = prep
        else:
            ready.append((i, prep))
    if ready:
        _indices([p for _, p in ready], grid, nbins, error_scaling, min_coverage)
        for i, p in ready:
            out[i] = _result(p)
    return out
