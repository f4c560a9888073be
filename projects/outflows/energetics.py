"""Outflow energetics under explicit, user-set assumptions, with uncertainty bands.

Ionised outflows from [O III] (Carniani et al. 2015, eq. 5, with C = 1):

    M_ion = 0.8e8 Msun (L[O III] / 1e44 erg/s) (n_e / 500 cm^-3)^-1 10^-[O/H]

BAL outflows from a column density (thin partial shell, e.g. Borguet et al. 2012):

    M = 4 pi Omega R^2 mu m_p N_H

Rates for an outflow of radius R and velocity v: the mass outflow rate is
3 M v / R for a uniformly filled cone (Maiolino et al. 2012) and M v / R for a
shell; the kinetic power is 1/2 Mdot v^2 and the momentum rate Mdot v. The
bolometric luminosity comes from a continuum luminosity and a bolometric
correction (Richards et al. 2006 / Shen et al. 2011: 9.26 at 5100 Angstrom,
3.81 at 1350 Angstrom), and the coupling efficiency is Edot / L_bol.

Every assumption is a field of :class:`Assumptions` (stored with each result
row); each uncertain one carries a log-normal scatter in dex. Uncertainty bands
are the 16th-84th percentiles of Monte Carlo draws of the measurements (their
errors) and the assumptions (their scatter).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

import astropy.units as u
import numpy as np
from astropy import constants as const

__all__ = [
    "MODEL_VERSION",
    "Assumptions",
    "Energetics",
    "RadiusLuminosity",
    "bal_energetics",
    "bal_velocity",
    "bolometric_luminosity",
    "oiii_energetics",
    "oiii_velocity",
]

MODEL_VERSION = "outflows-1.0"
_MSUN_G = const.M_sun.to_value(u.g)
_KPC_CM = u.kpc.to(u.cm)
_YR_S = u.yr.to(u.s)
_MP_G = const.m_p.to_value(u.g)
GEOMETRIES = ("filled_cone", "shell")
VELOCITIES = ("vmax", "w80", "vshift")
BAL_VELOCITIES = ("centroid", "vmax")
#: Bolometric corrections lambda L_lambda -> L_bol (Richards et al. 2006; Shen et al. 2011).
BOLOMETRIC_CORRECTIONS = {1350: 3.81, 3000: 5.15, 5100: 9.26}


@dataclass(frozen=True)
class RadiusLuminosity:
    """Outflow radius from L[O III]: R = r0 (L[O III] / l0)^slope.

    Parameters
    ----------
    r0 : Quantity (length)
        Radius at ``l0``.
    l0 : Quantity (power)
        Pivot luminosity.
    slope : float
        Power-law index (about 0.5 for the NLR size, Bennert et al. 2002).
    """

    r0: u.Quantity
    l0: u.Quantity
    slope: float = 0.5

    def radius_kpc(self, l_oiii_erg_s: np.ndarray) -> np.ndarray:
        """Radius (kpc) at the given L[O III] (erg/s)."""
        ratio = np.asarray(l_oiii_erg_s) / self.l0.to_value(u.erg / u.s)
        return self.r0.to_value(u.kpc) * ratio**self.slope


@dataclass(frozen=True)
class Assumptions:
    """Everything the energetics depend on besides the measurements.

    Parameters
    ----------
    n_e : Quantity
        Electron density of the ionised outflow.
    radius : Quantity or None
        Outflow radius; None uses ``radius_luminosity``.
    radius_luminosity : RadiusLuminosity or None
        R-L relation used when ``radius`` is None.
    geometry : {'filled_cone', 'shell'}
        [O III] outflows: Mdot = 3 M v / R (filled cone) or M v / R (shell).
    velocity : {'vmax', 'w80', 'vshift'}
        [O III] outflow velocity: |dv| + 2 sigma_wing, W80 / 1.3, or |dv|.
    metallicity : float
        [O/H] relative to solar, dex.
    n_h : Quantity
        Column density of BAL outflows.
    bal_radius : Quantity
        Distance of BAL absorbers from the nucleus.
    bal_geometry : {'shell', 'filled_cone'}
        BAL outflows: a thin partial shell (Mdot = 4 pi Omega R mu m_p N_H v) by default.
    covering : float
        Global covering fraction Omega of BAL outflows.
    bal_velocity : {'centroid', 'vmax'}
        BAL velocity: width-weighted centre of the C IV BI troughs, or their largest VMAX.
    mu : float
        Mean mass per proton (1.4 for solar abundances).
    n_e_dex, radius_dex, n_h_dex, bc_dex : float
        Log-normal scatter (dex) of the uncertain assumptions, used for the bands.
    """

    n_e: u.Quantity = field(default_factory=lambda: 500.0 * u.cm**-3)
    radius: u.Quantity | None = field(default_factory=lambda: 1.0 * u.kpc)
    radius_luminosity: RadiusLuminosity | None = None
    geometry: str = "filled_cone"
    velocity: str = "vmax"
    metallicity: float = 0.0
    n_h: u.Quantity = field(default_factory=lambda: 1e20 * u.cm**-2)
    bal_radius: u.Quantity = field(default_factory=lambda: 1.0 * u.kpc)
    bal_geometry: str = "shell"
    covering: float = 0.2
    bal_velocity: str = "centroid"
    mu: float = 1.4
    n_e_dex: float = 0.3
    radius_dex: float = 0.2
    n_h_dex: float = 0.5
    bc_dex: float = 0.1

    def __post_init__(self) -> None:
        for name in ("geometry", "bal_geometry"):
            if getattr(self, name) not in GEOMETRIES:
                raise ValueError(f"{name} must be one of {GEOMETRIES}, not {getattr(self, name)!r}")
        if self.velocity not in VELOCITIES:
            raise ValueError(f"velocity must be one of {VELOCITIES}, not {self.velocity!r}")
        if self.bal_velocity not in BAL_VELOCITIES:
            raise ValueError(f"bal_velocity must be one of {BAL_VELOCITIES}")
        if self.radius is None and self.radius_luminosity is None:
            raise ValueError("give a radius or a radius_luminosity relation")
        if self.n_e.to_value(u.cm**-3) <= 0 or not 0 < self.covering <= 1:
            raise ValueError("n_e must be positive and covering in (0, 1]")

    def to_dict(self) -> dict:
        """JSON-ready form: quantities as ``[value, unit]``; includes the model version."""

        def enc(v):
            if isinstance(v, u.Quantity):
                return [float(v.value), v.unit.to_string()]
            if isinstance(v, dict):
                return {k: enc(x) for k, x in v.items()}
            return v

        out = {k: enc(v) for k, v in asdict(self).items()}
        if self.radius_luminosity is not None:
            out["radius_luminosity"] = {
                k: enc(getattr(self.radius_luminosity, k)) for k in ("r0", "l0", "slope")
            }
        out["model_version"] = MODEL_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Assumptions:
        """Inverse of :meth:`to_dict`."""

        def dec(v):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], str):
                return v[0] * u.Unit(v[1])
            return v

        data = {k: v for k, v in data.items() if k != "model_version"}
        rl = data.pop("radius_luminosity", None)
        kwargs = {k: dec(v) for k, v in data.items()}
        if rl is not None:
            kwargs["radius_luminosity"] = RadiusLuminosity(
                dec(rl["r0"]), dec(rl["l0"]), float(rl["slope"])
            )
        return cls(**kwargs)

    def digest(self) -> str:
        """Short hash identifying these assumptions (and the model version)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, **changes) -> Assumptions:
        """A copy with some assumptions changed."""
        return replace(self, **changes)


@dataclass
class Energetics:
    """Outflow energetics of N objects: nominal values and 16-84 % bands.

    Each attribute is a Quantity array of shape (N,); ``<name>_band`` is (N, 2).
    """

    mass: u.Quantity
    mdot: u.Quantity
    edot: u.Quantity
    pdot: u.Quantity
    lbol: u.Quantity
    coupling: u.Quantity
    velocity: u.Quantity
    radius: u.Quantity
    bands: dict

    def columns(self) -> dict[str, np.ndarray]:
        """Result-table columns: LOG_MOUT, LOG_MDOT, LOG_EDOT, LOG_PDOT, LOG_LBOL,
        LOG_COUPLING with _LO and _HI (16th/84th percentiles), in Msun, Msun/yr,
        erg/s, dyn, erg/s and dimensionless."""
        units = {
            "MOUT": (self.mass, u.Msun), "MDOT": (self.mdot, u.Msun / u.yr),
            "EDOT": (self.edot, u.erg / u.s), "PDOT": (self.pdot, u.dyn),
            "LBOL": (self.lbol, u.erg / u.s), "COUPLING": (self.coupling, u.dimensionless_unscaled),
        }  # fmt: skip
        out = {}
        for name, (q, unit) in units.items():
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"LOG_{name}"] = np.log10(q.to_value(unit))
                band = self.bands[name.lower()]
                out[f"LOG_{name}_LO"] = np.log10(band[:, 0])
                out[f"LOG_{name}_HI"] = np.log10(band[:, 1])
        out["OUTFLOW_V"] = self.velocity.to_value(u.km / u.s)
        out["OUTFLOW_R"] = self.radius.to_value(u.kpc)
        return out


def bolometric_luminosity(
    lambda_l_lambda: u.Quantity, wavelength: u.Quantity, correction: float | None = None
) -> u.Quantity:
    """L_bol = BC x lambda L_lambda at 1350, 3000 or 5100 Angstrom (or a given BC)."""
    lam = int(round(wavelength.to_value(u.AA)))
    bc = correction if correction is not None else BOLOMETRIC_CORRECTIONS.get(lam)
    if bc is None:
        raise ValueError(f"no bolometric correction for {lam} Angstrom; pass correction=")
    return (bc * lambda_l_lambda).to(u.erg / u.s)


def _normal(rng, n):
    """One row of n standard normals, shared by every object (common random numbers:
    an object's band then depends on its own inputs only, not on the others')."""
    return rng.standard_normal((1, n))


def _lognormal(rng, n, shape, dex):
    return np.broadcast_to(10 ** (_normal(rng, n) * dex), (*shape, n))


def _rates(mass_g, v_kms, r_kpc, geometry):
    """Mdot (g/s), Edot (erg/s), pdot (dyn) from mass, velocity and radius arrays."""
    factor = 3.0 if geometry == "filled_cone" else 1.0
    v_cm = v_kms * 1e5
    mdot = factor * mass_g * v_cm / (r_kpc * _KPC_CM)
    return mdot, 0.5 * mdot * v_cm**2, mdot * v_cm


def _finish(mass, v, r, lbol, draws, geometry) -> Energetics:
    mdot, edot, pdot = _rates(mass, v, r, geometry)
    with np.errstate(divide="ignore", invalid="ignore"):
        coupling = edot / lbol
    m_d, v_d, r_d, l_d = draws
    mdot_d, edot_d, pdot_d = _rates(m_d, v_d, r_d, geometry)
    with np.errstate(divide="ignore", invalid="ignore"):
        coup_d = edot_d / l_d

    def band(arr, scale=1.0):
        with np.errstate(invalid="ignore"):
            return np.nanpercentile(arr, [16, 84], axis=-1).T * scale

    bands = {
        "mout": band(m_d, 1 / _MSUN_G), "mdot": band(mdot_d, _YR_S / _MSUN_G),
        "edot": band(edot_d), "pdot": band(pdot_d), "lbol": band(l_d), "coupling": band(coup_d),
    }  # fmt: skip
    return Energetics(
        mass=(mass / _MSUN_G) * u.Msun,
        mdot=(mdot * _YR_S / _MSUN_G) * u.Msun / u.yr,
        edot=edot * u.erg / u.s,
        pdot=pdot * u.dyn,
        lbol=lbol * u.erg / u.s,
        coupling=coupling * u.dimensionless_unscaled,
        velocity=v * u.km / u.s,
        radius=r * u.kpc,
        bands=bands,
    )


def oiii_energetics(
    l_oiii: u.Quantity,
    velocity: u.Quantity,
    lbol: u.Quantity,
    assumptions: Assumptions,
    *,
    l_oiii_err_dex: np.ndarray | float = 0.0,
    velocity_err: u.Quantity | None = None,
    n_draws: int = 1000,
    rng: np.random.Generator | None = None,
) -> Energetics:
    """Energetics of ionised outflows traced by [O III].

    Parameters
    ----------
    l_oiii : Quantity (N,)
        Outflowing [O III] 5007 luminosity (the wing, or the whole line as an upper limit).
    velocity : Quantity (N,)
        Outflow velocity per ``assumptions.velocity`` (see :func:`oiii_velocity`).
    lbol : Quantity (N,)
        Bolometric luminosity.
    assumptions : Assumptions
    l_oiii_err_dex : float or ndarray
        1-sigma error of log L[O III].
    velocity_err : Quantity, optional
        1-sigma error of the velocity.
    n_draws : int
        Monte Carlo draws for the bands.
    rng : numpy Generator, optional

    Returns
    -------
    Energetics
    """
    rng = rng or np.random.default_rng(0)
    lo = np.atleast_1d(l_oiii.to_value(u.erg / u.s)).astype(float)
    v = np.atleast_1d(np.abs(velocity.to_value(u.km / u.s))).astype(float)
    lb = np.atleast_1d(lbol.to_value(u.erg / u.s)).astype(float) * np.ones_like(lo)
    ne = assumptions.n_e.to_value(u.cm**-3)
    norm = 0.8e8 * _MSUN_G * 10 ** (-assumptions.metallicity)

    def mass(lum, n_e):
        return norm * (lum / 1e44) * (n_e / 500.0) ** -1

    def radius(lum):
        if assumptions.radius is not None:
            return np.full(np.shape(lum), assumptions.radius.to_value(u.kpc))
        return assumptions.radius_luminosity.radius_kpc(lum)

    shape = lo.shape
    lerr = np.broadcast_to(np.asarray(l_oiii_err_dex, dtype=float), shape)
    lo_d = lo[:, None] * 10 ** (_normal(rng, n_draws) * lerr[:, None])
    verr = 0.0 if velocity_err is None else velocity_err.to_value(u.km / u.s)
    verr = np.broadcast_to(np.asarray(verr, dtype=float), shape)
    v_d = np.abs(v[:, None] + _normal(rng, n_draws) * verr[:, None])
    m_d = mass(lo_d, ne * _lognormal(rng, n_draws, shape, assumptions.n_e_dex))
    r_d = radius(lo_d) * _lognormal(rng, n_draws, shape, assumptions.radius_dex)
    l_d = lb[:, None] * _lognormal(rng, n_draws, shape, assumptions.bc_dex)
    return _finish(mass(lo, ne), v, radius(lo), lb, (m_d, v_d, r_d, l_d), assumptions.geometry)


def bal_energetics(
    velocity: u.Quantity,
    lbol: u.Quantity,
    assumptions: Assumptions,
    *,
    n_draws: int = 1000,
    rng: np.random.Generator | None = None,
) -> Energetics:
    """Energetics of BAL outflows from an assumed column density, distance and covering.

    Parameters
    ----------
    velocity : Quantity (N,)
        BAL outflow speed (see :func:`bal_velocity`).
    lbol : Quantity (N,)
    assumptions : Assumptions
        Uses ``n_h``, ``bal_radius``, ``covering``, ``mu`` and ``bal_geometry``.
    n_draws : int
        Monte Carlo draws for the bands.
    rng : numpy Generator, optional
    """
    rng = rng or np.random.default_rng(0)
    v = np.atleast_1d(np.abs(velocity.to_value(u.km / u.s))).astype(float)
    lb = np.atleast_1d(lbol.to_value(u.erg / u.s)).astype(float) * np.ones_like(v)
    shape = v.shape
    r = np.full(shape, assumptions.bal_radius.to_value(u.kpc))
    nh = assumptions.n_h.to_value(u.cm**-2)

    def mass(r_kpc, n_h):
        return (
            4 * np.pi * assumptions.covering * (r_kpc * _KPC_CM) ** 2 * assumptions.mu * _MP_G * n_h
        )

    r_d = r[:, None] * _lognormal(rng, n_draws, shape, assumptions.radius_dex)
    m_d = mass(r_d, nh * _lognormal(rng, n_draws, shape, assumptions.n_h_dex))
    v_d = np.broadcast_to(v[:, None], (*shape, n_draws))
    l_d = lb[:, None] * _lognormal(rng, n_draws, shape, assumptions.bc_dex)
    return _finish(mass(r, nh), v, r, lb, (m_d, v_d, r_d, l_d), assumptions.bal_geometry)


def oiii_velocity(values: dict, definition: str) -> tuple[float, float]:
    """Outflow velocity and its error (km/s) from [O III] columns, by definition."""
    if definition == "vmax":
        return values.get("OIII_VMAX", np.nan), values.get("OIII_VMAX_ERR", np.nan)
    if definition == "w80":
        return values.get("OIII_W80", np.nan) / 1.3, values.get("OIII_W80_ERR", np.nan) / 1.3
    return abs(values.get("OIII_WING_VSHIFT", np.nan)), values.get("OIII_WING_VSHIFT_ERR", np.nan)


def bal_velocity(values: dict, definition: str) -> float:
    """BAL outflow speed (km/s) from the C IV BI troughs; NaN when there are none."""
    vmin = np.asarray(values.get("VMIN_CIV_2000", []), dtype=float)
    vmax = np.asarray(values.get("VMAX_CIV_2000", []), dtype=float)
    use = (vmin >= 0) & (vmax > 0)
    if not use.any():
        return np.nan
    if definition == "vmax":
        return float(vmax[use].max())
    width = vmax[use] - vmin[use]
    return float(np.sum(0.5 * (vmin[use] + vmax[use]) * width) / np.sum(width))
