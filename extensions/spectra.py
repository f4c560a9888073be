"""SpectrumExplorer logic: what to draw for a target, tested without a browser.

The view (:mod:`desilab.extensions.spectrum_widget`) only copies what this
model computes into bokeh sources: arms with a noise band, masked pixels (ivar
= 0 or a mask bit: prospect hides them, we show them), smoothing, observed or
rest-frame axis, line markers at a chosen redshift, a model overlay, target
information, and visual-inspection flags saved to PostgreSQL.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .lines import LINES, Line

INFO_COLUMNS = (
    "TARGETID",
    "Z",
    "ZERR",
    "ZWARN",
    "SPECTYPE",
    "SUBTYPE",
    "DELTACHI2",
    "TARGET_RA",
    "TARGET_DEC",
    "FLUX_G",
    "FLUX_R",
    "FLUX_Z",
    "FLUX_W1",
    "FLUX_W2",
)


@dataclass
class Arm:
    """One arm of one spectrum: wavelength (Angstrom), flux, inverse variance, mask."""

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray | None = None

    def bad(self) -> np.ndarray:
        bad = ~(self.ivar > 0) | ~np.isfinite(self.flux)
        if self.mask is not None:
            bad |= self.mask != 0
        return bad


@dataclass
class Spectrum:
    """A target's spectrum (one or more arms), its catalog row and an optional model."""

    targetid: int
    arms: dict[str, Arm]
    info: dict[str, Any] = field(default_factory=dict)
    model: dict[str, np.ndarray] | None = None

    @property
    def z(self) -> float:
        return float(self.info.get("Z", 0.0) or 0.0)


def smooth(flux: np.ndarray, ivar: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance weighted boxcar of ``width`` pixels; masked pixels carry no weight.

    Returns the smoothed flux (NaN where no good pixel is in the window) and its
    1-sigma error.
    """
    ivar = np.where(np.isfinite(flux) & (ivar > 0), ivar, 0.0)
    weighted = np.where(ivar > 0, flux * ivar, 0.0)
    if width > 1:
        kernel = np.ones(width)
        weighted = np.convolve(weighted, kernel, mode="same")
        ivar = np.convolve(ivar, kernel, mode="same")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ivar > 0, weighted / ivar, np.nan)
        err = np.where(ivar > 0, 1 / np.sqrt(ivar) * (np.sqrt(width) if width > 1 else 1), np.nan)
    return out, err


class SpectrumExplorerModel:
    """Navigation, redshift, smoothing and frame for a list of targets.

    Parameters
    ----------
    targetids
        The targets, in browsing order.
    loader
        ``loader(targetid) -> Spectrum``; called lazily and cached.
    save_vi
        ``save_vi(targetid, flag, comment, z) -> id``: stores an inspection
        (:func:`desilab.desi.vi.save_inspection` bound to the user's DSN).
    """

    cache_size = 32

    def __init__(
        self,
        targetids: Sequence[int],
        loader: Callable[[int], Spectrum],
        save_vi: Callable[..., int] | None = None,
    ):
        if len(targetids) == 0:
            raise ValueError("no targets to explore: the list of TARGETIDs is empty")
        self.targetids = [int(t) for t in targetids]
        self.loader = loader
        self.save_vi_fn = save_vi
        self.index = 0
        self.smoothing = 1
        self.frame = "observed"
        self._z: float | None = None
        self._cache: OrderedDict[int, Spectrum] = OrderedDict()

    # -- constructors ---------------------------------------------------------
    @classmethod
    def from_spectra(cls, spectra: Sequence[Spectrum], **kw: Any) -> SpectrumExplorerModel:
        by_id = {s.targetid: s for s in spectra}
        return cls([s.targetid for s in spectra], by_id.__getitem__, **kw)

    @classmethod
    def from_arrays(
        cls,
        wave: np.ndarray | Mapping[str, np.ndarray],
        flux: np.ndarray | Mapping[str, np.ndarray],
        ivar: np.ndarray | Mapping[str, np.ndarray],
        mask: np.ndarray | Mapping[str, np.ndarray] | None = None,
        info: Sequence[Mapping[str, Any]] | None = None,
        model: np.ndarray | Mapping[str, np.ndarray] | None = None,
        **kw: Any,
    ) -> SpectrumExplorerModel:
        """Explore plain arrays: one arm (``wave`` 1-D) or a dict of arms; 2-D = many spectra."""

        def arms_of(x):
            return dict(x) if isinstance(x, Mapping) else {"spectrum": x}

        waves, fluxes, ivars = arms_of(wave), arms_of(flux), arms_of(ivar)
        masks = arms_of(mask) if mask is not None else {}
        models = arms_of(model) if model is not None else None
        nspec = np.atleast_2d(next(iter(fluxes.values()))).shape[0]
        spectra = []
        for i in range(nspec):
            row = dict(info[i]) if info is not None else {}
            tid = int(row.get("TARGETID", i))
            arms = {
                name: Arm(
                    np.asarray(waves[name], float),
                    np.atleast_2d(fluxes[name])[i].astype(float),
                    np.atleast_2d(ivars[name])[i].astype(float),
                    np.atleast_2d(masks[name])[i] if name in masks else None,
                )
                for name in fluxes
            }
            mod = {n: np.atleast_2d(m)[i] for n, m in models.items()} if models else None
            spectra.append(Spectrum(tid, arms, {"TARGETID": tid, **row}, mod))
        return cls.from_spectra(spectra, **kw)

    @classmethod
    def from_coadd(cls, coadd: Any, redshifts: Any = None, **kw: Any) -> SpectrumExplorerModel:
        """Explore a :class:`desilab.desi.CoaddSpectra` (with an optional redshift table)."""
        return cls.from_spectra(spectra_from_coadd(coadd, redshifts), **kw)

    # -- navigation -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.targetids)

    @property
    def targetid(self) -> int:
        return self.targetids[self.index]

    def go(self, index: int) -> Spectrum:
        if not 0 <= index < len(self):
            raise IndexError(f"target {index + 1} does not exist: there are {len(self)}")
        self.index = index
        self._z = None  # each target starts at its catalog redshift
        return self.current

    def next(self) -> Spectrum:
        return self.go(min(self.index + 1, len(self) - 1))

    def previous(self) -> Spectrum:
        return self.go(max(self.index - 1, 0))

    @property
    def current(self) -> Spectrum:
        tid = self.targetid
        if tid not in self._cache:
            self._cache[tid] = self.loader(tid)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(tid)
        return self._cache[tid]

    # -- redshift, frame, smoothing -------------------------------------------
    @property
    def z(self) -> float:
        return self.current.z if self._z is None else self._z

    def set_redshift(self, z: float) -> None:
        if not np.isfinite(z) or not -0.01 <= z <= 7:
            raise ValueError(f"redshift {z} is outside -0.01..7")
        self._z = float(z)

    def reset_redshift(self) -> None:
        self._z = None

    def set_frame(self, frame: str) -> None:
        if frame not in ("observed", "rest"):
            raise ValueError(f"frame must be 'observed' or 'rest', not {frame!r}")
        self.frame = frame

    def set_smoothing(self, width: int) -> None:
        if int(width) < 1:
            raise ValueError("smoothing width must be at least 1 pixel")
        self.smoothing = int(width)

    def _x(self, wave: np.ndarray) -> np.ndarray:
        return wave / (1 + self.z) if self.frame == "rest" else wave

    # -- what to draw ---------------------------------------------------------
    def arm_data(self) -> dict[str, dict[str, np.ndarray]]:
        """Per arm: x, smoothed flux, the noise band (lo, hi), and the model (or NaN)."""
        out = {}
        spec = self.current
        for name, arm in spec.arms.items():
            ivar = np.where(arm.bad(), 0.0, arm.ivar)
            flux, err = smooth(arm.flux, ivar, self.smoothing)
            model = np.full_like(flux, np.nan)
            if spec.model and name in spec.model:
                model = smooth(
                    np.asarray(spec.model[name], float), np.ones_like(flux), self.smoothing
                )[0]
            out[name] = {
                "x": self._x(arm.wave),
                "flux": flux,
                "lo": flux - err,
                "hi": flux + err,
                "model": model,
            }
        return out

    def masked_points(self) -> dict[str, np.ndarray]:
        """Masked pixels: where they are and the (unusable) value they hold, clipped to 0."""
        xs, ys = [], []
        for arm in self.current.arms.values():
            bad = arm.bad()
            xs.append(self._x(arm.wave[bad]))
            ys.append(np.nan_to_num(arm.flux[bad], nan=0.0, posinf=0.0, neginf=0.0))
        return {
            "x": np.concatenate(xs) if xs else np.array([]),
            "y": np.concatenate(ys) if ys else np.array([]),
        }

    def x_range(self) -> tuple[float, float]:
        waves = [arm.wave for arm in self.current.arms.values()]
        lo, hi = min(w.min() for w in waves), max(w.max() for w in waves)
        return float(self._x(np.array([lo]))[0]), float(self._x(np.array([hi]))[0])

    def line_markers(self, lines: Sequence[Line] = LINES) -> list[tuple[float, str, bool]]:
        """(x, name, emission) of every line inside the plotted range at the current z."""
        lo, hi = self.x_range()
        out = []
        for line in lines:
            x = line.wave if self.frame == "rest" else line.wave * (1 + self.z)
            if lo <= x <= hi:
                out.append((x, line.name, line.emission))
        return out

    def info_rows(self) -> list[tuple[str, str]]:
        info = self.current.info
        rows = [(k, _fmt(info[k])) for k in INFO_COLUMNS if k in info]
        rows.append(("target", f"{self.index + 1} of {len(self)}"))
        if self._z is not None:
            rows.append(("z (explorer)", f"{self._z:.4f}"))
        return rows

    # -- visual inspection ----------------------------------------------------
    def save_vi(self, flag: str, comment: str = "") -> int:
        if self.save_vi_fn is None:
            raise RuntimeError("visual inspection is not connected to a database here")
        return self.save_vi_fn(
            self.targetid, flag, comment.strip(), self._z if self._z is not None else None
        )


def _fmt(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float | np.floating):
        return f"{value:.5g}"
    return str(value).strip()


def spectra_from_coadd(coadd: Any, redshifts: Any = None) -> list[Spectrum]:
    """Spectrum objects for every row of a CoaddSpectra, joined to a redshift table."""
    zrows: dict[int, dict] = {}
    if redshifts is not None:
        names = redshifts.colnames
        for row in redshifts:
            zrows[int(row["TARGETID"])] = {n: row[n] for n in names if np.ndim(row[n]) == 0}
    fibermap = coadd.fibermap
    out = []
    for i, tid in enumerate(np.asarray(fibermap["TARGETID"])):
        info = {n: fibermap[n][i] for n in fibermap.colnames if np.ndim(fibermap[n][i]) == 0}
        info.update(zrows.get(int(tid), {}))
        arms = {
            name: Arm(a.wave, a.flux[i].astype(float), a.ivar[i].astype(float), a.mask[i])
            for name, a in coadd.arms.items()
        }
        out.append(Spectrum(int(tid), arms, info))
    return out
