"""Void statistics and void-against-wall comparisons of galaxy properties.

* :func:`void_size_function`: number density of voids per radius bin.
* :func:`volume_filling_fraction`: share of the survey volume inside void holes.
* :func:`galaxy_void_fraction`: share of (wall + void) galaxies that are void galaxies.
* :func:`compare_environments`: each void galaxy gets wall controls matched in stellar
  mass and redshift (redshift only for the stellar mass itself); void and control
  distributions are compared with Kolmogorov-Smirnov, Mann-Whitney U and
  Anderson-Darling tests, the mean and median differences get two-sample bootstrap
  confidence intervals (void and wall galaxies resampled independently, controls matched
  again in each replicate), and Cohen's d and Cliff's delta give effect sizes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from scipy import stats
from scipy.spatial import cKDTree

from .classify import VFLAG_VOID, VFLAG_WALL, void_of_points
from .geometry import MPC_H, SurveyMask, as_mpch
from .voidfinder import VoidCatalog

__all__ = [
    "DEFAULT_PROPERTIES",
    "Comparison",
    "Fraction",
    "SizeFunction",
    "compare_environments",
    "compare_samples",
    "galaxy_void_fraction",
    "match_controls",
    "void_size_function",
    "volume_filling_fraction",
]

#: Compared properties: column -> label.
DEFAULT_PROPERTIES = {
    "G_R": "^{0.1}(g - r) colour [mag]",
    "LOGMSTAR": "log10 M* [Msun]",
    "LOG_SSFR": "log10 sSFR [1/yr]",
    "DN4000": "Dn4000",
    "HALPHA_EW": "H-alpha EW [Angstrom]",
}
#: Matching variables and the distance that counts as one unit (the caliper scale).
MATCH_SCALES = {"LOGMSTAR": 0.1, "Z": 0.01}


@dataclass
class SizeFunction:
    """Void size function.

    Attributes
    ----------
    edges : Quantity
        Radius bin edges (Mpc/h).
    counts : ndarray
        Voids per bin.
    density : Quantity
        dn/dR, voids per (Mpc/h)^3 per Mpc/h.
    density_err : Quantity
        Poisson error of ``density``.
    cumulative : Quantity
        n(>R) at the lower edges, voids per (Mpc/h)^3.
    """

    edges: u.Quantity
    counts: np.ndarray
    density: u.Quantity
    density_err: u.Quantity
    cumulative: u.Quantity


def void_size_function(radii, volume, bins=None) -> SizeFunction:
    """Number density of voids per radius bin.

    Parameters
    ----------
    radii : Quantity or array
        Void radii (R_EFF or maximal radii), Mpc/h.
    volume : Quantity or float
        Survey volume, (Mpc/h)^3.
    bins : array, optional
        Bin edges (Mpc/h); 2 Mpc/h bins from 10 Mpc/h by default.
    """
    r = as_mpch(radii).ravel()
    vol = volume.to_value(MPC_H**3) if isinstance(volume, u.Quantity) else float(volume)
    if bins is None:
        top = max(float(r.max()) if r.size else 12.0, 12.0)
        bins = np.arange(10.0, top + 2.0, 2.0)
    edges = as_mpch(bins)
    counts, _ = np.histogram(r, edges)
    width = np.diff(edges)
    cumulative = np.array([np.sum(r >= e) for e in edges[:-1]]) / vol
    unit = MPC_H**-4
    return SizeFunction(
        edges * MPC_H,
        counts,
        counts / (vol * width) * unit,
        np.sqrt(counts) / (vol * width) * unit,
        cumulative * MPC_H**-3,
    )


@dataclass
class Fraction:
    """A fraction with its binomial confidence interval (Wilson)."""

    value: float
    low: float
    high: float
    k: int
    n: int


def _wilson(k: int, n: int, z: float = 1.959964) -> Fraction:
    if n == 0:
        return Fraction(float("nan"), float("nan"), float("nan"), k, n)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return Fraction(p, max(0.0, mid - half), min(1.0, mid + half), k, n)


def volume_filling_fraction(
    catalog: VoidCatalog, mask: SurveyMask, *, n_points: int = 200_000, seed: int = 0
) -> Fraction:
    """Fraction of the survey volume inside void holes (Monte Carlo, 95 % interval)."""
    pts = mask.random_points(n_points, np.random.default_rng(seed))
    centres, radii, void = catalog.hole_arrays()
    inside = void_of_points(pts, centres, radii, void) >= 0
    return _wilson(int(inside.sum()), n_points)


def galaxy_void_fraction(vflag: np.ndarray) -> Fraction:
    """Share of void galaxies among wall and void galaxies (edge, outside left out)."""
    vflag = np.asarray(vflag)
    k = int(np.sum(vflag == VFLAG_VOID))
    return _wilson(k, k + int(np.sum(vflag == VFLAG_WALL)))


def match_controls(
    targets: np.ndarray,
    pool: np.ndarray,
    scales: np.ndarray,
    *,
    n_controls: int = 3,
    caliper: float = 1.0,
) -> np.ndarray:
    """Nearest controls from ``pool`` for each target, with replacement.

    Parameters
    ----------
    targets, pool : (n, d) ndarrays
        Matching variables of the void galaxies and of the candidate controls.
    scales : (d,) array
        The difference in each variable that counts as one unit.
    n_controls : int
        Controls per target.
    caliper : float
        Largest scaled distance of a match; farther controls are -1.

    Returns
    -------
    (n, n_controls) ndarray of int
        Indices into ``pool``, -1 where no control is within the caliper.
    """
    scales = np.asarray(scales, dtype=float)
    if len(pool) == 0:
        return np.full((len(targets), n_controls), -1, dtype=np.int64)
    k = min(n_controls, len(pool))
    dist, idx = cKDTree(pool / scales).query(targets / scales, k=k)
    dist, idx = dist.reshape(len(targets), k), idx.reshape(len(targets), k)
    idx = np.where(dist <= caliper, idx, -1).astype(np.int64)
    if k < n_controls:
        idx = np.hstack([idx, np.full((len(targets), n_controls - k), -1, np.int64)])
    return idx


@dataclass
class Comparison:
    """Void galaxies against their matched wall controls, for one property.

    ``delta`` is the mean of the paired differences (void minus the mean of its
    controls), ``delta_median`` the difference of the medians; ``ci`` and ``ci_median``
    are percentile bootstrap intervals (two-sample, see :func:`compare_environments`).
    The tests compare the void values with all matched control values (a control counts
    once per match, so p-values are optimistic when controls are reused). SciPy caps
    Anderson-Darling p-values to [0.001, 0.25].
    """

    property: str
    label: str
    matched_on: tuple[str, ...]
    n_void: int
    n_control: int
    mean_void: float
    mean_control: float
    delta: float
    ci: tuple[float, float]
    median_void: float
    median_control: float
    delta_median: float
    ci_median: tuple[float, float]
    ks: tuple[float, float]
    mann_whitney: tuple[float, float]
    anderson_darling: tuple[float, float]
    cohens_d: float
    cliffs_delta: float
    confidence: float
    void_values: np.ndarray = field(repr=False)
    control_values: np.ndarray = field(repr=False)

    def row(self) -> dict:
        """The numbers as a flat dict (for tables and JSON)."""
        return {
            "property": self.property,
            "matched_on": "+".join(self.matched_on) or "-",
            "n_void": self.n_void,
            "n_control": self.n_control,
            "mean_void": self.mean_void,
            "mean_control": self.mean_control,
            "delta": self.delta,
            "ci_low": self.ci[0],
            "ci_high": self.ci[1],
            "delta_median": self.delta_median,
            "ci_median_low": self.ci_median[0],
            "ci_median_high": self.ci_median[1],
            "ks_stat": self.ks[0],
            "ks_p": self.ks[1],
            "mw_u": self.mann_whitney[0],
            "mw_p": self.mann_whitney[1],
            "ad_stat": self.anderson_darling[0],
            "ad_p": self.anderson_darling[1],
            "cohens_d": self.cohens_d,
            "cliffs_delta": self.cliffs_delta,
        }

    def histogram(self, bins: int | np.ndarray = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bin edges and normalised void and control histograms, for overlays."""
        both = np.concatenate([self.void_values, self.control_values])
        edges = np.histogram_bin_edges(both, bins=bins)
        hv, _ = np.histogram(self.void_values, edges, density=True)
        hc, _ = np.histogram(self.control_values, edges, density=True)
        return edges, hv, hc


def _row_nanmedian(a: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (sorting puts NaN last; NaN for empty rows)."""
    a = np.sort(a, axis=1)
    n = np.isfinite(a).sum(axis=1)
    lo, hi = np.maximum((n - 1) // 2, 0), np.maximum(n // 2, 0)
    rows = np.arange(len(a))
    return np.where(n > 0, 0.5 * (a[rows, lo] + a[rows, hi]), np.nan)


def _rematched_bootstrap(
    void_x: np.ndarray,
    wall_x: np.ndarray,
    neighbours: np.ndarray,
    n_controls: int,
    n_boot: int,
    rng: np.random.Generator,
    cells: int = 2_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample bootstrap replicates of the mean and median void-minus-control shifts.

    Void galaxies and wall pool are drawn independently; each drawn void galaxy gets the
    ``n_controls`` nearest members of the drawn pool, i.e. the copies of its nearest wall
    galaxies (``neighbours``: nearest first, -1 beyond the caliper) in distance order, so
    no tree is built per replicate. ``cells`` bounds the block done at once.
    """
    n_v, n_nb = neighbours.shape
    n_w = len(wall_x)
    # Only wall galaxies among the neighbours matter: index them compactly, and point
    # missing neighbours at a sentinel (index m) that never has copies.
    used, compact = np.unique(neighbours[neighbours >= 0], return_inverse=True)
    m = len(used)
    nb = np.full(neighbours.shape, m, dtype=np.intp)
    nb[neighbours >= 0] = compact
    # Most galaxies find their controls among the first few neighbours.
    depth = min(n_nb, n_controls + 3)
    nb_t, cols = np.ascontiguousarray(nb[:, :depth].T), np.arange(n_v)
    deeper = nb[:, depth] < m if depth < n_nb else np.zeros(n_v, bool)  # more neighbours
    wall_x = np.append(wall_x[used], np.nan)
    means, medians = np.full(n_boot, np.nan), np.full(n_boot, np.nan)
    if m == 0:
        return means, medians
    step = max(1, cells // (n_v * n_nb))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        rows = np.arange(b)[:, None]
        # Copies of each used wall galaxy in n_w draws from all n_w (exact: the number
        # landing on used galaxies is binomial, then they are uniform among them).
        hits = rng.binomial(n_w, m / n_w, size=b)
        draws = np.repeat(np.arange(b) * (m + 1), hits) + rng.integers(0, m, size=hits.sum())
        mult = np.bincount(draws, minlength=b * (m + 1)).reshape(b, m + 1)
        # Copies of the nearest neighbours and their running total, (b, depth, n_v): the
        # cost of the bootstrap, hence small integers and sums over contiguous rows.
        mult = mult.astype(np.uint8)
        cum = np.cumsum(mult[:, nb_t], axis=1, dtype=np.int16)
        # Index of the neighbour holding each slot's control (n_nb: none).
        first = np.stack([(cum <= slot).sum(axis=1) for slot in range(n_controls)], axis=2)
        first[first == depth] = n_nb
        # The few galaxies whose nearest neighbours are short of copies look further.
        bi, vi = np.nonzero((cum[:, -1] < n_controls) & deeper)
        if len(bi):
            cum = np.cumsum(mult[bi[:, None], nb[vi]], axis=1, dtype=np.int16)
            for slot in range(n_controls):
                first[bi, vi, slot] = (cum <= slot).sum(axis=1)
        wall = nb[cols[:, None], np.minimum(first, n_nb - 1)]
        ctrl = np.where(first < n_nb, wall_x[wall], np.nan)  # (b, n_v, n_controls)
        # Then the void galaxies are drawn, each with the controls found for it.
        pick = rng.integers(0, n_v, size=(b, n_v))
        ctrl = ctrl[rows, pick]
        n_ctrl = np.isfinite(ctrl).sum(axis=2)
        kept = n_ctrl > 0  # void galaxies left without controls drop out, as in the estimate
        vx = void_x[pick]
        paired = np.where(kept, vx - np.nansum(ctrl, axis=2) / np.maximum(n_ctrl, 1), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start : start + b] = paired.sum(axis=1) / kept.sum(axis=1)
        medians[start : start + b] = _row_nanmedian(np.where(kept, vx, np.nan)) - _row_nanmedian(
            ctrl.reshape(b, -1)
        )
    return means, medians


def compare_samples(
    void_x: np.ndarray,
    controls_x: np.ndarray,
    *,
    name: str = "x",
    label: str = "",
    matched_on: tuple[str, ...] = (),
    n_boot: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
    replicates: tuple[np.ndarray, np.ndarray] | None = None,
) -> Comparison:
    """Compare void values with matched control values.

    Parameters
    ----------
    void_x : (n,) ndarray
        The property of each void galaxy.
    controls_x : (n, k) ndarray
        The property of its k controls (NaN where a control is missing).
    name, label, matched_on
        Recorded in the result.
    n_boot, confidence, rng
        Bootstrap resamples, interval level, random generator.
    replicates : (ndarray, ndarray), optional
        Bootstrap replicates of the mean and median shifts (:func:`compare_environments`
        passes two-sample ones). Without them void galaxies are resampled with their
        controls, which is right only when no control is matched twice.
    """
    rng = rng or np.random.default_rng(0)
    void_x = np.asarray(void_x, float)
    controls_x = np.asarray(controls_x, float).reshape(len(void_x), -1)
    has = np.isfinite(controls_x)
    keep = np.isfinite(void_x) & has.any(axis=1)
    v, cx, has = void_x[keep], controls_x[keep], has[keep]
    if len(v) < 2:
        raise ValueError(f"{name}: fewer than 2 void galaxies with matched controls")
    cmean = np.nansum(np.where(has, cx, 0), axis=1) / has.sum(axis=1)
    flat = cx[has]
    paired = v - cmean
    alpha = (1 - confidence) / 2
    if replicates is None:
        boot = rng.integers(0, len(v), size=(n_boot, len(v)))
        means = paired[boot].mean(axis=1)
        # Medians of the resampled void galaxies and of their resampled controls.
        ctrl_rows = np.where(has, cx, np.nan)
        med_diff = np.median(v[boot], axis=1) - _row_nanmedian(ctrl_rows[boot].reshape(n_boot, -1))
    else:
        means, med_diff = (np.asarray(r, float) for r in replicates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ks = stats.ks_2samp(v, flat)
        mw = stats.mannwhitneyu(v, flat, alternative="two-sided")
        ad = stats.anderson_ksamp([v, flat])
    n1, n2 = len(v), len(flat)
    pooled = np.sqrt(((n1 - 1) * v.var(ddof=1) + (n2 - 1) * flat.var(ddof=1)) / (n1 + n2 - 2))
    return Comparison(
        property=name,
        label=label or name,
        matched_on=tuple(matched_on),
        n_void=n1,
        n_control=n2,
        mean_void=float(v.mean()),
        mean_control=float(flat.mean()),
        delta=float(paired.mean()),
        ci=tuple(float(q) for q in np.nanquantile(means, [alpha, 1 - alpha])),
        median_void=float(np.median(v)),
        median_control=float(np.median(flat)),
        delta_median=float(np.median(v) - np.median(flat)),
        ci_median=tuple(float(q) for q in np.nanquantile(med_diff, [alpha, 1 - alpha])),
        ks=(float(ks.statistic), float(ks.pvalue)),
        mann_whitney=(float(mw.statistic), float(mw.pvalue)),
        anderson_darling=(float(ad.statistic), float(ad.pvalue)),
        cohens_d=float((v.mean() - flat.mean()) / pooled) if pooled > 0 else 0.0,
        cliffs_delta=float(2 * mw.statistic / (n1 * n2) - 1),
        confidence=confidence,
        void_values=v,
        control_values=flat,
    )


def compare_environments(
    table,
    vflag: np.ndarray,
    properties: dict[str, str] | None = None,
    *,
    select: np.ndarray | None = None,
    n_controls: int = 3,
    caliper: float = 1.0,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Comparison]:
    """Void galaxies against wall galaxies matched in stellar mass and redshift.

    Each void galaxy gets the ``n_controls`` nearest wall galaxies (with replacement,
    within the caliper) in stellar mass and redshift, or in redshift alone when the
    property is the stellar mass; ``delta`` is the mean over void galaxies of the void
    value minus the mean of its controls (the matching estimator of the average effect
    on the void galaxies, Abadie & Imbens 2006).

    The intervals are percentiles of a two-sample bootstrap: each replicate draws the
    void and, independently, the wall galaxies with replacement, matches controls again
    in the drawn wall pool and recomputes the shifts. A wall galaxy serving several void
    galaxies is thus one draw of the wall population, not several (resampling void
    galaxies with their controls made intervals too narrow: the variance grows with the
    sum of squared reuse counts). The bootstrap is not exact for nearest-neighbour
    matching (Abadie & Imbens 2008), but on simulated populations where each used
    control serves ~5.6 void galaxies the 95 % intervals covered the true shift in 93-95 %
    (mean) and 97 % (median) of the draws, against 77 % and 75 % before.

    Parameters
    ----------
    table : Table or dict of arrays
        Galaxy properties (``derive_properties`` columns, LOGMSTAR and Z), row-matched
        with ``vflag``.
    vflag : ndarray
        VAST vflag of each galaxy; 1 are void galaxies, 0 the control pool.
    properties : dict, optional
        Column -> label; :data:`DEFAULT_PROPERTIES` by default.
    select : ndarray of bool, optional
        Restrict both samples (e.g. to star-forming galaxies).
    n_controls, caliper : int, float
        See :func:`match_controls`; matching units are 0.1 dex in mass, 0.01 in z.
    n_boot, confidence, seed
        Bootstrap resamples, interval level, random seed.

    Returns
    -------
    list of Comparison
        One per property, in the order of ``properties``.

    References
    ----------
    Abadie & Imbens 2006, Econometrica 74, 235 (matching estimators); Abadie & Imbens
    2008, Econometrica 76, 1537 (bootstrap and matching); Efron & Tibshirani 1993, An
    Introduction to the Bootstrap, ch. 8 (two-sample problems).
    """
    properties = properties or DEFAULT_PROPERTIES
    vflag = np.asarray(vflag)
    sel = np.ones(len(vflag), dtype=bool) if select is None else np.asarray(select, bool)
    rng = np.random.default_rng(seed)
    # Enough neighbours that a replicate's pool (a third of the wall galaxies missing)
    # still holds n_controls copies among them within the caliper.
    n_nb = 4 * n_controls + 4
    out = []
    for name, label in properties.items():
        match_on = ("Z",) if name == "LOGMSTAR" else ("LOGMSTAR", "Z")
        x = np.asarray(table[name], float)
        mv = np.column_stack([np.asarray(table[c], float) for c in match_on])
        ok = sel & np.isfinite(x) & np.all(np.isfinite(mv), axis=1)
        void = np.flatnonzero(ok & (vflag == VFLAG_VOID))
        wall = np.flatnonzero(ok & (vflag == VFLAG_WALL))
        scales = np.array([MATCH_SCALES[c] for c in match_on])
        nbrs = match_controls(mv[void], mv[wall], scales, n_controls=n_nb, caliper=caliper)
        idx = nbrs[:, :n_controls]
        cx = np.where(idx >= 0, x[wall][np.maximum(idx, 0)], np.nan)
        replicates = None
        if (nbrs >= 0).any():
            replicates = _rematched_bootstrap(x[void], x[wall], nbrs, n_controls, n_boot, rng)
        out.append(
            compare_samples(
                x[void],
                cx,
                name=name,
                label=label,
                matched_on=match_on,
                n_boot=n_boot,
                confidence=confidence,
                rng=rng,
                replicates=replicates,
            )
        )
    return out
