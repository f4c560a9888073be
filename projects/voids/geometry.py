"""Comoving geometry for void finding: units, survey masks, sphere overlaps, the grid frame.

Everything inside the void finder works on plain float64 arrays in comoving Mpc/h
(h = 1 distances, as VAST and DESIVAST use); :func:`as_mpch` converts astropy
quantities at the API boundary.

Masks are objects with ``contains(xyz) -> bool array``. :class:`HealpixMask` is the
survey mask (a HEALPix footprint between two comoving distances, observer at the
origin, as VAST's ``ra_dec_z`` mask mode); :class:`BoxMask` is VAST's ``xyz`` mode;
:class:`TransformedMask` moves any mask rigidly with its galaxies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import astropy.cosmology.units as cu
import numpy as np
from astropy import units as u
from astropy.cosmology import FLRW, Planck18
from astropy_healpix import HEALPix, xyz_to_healpix
from scipy.spatial import cKDTree

__all__ = [
    "MPC_H",
    "BoxMask",
    "GridFrame",
    "HealpixMask",
    "SurveyMask",
    "TransformedMask",
    "as_mpch",
    "ball_points",
    "radec_to_xyz",
    "sphere_overlap",
    "surface_directions",
    "xyz_to_radec",
]

#: Comoving Mpc/h, the unit of every VoidFinder length.
MPC_H = u.Mpc / cu.littleh


def as_mpch(value, cosmology: FLRW = Planck18) -> np.ndarray:
    """A length (array) in Mpc/h as float64.

    Parameters
    ----------
    value : Quantity or array_like
        Mpc/h, or any length unit (converted with the cosmology's h); bare numbers
        are taken to be Mpc/h already.
    cosmology : astropy FLRW
        Supplies h for lengths given without the littleh factor.
    """
    if isinstance(value, u.Quantity):
        if value.unit.is_equivalent(MPC_H):
            return np.asarray(value.to_value(MPC_H), dtype=np.float64)
        return np.asarray(value.to_value(u.Mpc) * cosmology.h, dtype=np.float64)
    return np.asarray(value, dtype=np.float64)


def radec_to_xyz(ra_deg: np.ndarray, dec_deg: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Cartesian positions (n, 3) of sky positions (degrees) at distances ``dist``."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    cosd = np.cos(dec)
    return np.stack([dist * cosd * np.cos(ra), dist * cosd * np.sin(ra), dist * np.sin(dec)], -1)


def xyz_to_radec(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RA, Dec (degrees) and distance of Cartesian positions (observer at the origin)."""
    xyz = np.atleast_2d(xyz)
    r = np.linalg.norm(xyz, axis=1)
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(xyz[:, 2] / np.maximum(r, 1e-300), -1.0, 1.0)))
    return ra, dec, r


@runtime_checkable
class SurveyMask(Protocol):
    """Anything that says which comoving positions (Mpc/h) lie inside the survey."""

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        """Boolean array, one entry per row of ``xyz`` (n, 3)."""
        ...


@dataclass(frozen=True, eq=False)
class HealpixMask:
    """A HEALPix footprint between comoving distances ``rmin`` and ``rmax`` (Mpc/h).

    Parameters
    ----------
    pixels : array of int
        Footprint pixels.
    nside : int
        HEALPix resolution.
    rmin, rmax : float
        Distance limits, Mpc/h, observer at the origin.
    order : {'nested', 'ring'}
        Pixel ordering (DR1 uses nested).
    """

    pixels: np.ndarray
    nside: int
    rmin: float
    rmax: float
    order: str = "nested"
    _inside: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pixels = np.unique(np.asarray(self.pixels, dtype=np.int64))
        hp = HEALPix(nside=self.nside, order=self.order)
        if len(pixels) and (pixels[0] < 0 or pixels[-1] >= hp.npix):
            raise ValueError(f"pixels outside 0..{hp.npix - 1} for nside={self.nside}")
        if not 0 <= self.rmin < self.rmax:
            raise ValueError(f"need 0 <= rmin < rmax, got {self.rmin}, {self.rmax}")
        # A lookup table is much faster than np.isin for the millions of points we test.
        inside = np.zeros(hp.npix, dtype=bool)
        inside[pixels] = True
        object.__setattr__(self, "pixels", pixels)
        object.__setattr__(self, "_inside", inside)

    @property
    def healpix(self) -> HEALPix:
        """The astropy-healpix pixelisation."""
        return HEALPix(nside=self.nside, order=self.order)

    @classmethod
    def from_positions(
        cls,
        ra_deg: np.ndarray,
        dec_deg: np.ndarray,
        rmin: float,
        rmax: float,
        *,
        nside: int = 64,
        min_count: int = 1,
        order: str = "nested",
    ) -> HealpixMask:
        """The footprint as the pixels holding at least ``min_count`` of the given objects."""
        hp = HEALPix(nside=nside, order=order)
        pix = hp.lonlat_to_healpix(np.asarray(ra_deg) * u.deg, np.asarray(dec_deg) * u.deg)
        counts = np.bincount(pix, minlength=hp.npix)
        return cls(np.flatnonzero(counts >= min_count), nside, float(rmin), float(rmax), order)

    def contains_sky(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
        """True where the direction lies in the footprint."""
        pix = self.healpix.lonlat_to_healpix(
            np.asarray(ra_deg) * u.deg, np.asarray(dec_deg) * u.deg
        )
        return self._inside[pix]

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        """True inside the footprint and the distance limits."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        r = np.linalg.norm(xyz, axis=1)
        ok = (r >= self.rmin) & (r <= self.rmax) & (r > 0)
        out = np.zeros(len(xyz), dtype=bool)
        if ok.any():
            p = xyz[ok]
            pix = xyz_to_healpix(p[:, 0], p[:, 1], p[:, 2], self.nside, order=self.order)
            out[ok] = self._inside[pix]
        return out

    def distance_to_edge(self, xyz: np.ndarray) -> np.ndarray:
        """A lower bound on each point's distance to the survey boundary (Mpc/h).

        Zero or less outside. Lets callers skip point-by-point mask tests for spheres
        that are clearly inside.
        """
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        r = np.linalg.norm(xyz, axis=1)
        out = np.minimum(r - self.rmin, self.rmax - r)
        safe = r > 0
        pix = np.zeros(len(xyz), dtype=np.int64)
        pix[safe] = xyz_to_healpix(*xyz[safe].T, self.nside, order=self.order)
        angle = np.where(safe & self._inside[pix], self._edge_angle[pix], 0.0)
        # The boundary is a cone through the origin: a point at angle a from it lies
        # r sin(a) away.
        return np.minimum(out, r * np.sin(np.minimum(angle, np.pi / 2)))

    @property
    def _edge_angle(self) -> np.ndarray:
        """Per pixel: a lower bound on the angle from any point of it to the outside."""
        cached = self.__dict__.get("_edge_cache")
        if cached is not None:
            return cached
        hp = self.healpix
        angle = np.zeros(hp.npix)
        outside = np.flatnonzero(~self._inside)
        if len(outside) == 0:
            angle[:] = np.pi
        else:
            vec = np.stack(
                [a.to_value(u.rad) for a in hp.healpix_to_lonlat(np.arange(hp.npix))], -1
            )
            unit = radec_to_xyz(np.degrees(vec[:, 0]), np.degrees(vec[:, 1]), np.ones(hp.npix))
            chord, _ = cKDTree(unit[outside]).query(unit[self.pixels], k=1)
            centre_angle = 2 * np.arcsin(np.clip(chord / 2, 0, 1))
            # Both pixels extend up to one pixel radius from their centres.
            angle[self.pixels] = np.maximum(centre_angle - 2 * self._pixel_radius(), 0.0)
        object.__setattr__(self, "_edge_cache", angle)
        return angle

    @property
    def area(self) -> u.Quantity:
        """Footprint solid angle."""
        return (len(self.pixels) * self.healpix.pixel_area).to(u.sr)

    @property
    def volume(self) -> float:
        """Comoving volume, (Mpc/h)^3."""
        return float(self.area.to_value(u.sr) * (self.rmax**3 - self.rmin**3) / 3.0)

    def _pixel_radius(self) -> float:
        """Largest centre-to-corner angle of the footprint pixels (radians), with a margin."""
        hp = self.healpix
        lon, lat = hp.boundaries_lonlat(self.pixels, step=2)
        clon, clat = hp.healpix_to_lonlat(self.pixels)
        lon, lat = lon.to_value(u.rad), lat.to_value(u.rad)
        clon, clat = clon.to_value(u.rad)[:, None], clat.to_value(u.rad)[:, None]
        cosang = np.sin(lat) * np.sin(clat) + np.cos(lat) * np.cos(clat) * np.cos(lon - clon)
        return 1.05 * float(np.arccos(np.clip(cosang, -1, 1)).max())

    def random_points(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points uniform in the survey volume (Mpc/h)."""
        hp = self.healpix
        # Pixels have equal areas: pick them uniformly, then a point uniform on the sphere
        # inside the pixel, by rejection from a lon/sin(lat) box around its bounding circle.
        pix = rng.choice(self.pixels, size=n)
        lon0, lat0 = (a.to_value(u.rad) for a in hp.healpix_to_lonlat(pix))
        rho = self._pixel_radius()
        latlo = np.maximum(lat0 - rho, -np.pi / 2)
        lathi = np.minimum(lat0 + rho, np.pi / 2)
        polar = (lat0 - rho <= -np.pi / 2) | (lat0 + rho >= np.pi / 2)
        ratio = np.sin(rho) / np.maximum(np.cos(lat0), 1e-12)
        dlon = np.where(polar | (ratio >= 1), np.pi, np.arcsin(np.minimum(ratio, 1.0)))
        lon = np.empty(n)
        lat = np.empty(n)
        todo = np.arange(n)
        while len(todo):
            zlo, zhi = np.sin(latlo[todo]), np.sin(lathi[todo])
            t_lat = np.arcsin(zlo + rng.random(len(todo)) * (zhi - zlo))
            t_lon = lon0[todo] + (2 * rng.random(len(todo)) - 1) * dlon[todo]
            hit = hp.lonlat_to_healpix(t_lon * u.rad, t_lat * u.rad) == pix[todo]
            lon[todo[hit]], lat[todo[hit]] = t_lon[hit], t_lat[hit]
            todo = todo[~hit]
        r = (self.rmin**3 + rng.random(n) * (self.rmax**3 - self.rmin**3)) ** (1 / 3)
        return radec_to_xyz(np.degrees(lon), np.degrees(lat), r)


@dataclass(frozen=True)
class BoxMask:
    """An axis-aligned box (VAST's ``xyz`` mask mode); ``lo``, ``hi`` in Mpc/h."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        """True inside the box (edges included)."""
        xyz = np.atleast_2d(xyz)
        return np.all((xyz >= np.asarray(self.lo)) & (xyz <= np.asarray(self.hi)), axis=1)

    def distance_to_edge(self, xyz: np.ndarray) -> np.ndarray:
        """Distance to the nearest face (negative outside)."""
        xyz = np.atleast_2d(xyz)
        return np.minimum(xyz - np.asarray(self.lo), np.asarray(self.hi) - xyz).min(axis=1)

    @property
    def volume(self) -> float:
        """(Mpc/h)^3."""
        return float(np.prod(np.asarray(self.hi) - np.asarray(self.lo)))

    def random_points(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points uniform in the box."""
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        return lo + rng.random((n, 3)) * (hi - lo)


@dataclass(frozen=True)
class TransformedMask:
    """``mask`` moved rigidly: a point ``p`` of the mask goes to ``p @ rotation.T + shift``.

    Use it with galaxies transformed the same way, e.g. to check that void finding
    does not depend on the coordinate frame.
    """

    mask: SurveyMask
    rotation: np.ndarray
    shift: np.ndarray

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        """Inverse-transform the points and ask the original mask."""
        xyz = np.atleast_2d(xyz)
        return self.mask.contains((xyz - np.asarray(self.shift)) @ np.asarray(self.rotation))

    def distance_to_edge(self, xyz: np.ndarray) -> np.ndarray:
        """The original mask's bound, when it has one; else zeros (no shortcut)."""
        xyz = np.atleast_2d(xyz)
        inner = getattr(self.mask, "distance_to_edge", None)
        if inner is None:
            return np.zeros(len(xyz))
        return inner((xyz - np.asarray(self.shift)) @ np.asarray(self.rotation))

    @property
    def volume(self) -> float:
        """Volume of the original mask (rigid motions keep it)."""
        return float(self.mask.volume)

    def random_points(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Points of the original mask, transformed."""
        pts = self.mask.random_points(n, rng)
        return pts @ np.asarray(self.rotation).T + np.asarray(self.shift)


def sphere_overlap(r1, r2, d) -> np.ndarray:
    """Intersection volume of spheres with radii ``r1``, ``r2`` and centre distance ``d``.

    The lens is the sum of the two spherical caps (as VAST's ``cap_height`` and
    ``spherical_cap_volume``); a sphere inside the other contributes all its volume.
    """
    r1, r2, d = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (r1, r2, d)))
    vol = np.zeros(d.shape)
    inside = d <= np.abs(r1 - r2)
    vol[inside] = 4.0 / 3.0 * np.pi * np.minimum(r1, r2)[inside] ** 3
    lens = (d < r1 + r2) & ~inside
    a, b, dd = r1[lens], r2[lens], d[lens]
    lens_vol = np.pi * (a + b - dd) ** 2 * (dd**2 + 2 * dd * (a + b) - 3 * (a - b) ** 2)
    vol[lens] = lens_vol / (12 * dd)
    return vol


def surface_directions() -> np.ndarray:
    """The 26 unit vectors to the faces, edges and corners of a cube (frame axes).

    The set is mapped onto itself by flipping any axis, which keeps results independent
    of the sign convention of the principal axes.
    """
    grid = np.stack(np.meshgrid(*[[-1.0, 0.0, 1.0]] * 3, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1)]
    return grid / np.linalg.norm(grid, axis=1, keepdims=True)


def ball_points(spacing: float = 0.25) -> np.ndarray:
    """A cubic lattice of points inside the unit ball, symmetric under axis flips."""
    n = int(np.floor(1.0 / spacing))
    ax = np.arange(-n, n + 1) * spacing
    pts = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    return pts[np.einsum("ij,ij->i", pts, pts) <= 1.0]


@dataclass(frozen=True)
class GridFrame:
    """The frame of the hole-search grid.

    Cell ``i`` along axis ``k`` holds points whose coordinate ``q_k`` (along ``axes[:, k]``
    from ``origin``) satisfies ``floor(q_k / edge + offset) == i``; its centre is at
    ``q_k = (i + 0.5 - offset) * edge``.

    ``principal`` frames (origin at the centroid, axes along the principal axes of the
    galaxies, offset 0.5 so a lattice point sits on the centroid) move with the data,
    so void finding is the same whatever the coordinate system. ``vast`` frames
    reproduce VAST: survey axes, origin at the smallest galaxy coordinates, offset 0.
    """

    origin: np.ndarray
    axes: np.ndarray
    edge: float
    offset: float

    @classmethod
    def principal(cls, xyz: np.ndarray, edge: float) -> GridFrame:
        """Frame of the principal axes of ``xyz`` (largest variance first)."""
        origin = xyz.mean(axis=0)
        _, vecs = np.linalg.eigh(np.cov((xyz - origin).T))
        return cls(origin, vecs[:, ::-1].copy(), float(edge), 0.5)

    @classmethod
    def vast(cls, xyz: np.ndarray, edge: float) -> GridFrame:
        """VAST's frame: survey axes, origin at the minimum coordinates."""
        return cls(xyz.min(axis=0), np.eye(3), float(edge), 0.0)

    def to_frame(self, xyz: np.ndarray) -> np.ndarray:
        """Coordinates along the frame axes."""
        return (np.atleast_2d(xyz) - self.origin) @ self.axes

    def from_frame(self, q: np.ndarray) -> np.ndarray:
        """Back to survey coordinates."""
        return q @ self.axes.T + self.origin

    def cell_of(self, xyz: np.ndarray) -> np.ndarray:
        """Integer cell indices (n, 3)."""
        return np.floor(self.to_frame(xyz) / self.edge + self.offset).astype(np.int64)

    def cell_centres(self, ijk: np.ndarray) -> np.ndarray:
        """Survey coordinates of cell centres."""
        return self.from_frame((np.asarray(ijk) + 0.5 - self.offset) * self.edge)
