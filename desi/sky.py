"""Sky indexing of catalog tables: a nested HEALPix bigint column and pixel ranges.

Every sky table of the catalog has a column ``hpx``: the nested HEALPix index of
its position at order :data:`HPX_ORDER` (nside 2**16, 3.2 arcsec pixels). In the
nested scheme a pixel of order ``k`` covers exactly the contiguous run
``[p << 2(16-k), (p+1) << 2(16-k))`` of order-16 indices, so a region covered by
pixels of any coarser order becomes a few literal ``hpx`` ranges that a btree
index answers directly; an exact distance test then removes the corners.

Why order 16: finer than any cross-match radius DESI needs (fibres are 1.5
arcsec), so a 1 arcsec match is decided by the 3x3 block of order-16 pixels
around each position, while cones use whatever coarser order suits their radius
at no cost (the expansion is a bit shift). The column costs 8 bytes per row at
any order.
"""

from __future__ import annotations

import math

import astropy.units as u
import numpy as np
from astropy_healpix import HEALPix

try:  # the C function behind HEALPix.cone_search_lonlat, without its unit handling
    from astropy_healpix._core import healpix_cone_search as _c_cone_search
except ImportError:  # pragma: no cover - another astropy-healpix layout
    _c_cone_search = None

__all__ = [
    "HPX_ORDER",
    "cone_order",
    "cone_ranges",
    "distance_sql",
    "haversine_arcsec",
    "haversine_sql",
    "haversine_limit",
    "hpx_index",
    "match_order",
    "match_ranges",
    "num",
    "ra_window_sql",
    "ranges_sql",
    "to_degrees",
]

#: Order of the ``hpx`` column (nside = 2**HPX_ORDER, nested).
HPX_ORDER = 16
#: Mean pixel size (radians) of order 0; order k has ``_RES0 / 2**k``.
_RES0 = math.sqrt(4 * math.pi / 12)
#: A disc of radius <= this fraction of the pixel size lies within the 3x3 block of
#: pixels around its centre (checked numerically to 0.6 at orders >= 4, poles included).
_BLOCK_FRACTION = 0.4
#: Radius (deg) above which cross-matches cover each position with a cone instead.
_BLOCK_MAX_RADIUS = 60 / 3600
#: Lowest order at which the 3x3-block rule is used (coarser pixels are too distorted).
_MIN_BLOCK_ORDER = 4
#: Finest order of a cone's cover (1.7 arcmin pixels). astropy-healpix's cone search
#: costs about 15 us per pixel found, and a finer cover of a small cone saves only
#: rows that are few anyway (~4 per pixel at DESI's densest): a 1 arcmin cone is then
#: 4 pixels (0.09 ms) instead of 28 at order 13 (0.35 ms).
_CONE_MAX_ORDER = 11


def _healpix(order: int) -> HEALPix:
    return HEALPix(nside=2**order, order="nested")


def to_degrees(angle: u.Quantity | float) -> float:
    """An angle as degrees: a Quantity with angular units, or a number in degrees."""
    if isinstance(angle, u.Quantity):
        return float(angle.to_value(u.deg))
    return float(angle)


def hpx_index(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Nested HEALPix index at :data:`HPX_ORDER` of positions in degrees (int64).

    Raises
    ------
    ValueError
        If a position is not finite or ``dec`` is outside [-90, 90].
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    bad = ~np.isfinite(ra) | ~np.isfinite(dec) | (np.abs(dec) > 90)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} position(s) are not valid sky coordinates, the first at row "
            f"{i}: ra={ra[i]!r}, dec={dec[i]!r}"
        )
    if len(ra) == 0:
        return np.zeros(0, dtype=np.int64)
    return _healpix(HPX_ORDER).lonlat_to_healpix(ra * u.deg, dec * u.deg).astype(np.int64)


def _merge(pixels: np.ndarray, order: int) -> np.ndarray:
    """Sorted pixels of ``order`` -> merged half-open ranges at :data:`HPX_ORDER`."""
    pixels = np.unique(np.asarray(pixels, dtype=np.int64))  # also sorts
    if len(pixels) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(pixels) > 1)
    lo = pixels[np.concatenate(([0], breaks + 1))]
    hi = pixels[np.concatenate((breaks, [len(pixels) - 1]))] + 1
    shift = 2 * (HPX_ORDER - order)
    return np.stack([lo << shift, hi << shift], axis=1)


def cone_order(radius_deg: float) -> int:
    """Order whose pixels are about a quarter of the radius, at most order 11.

    Coarser pixels mean fewer ranges but more rows read and thrown away by the
    exact test; at r/4 a cone is ~8 merged ranges and ~60-75% of the rows read are
    kept (measured best on 10M rows for 0.5 to 2 deg). Below ~7 arcmin the pixels
    stay at order 11 (:data:`_CONE_MAX_ORDER`): computing a finer cover costs more
    than the handful of extra rows it would spare.
    """
    if radius_deg <= 0:
        return _CONE_MAX_ORDER
    k = math.floor(math.log2(4 * math.degrees(_RES0) / radius_deg))
    return max(0, min(_CONE_MAX_ORDER, k))


def cone_ranges(ra: float, dec: float, radius_deg: float, coarser: int = 0) -> np.ndarray:
    """``hpx`` ranges covering a cone.

    Parameters
    ----------
    ra, dec : float
        Centre, degrees.
    radius_deg : float
        Radius, degrees (at most 180).
    coarser : int
        Cover with pixels this many orders coarser than :func:`cone_order`'s (fewer,
        cheaper to find, more rows to test).

    Returns
    -------
    ndarray, shape (n, 2), int64
        Half-open ranges ``[lo, hi)`` of order-16 indices, sorted, disjoint.
        Every position within the radius has its ``hpx`` in one of them.
    """
    if not (np.isfinite(ra) and np.isfinite(dec) and abs(dec) <= 90):
        raise ValueError(f"cone centre ra={ra!r}, dec={dec!r} is not a valid sky position")
    if not np.isfinite(radius_deg) or radius_deg < 0:
        raise ValueError(f"cone radius must be a non-negative angle, not {radius_deg!r} deg")
    if radius_deg >= 90:
        return np.array([[0, 12 << (2 * HPX_ORDER)]], dtype=np.int64)
    order = max(0, cone_order(radius_deg) - coarser)
    # A small margin keeps pixels that only touch the rim (the exact test follows).
    pad = radius_deg * (1 + 1e-6) + 1e-9
    if _c_cone_search is not None:
        pix = _c_cone_search(float(ra), float(dec), pad, 2**order, "nested")
    else:
        pix = _healpix(order).cone_search_lonlat(ra * u.deg, dec * u.deg, pad * u.deg)
    return _merge(pix, order)


def match_order(radius_deg: float) -> int:
    """Finest order (<= HPX_ORDER) whose 3x3 pixel blocks hold any disc of the radius.

    Raises
    ------
    ValueError
        If the radius is too large for block matching (over ~1.4 degrees).
    """
    for k in range(HPX_ORDER, _MIN_BLOCK_ORDER - 1, -1):
        if _BLOCK_FRACTION * math.degrees(_RES0) / 2**k >= radius_deg:
            return k
    raise ValueError(
        f"a cross-match radius of {radius_deg} deg is too large (at most "
        f"{_BLOCK_FRACTION * math.degrees(_RES0) / 2**_MIN_BLOCK_ORDER:.2f} deg); "
        "use cone searches instead"
    )


def match_ranges(
    ra: np.ndarray, dec: np.ndarray, radius_deg: float, coarsen: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``hpx`` ranges around many positions, for a cross-match within ``radius_deg``.

    Each disc lies in the 3x3 block of pixels of order :func:`match_order` around
    its centre; the block's pixels are replaced by their parents up to ``coarsen``
    orders up (usually one pixel: one index probe per position; never pixels much
    larger than the radius or 1 arcmin) and merged.

    Returns
    -------
    index, lo, hi : ndarray
        For each range, the row of the position it belongs to and the half-open
        ``[lo, hi)`` range of order-16 indices; ordered by row.
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    fine = match_order(radius_deg)
    if radius_deg > _BLOCK_MAX_RADIUS and len(ra):
        # A 3x3 block is >= 18 times the disc's area: for large radii (many candidates
        # per pixel) a cone cover of each position is worth its Python loop.
        hpx_index(ra, dec)  # validates the positions
        covers = [cone_ranges(float(a), float(d), radius_deg) for a, d in zip(ra, dec, strict=True)]
        rows = np.repeat(np.arange(len(ra)), [len(c) for c in covers])
        both = np.concatenate(covers)
        return rows, both[:, 0], both[:, 1]
    # Coarser pixels mean fewer index probes but more candidates: stop at pixels of about
    # max(1 arcmin, 4 radii), which hold a handful of DESI targets.
    limit = max(1 / 60, 4 * radius_deg)
    by_size = math.ceil(math.log2(math.degrees(_RES0) / limit))
    coarse = min(fine, max(0, fine - coarsen, by_size))
    n = len(ra)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    hp = _healpix(fine)
    centre = hpx_index(ra, dec) >> (2 * (HPX_ORDER - fine))
    with np.errstate(invalid="ignore"):
        block = np.vstack([centre[None, :], hp.neighbours(centre)]).astype(np.int64)
    block = np.where(block < 0, centre[None, :], block)  # the 8 corners with 7 neighbours
    parents = np.sort(block >> (2 * (fine - coarse)), axis=0).T  # (n, 9)
    step = np.diff(parents, axis=1)
    start = np.concatenate([np.ones((n, 1), bool), step > 1], axis=1)
    end = np.concatenate([step > 1, np.ones((n, 1), bool)], axis=1)
    rows = np.nonzero(start)[0]
    shift = 2 * (HPX_ORDER - coarse)
    return rows, parents[start] << shift, (parents[end] + 1) << shift


def num(x: float) -> str:
    """A finite number as an SQL literal (``repr`` round-trips floats exactly)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{x!r} is not a finite number")
    return repr(x)


def ranges_sql(column: str, ranges: np.ndarray) -> str:
    """``(col >= lo AND col < hi) OR ...`` with literal bounds (keeps the index plan).

    ``column`` is already quoted SQL; the bounds are integers we computed.
    """
    if len(ranges) == 0:
        return "false"
    parts = [f"({column} >= {int(lo)} AND {column} < {int(hi)})" for lo, hi in ranges.tolist()]
    return "(" + " OR ".join(parts) + ")"


def ra_window_sql(column: str, ra: float, dec: float, radius_deg: float) -> str | None:
    """A cheap RA condition every position of a cone meets, or None near a pole.

    A cap of radius r at declination d spans ``asin(sin r / cos d)`` in RA either
    side of its centre. Comparisons cost far less than the exact (trigonometric)
    test, and most rows of the pixel cover outside the cone fail them. RA may be
    stored in [0, 360) or [-180, 180): the window is given in both.
    """
    if abs(dec) + radius_deg >= 89.0:
        return None
    half = math.degrees(math.asin(min(1.0, math.sin(math.radians(radius_deg)) /
                                      math.cos(math.radians(dec)))))  # fmt: skip
    half = half * (1 + 1e-9) + 1e-9
    if half >= 90:
        return None
    centre = float(ra) % 360.0
    lo, hi = centre - half, centre + half
    windows = [(lo, hi)]
    if hi >= 180:
        windows.append((lo - 360, hi - 360))
    if lo < 0:
        windows.append((lo + 360, hi + 360))
    parts = [f"{column} BETWEEN {num(a)} AND {num(b)}" for a, b in windows]
    return "(" + " OR ".join(parts) + ")"


def haversine_sql(ra1: str, dec1: str, ra2: str, dec2: str) -> str:
    """SQL of the haversine ``sin^2(d/2)`` between two positions in degrees.

    Arguments are SQL expressions (quoted columns or :func:`num` literals).
    Periodic in RA, so the 0/360 wrap needs no special case; exact at the poles.
    """
    return (
        f"(power(sin(radians({dec1} - {dec2}) / 2), 2) + "
        f"cos(radians({dec1})) * cos(radians({dec2})) * power(sin(radians({ra1} - {ra2}) / 2), 2))"
    )


def haversine_limit(radius_deg: float) -> float:
    """The haversine ``sin^2(r/2)`` of a radius in degrees (compare with <=)."""
    return math.sin(math.radians(radius_deg) / 2) ** 2


def haversine_arcsec(h: np.ndarray) -> np.ndarray:
    """Angular distance in arcsec of haversines ``h`` (NumPy twin of :func:`distance_sql`)."""
    return np.degrees(2 * np.arcsin(np.sqrt(np.minimum(1.0, h)))) * 3600.0


def distance_sql(haversine: str) -> str:
    """Angular distance in arcsec from a haversine expression."""
    return f"(degrees(2 * asin(sqrt(least(1.0, {haversine})))) * 3600.0)"
