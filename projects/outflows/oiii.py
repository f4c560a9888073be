"""[O III] 4959,5007 outflow fits (QSOs with z up to about 0.95).

Model over 4750-5120 Angstrom (rest), on the native DESI pixels:

* a linear local continuum (no Fe II template ships with desilab; the window
  avoids the strongest Fe II blends);
* broad H-beta (one Gaussian) and narrow H-beta tied to the [O III] core's
  velocity and width;
* the [O III] doublet as a core and, optionally, a blueshifted wing: each a
  pair of Gaussians at 4960.30 and 5008.24 Angstrom (vacuum) with the
  5007/4959 ratio fixed at 2.98 and one velocity and width per component.

Widths are intrinsic: the line-spread function from the resolution matrix is
added in quadrature inside the model. The fits run in batches, in lockstep:
a Levenberg-Marquardt solver with analytic Jacobians over a stack of spectra
(:mod:`.lmfit`). The no-wing model is fitted first; the wing model then starts
from it with four wing guesses per spectrum and keeps the best. The wing is
retained only when it lowers the Bayesian information criterion by more than
``bic_threshold`` and has a positive flux. Uncertainties: the parameter
covariance (inverse Hessian, scaled by the reduced chi^2) drawn 200 times and
propagated to W80, v_max = |dv| + 2 sigma_wing, the wing fraction and L[O III].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .continuum import C_KMS
from .flags import Flag
from .lmfit import levenberg_marquardt

__all__ = [
    "OIII_COLUMNS",
    "OIII_WAVE",
    "OIIIFit",
    "fit_oiii",
    "fit_oiii_batch",
    "luminosity_distance_cm",
]

#: Vacuum rest wavelengths (Angstrom) of [O III] 4959, 5007 and H-beta.
OIII_WAVE = (4960.30, 5008.24)
HBETA = 4862.68
RATIO = 2.98
WINDOW = (4750.0, 5120.0)
#: Parameters: continuum c0, c1; H-beta broad amplitude, velocity, sigma; H-beta narrow
#: amplitude; core amplitude, velocity, sigma; wing amplitude, shift, extra sigma.
NAMES = ("c0", "c1", "Ab", "vb", "sb", "An", "Ac", "vc", "sc", "Aw", "dv", "dsw")
LOWER = np.array([-np.inf, -np.inf, 0, -3000, 700, 0, 0, -600, 40, 0, -2000, 30], dtype=float)
UPPER = np.array([np.inf, np.inf, np.inf, 3000, 8000, np.inf, np.inf, 600, 700, np.inf, 600, 2500])
NOWING = np.arange(9)
#: Kinematic parameters: ending on one of their bounds is flagged (AT_BOUND).
KINEMATIC = np.array([3, 4, 7, 8, 10, 11])
#: Wing starts (shift, extra sigma), km/s.
WING_STARTS = ((-150.0, 200.0), (-400.0, 400.0), (-800.0, 600.0), (0.0, 900.0))

#: Result columns (name, unit) written to the results table.
OIII_COLUMNS = [
    ("OIII_WING", ""), ("OIII_FLUX", "1e-17 erg/s/cm2"), ("OIII_FLUX_ERR", "1e-17 erg/s/cm2"),
    ("OIII_SNR", ""), ("OIII_CORE_V", "km/s"), ("OIII_CORE_SIGMA", "km/s"),
    ("OIII_CORE_SIGMA_ERR", "km/s"), ("OIII_WING_VSHIFT", "km/s"), ("OIII_WING_VSHIFT_ERR", "km/s"),
    ("OIII_WING_SIGMA", "km/s"), ("OIII_WING_SIGMA_ERR", "km/s"), ("OIII_WING_FRAC", ""),
    ("OIII_WING_FRAC_ERR", ""), ("OIII_WING_SNR", ""), ("OIII_W80", "km/s"),
    ("OIII_W80_ERR", "km/s"), ("OIII_VMAX", "km/s"), ("OIII_VMAX_ERR", "km/s"),
    ("LOG_L_OIII", "log10 erg/s"), ("LOG_L_OIII_ERR", "dex"), ("LOG_L_OIII_WING", "log10 erg/s"),
    ("LOG_L_OIII_WING_ERR", "dex"), ("LOG_L5100", "log10 erg/s"),
    ("OIII_RCHI2", ""), ("OIII_DBIC", ""),
]  # fmt: skip


@lru_cache(maxsize=1)
def _dl_table() -> tuple[np.ndarray, np.ndarray]:
    from astropy.cosmology import Planck18

    z = np.linspace(0.0, 6.0, 1201)
    return z, Planck18.luminosity_distance(z).to_value("cm")


def luminosity_distance_cm(z: float | np.ndarray) -> np.ndarray:
    """Planck18 luminosity distance (cm), interpolated from a fine table (astropy's is slow)."""
    zt, dt = _dl_table()
    return np.interp(np.asarray(z, dtype=np.float64), zt, dt)


def _gauss(x, lam0, v, sig_obs):
    """Unit-area Gaussian and its derivatives with respect to velocity and observed sigma.

    ``x`` (B, P); ``v`` and ``sig_obs`` (B, 1) in km/s.
    """
    mu = lam0 * (1.0 + v / C_KMS)
    s = lam0 * sig_obs / C_KMS
    t = (x - mu) / s
    g = np.exp(-0.5 * t * t) / (np.sqrt(2.0 * np.pi) * s)
    return g, g * t / s * (lam0 / C_KMS), g * (t * t - 1.0) / s * (lam0 / C_KMS)


def _doublet(x, v, sig_obs):
    """[O III] 4959 + 5007 with unit 5007 flux, with derivatives (as :func:`_gauss`)."""
    a = _gauss(x, OIII_WAVE[1], v, sig_obs)
    b = _gauss(x, OIII_WAVE[0], v, sig_obs)
    return tuple(p + q / RATIO for p, q in zip(a, b, strict=True))


def model_and_jacobian(p: np.ndarray, x: np.ndarray, lsf: np.ndarray, jac: bool = True):
    """The model (B, P) and its Jacobian (B, P, 12) for parameters ``p`` (B, 12).

    ``lsf`` (B,) is the LSF sigma in km/s, added in quadrature to every width.
    """
    col = [p[:, k : k + 1] for k in range(12)]
    c0, c1, ab, vb, sb, an, ac, vc, sc, aw, dv, dsw = col
    l2 = (lsf**2)[:, None]
    ob, oc, ow = np.sqrt(sb**2 + l2), np.sqrt(sc**2 + l2), np.sqrt((sc + dsw) ** 2 + l2)
    gb, gb_v, gb_s = _gauss(x, HBETA, vb, ob)
    gn, gn_v, gn_s = _gauss(x, HBETA, vc, oc)
    dc, dc_v, dc_s = _doublet(x, vc, oc)
    dw, dw_v, dw_s = _doublet(x, vc + dv, ow)
    u = (x - 5000.0) / 100.0
    model = c0 + c1 * u + ab * gb + an * gn + ac * dc + aw * dw
    if not jac:
        return model, None
    # d(observed sigma)/d(intrinsic sigma) = intrinsic / observed.
    kb, kc, kw = sb / ob, sc / oc, (sc + dsw) / ow
    parts = [
        1.0, u, gb, ab * gb_v, ab * gb_s * kb, gn, dc,
        an * gn_v + ac * dc_v + aw * dw_v,
        an * gn_s * kc + ac * dc_s * kc + aw * dw_s * kw,
        dw, aw * dw_v, aw * dw_s * kw,
    ]  # fmt: skip
    out = np.empty((*x.shape, 12))
    for k, q in enumerate(parts):
        out[..., k] = q
    return model, out


def _linear_start(p, x, f, w, lsf):
    """Amplitudes (continuum and lines) by linear least squares at fixed kinematics."""
    _, jac = model_and_jacobian(p, x, lsf)
    cols = [0, 1, 2, 5, 6, 9]
    a = jac[..., cols]
    aw = a * w[..., None]
    m = np.matmul(np.swapaxes(aw, 1, 2), a)
    m += 1e-9 * np.trace(m, axis1=1, axis2=2)[:, None, None] * np.eye(len(cols))
    b = np.matmul(np.swapaxes(aw, 1, 2), f[..., None])[..., 0]
    try:
        coef = np.linalg.solve(m, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        coef = np.matmul(np.linalg.pinv(m), b[..., None])[..., 0]
    out = p.copy()
    out[:, cols] = coef
    out[:, [2, 5, 6, 9]] = np.clip(out[:, [2, 5, 6, 9]], 0.0, None)
    return out


@dataclass
class OIIIFit:
    """[O III] fit of one QSO.

    Attributes
    ----------
    values : dict
        See :data:`OIII_COLUMNS`; NaN where not measured.
    flags : Flag
    wave, flux, ivar : ndarray
        Rest wavelength and observed-frame flux density of the fitted pixels.
    model : dict of ndarray
        ``total``, ``continuum``, ``hbeta``, ``core``, ``wing`` on ``wave``.
    params : ndarray (12,)
        Parameters of the retained model (see ``NAMES``).
    """

    values: dict
    flags: Flag = Flag(0)
    wave: np.ndarray | None = None
    flux: np.ndarray | None = None
    ivar: np.ndarray | None = None
    model: dict = field(default_factory=dict)
    params: np.ndarray | None = None


def _empty() -> dict:
    return {name: (False if name == "OIII_WING" else np.nan) for name, _ in OIII_COLUMNS}


def _lsf_kms(wave_obs, lsf_angstrom, keep) -> float:
    if lsf_angstrom is None:
        return 0.0
    arr = np.broadcast_to(np.asarray(lsf_angstrom, dtype=float), wave_obs.shape)
    near = keep & np.isfinite(arr) & (arr > 0)
    return float(np.median(arr[near] / wave_obs[near]) * C_KMS) if near.any() else 0.0


def fit_oiii(
    wave_obs: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    z: float,
    *,
    lsf_sigma_angstrom: np.ndarray | float | None = None,
    **kwargs,
) -> OIIIFit:
    """Fit H-beta + [O III] of one QSO; see :func:`fit_oiii_batch` for the options."""
    lsf = None if lsf_sigma_angstrom is None else [lsf_sigma_angstrom]
    return fit_oiii_batch(wave_obs, [flux], [ivar], [z], lsf_sigma_angstrom=lsf, **kwargs)[0]


def _bin_pairs(x, f, iv, sel):
    """Inverse-variance means of pixel pairs in ``sel`` (halves the fit's cost).

    The narrowest allowed core (40 km/s, plus the LSF) still spans two binned pixels
    at z = 0, so sampling at bin centres costs well under 1 % in the widths.
    """
    idx = np.flatnonzero(sel)
    idx = idx[: len(idx) // 2 * 2].reshape(-1, 2)
    w = iv[idx]
    fv = np.where(w > 0, f[idx], 0.0)
    wsum = w.sum(axis=1)
    keep = wsum > 0
    xm = np.where(keep, (x[idx] * w).sum(axis=1) / np.where(keep, wsum, 1.0), x[idx].mean(axis=1))
    fm = (fv * w).sum(axis=1) / np.where(keep, wsum, 1.0)
    return xm[keep], fm[keep], wsum[keep]


def _prepare(wave_obs, flux, ivar, z, lsf_a, window):
    """Pixels of each spectrum in the window, padded to one length; coverage flags."""
    rows, flags = [], []
    for i, zi in enumerate(z):
        f = np.asarray(flux[i], dtype=float)
        iv = np.asarray(ivar[i], dtype=float)
        fl = Flag(0)
        bad = ~(np.isfinite(f) & np.isfinite(iv))
        if np.isfinite(zi) and zi >= 0:
            rest = wave_obs / (1.0 + zi)
            sel = (rest >= window[0]) & (rest <= window[1])
            if np.any(sel & bad):
                fl |= Flag.BAD_PIXELS
            keep = sel & ~bad & (iv > 0)
            core = (rest > 4930.0) & (rest < 5030.0)
            covered = core.any() and np.mean(keep[core]) >= 0.7 and keep.sum() >= 50
        else:
            keep, covered = np.zeros(len(wave_obs), bool), False
        if not covered:
            rows.append(None)
            flags.append(fl | Flag.NO_COVERAGE)
            continue
        lsf = _lsf_kms(wave_obs, None if lsf_a is None else lsf_a[i], keep & core)
        xr, fr, ivr = _bin_pairs(wave_obs / (1.0 + zi), f, np.where(keep, iv, 0.0), sel)
        rows.append((xr, fr, ivr, lsf))
        flags.append(fl)
    return rows, flags


def fit_oiii_batch(
    wave_obs: np.ndarray,
    flux,
    ivar,
    z,
    *,
    lsf_sigma_angstrom=None,
    bic_threshold: float = 10.0,
    min_snr: float = 3.0,
    n_draws: int = 200,
    window: tuple[float, float] = WINDOW,
    seed: int = 0,
    wing: str = "auto",
    chunk: int = 64,
) -> list[OIIIFit]:
    """Fit H-beta + [O III] of many QSOs at once.

    Parameters
    ----------
    wave_obs : ndarray (nwave,)
        Observed vacuum wavelengths shared by the spectra (Angstrom).
    flux, ivar : sequence of ndarray (nwave,)
        Flux (1e-17 erg/s/cm2/Angstrom) and inverse variance of each QSO.
    z : sequence of float
        Systemic redshifts (the core's velocity is fitted relative to them).
    lsf_sigma_angstrom : sequence of (ndarray or float), optional
        LSF Gaussian sigma (observed Angstrom), per pixel or one value per QSO.
    bic_threshold : float
        The wing is kept when BIC(no wing) - BIC(wing) exceeds this.
    min_snr : float
        Integrated [O III] 5007 S/N below this gives NO_LINE.
    n_draws : int
        Parameter draws for the errors of derived quantities.
    window : (float, float)
        Rest-frame fitting window, Angstrom.
    seed : int
        Seed of the draws, combined with each spectrum's redshift and pixel count so
        that a QSO gets the same errors alone or in any batch.
    wing : {'auto', 'on', 'off'}
        Keep the wing when BIC justifies it, always, or never fit one.
    chunk : int
        Spectra fitted in lockstep at a time.

    Returns
    -------
    list of OIIIFit
    """
    if wing not in ("auto", "on", "off"):
        raise ValueError("wing must be 'auto', 'on' or 'off'")
    z = np.asarray(z, dtype=float)
    if len(z) > chunk:
        # Lockstep batches of bounded size: memory grows with spectra x pixels x starts.
        opts = {"bic_threshold": bic_threshold, "min_snr": min_snr, "n_draws": n_draws,
                "window": window, "seed": seed, "wing": wing, "chunk": chunk}  # fmt: skip
        out: list[OIIIFit] = []
        for a in range(0, len(z), chunk):
            lsf = None if lsf_sigma_angstrom is None else lsf_sigma_angstrom[a : a + chunk]
            out += fit_oiii_batch(wave_obs, flux[a : a + chunk], ivar[a : a + chunk],
                                  z[a : a + chunk], lsf_sigma_angstrom=lsf, **opts)  # fmt: skip
        return out
    rows, flags = _prepare(np.asarray(wave_obs, float), flux, ivar, z, lsf_sigma_angstrom, window)
    out = [OIIIFit(_empty(), fl) for fl in flags]
    todo = [i for i, r in enumerate(rows) if r is not None]
    if not todo:
        return out
    npix = max(len(rows[i][0]) for i in todo)
    nb = len(todo)
    x = np.full((nb, npix), 5000.0)
    f = np.zeros((nb, npix))
    w = np.zeros((nb, npix))
    lsf = np.zeros(nb)
    for k, i in enumerate(todo):
        xi, fi, wi, li = rows[i]
        x[k, : len(xi)], f[k, : len(xi)], w[k, : len(xi)], lsf[k] = xi, fi, wi, li
    npts = np.sum(w > 0, axis=1)
    start = np.zeros((nb, 12))
    start[:, [4, 8, 10, 11]] = 2000.0, 200.0, -300.0, 400.0
    start = _linear_start(start, x, f, w, lsf)
    start[:, 9] = 0.0
    fit_nw = levenberg_marquardt(model_and_jacobian, start, x, f, w, lsf, LOWER, UPPER, NOWING,
                                 watch=KINEMATIC)  # fmt: skip
    if wing == "off":
        for j, i in enumerate(todo):
            out[i] = _finish(j, i, x, f, w, lsf, npts, fit_nw, None, None, flags[i], z[i],
                             np.inf, min_snr, n_draws, seed, rows[i])  # fmt: skip
        return out
    # Wing starts: each spectrum's no-wing solution with every wing guess.
    k = len(WING_STARTS)
    p_w = np.repeat(fit_nw.params, k, axis=0)
    p_w[:, 10:12] = np.tile(np.array(WING_STARTS), (nb, 1))
    rep = (np.repeat(x, k, 0), np.repeat(f, k, 0), np.repeat(w, k, 0), np.repeat(lsf, k))
    p_w = _linear_start(p_w, *rep)
    fit_w = levenberg_marquardt(model_and_jacobian, p_w, *rep, LOWER, UPPER, np.arange(12),
                                watch=KINEMATIC)  # fmt: skip
    chi_w = fit_w.chi2.reshape(nb, k)
    best = np.argmin(chi_w, axis=1)
    pick = np.arange(nb) * k + best
    # Forcing the wing is a BIC threshold nothing can fail.
    thr = -np.inf if wing == "on" else bic_threshold
    for j, i in enumerate(todo):
        out[i] = _finish(
            j, i, x, f, w, lsf, npts, fit_nw, fit_w, pick[j], flags[i], z[i], thr,
            min_snr, n_draws, seed, rows[i],
        )  # fmt: skip
    return out


def _finish(j, i, x, f, w, lsf, npts, fit_nw, fit_w, pw, flags, z, bic_thr, min_snr, ndraw,
            seed, row) -> OIIIFit:  # fmt: skip
    """Choose the model by BIC and derive the measurements of spectrum ``j`` of the batch."""
    n = int(npts[j])
    chi_nw = float(fit_nw.chi2[j])
    if fit_w is None:
        dbic, wing = np.nan, False
    else:
        chi_w = float(fit_w.chi2[pw])
        dbic = (chi_nw + 9 * np.log(n)) - (chi_w + 12 * np.log(n))
        forced = bic_thr == -np.inf
        wing = bool(forced or (np.isfinite(dbic) and dbic > bic_thr and fit_w.params[pw][9] > 0))
    fit, idx = (fit_w, pw) if wing else (fit_nw, j)
    p = fit.params[idx]
    values = _empty()
    if not np.all(np.isfinite(p)) or not np.isfinite(fit.chi2[idx]):
        return OIIIFit(values, flags | Flag.FIT_FAILED, *row[:3])
    free = np.arange(12) if wing else NOWING
    dof = max(n - len(free), 1)
    rchi2 = float(fit.chi2[idx]) / dof
    cov = fit.covariance(idx, free) * max(rchi2, 1.0)
    rng = np.random.default_rng([seed, int(round(z * 1e7)), n])
    values.update(_derived(p, cov, wing, z, ndraw, rng))
    values.update(OIII_WING=wing, OIII_RCHI2=rchi2, OIII_DBIC=float(dbic), OIII_CORE_V=float(p[7]))
    cont5100 = p[0] + p[1]
    if cont5100 > 0:
        # lambda L_lambda is frame-independent: lambda_obs F_lambda,obs at 5100 (1 + z).
        lum = 4 * np.pi * luminosity_distance_cm(z) ** 2 * 1e-17 * cont5100 * 5100.0 * (1 + z)
        values["LOG_L5100"] = float(np.log10(lum))
    xs = x[j : j + 1, :n]
    parts = {}
    for name, keep in (("continuum", [0, 1]), ("hbeta", [2, 5]), ("core", [6]), ("wing", [9])):
        q = np.zeros((1, 12))
        q[0, [3, 4, 7, 8, 10, 11]] = p[[3, 4, 7, 8, 10, 11]]
        q[0, keep] = p[keep]
        parts[name] = model_and_jacobian(q, xs, lsf[j : j + 1], jac=False)[0][0]
    parts["total"] = sum(parts.values())
    if rchi2 > 2.0:
        flags |= Flag.BAD_LINE_FIT
    if fit.at_bound[idx]:
        flags |= Flag.AT_BOUND
    if not fit.converged[idx]:
        flags |= Flag.NOT_CONVERGED
    if not values["OIII_SNR"] >= min_snr:
        flags |= Flag.NO_LINE
    if float(np.median(f[j, :n] * np.sqrt(w[j, :n]))) < 1.0:
        flags |= Flag.LOW_SNR
    return OIIIFit(values, flags, row[0], row[1], row[2], parts, p)


_VGRID = np.linspace(-4000.0, 3000.0, 701)


def _profile_stats(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W80 (km/s) and wing flux fraction of the 5007 profile for rows of parameters (n, 12)."""
    v = _VGRID[None, :]
    ac, vc, sc, aw, dv, dsw = (p[:, k : k + 1] for k in (6, 7, 8, 9, 10, 11))
    prof = ac * np.exp(-0.5 * ((v - vc) / sc) ** 2) / sc
    prof = prof + aw * np.exp(-0.5 * ((v - vc - dv) / (sc + dsw)) ** 2) / (sc + dsw)
    cdf = np.cumsum(prof, axis=1)
    total = cdf[:, -1:]
    cdf = np.divide(cdf, total, out=np.zeros_like(cdf), where=total > 0)
    # The grid step is 10 km/s: first points past 10% and 90% of the flux.
    w80 = _VGRID[np.argmax(cdf >= 0.9, axis=1)] - _VGRID[np.argmax(cdf >= 0.1, axis=1)]
    tot = (ac + aw)[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(tot > 0, aw[:, 0] / tot, np.nan)
    return np.where(total[:, 0] > 0, w80, np.nan), frac


def _derived(p, cov, wing, z, n_draws, rng) -> dict:
    """Measured quantities and their errors from draws of the parameters."""
    # Cholesky of the free block: unlike an eigendecomposition it changes smoothly with
    # the covariance, so round-off differences cannot rotate the draws.
    free = np.flatnonzero(np.diag(cov) > 0)
    sub = cov[np.ix_(free, free)]
    try:
        chol = np.linalg.cholesky(sub + 1e-12 * np.trace(sub) * np.eye(len(free)))
    except np.linalg.LinAlgError:
        chol = np.diag(np.sqrt(np.diag(sub)))
    draws = np.repeat(p[None, :], n_draws, axis=0)
    draws[:, free] += rng.standard_normal((n_draws, len(free))) @ chol.T
    q = np.vstack([p[None, :], draws])
    q = np.clip(q, LOWER, UPPER)
    if not wing:
        q[:, 9] = 0.0
    # Fluxes were fitted per rest-frame Angstrom of the observed flux density.
    flux = (q[:, 6] + q[:, 9]) * (1.0 + z)
    w80, frac = _profile_stats(q)
    swing = q[:, 8] + q[:, 11]

    def nom_err(arr):
        return float(arr[0]), float(np.nanstd(arr[1:]))

    f0, ferr = nom_err(flux)
    out = {"OIII_FLUX": f0, "OIII_FLUX_ERR": ferr, "OIII_SNR": f0 / ferr if ferr > 0 else np.nan}
    out["OIII_W80"], out["OIII_W80_ERR"] = nom_err(w80)
    out["OIII_CORE_SIGMA"], out["OIII_CORE_SIGMA_ERR"] = nom_err(q[:, 8])
    if f0 > 0:
        out["LOG_L_OIII"] = float(np.log10(4 * np.pi * luminosity_distance_cm(z) ** 2 * 1e-17 * f0))
        out["LOG_L_OIII_ERR"] = ferr / f0 / np.log(10)
    if wing:
        out["OIII_WING_VSHIFT"], out["OIII_WING_VSHIFT_ERR"] = nom_err(q[:, 10])
        out["OIII_WING_SIGMA"], out["OIII_WING_SIGMA_ERR"] = nom_err(swing)
        out["OIII_WING_FRAC"], out["OIII_WING_FRAC_ERR"] = nom_err(frac)
        out["OIII_VMAX"], out["OIII_VMAX_ERR"] = nom_err(np.abs(q[:, 10]) + 2.0 * swing)
        w0, werr = nom_err(q[:, 9] * (1.0 + z))
        out["OIII_WING_SNR"] = w0 / werr if werr > 0 else np.nan
        if w0 > 0:
            out["LOG_L_OIII_WING"] = float(
                np.log10(4 * np.pi * luminosity_distance_cm(z) ** 2 * 1e-17 * w0)
            )
            out["LOG_L_OIII_WING_ERR"] = werr / w0 / np.log(10)
    return out
