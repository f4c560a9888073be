"""Sky footprint and a lognormal galaxy density field in comoving space (Planck18).

The footprint is two caps of nside=64 nested healpix pixels, an NGC one and an
SGC one (as DESIVAST splits its catalogs). In each cap's box a Gaussian field
with the Eisenstein & Hu (1998) no-wiggle linear power spectrum times a galaxy
bias is exponentiated into a lognormal density 1 + delta, so the field has real
voids and walls. Galaxies are Poisson-sampled from (1 + delta) times the mean
density of the BGS selection at each distance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.cosmology import Planck18
from astropy_healpix import HEALPix

from .datamodel import NSIDE

HPX = HEALPix(nside=NSIDE, order="nested")
PIXEL_AREA_DEG2 = HPX.pixel_area.to_value(u.deg**2)
#: Cap centres (RA, Dec) well inside the DESI footprint, and the share of the area.
CAPS = {"NGC": (185.0, 30.0, 0.75), "SGC": (20.0, 5.0, 0.25)}
GALAXY_BIAS = 1.3
GAUSSIAN_SMOOTHING_MPC = 4.0
VOID_SMOOTHING_MPC_H = 10.0
DENSITY_SMOOTHING_MPC_H = 8.0
#: Fraction of the footprint volume flagged as void in the truth (smoothed density below).
VOID_VOLUME_FRACTION = 0.35


@dataclass
class Footprint:
    """Healpix pixels of the mock footprint and the cap each belongs to."""

    pixels: np.ndarray
    cap: np.ndarray
    centers: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def area_deg2(self) -> float:
        """Total area, square degrees."""
        return len(self.pixels) * PIXEL_AREA_DEG2

    def contains(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """True where (ra, dec) in degrees lies in a footprint pixel."""
        pix = HPX.lonlat_to_healpix(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)
        return np.isin(pix, self.pixels)

    def cap_of(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Cap name ('NGC'/'SGC') of each position (by its pixel)."""
        pix = HPX.lonlat_to_healpix(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)
        lookup = dict(zip(self.pixels.tolist(), self.cap.tolist(), strict=True))
        return np.array([lookup.get(p, "") for p in pix.tolist()])


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def make_footprint(area_deg2: float) -> Footprint:
    """Footprint of about ``area_deg2`` square degrees: an NGC and an SGC cap of pixels."""
    allpix = np.arange(HPX.npix)
    lon, lat = HPX.healpix_to_lonlat(allpix)
    vec = _unit(lon.to_value(u.deg), lat.to_value(u.deg))
    pixels, caps, centers = [], [], {}
    for name, (ra0, dec0, share) in CAPS.items():
        npix = max(1, int(round(share * area_deg2 / PIXEL_AREA_DEG2)))
        cosang = vec @ _unit(np.array(ra0), np.array(dec0))
        chosen = np.argsort(-cosang, kind="stable")[:npix]
        pixels.append(np.sort(chosen))
        caps.append(np.full(npix, name))
        centers[name] = (ra0, dec0)
    return Footprint(np.concatenate(pixels), np.concatenate(caps), centers)


def uniform_positions(
    rng: np.random.Generator, footprint: Footprint, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform on the sphere inside the footprint (RA, Dec degrees)."""
    ra_out, dec_out = np.zeros(0), np.zeros(0)
    # Draw within each cap's bounding circle and keep those inside the pixels.
    shares = np.array([CAPS[c][2] for c in CAPS])
    while len(ra_out) < n:
        m = max(64, int(1.5 * (n - len(ra_out))))
        which = rng.choice(len(CAPS), size=m, p=shares / shares.sum())
        ra, dec = np.zeros(m), np.zeros(m)
        for k, name in enumerate(CAPS):
            sel = which == k
            ra0, dec0, share = CAPS[name]
            radius = (
                np.degrees(
                    np.arccos(
                        1 - 1.2 * share * footprint.area_deg2 / (2 * np.pi) * (np.pi / 180) ** 2
                    )
                )
                + 1.0
            )
            ra[sel], dec[sel] = _random_in_cap(rng, ra0, dec0, radius, sel.sum())
        keep = footprint.contains(ra, dec)
        ra_out = np.concatenate([ra_out, ra[keep]])
        dec_out = np.concatenate([dec_out, dec[keep]])
    return ra_out[:n], dec_out[:n]


def _random_in_cap(rng, ra0, dec0, radius_deg, n):
    cosr = np.cos(np.radians(radius_deg))
    ct = 1 - rng.random(n) * (1 - cosr)
    phi = rng.random(n) * 2 * np.pi
    st = np.sqrt(1 - ct**2)
    local = np.stack([st * np.cos(phi), st * np.sin(phi), ct], axis=-1)
    return _to_radec(local @ _rotation(ra0, dec0).T)


def _rotation(ra0: float, dec0: float) -> np.ndarray:
    """Rotation taking +z to the direction (ra0, dec0)."""
    ez = _unit(np.array(ra0), np.array(dec0))
    ex = np.cross([0.0, 0.0, 1.0], ez)
    ex = ex / np.linalg.norm(ex) if np.linalg.norm(ex) > 1e-8 else np.array([1.0, 0.0, 0.0])
    ey = np.cross(ez, ex)
    return np.stack([ex, ey, ez], axis=1)


def _to_radec(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.linalg.norm(vec, axis=-1)
    dec = np.degrees(np.arcsin(np.clip(vec[..., 2] / r, -1, 1)))
    ra = np.degrees(np.arctan2(vec[..., 1], vec[..., 0])) % 360.0
    return ra, dec


def power_spectrum(k: np.ndarray) -> np.ndarray:
    """Linear galaxy power spectrum at z = 0 (Mpc^3), k in 1/Mpc, Planck18, no wiggles."""
    h = Planck18.h
    om, ob = Planck18.Om0, Planck18.Ob0
    ns, sigma8 = 0.9665, 0.8102
    theta = Planck18.Tcmb0.value / 2.7
    kh = np.maximum(k / h, 1e-6)  # h/Mpc
    # Eisenstein & Hu (1998) zero-baryon-oscillation transfer function.
    omh2, fb = om * h * h, ob / om
    s = 44.5 * np.log(9.83 / omh2) / np.sqrt(1 + 10 * (ob * h * h) ** 0.75)
    alpha = 1 - 0.328 * np.log(431 * omh2) * fb + 0.38 * np.log(22.3 * omh2) * fb**2
    gamma = om * h * (alpha + (1 - alpha) / (1 + (0.43 * kh * h * s) ** 4))
    q = kh * theta**2 / gamma
    l0 = np.log(2 * np.e + 1.8 * q)
    c0 = 14.2 + 731.0 / (1 + 62.5 * q)
    t = l0 / (l0 + c0 * q * q)
    pk = kh**ns * t**2
    # Normalise to sigma8 with a top-hat of 8 Mpc/h.
    kk = np.logspace(-4, 2, 4000)
    qq = kk * theta**2 / (om * h * (alpha + (1 - alpha) / (1 + (0.43 * kk * h * s) ** 4)))
    ll = np.log(2 * np.e + 1.8 * qq)
    tt = ll / (ll + (14.2 + 731.0 / (1 + 62.5 * qq)) * qq * qq)
    x = kk * 8.0
    w = 3 * (np.sin(x) - x * np.cos(x)) / x**3
    s8 = np.trapezoid(kk**ns * tt**2 * w**2 * kk**2, kk) / (2 * np.pi**2)
    pk_h = pk * sigma8**2 / s8  # (Mpc/h)^3
    return GALAXY_BIAS**2 * pk_h / h**3


def lognormal_box(rng: np.random.Generator, shape: tuple[int, int, int], cell: float) -> np.ndarray:
    """1 + delta of a lognormal field on a periodic box of ``shape`` cells of ``cell`` Mpc."""
    kx = [np.fft.fftfreq(n, d=cell) * 2 * np.pi for n in shape[:2]]
    kz = np.fft.rfftfreq(shape[2], d=cell) * 2 * np.pi
    k = np.sqrt(kx[0][:, None, None] ** 2 + kx[1][None, :, None] ** 2 + kz[None, None, :] ** 2)
    volume = np.prod(shape) * cell**3
    # Gaussian smoothing of the Gaussian field keeps the lognormal variance realistic
    # on the cell scale (sigma_G ~ 1.2) instead of letting it blow up.
    amp = np.sqrt(power_spectrum(k) * np.exp(-((k * GAUSSIAN_SMOOTHING_MPC) ** 2)) / volume)
    amp *= np.prod(shape)
    amp[0, 0, 0] = 0.0
    noise = rng.standard_normal(shape)
    axes = (0, 1, 2)
    g = np.fft.irfftn(np.fft.rfftn(noise) / np.sqrt(np.prod(shape)) * amp, s=shape, axes=axes)
    var = g.var()
    return np.exp(g - var / 2).astype(np.float32)


def smooth(field: np.ndarray, cell: float, radius: float) -> np.ndarray:
    """Gaussian smoothing of a periodic box field with ``radius`` (same units as ``cell``)."""
    shape = field.shape
    kx = [np.fft.fftfreq(n, d=cell) * 2 * np.pi for n in shape[:2]]
    kz = np.fft.rfftfreq(shape[2], d=cell) * 2 * np.pi
    k2 = kx[0][:, None, None] ** 2 + kx[1][None, :, None] ** 2 + kz[None, None, :] ** 2
    smoothed = np.fft.irfftn(
        np.fft.rfftn(field) * np.exp(-0.5 * k2 * radius**2), s=shape, axes=(0, 1, 2)
    )
    return smoothed.astype(np.float32)


@dataclass
class GalaxyField:
    """Galaxy positions drawn from the lognormal field of one cap, with truth."""

    ra: np.ndarray
    dec: np.ndarray
    z_cosmo: np.ndarray
    delta8: np.ndarray
    in_void: np.ndarray
    void_threshold: float
    void_volume_fraction: float
    cell: float


def comoving_to_z(dist: np.ndarray) -> np.ndarray:
    """Redshift at Planck18 comoving distance ``dist`` (Mpc), by table interpolation."""
    zz = np.linspace(0, 1.0, 4001)
    dd = Planck18.comoving_distance(zz).to_value(u.Mpc)
    return np.interp(dist, dd, zz)


def sample_galaxies(
    rng: np.random.Generator,
    footprint: Footprint,
    cap: str,
    n: int,
    zmax: float,
    nbar_of_z,
    max_cells: int = 6_000_000,
) -> GalaxyField:
    """Draw ``n`` galaxy positions in ``cap`` from a lognormal field times n(z).

    Parameters
    ----------
    rng : Generator
    footprint : Footprint
    cap : {'NGC', 'SGC'}
    n : int
        Number of galaxies.
    zmax : float
        Largest cosmological redshift.
    nbar_of_z : callable
        Mean number density of selected galaxies (Mpc^-3) at redshift z.
    max_cells : int
        Largest grid; the cell grows beyond 4 Mpc to stay below it.
    """
    ra0, dec0, share = CAPS[cap]
    sel = footprint.cap == cap
    area_sr = sel.sum() * HPX.pixel_area.to_value(u.sr)
    theta = np.arccos(1 - area_sr / (2 * np.pi)) * 1.15 + np.radians(1.0)
    dmax = Planck18.comoving_distance(zmax).to_value(u.Mpc)
    half = dmax * np.sin(min(theta, np.pi / 2)) + 10.0
    cell = 4.0
    while (2 * half / cell) ** 2 * (dmax / cell) > max_cells:
        cell *= 1.25
    shape = (
        int(np.ceil(2 * half / cell)),
        int(np.ceil(2 * half / cell)),
        int(np.ceil(dmax / cell)) + 1,
    )
    rho = lognormal_box(rng, shape, cell)
    h = Planck18.h
    rho_void = smooth(rho, cell, VOID_SMOOTHING_MPC_H / h)
    rho8 = smooth(rho, cell, DENSITY_SMOOTHING_MPC_H / h)
    # Cell centres in the cap frame (+z towards the cap centre), then on the sky.
    ix = (np.arange(shape[0]) + 0.5) * cell - shape[0] * cell / 2
    iz = (np.arange(shape[2]) + 0.5) * cell
    gx, gy, gz = np.meshgrid(ix, ix, iz, indexing="ij")
    local = np.stack([gx, gy, gz], axis=-1).reshape(-1, 3)
    rot = _rotation(ra0, dec0)
    dist = np.linalg.norm(local, axis=1)
    ra, dec = _to_radec(local @ rot.T)
    inside = footprint.contains(ra, dec) & (dist < dmax) & (dist > 1.0)
    zc = comoving_to_z(dist)
    weight = np.where(inside, rho.reshape(-1) * nbar_of_z(zc), 0.0)
    threshold = float(np.quantile(rho_void.reshape(-1)[inside], VOID_VOLUME_FRACTION))
    out_idx = np.zeros(0, dtype=np.int64)
    pos = np.zeros((0, 3))
    prob = weight / weight.sum()
    while len(out_idx) < n:
        m = int(1.3 * (n - len(out_idx))) + 16
        idx = rng.choice(len(prob), size=m, p=prob)
        p = local[idx] + (rng.random((m, 3)) - 0.5) * cell
        d = np.linalg.norm(p, axis=1)
        r_, d_ = _to_radec(p @ rot.T)
        keep = footprint.contains(r_, d_) & (d < dmax)
        out_idx = np.concatenate([out_idx, idx[keep]])
        pos = np.concatenate([pos, p[keep]])
    out_idx, pos = out_idx[:n], pos[:n]
    ra_g, dec_g = _to_radec(pos @ rot.T)
    return GalaxyField(
        ra=ra_g,
        dec=dec_g,
        z_cosmo=comoving_to_z(np.linalg.norm(pos, axis=1)),
        delta8=rho8.reshape(-1)[out_idx] - 1.0,
        in_void=rho_void.reshape(-1)[out_idx] < threshold,
        void_threshold=threshold - 1.0,
        void_volume_fraction=VOID_VOLUME_FRACTION,
        cell=cell,
    )
