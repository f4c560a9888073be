"""Synthetic galaxy catalogs for tests, tutorials and benchmarks.

* :func:`poisson_catalog` and :func:`plant_voids`: uniform galaxies with empty spheres
  cut out, whose centres and radii a void finder must recover.
* :func:`clustered_catalog`: galaxies drawn from a lognormal density field (the mock
  DR1's Planck18 power spectrum), so they have realistic voids and walls.
* :func:`sdss_dr7_like`: a volume-limited catalog with the density and volume of the
  SDSS DR7 sample VAST's VoidFinder is usually run on (about 120 000 galaxies in
  2 x 10^7 (Mpc/h)^3: a 7 500 deg^2 cap out to 300 Mpc/h).
"""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.cosmology import Planck18
from astropy_healpix import HEALPix
from desilab.desi.mock_lss import lognormal_box

from .geometry import HealpixMask, SurveyMask, radec_to_xyz

__all__ = [
    "cap_mask",
    "clustered_catalog",
    "plant_voids",
    "poisson_catalog",
    "sdss_dr7_like",
]


def poisson_catalog(mask: SurveyMask, density: float, rng: np.random.Generator) -> np.ndarray:
    """Uniform galaxies (Poisson number) at ``density`` per (Mpc/h)^3 inside ``mask``."""
    n = rng.poisson(density * mask.volume)
    return mask.random_points(n, rng)


def plant_voids(xyz: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``xyz`` without the galaxies inside any of the given spheres."""
    keep = np.ones(len(xyz), dtype=bool)
    for c, r in zip(np.atleast_2d(centres), np.atleast_1d(radii), strict=True):
        keep &= np.sum((xyz - c) ** 2, axis=1) >= r * r
    return xyz[keep]


def cap_mask(
    ra0: float, dec0: float, area_deg2: float, rmin: float, rmax: float, nside: int = 64
) -> HealpixMask:
    """A HEALPix footprint: the ``area_deg2`` worth of pixels nearest to (ra0, dec0)."""
    hp = HEALPix(nside=nside, order="nested")
    lon, lat = hp.healpix_to_lonlat(np.arange(hp.npix))
    centre = radec_to_xyz(np.array([ra0]), np.array([dec0]), np.array([1.0]))[0]
    vec = radec_to_xyz(lon.to_value(u.deg), lat.to_value(u.deg), np.ones(hp.npix))
    npix = max(1, int(round(area_deg2 / hp.pixel_area.to_value(u.deg**2))))
    pixels = np.argsort(-(vec @ centre), kind="stable")[:npix]
    return HealpixMask(pixels, nside, rmin, rmax)


def clustered_catalog(
    mask: SurveyMask,
    n: int,
    rng: np.random.Generator,
    *,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    cell: float = 4.0,
) -> np.ndarray:
    """``n`` galaxies inside ``mask`` drawn from a lognormal field on a box.

    Parameters
    ----------
    mask : SurveyMask
        Where galaxies may be.
    n : int
        Number of galaxies.
    rng : Generator
    box_lo, box_hi : (3,) array
        A box enclosing the mask, Mpc/h.
    cell : float
        Field cell, Mpc/h.
    """
    box_lo, box_hi = np.asarray(box_lo, float), np.asarray(box_hi, float)
    shape = tuple(int(np.ceil(s)) for s in (box_hi - box_lo) / cell)
    # The power spectrum is in Mpc units: the cell is cell/h Mpc.
    rho = lognormal_box(rng, shape, cell / Planck18.h).reshape(-1).astype(np.float64)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    centres = box_lo + (idx + 0.5) * cell
    # Cells whose centre or a corner is in the mask can hold galaxies; rejection trims them.
    corners = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
    touch = mask.contains(centres)
    for off in corners:
        touch |= mask.contains(centres + off * cell)
    weight = np.where(touch, rho, 0.0)
    prob = weight / weight.sum()
    out = np.zeros((0, 3))
    while len(out) < n:
        m = int(1.3 * (n - len(out))) + 64
        pick = rng.choice(len(prob), size=m, p=prob)
        p = centres[pick] + (rng.random((m, 3)) - 0.5) * cell
        out = np.concatenate([out, p[mask.contains(p)]])
    return out[:n]


def sdss_dr7_like(
    rng: np.random.Generator, n: int = 120_000, rmax: float = 300.0, area_deg2: float = 7500.0
) -> tuple[np.ndarray, HealpixMask]:
    """A clustered, volume-limited catalog like SDSS DR7's (Mpc/h), with its mask.

    The default footprint (a cap of 7 500 deg^2 centred at RA 185, Dec 32, out to
    300 Mpc/h) holds 2.0 x 10^7 (Mpc/h)^3; 120 000 galaxies give 6 x 10^-3 (h/Mpc)^3,
    the density of the Mr < -20.09 sample VAST's examples use.
    """
    mask = cap_mask(185.0, 32.0, area_deg2, 0.0, rmax)
    # A box around the cap: sample the mask and pad by a cell.
    pts = mask.random_points(20_000, rng)
    lo = np.minimum(pts.min(axis=0), 0.0) - 8.0
    hi = np.maximum(pts.max(axis=0), 0.0) + 8.0
    return clustered_catalog(mask, n, rng, box_lo=lo, box_hi=hi), mask
